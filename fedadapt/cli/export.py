"""`fedadapt export`: an adapter over the base to ONNX, with its device folder. Errors are
one line like every command's (`--merge-lora` on a non-LoRA adapter is refused before the
slow imports)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedadapt.cli.args import folder, library_errors, positive_int, read_json
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import QUANTIZATIONS


def _check_mergeable(adapters: list[str]) -> None:
    """`--merge-lora` folds one LoRA into the base: refuse anything else before the (slow)
    export starts (its config file is read as JSON, without importing torch)."""
    if len(adapters) != 1:
        raise FedAdaptError("--merge-lora folds one global LoRA; it cannot serve several tasks")
    config = read_json(Path(adapters[0]) / "adapter_config.json", "the adapter config")
    method = config.get("method") if isinstance(config, dict) else None
    if method != "lora":
        raise FedAdaptError(f"--merge-lora needs a LoRA adapter; {adapters[0]} is {method!r}")


def _export(args: argparse.Namespace) -> None:
    """Export an adapter over the base to ONNX: adapter tensors stay swappable graph inputs,
    the base MatMuls are quantized by ONNX Runtime, and a device folder is written."""
    if args.merge_lora:  # before the (slow) imports: refused in a second, not a minute
        _check_mergeable(args.adapter)
    quantize = args.quantize or ("none" if args.precision == "fp16" else "int8")
    if args.precision == "fp16" and quantize != "none":
        raise FedAdaptError(
            f"--precision fp16 keeps the base in fp16; --quantize {quantize} quantizes an fp32 "
            "graph (drop one of them)"
        )
    from fedadapt.export.exporter import ExportOptions, export

    fixed = None
    if args.fixed_shape:
        try:
            b, s = (int(x) for x in args.fixed_shape.split(","))
        except ValueError as e:
            raise FedAdaptError(
                f"--fixed-shape wants B,S (e.g. 1,128), got {args.fixed_shape!r}"
            ) from e
        fixed = (b, s)
    opts = ExportOptions(
        quantize=quantize,
        precision=args.precision,
        merge_lora=args.merge_lora,
        fixed_shape=fixed,
        ort_format=args.ort,
        max_length=args.max_length,
        measure=not args.no_measure,
        decompose=tuple(args.decompose),
    )
    with library_errors(f"cannot export {', '.join(args.adapter)} to {args.out}"):
        report = export(args.adapter, args.out, opts)
    brief = {k: report[k] for k in ("sizes", "parity_max_abs", "latency", "swap_ms") if k in report}
    print(json.dumps(brief, indent=1))
    print(f"report: {Path(args.out) / 'export_report.json'}")


def add_export_command(sub: argparse._SubParsersAction) -> None:
    """Register `export` on `sub`."""
    e = sub.add_parser("export", help="export an adapter to ONNX", description=_export.__doc__)
    e.add_argument(
        "--adapter",
        required=True,
        action="append",
        help="adapter folder (e.g. out/quick/adapter); repeat for a task-indexed graph of "
        "several same-shaped adapters (`infer --task N` picks one)",
    )
    e.add_argument("--out", required=True, type=folder, help="device folder to write")
    e.add_argument(
        "--quantize", choices=QUANTIZATIONS, help="base MatMuls (default int8; none with fp16)"
    )
    e.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="graph precision: fp16 (for edge GPUs) keeps the adapter inputs and their "
        ".onnx_adapter files fp16, the base unquantized",
    )
    e.add_argument(
        "--merge-lora", action="store_true", help="fold a fixed, global LoRA into the base"
    )
    e.add_argument("--fixed-shape", metavar="B,S", help="fix batch and sequence (mobile EPs)")
    e.add_argument("--ort", action="store_true", help="also write model.ort for ORT Mobile")
    e.add_argument("--max-length", type=positive_int, default=128, help="token limit at inference")
    e.add_argument(
        "--decompose",
        nargs="+",
        default=[],
        choices=["layernorm", "gelu-tanh"],
        help="rewrite ops NNAPI lacks: layernorm (exact), gelu-tanh (approximate GELU)",
    )
    e.add_argument("--no-measure", action="store_true", help="skip latency/parity/mobile checks")
    e.set_defaults(func=_export)
