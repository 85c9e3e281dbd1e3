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
from fedadapt.adapters.model import HEAD_PREFIX, AdapterModel
from fedadapt.atomic import atomic_write_text
from fedadapt.base_model import base_sha256, load_base, load_tokenizer, model_dir, tokenize
from fedadapt.clients.runtime import RUNTIME_FILE
from fedadapt.errors import AdapterLoadError
from fedadapt.export import measure
from fedadapt.export.graph import export_graph, parameter_paths
from fedadapt.export.merge import merge_lora
from fedadapt.export.mobile import make_shape_fixed, mobile_summary, to_ort_format
from fedadapt.export.onnx_adapter import SUFFIX, write_onnx_adapter
from fedadapt.export.quantize import quantize_base

REPORT_FILE = "export_report.json"
MODEL_FILE = "model.onnx"
SEQS = (128, 32)


@dataclass(frozen=True)
class ExportOptions:
    quantize: str = "none"
    merge_lora: bool = False
    fixed_shape: tuple[int, int] | None = None
    ort_format: bool = False
    max_length: int = 128
    measure: bool = True


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def load_model(adapter_dir: Path) -> tuple[AdapterModel, str, dict[str, Any]]:
    """The fp32 base with the adapter (and its head) active; a wrong base is refused here."""
    config, _ = read_adapter(adapter_dir)
    if config.get("base_model_sha256") != base_sha256():
        raise AdapterLoadError(
            f"{adapter_dir} belongs to base {str(config.get('base_model_sha256'))[:12]}…, "
            f"the installed base is {base_sha256()[:12]}…"
        )
    if not config.get("num_labels"):
        raise AdapterLoadError(f"{adapter_dir} has no task head; export needs one for logits")
    model = AdapterModel(load_base("none"))
    name = load_adapter(model, adapter_dir)
    model.set_active(name)
    model.eval()
    return model, name, config


def held_out_sentences(n: int = 16) -> list[str]:
    """Real review snippets from movies drawn with a seed no training config uses."""
    from fedadapt.data.rotten_tomatoes import load_clients

    texts = [t for c in load_clients(num_clients=4, seed=9_999) for t in c.test_texts]
    return texts[:n]


def graph_tensors(model: AdapterModel, name: str) -> dict[str, torch.Tensor]:
    """The tensors the active forward reads: all of the adapter's, or only its head's once
    a LoRA is merged (or when no adapter is active)."""
    state = model.adapter_state(name)
    if model.control.active is None:
        return {k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    return state


def export(adapter_dir: str | Path, out: str | Path, opts: ExportOptions = ExportOptions()) -> dict:
    adapter_dir, out = Path(adapter_dir), Path(out)
    t0 = time.perf_counter()
    model, name, config = load_model(adapter_dir)
    sha = base_sha256()
    tok = load_tokenizer(opts.max_length)
    sentences = held_out_sentences()
    ids, mask = tokenize(tok, sentences)
    with torch.no_grad():
        reference = model(ids, mask).numpy()
    merged = merge_lora(model, name) if opts.merge_lora else 0
    tensors = graph_tensors(model, name)
    paths = parameter_paths(model, name)
    version = int(config.get("version", 1))
    labels = config.get("label_names") or [f"label_{i}" for i in range(config["num_labels"])]
    metadata = {"fedadapt.base_sha256": sha, "fedadapt.adapter_version": str(version)}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _log(f"exporting {adapter_dir} ({config['method']}, {len(tensors)} adapter inputs)")
        export_graph(model, tensors, paths, tmp / "fp32.onnx", metadata=metadata)
        _log(f"quantizing the base: {opts.quantize}")
        excluded = quantize_base(tmp / "fp32.onnx", out / MODEL_FILE, opts.quantize)
        if opts.fixed_shape:
            make_shape_fixed(out / MODEL_FILE, *opts.fixed_shape)
        arrays = {k: v.numpy() for k, v in tensors.items()}
        adapter_file = write_onnx_adapter(out / f"{adapter_dir.name}{SUFFIX}", arrays, version, sha)
        shutil.copyfile(model_dir() / "tokenizer.json", out / "tokenizer.json")
        runtime = {
            "base_sha256": sha,
            "labels": labels,
            "max_length": opts.max_length,
            "model_file": MODEL_FILE,
            "adapter_version": version,
            "precision": opts.quantize,
            "fixed_shape": list(opts.fixed_shape) if opts.fixed_shape else None,
        }
        atomic_write_text(out / RUNTIME_FILE, json.dumps(runtime, indent=2) + "\n")
        report: dict[str, Any] = {
            "adapter": str(adapter_dir),
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
            report.update(_measure(model, name, out, tmp, opts, ids, mask, reference, arrays, sha))
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
    ids: torch.Tensor,
    mask: torch.Tensor,
    reference: np.ndarray,
    arrays: dict[str, np.ndarray],
    sha: str,
) -> dict[str, Any]:
    adapted = measure.session(out / MODEL_FILE)
    result: dict[str, Any] = {}
    if not opts.fixed_shape:
        result["parity_max_abs"] = measure.parity(adapted, ids.numpy(), mask.numpy(), reference)
    # The same precision without the adapter branches: what the overhead is measured against.
    active = model.control.active
    model.set_active(None, head=name)
    export_graph(
        model, graph_tensors(model, name), parameter_paths(model, name), tmp / "base32.onnx"
    )
    model.set_active(active, head=name)
    quantize_base(tmp / "base32.onnx", tmp / "base.onnx", opts.quantize)
    if opts.fixed_shape:
        make_shape_fixed(tmp / "base.onnx", *opts.fixed_shape)
    base = measure.session(tmp / "base.onnx")
    seqs = [opts.fixed_shape[1]] if opts.fixed_shape else list(SEQS)
    result["latency"] = {}
    for seq in seqs:
        if opts.fixed_shape and opts.fixed_shape[0] != 1:
            break
        b, a = measure.latency_pair(base, adapted, seq)
        result["latency"][f"seq{seq}"] = {
            "base_ms": round(b, 3),
            "adapter_ms": round(a, 3),
            "overhead_pct": round(100 * (a / b - 1), 2),
        }
    if model.control.active is not None:
        result["swap_ms"] = measure.swap_ms(
            adapted, tmp, arrays, sha, shape=opts.fixed_shape or (1, 32)
        )
    return result
