"""The device graph stores the base's int8 weights and dequantizes them inside the graph.

The device's personalized graph held fp32 weights (91 MB): the frozen quantized base of the
design was what torch trained on, not what the device served. Now the file holds each int8
weight as one byte with its row scale, its logits are torch's int8 base's to 1e-4 for every
adapter method, and it is at most 30 MB.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fedadapt.base.checkpoint import load_tokenizer
from fedadapt.base.quantize import quantize_int8
from fedadapt.export.int8_weights import store_int8
from fedadapt.simconfig import FEDERATED_METHODS, SimConfig

TEXTS = ["a wonderful, moving film", "a dull, lifeless mess", "it was fine, I suppose", "meh"]


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_weight_stored_as_is_or_transposed_is_replaced_and_computes_the_same():
    """The exporter may keep a Linear's weight as traced or transposed for its MatMul."""
    g = torch.Generator().manual_seed(0)
    q, scale = quantize_int8(torch.randn(6, 4, generator=g))
    w = (q.float() * scale[:, None]).numpy()  # what the exporter saw: torch's dequantized copy
    other = np.ones((4, 3), np.float32)  # a float weight of no quantized layer: kept
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wt"], ["h"]),  # x @ W.T, W stored transposed
            helper.make_node("MatMul", ["h", "w"], ["y0"]),  # h @ W, W stored as traced
            helper.make_node("MatMul", ["y0", "other"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [
            numpy_helper.from_array(np.ascontiguousarray(w.T), "wt"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(other, "other"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    want = _session(proto).run(None, {"x": x})[0]
    assert store_int8(proto, [(q.numpy(), scale.numpy())]) == 2
    kinds = {i.name: i.data_type for i in proto.graph.initializer}
    assert kinds["w::int8"] == kinds["wt::int8"] == TensorProto.INT8 and "w" not in kinds
    assert kinds["other"] == TensorProto.FLOAT
    onnx.checker.check_model(proto)
    np.testing.assert_array_equal(_session(proto).run(None, {"x": x})[0], want)  # bit for bit


@pytest.mark.slow
@pytest.mark.parametrize("method", FEDERATED_METHODS)
def test_the_device_graph_is_int8_on_disk_and_gives_torchs_logits(method, tmp_path):
    from fedadapt.clients.runtime import EdgeRuntime
    from fedadapt.export.device_graph import MODEL_FILE, device_model, export_device_graph
    from fedadapt.model_setup import GLOBAL, build_model
    from fedadapt.train import predict

    cfg = SimConfig(method=method, num_clients=2, clients_per_round=2, seed=5)
    fresh = build_model(cfg).adapter_state(GLOBAL)
    g = torch.Generator().manual_seed(7)  # a trained-looking global: every adapter path used
    trained = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in fresh.items()}
    export_device_graph(cfg, tmp_path, trained)
    size = (tmp_path / MODEL_FILE).stat().st_size
    assert size <= 30_000_000, f"{method}: {size / 1e6:.1f} MB"
    tokenizer = load_tokenizer(cfg.max_length)
    want = predict(device_model(cfg, trained), tokenizer, TEXTS, max_length=cfg.max_length)
    got = EdgeRuntime(tmp_path, personalized=False).logits(TEXTS)
    assert np.abs(got - np.asarray(want)).max() < 1e-4
