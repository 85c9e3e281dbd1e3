"""Bench section `export`: what adapter branches cost at inference, per base precision.

Graphs are exported once in fp32: the base with only a head, each method's adapter at the
simulations' shape (`fedadapt.bench.methods`) as overridable inputs, and a LoRA (r=8, q/v)
merged into the base weights. Each is quantized by ONNX Runtime to fp32/int8/int4, and
latency is timed at batch 1 for seq 128 and 32, interleaving graphs so machine drift hits
all alike. `methods` holds each method's overhead over the same-precision base graph; the
section's top-level `adapter` figures are the bottleneck's (its historical keys).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from fedadapt.bench.methods import METHODS, adapter_config

PRECISIONS = ("none", "int8", "int4")
SEQS = (128, 32)


def _adapted(cfg, seed: int):
    from fedadapt.adapters import AdapterModel
    from fedadapt.base_model import load_base

    model = AdapterModel(load_base("none"))
    model.add_adapter("a", cfg, num_labels=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking values: with zero up-projections parity is trivial
        for p in model.adapter_parameters("a").values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.set_active("a")
    return model.eval()


def _export_graphs(tmp: Path, ids: torch.Tensor, mask: torch.Tensor) -> tuple[dict, dict]:
    """Writes `<graph>.onnx` for the base, the merged LoRA and each method; returns each
    method's torch logits (the parity reference) and the bottleneck's default tensors."""
    from fedadapt.adapters import LoraConfig
    from fedadapt.export.graph import export_graph
    from fedadapt.export.merge import merge_lora

    references, tensors = {}, {}
    for seed, method in enumerate(METHODS):
        model = _adapted(adapter_config(method), seed)
        with torch.no_grad():
            references[method] = model(ids, mask).numpy()
        tensors[method] = export_graph(model, tmp / f"{method}.onnx")
        if method == "bottleneck":  # the base graph: the same head, no adapter
            model.set_active(None, head="a")
            export_graph(model, tmp / "base.onnx")
    lora = _adapted(LoraConfig(r=8), seed=1)
    merge_lora(lora, "a")
    export_graph(lora, tmp / "merged.onnx")
    return references, tensors["bottleneck"]


def _latency(base, adapted, runs: int) -> dict:
    """`{"seq128": {base_ms, adapter_ms, overhead_pct}, "seq32": ...}` of `adapted` over
    `base`, each pair interleaved."""
    from fedadapt.export import measure

    out = {}
    for seq in SEQS:
        base_ms, adapter_ms = measure.latency_pair(base, adapted, seq, runs)
        out[f"seq{seq}"] = {
            "base_ms": round(base_ms, 3),
            "adapter_ms": round(adapter_ms, 3),
            "overhead_pct": round(100 * (adapter_ms / base_ms - 1), 2),
        }
    return out


def run(quick: bool = False) -> dict:
    from fedadapt.base_model import base_sha256, load_tokenizer, tokenize
    from fedadapt.export import measure
    from fedadapt.export.exporter import held_out_sentences
    from fedadapt.export.quantize import quantize_base
    from fedadapt.onnx_adapter import open_session

    runs = 15 if quick else 80
    ids, mask = tokenize(load_tokenizer(128), held_out_sentences())
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        references, tensors = _export_graphs(tmp, ids, mask)
        for precision in PRECISIONS:
            sessions = {}
            for graph in ("base", "merged", *METHODS):
                out = tmp / f"{graph}-{precision}.onnx"
                quantize_base(tmp / f"{graph}.onnx", out, precision)
                sessions[graph] = open_session(out)
            methods = {
                m: {
                    "parity_max_abs": measure.parity(
                        sessions[m], ids.numpy(), mask.numpy(), references[m]
                    ),
                    **_latency(sessions["base"], sessions[m], runs),
                }
                for m in METHODS
            }
            key = "fp32" if precision == "none" else precision
            bottleneck = methods["bottleneck"]
            entry = {
                "size_bytes": (tmp / f"bottleneck-{precision}.onnx").stat().st_size,
                "parity_max_abs": bottleneck["parity_max_abs"],
                "swap_ms": round(
                    measure.swap_ms(sessions["bottleneck"], tmp, tensors, base_sha256()), 3
                ),
            }
            merged = _latency(sessions["base"], sessions["merged"], runs)
            for seq in merged:
                entry[seq] = bottleneck[seq] | {
                    "merged_lora_overhead_pct": merged[seq]["overhead_pct"]
                }
            entry["methods"] = methods
            result[key] = entry
            print(f"[bench export] {key}: {entry}", flush=True)
        result["nnapi_decompositions"] = _decompositions(tmp, ids, mask, runs)
    result["adapter_bytes"] = int(sum(np.asarray(v).nbytes for v in tensors.values()))
    return result


def _decompositions(tmp: Path, ids: torch.Tensor, mask: torch.Tensor, runs: int) -> dict:
    """NNAPI coverage at a fixed 1×128 fp32 graph, exact and with each decomposition, with
    what each costs in parity and in CPU latency."""
    from fedadapt.export import measure
    from fedadapt.export.decompose import decompose
    from fedadapt.export.graph import export_graph
    from fedadapt.export.mobile import make_shape_fixed, mobile_summary
    from fedadapt.onnx_adapter import open_session

    model = _adapted(adapter_config("bottleneck"), seed=0)
    with torch.no_grad():
        reference = model(ids, mask).numpy()
    out, exact_session = {}, None
    for label, which in (
        ("exact", ()),
        ("layernorm", ("layernorm",)),
        ("layernorm+gelu-tanh", ("gelu-tanh",)),
    ):
        decompose(model, which)  # cumulative: the third adds gelu-tanh to layernorm
        path = tmp / f"dec-{label}.onnx"
        export_graph(model, path)
        sess = open_session(path)
        parity = measure.parity(sess, ids.numpy(), mask.numpy(), reference)
        exact_session = exact_session or sess
        base_ms, ms = measure.latency_pair(exact_session, sess, 128, runs)
        make_shape_fixed(path, 1, 128)
        nnapi = mobile_summary(path)["nnapi"]
        out[label] = {
            "nnapi_supported_nodes": nnapi["supported_nodes"],
            "nnapi_nodes": nnapi["nodes"],
            "nnapi_partitions": nnapi["partitions"],
            "blocking_ops": nnapi["blocking_ops"],
            "parity_max_abs": parity,
            "cpu_seq128_ms": round(ms, 3),
            "cpu_vs_exact_pct": round(100 * (ms / base_ms - 1), 2),
        }
    return out
