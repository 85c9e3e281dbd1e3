"""A device's local work: deltas over adapter tensors only, personal state kept apart."""

import pytest
import torch

from fedadapt.clients.device import Device
from fedadapt.head_bias import fit_head_bias
from fedadapt.model_setup import GLOBAL, PERSONAL, build_fresh_global, trainable_global_keys
from fedadapt.simconfig import SimConfig
from tests.clients import SMALL

CFG = SimConfig(**{**SMALL.to_dict(), "personalization": "fedrep"})


@pytest.fixture(scope="module")
def device():
    return Device.create(CFG, partition_id=1)


def test_delta_covers_trainable_global_tensors_only(device):
    g = build_fresh_global(CFG)
    delta, stats = device.train_global(g, server_round=1)
    assert set(delta) == set(trainable_global_keys(CFG))
    base_names = set(device.model.encoder.state_dict())
    assert not any(k in base_names for k in delta)
    assert sum(v.numel() for v in delta.values()) < 0.01 * device.model.base.params
    assert any(v.abs().max() > 0 for v in delta.values())
    assert stats["examples"] == len(device.data.train_texts)


def test_local_training_is_deterministic(device):
    g = build_fresh_global(CFG)
    d1, _ = device.train_global(g, server_round=3)
    d2, _ = device.train_global(g, server_round=3)
    assert all(torch.equal(d1[k], d2[k]) for k in d1)


def test_personal_training_leaves_the_global_adapter_alone(device):
    g = build_fresh_global(CFG)
    personal = device.train_personal(g, None, server_round=1)
    assert set(personal) == set(device.model.adapter_state(PERSONAL))
    assert all(torch.equal(device.model.adapter_state(GLOBAL)[k], g[k]) for k in g)
    assert any(not torch.equal(personal[k], device.fresh_personal[k]) for k in personal)


def test_evaluate_reports_global_and_personalized(device):
    g = build_fresh_global(CFG)
    out, personal = device.evaluate(g, None, server_round=1)
    assert set(out) == {"global_accuracy", "personalized_accuracy"}
    assert personal is not None  # personalized on the device when it had no personal part
    assert all(torch.equal(device.model.adapter_state(GLOBAL)[k], g[k]) for k in g)


def test_head_bias_personalization_fits_an_offset_on_the_global_logits():
    cfg = SimConfig(**{**SMALL.to_dict(), "personalization": "head-bias"})
    dev = Device.create(cfg, partition_id=1)
    g = build_fresh_global(cfg)
    out, personal = dev.evaluate(g, None, server_round=1)
    assert personal is None  # nothing to keep: the offset is refitted to each global adapter
    dev.model.load_adapter_state(GLOBAL, g)
    dev.model.set_active(GLOBAL)
    test, train = dev._logits(dev.data.test_texts), dev._logits(dev.data.train_texts)
    bias = fit_head_bias(train, torch.tensor(dev.data.train_labels), cfg.head_bias_l2)
    labels = torch.tensor(dev.data.test_labels)
    assert out["global_accuracy"] == float((test.argmax(-1) == labels).float().mean())
    assert out["personalized_accuracy"] == float(
        ((test + bias).argmax(-1) == labels).float().mean()
    )
    assert bias.abs().max() > 0


def test_baselines_leave_the_global_adapter_as_they_found_it(device):
    g = build_fresh_global(CFG)
    device.model.load_adapter_state(GLOBAL, g)
    out = device.baselines()
    assert set(out) == {"local_only_accuracy", "zero_shot_accuracy", "local_majority_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert all(torch.equal(device.model.adapter_state(GLOBAL)[k], g[k]) for k in g)


def test_fedprox_term_pulls_towards_the_global():
    cfg = SimConfig(**{**CFG.to_dict(), "strategy": "fedprox", "proximal_mu": 50.0})
    g = build_fresh_global(cfg)
    free, _ = Device.create(CFG, 1).train_global(g, 1)
    prox, _ = Device.create(cfg, 1).train_global(g, 1)
    norm = lambda d: sum((v**2).sum() for v in d.values()).sqrt()  # noqa: E731
    assert norm(prox) < norm(free)


def test_a_kept_personal_part_that_no_longer_fits_is_replaced(device):
    """A personal part saved under another `personal_layers` (here: one layer more)."""
    fresh = device.fresh_personal
    assert device.usable_personal(fresh) is fresh
    extra = {**fresh, "encoder.layer.3.output.adapter_up.bias": torch.zeros(384)}
    assert device.usable_personal(extra) is None
    key = next(k for k in fresh if k.endswith("adapter_down.weight"))
    reshaped = {**fresh, key: torch.zeros(3, 3)}
    assert device.usable_personal(reshaped) is None
