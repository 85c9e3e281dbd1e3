"""A device's local work: deltas over adapter tensors only, personal state kept apart."""

import dataclasses

import pytest
import torch

from fedadapt.adapters import Stack
from fedadapt.clients.device import Device
from fedadapt.head_bias import fit_head_bias
from fedadapt.model_setup import (
    GLOBAL,
    PERSONAL,
    build_fresh_global,
    build_model,
    trainable_global_keys,
)
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


# -- Ditto and FedRep with a head bias ------------------------------------------------------
def _ditto_device(ditto_lambda: float) -> Device:
    """Enough personal steps (~10) for the pull to show through Adam's per-step jitter."""
    changes = {"personalization": "ditto", "ditto_lambda": ditto_lambda, "personal_epochs": 5}
    return Device.create(SimConfig(**{**CFG.to_dict(), **changes}), partition_id=1)


def _distance(a: dict, b: dict) -> float:
    return float(sum(((a[k] - v) ** 2).sum() for k, v in b.items()) ** 0.5)


def test_dittos_pull_keeps_the_personal_copy_near_the_global():
    """lambda = 0 is plain local fine-tuning of the copy; a large lambda holds it near the
    global (Adam still moves it by about a step's size, so "near", not "at")."""
    g = build_fresh_global(CFG)
    free = _ditto_device(0.0).train_ditto(g, None, server_round=1)
    pulled = _ditto_device(1e4).train_ditto(g, None, server_round=1)
    assert set(free) == set(g)  # a copy of the global adapter and its head
    assert _distance(free, g) > 0
    assert _distance(pulled, g) < 0.25 * _distance(free, g)


def test_ditto_trains_on_from_the_kept_copy_and_leaves_the_global_slot_alone():
    dev = _ditto_device(0.0)  # one epoch is enough here: the same model, a shorter schedule
    dev = dataclasses.replace(dev, cfg=SimConfig(**{**dev.cfg.to_dict(), "personal_epochs": 1}))
    g = build_fresh_global(dev.cfg)
    first = dev.train_ditto(g, None, server_round=1)
    on = dev.train_ditto(g, first, server_round=2)
    assert all(torch.equal(dev.model.adapter_state(GLOBAL)[k], g[k]) for k in g)
    afresh = dev.train_ditto(g, None, server_round=2)  # same seed: differs only by its start
    assert _distance(on, afresh) > 0
    misfit = {k: v for k, v in first.items() if not k.startswith("head.")}
    assert dev.usable_personal(misfit, g) is None  # a copy without the head starts afresh


def test_ditto_evaluates_the_personal_copy_with_its_own_head():
    """A copy whose head votes for the test split's rarest label scores that label's share."""
    dev = _ditto_device(0.0)
    g = build_fresh_global(dev.cfg)
    labels = dev.data.test_labels
    rare = min(set(labels), key=labels.count)
    bias = torch.full_like(g["head.bias"], -100.0)
    bias[rare] = 100.0
    copy = {**g, "head.bias": bias}
    out, kept = dev.evaluate(g, copy, server_round=1)
    assert kept is copy
    assert out["personalized_accuracy"] == pytest.approx(labels.count(rare) / len(labels), abs=1e-6)
    assert out["global_accuracy"] != out["personalized_accuracy"]
    assert all(torch.equal(dev.model.adapter_state(GLOBAL)[k], g[k]) for k in g)


def test_fedrep_head_bias_stacks_a_top_layer_adapter_and_fits_a_bias_on_it():
    cfg = SimConfig(**{**CFG.to_dict(), "personalization": "fedrep-head-bias"})
    dev = Device.create(cfg, partition_id=1)
    g = build_fresh_global(cfg)
    out, personal = dev.evaluate(g, None, server_round=1)
    layers = {k.split(".")[2] for k in personal if k.startswith("encoder.layer.")}
    assert layers == {"4", "5"}  # personal_layers = 2 of MiniLM's 6
    assert {k for k in personal if k.startswith("head.")} == {"head.weight", "head.bias"}
    assert dev.head_bias is not None and dev.head_bias.abs().max() > 0

    m, d = dev.model, dev.data  # what it says: the personal stack's logits plus that bias
    m.load_adapter_state(GLOBAL, g)
    m.load_adapter_state(PERSONAL, personal)
    m.set_active(Stack(GLOBAL, PERSONAL))
    train, test = dev._logits(d.train_texts), dev._logits(d.test_texts)
    bias = fit_head_bias(train, torch.tensor(d.train_labels), cfg.head_bias_l2)
    assert torch.equal(bias, dev.head_bias)
    want = float(((test + bias).argmax(-1) == torch.tensor(d.test_labels)).float().mean())
    assert out["personalized_accuracy"] == want

    # and FedRep's own figure, the stack before the bias, is what a fedrep device reports
    # for the same personal part: one fedrep-head-bias run measures both
    fedrep = Device.create(CFG, partition_id=1)
    plain, _ = fedrep.evaluate(g, personal, server_round=1)
    assert out["personal_stack_accuracy"] == plain["personalized_accuracy"]
    assert "personal_stack_accuracy" not in plain


def test_a_new_clients_personal_part_never_starts_from_another_clients():
    """One process serves many clients (a Ray actor; a warm worker across runs): client 2's
    first personal adapter must start from the built one, not from client 1's, which the
    shared cached model still holds after client 1 trained."""
    g = build_fresh_global(CFG)
    first = Device.create(CFG, partition_id=1)
    trained = first.train_personal(g, None, server_round=1)
    second = Device.create(CFG, partition_id=2)
    held = second.model.adapter_state(PERSONAL)  # the shared model: client 1's adapter
    assert all(torch.equal(held[k], trained[k]) for k in trained)
    built = build_model(CFG).adapter_state(PERSONAL)
    assert set(second.fresh_personal) == set(built)
    assert all(torch.equal(second.fresh_personal[k], built[k]) for k in built)
    assert any(not torch.equal(second.fresh_personal[k], trained[k]) for k in trained)
