"""Mobile readiness with ORT's own tools: fixed shapes, ORT format, NNAPI/CoreML usability."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import onnx
from onnxruntime.tools import onnx_model_utils
from onnxruntime.tools.convert_onnx_models_to_ort import (
    OptimizationStyle,
    convert_onnx_models_to_ort,
)
from onnxruntime.tools.mobile_helpers import usability_checker

from fedadapt.export.graph import quiet_logger, save_model

DIMS = ("batch", "seq")


def make_shape_fixed(path: Path, batch: int, seq: int) -> None:
    """What `python -m onnxruntime.tools.make_dynamic_shape_fixed` does, for both dims."""
    proto = onnx.load(str(path))
    for name, value in zip(DIMS, (batch, seq), strict=True):
        onnx_model_utils.make_dim_param_fixed(proto.graph, name, value)
    onnx_model_utils.fix_output_shapes(proto)
    save_model(proto, path)


def to_ort_format(path: Path) -> Path:
    """Convert to `.ort` next to the `.onnx`. Overridable initializers stay graph inputs, so
    ORT's optimizer cannot fold the adapter tensors and adapters still swap."""
    with contextlib.redirect_stdout(io.StringIO()), quiet_logger():
        convert_onnx_models_to_ort(
            path, output_dir=path.parent, optimization_styles=[OptimizationStyle.Fixed]
        )
    out = path.with_suffix(".ort")
    if not out.exists():
        raise RuntimeError(f"ORT format conversion wrote no {out.name}")
    return out


def mobile_summary(path: Path) -> dict:
    """Nodes supported, partitions and blocking ops for NNAPI and CoreML (both flavours), as
    `check_onnx_model_mobile_usability` finds them: after ORT's basic optimizations, which
    fold the shape arithmetic of a fixed-shape graph (never the overridable adapters)."""
    checkers = {
        "nnapi": usability_checker.check_nnapi_partitions,
        "coreml_neuralnetwork": lambda m, fixed: usability_checker.check_coreml_partitions(
            m, fixed, "coreml_supported_neuralnetwork_ops.md"
        ),
        "coreml_mlprogram": lambda m, fixed: usability_checker.check_coreml_partitions(
            m, fixed, "coreml_supported_mlprogram_ops.md"
        ),
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp, quiet_logger():
        optimized = Path(tmp) / "basic.onnx"
        onnx_model_utils.optimize_model(Path(path), optimized, use_external_initializers=True)
        model = usability_checker.ModelProtoWithShapeInfo(optimized).model_with_shape_info
        for ep, check in checkers.items():
            info = check(model, True)
            out[ep] = {
                "nodes": info.num_nodes,
                "supported_nodes": info.num_supported_nodes,
                "partitions": info.num_partitions,
                "blocking_ops": sorted(info.unsupported_ops),
                "dynamic_shape_nodes": info.nodes_unsupported_due_to_dynamic_input,
                "suitability": info.suitability().name,
            }
    return out
