"""The personalized adapter file: global tensors plus the device's personal part, in numpy.

These run without a graph (only `runtime.json`), so they are fast; the ORT-versus-torch
parity of what they write is in `test_runtime.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from fedadapt.clients.personalized import (
    DITTO_FILE,
    EVALUATION_FILE,
    GLOBAL_ONNX,
    HEAD_BIAS_FILE,
    MODE_FILE,
    PERSONAL_FILE,
    PERSONALIZED_ONNX,
    graph_tensors,
    keep_round_global,
    refresh,
)
from fedadapt.errors import AdapterLoadError
from fedadapt.onnx_adapter import RUNTIME_FILE, read_onnx_adapter

SHA = "ab" * 32
STACK = ["shared", "personal"]


def _global() -> dict[str, np.ndarray]:
    return {
        "encoder.layer.0.output.adapter_down.weight": np.full((4, 8), 0.5, np.float32),
        "head.weight": np.ones((2, 8), np.float32),
        "head.bias": np.array([0.25, -0.25], np.float32),
    }


def _personal() -> dict[str, np.ndarray]:
    return {
        "encoder.layer.5.output.adapter_down.weight": np.full((2, 8), 2.0, np.float32),
        "head.weight": np.full((2, 8), 3.0, np.float32),
        "head.bias": np.array([1.0, 2.0], np.float32),
    }


def test_head_bias_folds_into_the_global_head_bias() -> None:
    out = graph_tensors(_global(), {"head_bias": np.array([0.5, 1.0], np.float32)})
    np.testing.assert_array_equal(out["head.bias"], [0.75, 0.75])
    np.testing.assert_array_equal(out["head.weight"], _global()["head.weight"])
    assert "head_bias" not in out


def test_a_personal_adapter_is_a_branch_stacked_on_the_global_one_with_its_own_head() -> None:
    out = graph_tensors(_global(), _personal(), STACK)
    assert set(out) == {
        "shared:encoder.layer.0.output.adapter_down.weight",
        "personal:encoder.layer.5.output.adapter_down.weight",
        "head.weight",
        "head.bias",
    }
    np.testing.assert_array_equal(out["head.weight"], _personal()["head.weight"])


def test_personal_adapter_and_head_bias_combine() -> None:
    both = {**_personal(), "head_bias": np.array([-1.0, 1.0], np.float32)}
    out = graph_tensors(_global(), both, STACK)
    np.testing.assert_array_equal(out["head.bias"], [0.0, 3.0])


def test_the_global_file_of_a_stacked_graph_leaves_the_personal_defaults_in_place() -> None:
    out = graph_tensors(_global(), None, STACK)
    assert not any(k.startswith("personal:") for k in out)
    np.testing.assert_array_equal(out["head.bias"], _global()["head.bias"])


def test_a_personal_adapter_on_a_graph_without_its_branch_is_refused() -> None:
    with pytest.raises(AdapterLoadError, match="no personal branch"):
        graph_tensors(_global(), _personal(), None)


def test_a_head_bias_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(AdapterLoadError, match=r"head bias of shape \(3,\)"):
        graph_tensors(_global(), {"head_bias": np.zeros(3, np.float32)})


def _device(tmp_path: Path, stack: list[str] | None = STACK) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / RUNTIME_FILE).write_text(json.dumps({"base_sha256": SHA, "stack": stack}))
    return tmp_path


def test_each_round_rewrites_the_personalized_file_from_the_personal_state(tmp_path) -> None:
    device = _device(tmp_path)
    (device / PERSONAL_FILE).write_bytes(safetensors.numpy.save(_personal()))
    (device / HEAD_BIAS_FILE).write_bytes(
        safetensors.numpy.save({"head_bias": np.array([1.0, 0.0], np.float32)})
    )
    keep_round_global(device, _global())
    version, _, tensors = read_onnx_adapter(device / PERSONALIZED_ONNX)
    assert version == 0  # a round's global, not a signed version
    np.testing.assert_array_equal(tensors["head.bias"], [2.0, 2.0])
    _, _, shared = read_onnx_adapter(device / GLOBAL_ONNX)
    np.testing.assert_array_equal(shared["head.bias"], _global()["head.bias"])


def test_an_installed_signed_version_is_the_global_in_use(tmp_path) -> None:
    device = _device(tmp_path)
    keep_round_global(device, _global())
    signed = {**_global(), "head.bias": np.array([5.0, 6.0], np.float32)}
    (device / "versions").mkdir()
    (device / "versions" / "v0007.safetensors").write_bytes(safetensors.numpy.save(signed))
    (device / "state.json").write_text(json.dumps({"version": 7}))
    (device / HEAD_BIAS_FILE).write_bytes(
        safetensors.numpy.save({"head_bias": np.array([1.0, 1.0], np.float32)})
    )
    refresh(device)
    version, _, tensors = read_onnx_adapter(device / PERSONALIZED_ONNX)
    assert version == 7
    np.testing.assert_array_equal(tensors["head.bias"], [6.0, 7.0])


def test_no_graph_means_nothing_to_write(tmp_path) -> None:
    assert refresh(tmp_path) is None
    keep_round_global(tmp_path, _global())
    assert not (tmp_path / PERSONALIZED_ONNX).exists()


def test_a_torn_personal_file_is_named(tmp_path) -> None:
    device = _device(tmp_path)
    (device / PERSONAL_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(AdapterLoadError, match=r"personal\.safetensors is not a readable"):
        keep_round_global(device, _global())


def _on_device(tmp_path: Path, mode: str, *kinds: str, stack: list[str] | None = STACK):
    """Send a deployed ClientApp (node config with a device folder) messages of `kinds`,
    round 3, in personalization `mode`; returns (folder, global adapter, last reply)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedadapt.clients.app import app
    from fedadapt.model_setup import build_fresh_global
    from fedadapt.records import state_to_record
    from fedadapt.simconfig import SimConfig
    from tests.clients import SMALL

    cfg = SimConfig(**{**SMALL.to_dict(), "personalization": mode})
    device = _device(tmp_path / "dev", stack)
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "device-dir": str(device)},
        state=RecordDict(),
        run_config=cfg.to_dict(),
    )
    global_ = build_fresh_global(cfg)
    for kind in kinds:
        content = RecordDict(
            {
                "arrays": state_to_record(global_),
                "config": ConfigRecord({"server-round": 3, "phase": "adapter", "baselines": False}),
            }
        )
        reply = app(Message(content, dst_node_id=7, message_type=kind), context)
        assert not reply.has_error(), reply.error
    return device, global_, reply


def test_the_clientapp_keeps_its_head_bias_and_writes_the_personalized_file(tmp_path) -> None:
    """An evaluation on a deployed device leaves, in its folder, the fitted head bias, the
    personalized file (global head bias + that offset) and torch's figures: numbers only."""
    device, global_, reply = _on_device(tmp_path, "head-bias", "evaluate")
    metrics = reply.content["metrics"]
    figures = json.loads((device / EVALUATION_FILE).read_text())
    assert figures["round"] == 3
    assert figures["personalization"] == "head-bias"
    assert figures["personalized_accuracy"] == metrics["personalized_accuracy"]
    bias = safetensors.numpy.load_file(str(device / HEAD_BIAS_FILE))["head_bias"]
    assert np.abs(bias).max() > 0  # a fitted offset, not zeros
    _, _, tensors = read_onnx_adapter(device / PERSONALIZED_ONNX)
    np.testing.assert_allclose(tensors["head.bias"], global_["head.bias"].numpy() + bias)


def test_a_training_round_serves_the_personal_part_it_just_trained(tmp_path) -> None:
    """No evaluation needed: after a FedRep round the device serves its new personal branch
    and head over the global the round brought."""
    device, global_, _ = _on_device(tmp_path, "fedrep", "train")
    assert json.loads((device / MODE_FILE).read_text()) == {"personalization": "fedrep", "round": 3}
    personal = safetensors.numpy.load_file(str(device / PERSONAL_FILE))
    _, _, tensors = read_onnx_adapter(device / PERSONALIZED_ONNX)
    for k, v in personal.items():
        np.testing.assert_array_equal(tensors[k if k.startswith("head.") else f"personal:{k}"], v)
    body = [k for k in global_ if not k.startswith("head.")]
    for k in body:
        np.testing.assert_array_equal(tensors[f"shared:{k}"], global_[k].numpy())


def test_a_personalized_file_that_cannot_be_written_loses_no_reply(tmp_path, caplog) -> None:
    """A graph exported without the personal branch cannot serve FedRep's: the device logs
    it, keeps its personal state, and its delta still goes to the server."""
    device, _, reply = _on_device(tmp_path, "fedrep", "train", stack=None)
    assert "arrays" in reply.content
    assert (device / PERSONAL_FILE).exists() and not (device / PERSONALIZED_ONNX).exists()
    assert "personalized model not written: this device's graph has no personal branch" in (
        caplog.text
    )


def test_a_ditto_device_keeps_its_copy_and_serves_it(tmp_path) -> None:
    """Training keeps Ditto's copy in ditto.safetensors (not personal.safetensors); the
    evaluation serves that copy in the global's place."""
    device, global_, _ = _on_device(tmp_path, "ditto", "train", "evaluate")
    assert not (device / PERSONAL_FILE).exists()
    copy = safetensors.numpy.load_file(str(device / DITTO_FILE))
    assert set(copy) == set(global_)
    assert any(not np.array_equal(copy[k], global_[k].numpy()) for k in copy)  # trained
    _, _, tensors = read_onnx_adapter(device / PERSONALIZED_ONNX)
    for k, v in copy.items():
        np.testing.assert_array_equal(tensors[k if k.startswith("head.") else f"shared:{k}"], v)


def _record_mode(device: Path, mode: str) -> None:
    (device / EVALUATION_FILE).write_text(json.dumps({"round": 1, "personalization": mode}))


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    path.write_bytes(safetensors.numpy.save(tensors))


def test_a_ditto_copy_takes_the_globals_place_with_its_own_head(tmp_path) -> None:
    device = _device(tmp_path)
    copy = {k: v + 1.0 for k, v in _global().items()}
    _save(device / DITTO_FILE, copy)
    _save(device / PERSONAL_FILE, _personal())  # left over from a FedRep run
    _record_mode(device, "ditto")
    keep_round_global(device, _global())
    _, _, tensors = read_onnx_adapter(device / PERSONALIZED_ONNX)
    assert set(tensors) == {
        "shared:encoder.layer.0.output.adapter_down.weight",
        "head.weight",
        "head.bias",
    }  # the personal branch keeps its identity defaults
    np.testing.assert_array_equal(
        tensors["shared:encoder.layer.0.output.adapter_down.weight"], np.full((4, 8), 1.5)
    )
    np.testing.assert_array_equal(tensors["head.bias"], [1.25, 0.75])
    _, _, shared = read_onnx_adapter(device / GLOBAL_ONNX)  # --global still serves the global
    np.testing.assert_array_equal(shared["head.bias"], _global()["head.bias"])


def test_the_recorded_mode_decides_which_kept_parts_are_served(tmp_path) -> None:
    device = _device(tmp_path)
    _save(device / PERSONAL_FILE, _personal())
    _save(device / HEAD_BIAS_FILE, {"head_bias": np.array([1.0, -1.0], np.float32)})
    _save(device / DITTO_FILE, {k: v + 1.0 for k, v in _global().items()})
    served = {}
    for mode in ("head-bias", "fedrep", "fedrep-head-bias"):
        _record_mode(device, mode)
        keep_round_global(device, _global())
        _, _, served[mode] = read_onnx_adapter(device / PERSONALIZED_ONNX)
    np.testing.assert_array_equal(served["head-bias"]["head.bias"], [1.25, -1.25])
    assert not any(k.startswith("personal:") for k in served["head-bias"])
    np.testing.assert_array_equal(served["fedrep"]["head.bias"], [1.0, 2.0])
    np.testing.assert_array_equal(served["fedrep-head-bias"]["head.bias"], [2.0, 1.0])
    assert "personal:encoder.layer.5.output.adapter_down.weight" in served["fedrep-head-bias"]
    np.testing.assert_array_equal(  # no Ditto copy outside the ditto mode
        served["fedrep"]["shared:encoder.layer.0.output.adapter_down.weight"],
        _global()["encoder.layer.0.output.adapter_down.weight"],
    )


def test_finetune_serves_no_personalized_file_and_infer_says_why(tmp_path, capsys) -> None:
    """It served a byte copy of the global under the personalized name, while
    evaluation.json reported a separate personalized accuracy."""
    from fedadapt.cli.app import main

    device = _device(tmp_path)
    _record_mode(device, "head-bias")
    keep_round_global(device, _global())
    assert (device / PERSONALIZED_ONNX).exists()
    _record_mode(device, "finetune")
    keep_round_global(device, _global())
    assert not (device / PERSONALIZED_ONNX).exists()  # the stale one is gone too
    assert (device / GLOBAL_ONNX).exists()
    assert main(["infer", "--device-dir", str(device), "a fine film"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedadapt: error: this device personalizes by 'finetune'")
    assert err.endswith("infer with --global") and "\n" not in err


def test_a_ditto_copy_of_another_adapter_config_is_refused(tmp_path) -> None:
    device = _device(tmp_path)
    _save(device / DITTO_FILE, _personal())
    _record_mode(device, "ditto")
    with pytest.raises(AdapterLoadError, match=r"ditto\.safetensors does not have the global"):
        keep_round_global(device, _global())


def test_an_unreadable_evaluation_record_is_named(tmp_path) -> None:
    device = _device(tmp_path)
    (device / EVALUATION_FILE).write_text("{torn")
    with pytest.raises(AdapterLoadError, match=r"evaluation\.json is not a readable evaluation"):
        keep_round_global(device, _global())
    _record_mode(device, "federated-magic")
    with pytest.raises(AdapterLoadError, match="unknown personalization 'federated-magic'"):
        keep_round_global(device, _global())
