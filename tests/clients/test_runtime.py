"""The personalized model on ONNX Runtime gives the predictions torch gave on the device.

One device graph (`Stack(global, personal)` over the dequantized int8 base, as trained) is
exported once for the session (`tests/clients/conftest.py`). On a device's held-out split,
the ORT logits of the personalized file match torch's personalized logits to 1e-4, and the
accuracy through ORT equals the personalized accuracy the device reports to the run, for
FedRep, the head bias, Ditto and FedRep with a head bias. The updater's installs and
rollbacks keep the personalized file on the installed version.
"""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from fedadapt.adapters import Stack
from fedadapt.base.checkpoint import load_tokenizer
from fedadapt.cli.app import main
from fedadapt.clients.device import Device
from fedadapt.clients.personalized import (
    DITTO_FILE,
    HEAD_BIAS_FILE,
    PERSONAL_FILE,
    after_evaluation,
    keep_round_global,
)
from fedadapt.clients.runtime import EdgeRuntime
from fedadapt.clients.updates.updater import DeviceStore
from fedadapt.head_bias import fit_head_bias
from fedadapt.launch.device_report import device_row
from fedadapt.model_setup import GLOBAL, PERSONAL
from fedadapt.simconfig import SimConfig
from fedadapt.train import accuracy, predict
from tests.clients.conftest import GRAPH_CFG, link_graph

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CFG = GRAPH_CFG  # the run of the session's exported graph (tests/clients/conftest.py)


@pytest.fixture
def device(graph, tmp_path):
    """A device folder holding the session's graph (hard links: no copy of 90 MB)."""
    return link_graph(graph, tmp_path / "device")


def _trained_global(d: Device, seed: int) -> dict[str, torch.Tensor]:
    """The round-0 global adapter moved as a few rounds would move it."""
    g = torch.Generator().manual_seed(seed)
    state = d.model.adapter_state(GLOBAL)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def _np(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in state.items()}


def _torch_logits(d: Device, texts: list[str]) -> np.ndarray:
    return predict(d.model, load_tokenizer(CFG.max_length), texts, max_length=CFG.max_length)


def test_fedrep_personalized_ort_equals_torch_on_the_held_out_split(device):
    d = Device.create(CFG, 0)
    global_ = _trained_global(d, 1)
    personal = d.train_personal(global_, None, server_round=1)
    reported, _ = d.evaluate(global_, personal, server_round=1)  # what the run records
    (device / PERSONAL_FILE).write_bytes(safetensors.torch.save(personal))
    figures = {
        **reported,
        "examples_train": len(d.data.train_labels),
        "examples_heldout": len(d.data.test_labels),
    }
    after_evaluation(device, _np(global_), figures)  # what the ClientApp does

    texts, labels = d.data.test_texts, d.data.test_labels
    d.model.load_adapter_state(GLOBAL, global_)
    d.model.load_adapter_state(PERSONAL, personal)
    d.model.set_active(Stack(GLOBAL, PERSONAL))
    want = _torch_logits(d, texts)
    rt = EdgeRuntime(device)
    got = rt.logits(texts)
    assert rt.personalized
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert accuracy(torch.from_numpy(got), labels) == reported["personalized_accuracy"]

    row = device_row(CFG, device, node=1)  # the deploy demo's devices.json row
    assert row["examples_heldout"] == len(labels)
    # the same count of correct predictions (torch reports a float32 mean)
    correct = [
        round(row[k] * len(labels))
        for k in ("personalized_accuracy_ort", "personalized_accuracy_torch")
    ]
    assert correct[0] == correct[1]

    d.model.set_active(GLOBAL)  # --global: the shared adapter, the personal branch left out
    shared = EdgeRuntime(device, personalized=False)
    assert not shared.personalized
    assert np.abs(shared.logits(texts) - _torch_logits(d, texts).numpy()).max() < 1e-4
    assert accuracy(torch.from_numpy(shared.logits(texts)), labels) == (reported["global_accuracy"])


def test_head_bias_personalized_ort_equals_torch(device):
    cfg = SimConfig(**{**CFG.to_dict(), "personalization": "head-bias"})
    d = Device.create(cfg, 1)
    global_ = _trained_global(d, 2)
    reported, _ = d.evaluate(global_, None, server_round=1)
    d.model.set_active(GLOBAL)
    train_logits = _torch_logits(d, d.data.train_texts)
    bias = fit_head_bias(train_logits, torch.tensor(d.data.train_labels), cfg.head_bias_l2)
    (device / HEAD_BIAS_FILE).write_bytes(safetensors.torch.save({"head_bias": bias}))
    keep_round_global(device, _np(global_))

    texts = d.data.test_texts
    want = _torch_logits(d, texts) + bias
    got = EdgeRuntime(device).logits(texts)
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert (
        accuracy(torch.from_numpy(got), d.data.test_labels) == (reported["personalized_accuracy"])
    )


def test_installs_and_rollbacks_keep_the_personalized_file_on_the_installed_version(device, capsys):
    d = Device.create(CFG, 2)
    bias = np.array([0.7, -0.7], np.float32)
    (device / HEAD_BIAS_FILE).write_bytes(safetensors.numpy.save({"head_bias": bias}))
    store = DeviceStore(device)
    sha = d.model.base.sha256
    versions = {v: _trained_global(d, 10 + v) for v in (1, 2)}
    for v, state in versions.items():
        store.install("rt", v, safetensors.torch.save(state), sha)
    texts = ["a wonderful, moving film", "a dull, lifeless mess"]

    def torch_logits(v: int) -> np.ndarray:
        d.model.load_adapter_state(GLOBAL, versions[v])
        d.model.set_active(GLOBAL)
        return _torch_logits(d, texts).numpy()

    rt = EdgeRuntime(device)
    assert (rt.adapter_version, rt.personalized) == (2, True)
    assert np.abs(rt.logits(texts) - (torch_logits(2) + bias)).max() < 1e-4
    store.rollback()
    rt = EdgeRuntime(device)
    assert (rt.adapter_version, rt.personalized) == (1, True)
    assert np.abs(rt.logits(texts) - (torch_logits(1) + bias)).max() < 1e-4

    assert main(["infer", "--device-dir", str(device), "--global", *texts]) == 0
    assert "(signed adapter version 1, global)" in capsys.readouterr().err
    assert main(["infer", "--device-dir", str(device), *texts]) == 0
    assert "(signed adapter version 1, personalized)" in capsys.readouterr().err


def _figures(d: Device, reported: dict, mode: str) -> dict:
    """What the ClientApp records beside an evaluation, with the mode the file serves."""
    return {
        **reported,
        "personalization": mode,
        "examples_train": len(d.data.train_labels),
        "examples_heldout": len(d.data.test_labels),
    }


def _assert_ort_serves(device, d: Device, want: torch.Tensor, reported: dict) -> None:
    """ORT's personalized logits on `d`'s held-out split are torch's `want`, to 1e-4, and
    give the accuracy the device reported."""
    got = EdgeRuntime(device).logits(d.data.test_texts)
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert accuracy(torch.from_numpy(got), d.data.test_labels) == reported["personalized_accuracy"]


def test_ditto_personalized_ort_equals_torch(device):
    """Ditto's copy of the global adapter and head takes the global's place in the graph."""
    cfg = SimConfig(**{**CFG.to_dict(), "personalization": "ditto"})
    d = Device.create(cfg, 2)
    global_ = _trained_global(d, 3)
    copy = d.train_ditto(global_, None, server_round=1)
    reported, _ = d.evaluate(global_, copy, server_round=1)
    (device / DITTO_FILE).write_bytes(safetensors.torch.save(copy))
    (device / PERSONAL_FILE).write_bytes(  # left over from another mode: must not be served
        safetensors.torch.save(d.model.adapter_state(PERSONAL))
    )
    after_evaluation(device, _np(global_), _figures(d, reported, "ditto"))

    d.model.load_adapter_state(GLOBAL, copy)
    d.model.set_active(GLOBAL)
    _assert_ort_serves(device, d, _torch_logits(d, d.data.test_texts), reported)


def test_fedrep_with_head_bias_personalized_ort_equals_torch(device):
    """The personal branch and head, with the bias fitted on top folded into the head."""
    cfg = SimConfig(**{**CFG.to_dict(), "personalization": "fedrep-head-bias"})
    d = Device.create(cfg, 1)
    global_ = _trained_global(d, 4)
    personal = d.train_personal(global_, None, server_round=1)
    reported, _ = d.evaluate(global_, personal, server_round=1)
    (device / PERSONAL_FILE).write_bytes(safetensors.torch.save(personal))
    (device / HEAD_BIAS_FILE).write_bytes(safetensors.torch.save({"head_bias": d.head_bias}))
    after_evaluation(device, _np(global_), _figures(d, reported, "fedrep-head-bias"))

    d.model.load_adapter_state(GLOBAL, global_)
    d.model.load_adapter_state(PERSONAL, personal)
    d.model.set_active(Stack(GLOBAL, PERSONAL))
    want = _torch_logits(d, d.data.test_texts) + d.head_bias
    _assert_ort_serves(device, d, want, reported)
