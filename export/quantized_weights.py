"""The device graph's frozen base as int8 or int4 weights, dequantized inside the graph.

The training base keeps each Linear and Embedding weight quantized (`fedadapt.base.quantize`):
int8 rows with one fp32 scale a row, or int4 groups of 32 packed two to a byte with an fp16
scale and offset a group. The exporter only knows float weights, so the graph is traced from
the dequantized copy, which stored every weight as fp32 (91 MB on disk for a 22 MB model).
Here each of those fp32 initializers is swapped back for the quantized values torch holds,
behind plain float arithmetic that rebuilds exactly what torch's dequantization computes:
- int8: `float(q) * scale`, a `Cast` and a `Mul`;
- int4: the two nibbles of each byte (`hi = floor(p / 16)`, `lo = p - 16 hi`, exact in fp32),
  then `q * scale + offset` per group, a `Mul` then an `Add` as torch does them.
So the served logits stay those of the trained base, and the file holds 1 byte a weight for
int8 and half a byte for int4. ONNX Runtime folds the arithmetic into fp32 weights at load:
the same latency as an fp32 graph.

Why not `DequantizeLinear`, which computes the int8 product too: ONNX Runtime's optimizer
fuses a `DequantizeLinear` feeding a `MatMul` into an integer MatMul that quantizes the
activations as well (the logits then moved by 1e-2, measured). Why not ONNX Runtime's own
quantizer (`export/quantize.py`, what `fedadapt export --quantize int8` uses): it quantizes
activations too and picks its own weight scales.

A weight is recognised by value, not by name: the exporter renames initializers and may store
a Linear's weight transposed for its MatMul, so each candidate's exact fp32 bytes (as traced,
and transposed) are looked up; an initializer that matches none stays as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fedadapt.base.quantize import INT4_GROUP, QuantizedWeight


@dataclass(frozen=True)
class Stored:
    """One quantized weight as torch holds it, and its fp32 value as torch dequantizes it."""

    bits: int
    q: np.ndarray  # int8 [rows, cols], or uint8 [rows, cols / 2] packing two int4 values
    scale: np.ndarray  # fp32 [rows] (int8), or fp16 [rows, cols / group] (int4)
    offset: np.ndarray | None  # int4 only: fp16 [rows, cols / group]
    value: np.ndarray  # fp32 [rows, cols]: what the exporter saw


def quantized_weights(model: nn.Module) -> list[Stored]:
    """Every quantized weight of `model`, read before it is dequantized for the exporter."""
    out = []
    for module in model.modules():
        if isinstance(module, QuantizedWeight):
            offset = None if module.offset is None else module.offset.numpy().copy()
            out.append(
                Stored(
                    module.bits,
                    module.q.numpy().copy(),
                    module.scale.numpy().copy(),
                    offset,
                    module.dequantize().numpy(),
                )
            )
    return out


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _candidates(weights: list[Stored]) -> dict[tuple, tuple[Stored, bool]]:
    """(shape, digest of the fp32 values) -> (the weight, stored transposed in the graph)."""
    found: dict[tuple, tuple[Stored, bool]] = {}
    for w in weights:
        found[(w.value.shape, _digest(w.value))] = (w, False)
        found[(w.value.T.shape, _digest(w.value.T))] = (w, True)
    return found


class _Builder:
    """The initializers and nodes that rebuild one weight `name`; `name` is the last output."""

    def __init__(self, name: str) -> None:
        self.name, self.inits, self.nodes, self.n = name, [], [], 0

    def const(self, value: np.ndarray, tag: str) -> str:
        key = f"{self.name}::{tag}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), key))
        return key

    def op(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.n += 1
        out = out or f"{self.name}::{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}:node", **attrs))
        return out


def _rebuild(b: _Builder, w: Stored, transposed: bool) -> None:
    """Nodes computing `w.value` (or its transpose) from `w`'s quantized values."""
    rows, cols = w.value.shape
    last = None if transposed else b.name
    if w.bits == 8:
        q = b.op("Cast", [b.const(w.q, "int8")], to=TensorProto.FLOAT)
        out = b.op("Mul", [q, b.const(w.scale.reshape(-1, 1), "scale")], last)
    else:
        p = b.op("Cast", [b.const(w.q, "int4x2")], to=TensorProto.FLOAT)
        sixteen = b.const(np.array(16.0, np.float32), "16")
        hi = b.op("Floor", [b.op("Div", [p, sixteen])])
        lo = b.op("Sub", [p, b.op("Mul", [hi, sixteen])])
        column = b.const(np.array([rows, cols // 2, 1], np.int64), "column")
        pair = b.op(
            "Concat", [b.op("Reshape", [lo, column]), b.op("Reshape", [hi, column])], axis=2
        )
        groups = b.const(np.array([rows, cols // INT4_GROUP, INT4_GROUP], np.int64), "groups")
        g = b.op("Reshape", [pair, groups])
        # fp16 on disk as torch holds them, made fp32 as torch's `.float()` makes them
        scale = b.op("Cast", [b.const(w.scale[..., None], "scale")], to=TensorProto.FLOAT)
        offset = b.op("Cast", [b.const(w.offset[..., None], "offset")], to=TensorProto.FLOAT)
        shifted = b.op("Add", [b.op("Mul", [g, scale]), offset])
        out = b.op("Reshape", [shifted, b.const(np.array([rows, cols], np.int64), "shape")], last)
    if transposed:
        b.op("Transpose", [out], b.name, perm=[1, 0])


def store_quantized(proto: onnx.ModelProto, weights: list[Stored]) -> int:
    """Replace each fp32 initializer of `proto` that is one of `weights` dequantized (as is, or
    transposed) by its quantized values and the nodes that rebuild it; returns how many were.

    Overridable initializers (graph inputs: the adapters and the head) are never touched.
    """
    found = _candidates(weights)
    inputs = {i.name for i in proto.graph.input}
    kept, added, nodes = [], [], []
    for init in proto.graph.initializer:
        hit = None
        if init.name not in inputs and init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
            values = numpy_helper.to_array(init)
            hit = found.get((values.shape, _digest(values)))
        if hit is None:
            kept.append(init)
            continue
        b = _Builder(init.name)
        _rebuild(b, *hit)
        added += b.inits
        nodes += b.nodes
    replaced = len(proto.graph.initializer) - len(kept)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept + added)
    rest = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + rest)  # before every use: the graph stays sorted
    return replaced
