"""Quantize the base's MatMuls with ONNX Runtime's own tools, never an adapter's.

The quantizers treat every initializer as a constant weight. Adapter tensors are
initializers too (overridable ones), so any node that reads one, directly or through a
Transpose or Reshape, goes in `nodes_to_exclude`; otherwise its adapter is folded into
int8/int4 constants and swapping silently stops working.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import helper

from fedadapt.export.graph import overridable, quiet_logger, save_model

PRECISIONS = ("none", "int8", "int4")
INT4_BLOCK = 32


def adapter_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes with an input computed from adapter tensors alone (or an adapter tensor itself)."""
    derived = set(overridable(proto))
    constant = {i.name for i in proto.graph.initializer} | {
        o for n in proto.graph.node if n.op_type == "Constant" for o in n.output
    }
    touching: list[str] = []
    for node in proto.graph.node:  # ONNX graphs are stored in topological order
        ins = [i for i in node.input if i]
        if any(i in derived for i in ins):
            touching.append(node.name)
            data = [i for i in ins if i not in derived and i not in constant]
            if not data:
                derived.update(node.output)
    return touching


def split_adapter_gemms(proto: onnx.ModelProto) -> None:
    """Rewrite each Gemm that reads an adapter tensor (the head) as Transpose → MatMul → Add.

    Dynamic quantization turns every Gemm into a renamed MatMul over a transposed *copy* of
    its weight, whatever `nodes_to_exclude` says, which drops the overridable input.
    """
    slots = set(overridable(proto))
    nodes = []
    for node in proto.graph.node:
        if node.op_type != "Gemm" or not slots.intersection(node.input):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
            or attrs.get("transA", 0)
        ):
            raise NotImplementedError(f"Gemm {node.name} has alpha/beta/transA; not expected")
        a, b, *c = node.input
        if attrs.get("transB", 0):
            nodes.append(
                helper.make_node("Transpose", [b], [b + "_T"], name=node.name + "_T", perm=[1, 0])
            )
            b = b + "_T"
        mm = node.output[0] + "_mm" if c else node.output[0]
        nodes.append(helper.make_node("MatMul", [a, b], [mm], name=node.name + "_MatMul"))
        if c:
            nodes.append(
                helper.make_node("Add", [mm, c[0]], list(node.output), name=node.name + "_Add")
            )
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def quantize_base(src: Path, dst: Path, precision: str) -> list[str]:
    """Write `dst`: `src` with base MatMuls at `precision`; returns the excluded node names."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    proto = onnx.load(str(src))
    split_adapter_gemms(proto)
    exclude = adapter_nodes(proto)
    if precision == "none":
        save_model(proto, dst)
        return exclude
    with quiet_logger():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        if precision == "int8":
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "q.onnx"
                quantize_dynamic(
                    proto,
                    out,
                    # MatMul only: the quantizer rewrites a Gemm (the head) into renamed nodes,
                    # which slips past `nodes_to_exclude` and folds the head's tensors.
                    op_types_to_quantize=["MatMul"],
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    nodes_to_exclude=exclude,
                )
                save_model(onnx.load(str(out)), dst)
        else:
            q = MatMulNBitsQuantizer(
                proto, bits=4, block_size=INT4_BLOCK, is_symmetric=False, nodes_to_exclude=exclude
            )
            q.process()
            save_model(q.model.model, dst)
    return exclude
