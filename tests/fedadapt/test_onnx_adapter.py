"""`.onnx_adapter` files carry what ORT does not check: the base, and every tensor's
presence and shape."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fedadapt.errors import AdapterLoadError, FedAdaptError
from fedadapt.onnx_adapter import (
    check_fits,
    execution_providers,
    open_session,
    read_onnx_adapter,
    write_onnx_adapter,
)

SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SLOTS = {"a.weight": (4, 3), "head.bias": (2,)}


def _tensors():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SLOTS.items()}


def test_round_trip_keeps_tensors_and_versions(tmp_path):
    t = _tensors()
    path = write_onnx_adapter(tmp_path / "x.onnx_adapter", t, 7, SHA)
    version, model_version, back = read_onnx_adapter(path)
    assert version == 7 and model_version == int(SHA[:7], 16)
    assert back.keys() == t.keys() and all(np.array_equal(back[k], t[k]) for k in t)
    assert check_fits(path, SHA, SLOTS)[0] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx_adapter"]  # no temp files left


def test_wrong_base_is_refused(tmp_path):
    path = write_onnx_adapter(tmp_path / "x.onnx_adapter", _tensors(), 1, "f" * 64)
    with pytest.raises(AdapterLoadError, match="another base model"):
        check_fits(path, SHA, SLOTS)


def test_unknown_and_misshaped_tensors_are_refused(tmp_path):
    t = _tensors()
    extra = write_onnx_adapter(tmp_path / "e.onnx_adapter", {**t, "lora_A": t["a.weight"]}, 1, SHA)
    with pytest.raises(AdapterLoadError, match="cannot take"):
        check_fits(extra, SHA, SLOTS)
    bad = write_onnx_adapter(
        tmp_path / "b.onnx_adapter", {**t, "a.weight": np.ones((3, 4), np.float32)}, 1, SHA
    )
    with pytest.raises(AdapterLoadError, match="mis-shaped"):
        check_fits(bad, SHA, SLOTS)


def test_damaged_file_is_a_clear_error(tmp_path):
    path = write_onnx_adapter(tmp_path / "x.onnx_adapter", _tensors(), 1, SHA)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(AdapterLoadError, match="not a readable"):
        read_onnx_adapter(path)


def test_a_file_missing_a_tensor_is_refused_naming_it(tmp_path):
    t = _tensors()
    del t["head.bias"]
    path = write_onnx_adapter(tmp_path / "m.onnx_adapter", t, 1, SHA)
    with pytest.raises(AdapterLoadError, match=r"lacks 1 of the graph's 2 .*\['head.bias'\]"):
        check_fits(path, SHA, SLOTS)


# A device graph: Stack(global, personal) (export/device_graph.py), its head unprefixed.
STACKED = {"shared:a": (4, 3), "shared:b": (3,), "personal:a": (4, 3), "head.bias": (2,)}


def _stacked(*leave_out: str) -> dict[str, np.ndarray]:
    return {k: np.zeros(s, np.float32) for k, s in STACKED.items() if k not in leave_out}


def test_an_optional_adapter_may_be_left_out_whole_never_in_part(tmp_path):
    """The global file of a device graph leaves the personal branch at its identity
    defaults; the personalized file fills it. Anything else must be complete."""
    optional = ["personal"]
    for name, tensors in (("global", _stacked("personal:a")), ("personalized", _stacked())):
        path = write_onnx_adapter(tmp_path / f"{name}.onnx_adapter", tensors, 3, SHA)
        assert set(check_fits(path, SHA, STACKED, optional)[1]) == set(tensors)
    for gone in ("shared:b", "head.bias"):
        path = write_onnx_adapter(tmp_path / "p.onnx_adapter", _stacked(gone), 3, SHA)
        with pytest.raises(AdapterLoadError, match=rf"lacks 1 .*\['{gone}'\]"):
            check_fits(path, SHA, STACKED, optional)
    global_file = write_onnx_adapter(tmp_path / "g.onnx_adapter", _stacked("personal:a"), 3, SHA)
    with pytest.raises(AdapterLoadError, match=r"\['personal:a'\]"):
        check_fits(global_file, SHA, STACKED)  # the personal branch is optional only if named


def test_many_missing_tensors_are_one_line_naming_a_few(tmp_path):
    slots = {f"layer.{i}.lora_B": (2, 2) for i in range(12)}
    path = write_onnx_adapter(
        tmp_path / "x.onnx_adapter", {"layer.0.lora_B": np.ones((2, 2))}, 1, SHA
    )
    with pytest.raises(AdapterLoadError) as e:
        check_fits(path, SHA, slots)
    message = str(e.value)
    assert "\n" not in message and "lacks 11 of the graph's 12" in message
    assert message.count("lora_B") == 5 and "…" in message


def tiny_graph(path):
    """A two-node graph with the exported graphs' inputs and output, for session tests."""
    import onnx
    from onnx import TensorProto, helper

    ids, mask = (helper.make_tensor_value_info(n, TensorProto.INT64, [1, None]) for n in IDS)
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["f"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [ids, mask], [logits])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


IDS = ("input_ids", "attention_mask")
# A provider this CPU build has and that runs none of these nodes: a stand-in for CUDA.
NO_KERNELS = ("AzureExecutionProvider", "CPUExecutionProvider")


def test_sessions_get_the_providers_asked_and_the_cpu_by_default(tmp_path):
    path = tiny_graph(tmp_path / "g.onnx")
    assert open_session(path).get_providers() == ["CPUExecutionProvider"]
    assert open_session(path, providers=NO_KERNELS).get_providers() == list(NO_KERNELS)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU build of ORT"
)
def test_cuda_on_a_cpu_build_is_refused_naming_the_package_to_install():
    with pytest.raises(FedAdaptError) as e:
        execution_providers("cuda")
    msg = str(e.value)
    assert f"onnxruntime-gpu, version {ort.__version__}" in msg and "CUDAExecutionProvider" in msg
    assert "\n" not in msg
    assert execution_providers("cpu") == ("CPUExecutionProvider",)


def test_a_provider_that_fails_to_start_is_an_error_not_a_cpu_session(tmp_path, monkeypatch):
    # ORT lists CUDA in a GPU build even without the CUDA libraries, then logs the failure
    # and runs on the CPU: a GPU measurement would silently be a CPU one.
    class FellBack(ort.InferenceSession):
        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    with pytest.raises(FedAdaptError, match="could not start AzureExecutionProvider"):
        open_session(tiny_graph(tmp_path / "g.onnx"), providers=NO_KERNELS)
