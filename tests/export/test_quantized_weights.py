"""The device graph stores the base's quantized weights and dequantizes them inside the graph.

The device's personalized graph held fp32 weights (91 MB): the frozen quantized base of the
design was what torch trained on, not what the device served. Now the file holds each int8
weight as one byte with its row scale (each int4 weight as half a byte with its group's scale
and offset), its logits are torch's quantized base's to 1e-4 for every adapter method, and an
int8 graph is at most 30 MB.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fedadapt.base.checkpoint import load_tokenizer
from fedadapt.base.quantize import QuantizedWeight
from fedadapt.export.quantized_weights import quantized_weights, store_quantized
from fedadapt.simconfig import FEDERATED_METHODS, SimConfig

TEXTS = ["a wonderful, moving film", "a dull, lifeless mess", "it was fine, I suppose", "meh"]


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [8, 4])
def test_a_weight_stored_as_is_or_transposed_is_replaced_and_computes_the_same(bits):
    """The exporter may keep a Linear's weight as traced or transposed for its MatMul."""
    g = torch.Generator().manual_seed(0)
    holder = torch.nn.Module()
    holder.w = QuantizedWeight(torch.randn(6, 64, generator=g), bits)
    (stored,) = quantized_weights(holder)
    w = stored.value  # what the exporter saw: torch's own dequantized copy
    other = np.ones((6, 3), np.float32)  # a float weight of no quantized layer: kept
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wt"], ["h"]),  # x @ W.T, W stored transposed
            helper.make_node("MatMul", ["h", "w"], ["y0"]),  # h @ W, W stored as traced
            helper.make_node("MatMul", ["y0", "wt"], ["y1"]),
            helper.make_node("MatMul", ["y1", "other"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [
            numpy_helper.from_array(np.ascontiguousarray(w.T), "wt"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(other, "other"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    want = _session(proto).run(None, {"x": x})[0]
    assert store_quantized(proto, [stored]) == 2
    kinds = {i.name: i.data_type for i in proto.graph.initializer}
    assert "w" not in kinds and "wt" not in kinds and kinds["other"] == TensorProto.FLOAT
    stored_as = TensorProto.INT8 if bits == 8 else TensorProto.UINT8
    assert {kinds[f"w::int{'8' if bits == 8 else '4x2'}"]} == {stored_as}
    onnx.checker.check_model(proto)
    np.testing.assert_array_equal(_session(proto).run(None, {"x": x})[0], want)  # bit for bit


def _export_and_compare(cfg: SimConfig, folder) -> int:
    """Export `cfg`'s device graph with a trained-looking global into `folder`, assert its
    logits are torch's to 1e-4, and return the file's size."""
    from fedadapt.clients.runtime import EdgeRuntime
    from fedadapt.export.device_graph import MODEL_FILE, device_model, export_device_graph
    from fedadapt.model_setup import GLOBAL, build_model
    from fedadapt.train import predict

    fresh = build_model(cfg).adapter_state(GLOBAL)
    g = torch.Generator().manual_seed(7)  # every adapter path carries weight
    trained = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in fresh.items()}
    export_device_graph(cfg, folder, trained)
    tokenizer = load_tokenizer(cfg.max_length)
    want = predict(device_model(cfg, trained), tokenizer, TEXTS, max_length=cfg.max_length)
    got = EdgeRuntime(folder, personalized=False).logits(TEXTS)
    assert np.abs(got - np.asarray(want)).max() < 1e-4
    return (folder / MODEL_FILE).stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("method", FEDERATED_METHODS)
def test_the_device_graph_is_int8_on_disk_and_gives_torchs_logits(method, tmp_path):
    cfg = SimConfig(method=method, num_clients=2, clients_per_round=2, seed=5)
    size = _export_and_compare(cfg, tmp_path)
    assert size <= 30_000_000, f"{method}: {size / 1e6:.1f} MB"


@pytest.mark.slow
def test_an_int4_device_graph_is_int4_on_disk_and_gives_torchs_logits(tmp_path):
    cfg = SimConfig(quantization="int4", num_clients=2, clients_per_round=2, seed=5)
    size = _export_and_compare(cfg, tmp_path)
    assert size <= 16_000_000, f"{size / 1e6:.1f} MB"
