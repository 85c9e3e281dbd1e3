"""`fedadapt export`: adapter folder → device folder (graph, adapter file, tokenizer, report).

The graph is exported once in fp32 from the unquantized base (the torch int8/int4 layers are
training-time kernels ONNX cannot express), then ONNX Runtime's quantizers shrink the base
MatMuls. Parity is measured against the fp32 torch model on sentences the export never saw.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedadapt.adapter_files import load_adapter, read_adapter
from fedadapt.adapters.model import AdapterModel
from fedadapt.atomic import atomic_write_text
from fedadapt.base import load_base
from fedadapt.base.checkpoint import base_sha256, load_tokenizer, model_dir, tokenize
from fedadapt.continual import pad_head
from fedadapt.errors import AdapterLoadError
from fedadapt.export import measure
from fedadapt.export.decompose import decompose
from fedadapt.export.graph import TASK_INPUT, export_graph
from fedadapt.export.merge import merge_lora
from fedadapt.export.mobile import make_shape_fixed, mobile_summary, to_ort_format
from fedadapt.export.quantize import quantize_base
from fedadapt.onnx_adapter import RUNTIME_FILE, SUFFIX, open_session, write_onnx_adapter

REPORT_FILE = "export_report.json"
MODEL_FILE = "model.onnx"
SEQS = (128, 32)


PRECISIONS = ("fp32", "fp16")  # of the graph; fp16 leaves the base unquantized


@dataclass(frozen=True)
class ExportOptions:
    """How `export` builds the device folder; recorded as is in the export report.

    Parameters
    ----------
    quantize : str (default: "none")
        The base MatMuls' precision in the graph: "none", "int8" or "int4" (ORT's quantizers;
        adapter nodes stay float, so adapters still swap).
    precision : str (default: "fp32")
        "fp16" casts the whole graph, adapter inputs included, for edge GPUs; it needs
        `quantize="none"`.
    merge_lora : bool (default: False)
        Fold one LoRA adapter into the base weights (parity is still measured against the
        unmerged model); that adapter is then part of the graph. Refused for several tasks.
    fixed_shape : tuple of (int, int) or None (default: None)
        (batch, sequence) made static, for the mobile execution providers; the runtime then
        pads every batch to it.
    ort_format : bool (default: False)
        Also write the graph as `.ort`, for ORT's minimal mobile builds.
    max_length : int (default: 128)
        The tokenizer's token limit, recorded in `runtime.json`.
    measure : bool (default: True)
        Measure parity, latency and swap time into the report (the slow part of an export).
    decompose : tuple of str (default: ())
        Ops to rewrite for NNAPI (`export.decompose.DECOMPOSITIONS`); parity shows the cost.
    """

    quantize: str = "none"
    precision: str = "fp32"  # fp16: weights, activations and adapter inputs (edge GPUs)
    merge_lora: bool = False
    fixed_shape: tuple[int, int] | None = None
    ort_format: bool = False
    max_length: int = 128
    measure: bool = True
    decompose: tuple[str, ...] = ()  # see export/decompose.py: for NNAPI


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def load_model(adapter_dirs: list[Path]) -> tuple[AdapterModel, list[str], dict[str, Any]]:
    """The fp32 base with the adapters (and heads) loaded, the first active; a wrong base, a
    missing head or (for several) unequal layouts are refused here."""
    configs = []
    for d in adapter_dirs:
        config, _ = read_adapter(d)
        if config.get("base_model_sha256") != base_sha256():
            raise AdapterLoadError(
                f"{d} belongs to base {str(config.get('base_model_sha256'))[:12]}…, "
                f"the installed base is {base_sha256()[:12]}…"
            )
        if not config.get("num_labels"):
            raise AdapterLoadError(f"{d} has no task head; export needs one for logits")
        configs.append(config)
    layout = [(c["method"], c["config"]) for c in configs]
    if any(x != layout[0] for x in layout):
        raise AdapterLoadError("stacked adapters must share method and config")
    model = AdapterModel(load_base("none"))
    names = [load_adapter(model, d, name=f"task{i}") for i, d in enumerate(adapter_dirs)]
    widest = max(c["num_labels"] for c in configs)
    for n in names:  # tasks of fewer labels (continual learning): one head shape for all
        pad_head(model, n, widest)
    model.set_active(names[0])
    model.eval()
    labels = [
        c.get("label_names") or [f"label_{i}" for i in range(c["num_labels"])] for c in configs
    ]
    return model, names, {**configs[0], "task_labels": labels}


def _graph_dtype(model: AdapterModel, opts: ExportOptions) -> torch.dtype:
    """fp16: the whole model is cast (after the fp32 reference was taken, so parity shows
    what fp16 costs); ORT's base quantizers take fp32 graphs only."""
    if opts.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {opts.precision!r}")
    if opts.precision == "fp32":
        return torch.float32
    if opts.quantize != "none":
        raise ValueError(f"an fp16 graph keeps its base in fp16; quantize {opts.quantize} is fp32")
    model.half()
    return torch.float16


def held_out_sentences(n: int = 16) -> list[str]:
    """Real review snippets from movies drawn with a seed no training config uses."""
    from fedadapt.data.rotten_tomatoes import load_clients

    texts = [t for c in load_clients(num_clients=4, seed=9_999) for t in c.test_texts]
    return texts[:n]


def export(
    adapter_dirs: str | Path | list, out: str | Path, opts: ExportOptions = ExportOptions()
) -> dict:
    """Write the device folder for one adapter, or a task-indexed graph for several."""
    dirs = [Path(d) for d in (adapter_dirs if isinstance(adapter_dirs, list) else [adapter_dirs])]
    out = Path(out)
    t0 = time.perf_counter()
    model, names, config = load_model(dirs)
    sha = base_sha256()
    ids, mask = tokenize(load_tokenizer(opts.max_length), held_out_sentences())
    with torch.no_grad():
        reference = model(ids, mask).numpy()
    if opts.merge_lora:
        if len(names) > 1:
            raise ValueError("--merge-lora folds one global LoRA; it cannot serve several tasks")
        merged = merge_lora(model, names[0])
    else:
        merged = 0
    decompose(model, opts.decompose)  # after the reference: parity shows what it costs
    dtype = _graph_dtype(model, opts)
    stacked = None
    extra: dict[str, np.ndarray] = {}
    if len(names) > 1:
        states = [model.adapter_state(n) for n in names]
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        extra[TASK_INPUT] = np.array(0, np.int64)
    version = int(config.get("version", 1))
    labels = config.get("label_names") or [f"label_{i}" for i in range(config["num_labels"])]
    metadata = {"fedadapt.base_sha256": sha, "fedadapt.adapter_version": str(version)}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _log(f"exporting {', '.join(map(str, dirs))} ({config['method']})")
        tensors = export_graph(
            model, tmp / "fp32.onnx", metadata=metadata, stacked=stacked, dtype=dtype
        )
        _log(f"quantizing the base: {opts.quantize}")
        excluded = quantize_base(tmp / "fp32.onnx", out / MODEL_FILE, opts.quantize)
        if opts.fixed_shape:
            make_shape_fixed(out / MODEL_FILE, *opts.fixed_shape)
        stem = dirs[0].name if len(dirs) == 1 else "tasks"
        adapter_file = write_onnx_adapter(out / f"{stem}{SUFFIX}", tensors, version, sha)
        shutil.copyfile(model_dir() / "tokenizer.json", out / "tokenizer.json")
        runtime = {
            "base_sha256": sha,
            "labels": labels,
            "max_length": opts.max_length,
            "model_file": MODEL_FILE,
            "adapter_version": version,
            "precision": "fp16" if dtype == torch.float16 else opts.quantize,
            "fixed_shape": list(opts.fixed_shape) if opts.fixed_shape else None,
            "tasks": [str(d) for d in dirs] if stacked is not None else None,
            "task_labels": config["task_labels"] if stacked is not None else None,
        }
        atomic_write_text(out / RUNTIME_FILE, json.dumps(runtime, indent=2) + "\n")
        report: dict[str, Any] = {
            "adapters": [str(d) for d in dirs],
            "method": config["method"],
            "options": asdict(opts),
            "base_sha256": sha,
            "adapter_inputs": len(tensors),
            "merged_lora_layers": merged,
            "nodes_kept_float_for_adapters": len(excluded),
            "sizes": {
                MODEL_FILE: (out / MODEL_FILE).stat().st_size,
                adapter_file.name: adapter_file.stat().st_size,
            },
        }
        if opts.ort_format:
            ort_file = to_ort_format(out / MODEL_FILE)
            report["sizes"][ort_file.name] = ort_file.stat().st_size
        if opts.measure:
            _log("measuring parity, latency and swap time")
            report.update(
                _measure(
                    model, names[0], out, tmp, opts, (ids, mask, reference), tensors, extra, sha
                )
            )
            report["mobile"] = mobile_summary(out / MODEL_FILE)
    report["export_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    _log(f"wrote {out} in {report['export_s']} s")
    return report


def _measure(
    model: AdapterModel,
    name: str,
    out: Path,
    tmp: Path,
    opts: ExportOptions,
    held_out: tuple[torch.Tensor, torch.Tensor, np.ndarray],
    tensors: dict[str, np.ndarray],
    extra: dict[str, np.ndarray],
    sha: str,
) -> dict[str, Any]:
    ids, mask, reference = held_out
    adapted = open_session(out / MODEL_FILE)
    result: dict[str, Any] = {}
    if not opts.fixed_shape:
        result["parity_max_abs"] = measure.parity(
            adapted, ids.numpy(), mask.numpy(), reference, extra
        )
    # The same precision without the adapter branches: what the overhead is measured against.
    active = model.control.active
    model.set_active(None, head=name)
    export_graph(model, tmp / "base32.onnx", dtype=next(model.parameters()).dtype)
    model.set_active(active, head=name)
    quantize_base(tmp / "base32.onnx", tmp / "base.onnx", opts.quantize)
    if opts.fixed_shape:
        make_shape_fixed(tmp / "base.onnx", *opts.fixed_shape)
    base = open_session(tmp / "base.onnx")
    result["latency"] = {}
    if opts.fixed_shape is None or opts.fixed_shape[0] == 1:
        for seq in [opts.fixed_shape[1]] if opts.fixed_shape else list(SEQS):
            b, a = measure.latency_pair(base, adapted, seq, extra=extra)
            result["latency"][f"seq{seq}"] = {
                "base_ms": round(b, 3),
                "adapter_ms": round(a, 3),
                "overhead_pct": round(100 * (a / b - 1), 2),
            }
    if model.control.active is not None:
        result["swap_ms"] = measure.swap_ms(
            adapted, tmp, tensors, sha, shape=opts.fixed_shape or (1, 32), extra=extra
        )
    return result
