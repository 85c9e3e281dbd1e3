"""The graph a training device serves: `Stack(global, personal)` over the base it trains on.

`fedadapt export` serves one published adapter at ORT-int8 speed. A device that trains also
needs ONNX Runtime to give *the same* predictions torch gave when it measured its
personalized accuracy, so this graph computes the function the device trained:
- the base's weights are the training base's weight-only int8/int4 weights, dequantized (ORT's
  dynamic quantization would also quantize activations and move the logits by ~1e-2); they
  are stored quantized and dequantized inside the graph (`export/quantized_weights.py`:
  24 MB for int8, instead of 91 MB, the same logits);
- both adapters are overridable inputs, `shared:<name>` (global) and `personal:<name>`, and the head
  is `head.weight`/`head.bias`. The personal defaults are a fresh personal adapter (the
  identity), so a file without personal tensors serves the global adapter alone;
- a second output, `pooled`, is the embedding the head reads: a device without torch fits
  a personal head and a kNN memory over it in numpy (`clients/numpy_personal.py`);
- `runtime.json` names the stack, so the updater and `clients/personalized.py` write adapter
  files in this layout without importing torch.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn

from fedadapt.adapters import AdapterModel, Stack
from fedadapt.atomic import atomic_write_text
from fedadapt.base import load_base
from fedadapt.base.checkpoint import model_dir
from fedadapt.base.quantize import QuantEmbedding, QuantLinear
from fedadapt.deltas import State
from fedadapt.model_setup import GLOBAL, PERSONAL, build_model, label_names, num_labels
from fedadapt.onnx_adapter import RUNTIME_FILE
from fedadapt.simconfig import SimConfig

MODEL_FILE = "model.onnx"
STACK = ["shared", "personal"]  # the global adapter, then the personal one


GRAPH_FORMAT = 2  # 2: the `pooled` output; a folder with an older graph gets a new one
LAYOUT_KEYS = (
    "dataset",
    "method",
    "reduction_factor",
    "lora_r",
    "freeze_a",
    "quantization",
    "personal_layers",
    "personal_reduction_factor",
    "max_length",
    "seed",
)


def layout(cfg: SimConfig) -> dict:
    """What the graph depends on: a device whose graph has another layout needs a new one."""
    return {**{k: getattr(cfg, k) for k in LAYOUT_KEYS}, "graph_format": GRAPH_FORMAT}


def install_device_graphs(cfg: SimConfig, folders: list[Path]) -> None:
    """Give each device folder the graph of run `cfg`: exported once (unless the first
    folder already has this layout), then hard-linked (copied across file systems)."""
    first = Path(folders[0])
    runtime = first / RUNTIME_FILE
    current = json.loads(runtime.read_text()).get("layout") if runtime.exists() else None
    if current != layout(cfg):
        export_device_graph(cfg, first)
    for folder in map(Path, folders[1:]):
        folder.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, "tokenizer.json", RUNTIME_FILE):
            (folder / name).unlink(missing_ok=True)
            try:
                (folder / name).hardlink_to(first / name)
            except OSError:
                shutil.copyfile(first / name, folder / name)


def dequantize_modules(model: nn.Module) -> nn.Module:
    """Replace each weight-only quantized layer with a float one holding its dequantized
    weight, in place: the same function, in ops every exporter knows."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, QuantLinear):
                lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(child.weight)
                    if child.bias is not None:
                        lin.bias.copy_(child.bias)
                setattr(module, name, lin.requires_grad_(False))
            elif isinstance(child, QuantEmbedding):
                emb = nn.Embedding.from_pretrained(child.weight.detach().clone(), freeze=True)
                setattr(module, name, emb)
    return model


def device_model(cfg: SimConfig, global_state: State | None = None) -> AdapterModel:
    """The run's model, stacked for serving; the personal head starts as the global head. Its
    base is still quantized: `dequantize_modules` makes it exportable.

    The adapters are renamed (`global` is a Python keyword, and torch.fx writes module paths
    into generated code), so the graph's inputs are `shared:<name>` and `personal:<name>`.
    """
    run = build_model(cfg)
    fresh_global = run.adapter_state(GLOBAL)
    personal = run.adapter_state(PERSONAL)
    model = AdapterModel(load_base(cfg.quantization))
    model.add_adapter(STACK[0], run.configs[GLOBAL], num_labels=num_labels(cfg))
    model.add_adapter(STACK[1], run.configs[PERSONAL], num_labels=num_labels(cfg))
    shared = global_state if global_state is not None else fresh_global
    model.load_adapter_state(STACK[0], shared)
    heads = {k: v for k, v in shared.items() if k.startswith("head.")}
    model.load_adapter_state(STACK[1], {**personal, **heads})
    model.set_active(Stack(*STACK))
    return model.eval()


def export_device_graph(cfg: SimConfig, out: str | Path, global_state: State | None = None) -> Path:
    """Write `model.onnx`, `tokenizer.json` and `runtime.json` for a device of run `cfg`."""
    from fedadapt.export.graph import export_graph, save_model
    from fedadapt.export.quantized_weights import quantized_weights, store_quantized

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = device_model(cfg, global_state)
    weights = quantized_weights(model.encoder)
    dequantize_modules(model.encoder)
    sha = model.base.sha256
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        metadata = {"fedadapt.base_sha256": sha, "fedadapt.stack": ",".join(STACK)}
        path = Path(tmp) / MODEL_FILE
        export_graph(model, path, metadata=metadata, pooled=True)
        if weights:
            proto = onnx.load(path)
            store_quantized(proto, weights)
            save_model(proto, path)
        path.replace(out / MODEL_FILE)
    shutil.copyfile(model_dir() / "tokenizer.json", out / "tokenizer.json")
    runtime = {
        "base_sha256": sha,
        "labels": label_names(cfg.dataset),
        "max_length": cfg.max_length,
        "model_file": MODEL_FILE,
        "adapter_version": 0,
        "precision": f"{cfg.quantization} weights, dequantized (as trained)",
        "fixed_shape": None,
        "tasks": None,
        "stack": STACK,
        "layout": layout(cfg),
    }
    atomic_write_text(out / RUNTIME_FILE, json.dumps(runtime, indent=2) + "\n")
    return out
