"""Export keeps adapter tensors as swappable inputs, through quantization and mobile steps.

One fp32 export per adapter kind is shared by the module; quantized, fixed-shape and ORT
variants are derived from it with the same functions `fedadapt export` uses.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fedadapt.adapters import (
    AdapterModel,
    BitFitConfig,
    BottleneckConfig,
    Fuse,
    IA3Config,
    LoraConfig,
    PrefixConfig,
    PromptConfig,
    Stack,
)
from fedadapt.base import load_base
from fedadapt.base.checkpoint import tokenize
from fedadapt.export.graph import export_graph, overridable
from fedadapt.export.merge import merge_lora
from fedadapt.export.mobile import make_shape_fixed, mobile_summary, to_ort_format
from fedadapt.export.quantize import adapter_nodes, quantize_base
from fedadapt.onnx_adapter import write_onnx_adapter

pytestmark = pytest.mark.slow


def _model(cfg, seed: int = 0) -> AdapterModel:
    torch.manual_seed(seed)
    m = AdapterModel(load_base("none"))
    m.add_adapter("a", cfg, num_labels=3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in m.adapter_parameters("a").items():
            if "adapter_up.bias" not in k:  # keep these zero: equal initializers across layers
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    m.set_active("a")
    return m.eval()


def _export(m: AdapterModel, path) -> None:
    export_graph(m, path)


def _sess(path) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def _run(sess, batch, feed=None, options=None) -> np.ndarray:
    ids, mask = batch
    f = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), **(feed or {})}
    return sess.run(["logits"], f, options)[0]


@pytest.fixture(scope="module")
def bottleneck(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bn")
    m = _model(BottleneckConfig(reduction_factor=16))
    _export(m, folder / "fp32.onnx")
    return m, folder


def test_every_adapter_tensor_is_an_overridable_input_named_as_in_adapter_files(bottleneck):
    m, folder = bottleneck
    proto = onnx.load(str(folder / "fp32.onnx"))
    slots = overridable(proto)
    state = m.adapter_state("a")
    # The exporters rename nn.Linear weights; adapter tensors must keep their file names.
    assert slots == {k: tuple(v.shape) for k, v in state.items()}
    assert [i.name for i in proto.graph.input][:2] == ["input_ids", "attention_mask"]


def test_fp32_matches_torch_at_other_batch_and_length(bottleneck, tok):
    m, folder = bottleneck
    texts = ["short", "a much longer sentence than the one used to trace the export", "x y z"]
    batch = tokenize(tok, texts)
    with torch.no_grad():
        want = m(*batch).numpy()
    got = _run(_sess(folder / "fp32.onnx"), batch)
    assert got.shape == (3, 3)
    assert np.abs(got - want).max() < 1e-4


def test_overriding_one_zero_bias_changes_only_that_layer(bottleneck, batch):
    """The dynamo optimizer merges equal initializers; ours must stay separate."""
    m, folder = bottleneck
    key = "encoder.layer.0.output.adapter_up.bias"
    other = "encoder.layer.1.output.adapter_up.bias"
    assert not m.adapter_state("a")[key].any() and not m.adapter_state("a")[other].any()
    # Not a constant: LayerNorm right after would cancel a uniform shift.
    bump = np.linspace(-0.5, 0.5, m.adapter_state("a")[key].numel(), dtype=np.float32)
    got = _run(_sess(folder / "fp32.onnx"), batch, {key: bump})
    params = m.adapter_parameters("a")
    with torch.no_grad():
        params[key].copy_(torch.from_numpy(bump))
        want = m(*batch).numpy()
        params[key].zero_()
        unchanged = m(*batch).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - unchanged).max() > 1e-3


def test_swap_on_a_live_session_with_an_onnx_adapter(bottleneck, batch, tmp_path):
    m, folder = bottleneck
    other = _model(BottleneckConfig(reduction_factor=16), seed=7)
    with torch.no_grad():
        want = other(*batch).numpy()
        own = m(*batch).numpy()
    sha = m.base.sha256
    tensors = {k: v.numpy() for k, v in other.adapter_state("a").items()}
    path = write_onnx_adapter(tmp_path / "b.onnx_adapter", tensors, 2, sha)
    sess = _sess(folder / "fp32.onnx")
    assert np.abs(_run(sess, batch) - own).max() < 1e-4
    adapter = ort.LoraAdapter()
    adapter.Load(str(path))
    opts = ort.RunOptions()
    opts.add_active_adapter(adapter)
    assert np.abs(_run(sess, batch, options=opts) - want).max() < 1e-4
    assert np.abs(_run(sess, batch) - own).max() < 1e-4  # defaults come back without it


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_base_keeps_adapters_swappable(bottleneck, batch, tmp_path, precision):
    m, folder = bottleneck
    root = logging.getLogger()
    level = root.level
    excluded = quantize_base(folder / "fp32.onnx", tmp_path / "q.onnx", precision)
    assert root.level == level  # importing onnxruntime.quantization sets the root to INFO
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert overridable(proto) == overridable(onnx.load(str(folder / "fp32.onnx")))
    ops = {n.op_type for n in proto.graph.node}
    assert ("MatMulInteger" if precision == "int8" else "MatMulNBits") in ops
    assert set(excluded) >= set(adapter_nodes(proto)) - {""}
    sess = _sess(tmp_path / "q.onnx")
    with torch.no_grad():
        ref = m(*batch).numpy()
    got = _run(sess, batch)
    assert np.abs(got - ref).max() < 0.25  # quantization error of the base, on the logits
    # Zeroing the adapter through its inputs moves the output as in torch: not folded.
    state = m.adapter_state("a")
    zeros = {k: np.zeros(tuple(v.shape), np.float32) for k, v in state.items() if "head" not in k}
    moved = _run(sess, batch, zeros)
    with torch.no_grad():
        params = m.adapter_parameters("a")
        saved = {k: params[k].clone() for k in zeros}
        for k in zeros:
            params[k].zero_()
        ref0 = m(*batch).numpy()
        for k, v in saved.items():
            params[k].copy_(v)
    assert np.abs(moved - got).max() > 0.05
    assert np.abs(moved - ref0).max() < 0.25


def test_model_files_are_rewritten_not_appended(bottleneck, tmp_path):
    """`onnx.save` appends to an existing external-data file; ours writes one file anew."""
    _m, folder = bottleneck
    sizes = []
    for _ in range(2):
        quantize_base(folder / "fp32.onnx", tmp_path / "m.onnx", "none")
        sizes.append((tmp_path / "m.onnx").stat().st_size)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]
    assert sizes[0] == sizes[1]
    assert overridable(onnx.load(str(tmp_path / "m.onnx")))


def test_fixed_shape_and_ort_format_keep_adapters(bottleneck, batch, tmp_path):
    m, folder = bottleneck
    shutil.copy(folder / "fp32.onnx", tmp_path / "model.onnx")
    ids, _mask = batch
    make_shape_fixed(tmp_path / "model.onnx", *ids.shape)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(ids.shape)
    ort_path = to_ort_format(tmp_path / "model.onnx")
    sess = _sess(ort_path)
    names = {i.name for i in sess.get_overridable_initializers()}
    assert names == set(overridable(proto))
    with torch.no_grad():
        want = m(*batch).numpy()
    assert np.abs(_run(sess, batch) - want).max() < 1e-4
    key = "head.bias"
    assert np.abs(_run(sess, batch, {key: np.full(3, 5.0, np.float32)}) - want).max() > 1


def test_mobile_summary_names_partitions_and_blocking_ops(bottleneck):
    _, folder = bottleneck
    summary = mobile_summary(folder / "fp32.onnx")
    for ep in ("nnapi", "coreml_neuralnetwork", "coreml_mlprogram"):
        s = summary[ep]
        assert 0 <= s["supported_nodes"] <= s["nodes"] and s["nodes"] > 100
        assert isinstance(s["blocking_ops"], list)
    assert any("Gelu" in op for op in summary["nnapi"]["blocking_ops"])


@pytest.mark.parametrize(
    "cfg", [LoraConfig(r=4), IA3Config(), BitFitConfig()], ids=["lora", "ia3", "bitfit"]
)
def test_lora_ia3_and_bitfit_tensors_are_inputs_too(cfg, batch, tmp_path):
    m = _model(cfg)
    _export(m, tmp_path / "m.onnx")
    slots = overridable(onnx.load(str(tmp_path / "m.onnx")))
    assert set(slots) == set(m.adapter_state("a"))
    with torch.no_grad():
        want = m(*batch).numpy()
    assert np.abs(_run(_sess(tmp_path / "m.onnx"), batch) - want).max() < 1e-4


def test_merged_lora_has_no_branches_and_same_output(batch, tmp_path):
    m = _model(LoraConfig(r=4, target_modules=["query", "value", "output.dense"]))
    with torch.no_grad():
        want = m(*batch).numpy()
    assert merge_lora(m, "a") == 24  # query, value and both output.dense, 6 layers
    export_graph(m, tmp_path / "m.onnx")
    assert set(overridable(onnx.load(str(tmp_path / "m.onnx")))) == {"head.weight", "head.bias"}
    assert np.abs(_run(_sess(tmp_path / "m.onnx"), batch) - want).max() < 1e-4


def test_task_index_graph_runs_each_stacked_adapter(batch, tmp_path):
    m = _model(BottleneckConfig(reduction_factor=16))
    other = _model(BottleneckConfig(reduction_factor=16), seed=4)
    states = [m.adapter_state("a"), other.adapter_state("a")]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    export_graph(m, tmp_path / "m.onnx", stacked=stacked)
    sess = _sess(tmp_path / "m.onnx")
    for task, model in enumerate((m, other)):
        with torch.no_grad():
            want = model(*batch).numpy()
        got = _run(sess, batch, {"task_index": np.array(task, np.int64)})
        assert np.abs(got - want).max() < 1e-4


def test_fusion_graph_matches_torch_and_its_tensors_are_inputs(batch, tmp_path):
    torch.manual_seed(0)
    m = AdapterModel(load_base("none"))
    g = torch.Generator().manual_seed(0)
    for n in ("a", "b"):
        m.add_adapter(n, BottleneckConfig(reduction_factor=16))
        with torch.no_grad():
            for p in m.adapter_parameters(n).values():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    key = m.add_fusion(Fuse("a", "b"), num_labels=2)
    with torch.no_grad():
        for p in m.fusion_parameters(key).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    m.set_active(Fuse("a", "b"))
    m.eval()
    export_graph(m, tmp_path / "f.onnx")
    slots = overridable(onnx.load(str(tmp_path / "f.onnx")))
    assert "a:encoder.layer.0.output.adapter_down.weight" in slots
    assert "fusion:encoder.layer.0.output.fusion.query.weight" in slots
    assert {"head.weight", "head.bias"} <= set(slots)
    with torch.no_grad():
        want = m(*batch).numpy()
    assert np.abs(_run(_sess(tmp_path / "f.onnx"), batch) - want).max() < 1e-4


def test_prefix_and_prompt_tensors_are_inputs_swappable_on_a_live_session(batch, tmp_path):
    torch.manual_seed(0)
    m = AdapterModel(load_base("none"))
    m.add_adapter("pre", PrefixConfig(num_virtual_tokens=3, reparam_hidden=8))
    m.add_adapter("pro", PromptConfig(num_virtual_tokens=4), num_labels=3)
    m.set_active(Stack("pre", "pro"))
    m.eval()
    export_graph(m, tmp_path / "m.onnx")  # folds the prefix MLP: the graph takes keys/values
    slots = overridable(onnx.load(str(tmp_path / "m.onnx")))
    assert slots["pre:encoder.layer.0.attention.self.prefix_keys"] == (3, 384)
    assert slots["pro:embeddings.prompt_embeddings"] == (4, 384)
    assert not any("reparam" in k for k in slots)
    sess = _sess(tmp_path / "m.onnx")
    with torch.no_grad():
        want = m(*batch).numpy()
    assert np.abs(_run(sess, batch) - want).max() < 1e-4
    g = torch.Generator().manual_seed(1)
    feed = {}
    for n in ("pre", "pro"):
        state = m.adapter_state(n)
        new = {k: v + torch.randn(v.shape, generator=g) * 0.2 for k, v in state.items()}
        new.update({k: v for k, v in state.items() if k.startswith("head.")})  # head stays
        m.load_adapter_state(n, new)
        feed.update({f"{n}:{k}": v.numpy() for k, v in new.items() if not k.startswith("head.")})
    with torch.no_grad():
        swapped = m(*batch).numpy()
    assert np.abs(swapped - want).max() > 1e-2  # the swap matters
    assert np.abs(_run(sess, batch, feed) - swapped).max() < 1e-4
