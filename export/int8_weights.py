"""The device graph's frozen base as int8 weights, dequantized inside the graph.

The training base keeps each Linear and Embedding weight as int8 rows with one fp32 scale a
row (`fedadapt.base.quantize`); the exporter only knows float weights, so the graph is traced
from the dequantized copy, which stored every weight as fp32 (91 MB on disk for a 22 MB
model). Here each of those fp32 initializers is swapped back for its int8 rows and scales
behind `Cast` and `Mul` nodes: `float(q) * scale` in fp32, the very product torch computes
when it dequantizes, so the served logits stay bit-for-bit those of the trained base, and the
file holds 1 byte a weight.

Why not `DequantizeLinear`, which computes the same product: ONNX Runtime's graph optimizer
fuses a `DequantizeLinear` feeding a `MatMul` into an integer MatMul that quantizes the
activations as well (the logits then moved by 1e-2, measured); `Cast` and `Mul` are plain
float arithmetic that any runtime folds into the fp32 weight at load or computes as written.

Why not ONNX Runtime's own quantizer (`export/quantize.py`, what `fedadapt export --quantize
int8` uses): it quantizes *activations* too (dynamic MatMulInteger) and picks its own weight
scales, which moves the logits by about 1e-2 from what the device measured when it trained.

A weight is recognised by value, not by name: the exporter renames initializers and may store
a Linear's weight transposed for its MatMul, so each candidate's exact bytes (as traced, and
transposed) are looked up; an initializer that matches none stays as it is.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from fedadapt.base.quantize import QuantEmbedding, QuantLinear

# name suffixes of what replaces a weight initializer `w`: `w` becomes the Mul's output
Q_SUFFIX, SCALE_SUFFIX, CAST_SUFFIX = "::int8", "::scale", "::float"


def int8_weights(model: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """`(q, scale)` of every int8 Linear and Embedding in `model`, before it is dequantized
    for the exporter (int4 weights are not among them: they stay fp32 in the graph)."""
    out = []
    for module in model.modules():
        if isinstance(module, QuantLinear | QuantEmbedding) and module.qweight.bits == 8:
            q, scale = module.qweight.q, module.qweight.scale
            out.append((q.numpy().copy(), scale.numpy().copy()))
    return out


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _candidates(weights: list[tuple[np.ndarray, np.ndarray]]) -> dict[tuple, tuple]:
    """(shape, digest of the fp32 values) -> (int8 values as stored, scales, axis)."""
    found: dict[tuple, tuple] = {}
    for q, scale in weights:
        w = (torch.from_numpy(q).float() * torch.from_numpy(scale)[:, None]).numpy()
        found[(w.shape, _digest(w))] = (q, scale, 0)
        found[(w.T.shape, _digest(w.T))] = (np.ascontiguousarray(q.T), scale, 1)
    return found


def store_int8(proto: onnx.ModelProto, weights: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Replace each fp32 initializer of `proto` that is one of `weights` dequantized (as is, or
    transposed) by its int8 values, scales, a `Cast` and a `Mul`; returns how many were.

    Overridable initializers (graph inputs: the adapters and the head) are never touched.
    """
    found = _candidates(weights)
    inputs = {i.name for i in proto.graph.input}
    kept, added, nodes = [], [], []
    replaced = 0
    for init in proto.graph.initializer:
        if init.name in inputs or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        hit = found.get((values.shape, _digest(values)))
        if hit is None:
            kept.append(init)
            continue
        q, scale, axis = hit
        name = init.name
        # the scales broadcast along the axis that holds the output channel
        shape = (-1, 1) if axis == 0 else (1, -1)
        added += [
            numpy_helper.from_array(q, name + Q_SUFFIX),
            numpy_helper.from_array(scale.astype(np.float32).reshape(shape), name + SCALE_SUFFIX),
        ]
        nodes += [
            helper.make_node(
                "Cast",
                [name + Q_SUFFIX],
                [name + CAST_SUFFIX],
                name=f"cast:{name}",
                to=onnx.TensorProto.FLOAT,
            ),
            helper.make_node(
                "Mul", [name + CAST_SUFFIX, name + SCALE_SUFFIX], [name], name=f"scale:{name}"
            ),
        ]
        replaced += 1
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept + added)
    rest = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + rest)  # before every use: the graph stays sorted
    return replaced
