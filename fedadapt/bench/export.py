"""Bench section `export`: what adapter branches cost at inference, per base precision.

Three fp32 graphs are exported once: the base with only a head, the base with a bottleneck
adapter (the quick.toml shape) as overridable inputs, and the base with a LoRA (r=8, q/v)
merged into its weights. Each is quantized by ONNX Runtime to fp32/int8/int4, and latency is
timed at batch 1 for seq 128 and 32, interleaving graphs so machine drift hits all alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

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


def run(quick: bool = False) -> dict:
    from fedadapt.adapters import BottleneckConfig, LoraConfig
    from fedadapt.base_model import base_sha256, load_tokenizer, tokenize
    from fedadapt.export import measure
    from fedadapt.export.exporter import held_out_sentences
    from fedadapt.export.graph import export_graph
    from fedadapt.export.merge import merge_lora
    from fedadapt.export.quantize import quantize_base
    from fedadapt.onnx_adapter import open_session

    runs = 15 if quick else 80
    ids, mask = tokenize(load_tokenizer(128), held_out_sentences())
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bottleneck = _adapted(BottleneckConfig(reduction_factor=32), seed=0)
        with torch.no_grad():
            reference = bottleneck(ids, mask).numpy()
        tensors = export_graph(bottleneck, tmp / "adapter.onnx")
        bottleneck.set_active(None, head="a")
        export_graph(bottleneck, tmp / "base.onnx")
        lora = _adapted(LoraConfig(r=8), seed=1)
        merge_lora(lora, "a")
        export_graph(lora, tmp / "merged.onnx")
        for precision in PRECISIONS:
            sessions = {}
            for graph in ("base", "adapter", "merged"):
                out = tmp / f"{graph}-{precision}.onnx"
                quantize_base(tmp / f"{graph}.onnx", out, precision)
                sessions[graph] = open_session(out)
            key = "fp32" if precision == "none" else precision
            entry = {
                "size_bytes": (tmp / f"adapter-{precision}.onnx").stat().st_size,
                "parity_max_abs": measure.parity(
                    sessions["adapter"], ids.numpy(), mask.numpy(), reference
                ),
                "swap_ms": round(
                    measure.swap_ms(sessions["adapter"], tmp, tensors, base_sha256()), 3
                ),
            }
            for seq in SEQS:
                base_ms, adapter_ms = measure.latency_pair(
                    sessions["base"], sessions["adapter"], seq, runs
                )
                base2_ms, merged_ms = measure.latency_pair(
                    sessions["base"], sessions["merged"], seq, runs
                )
                entry[f"seq{seq}"] = {
                    "base_ms": round(base_ms, 3),
                    "adapter_ms": round(adapter_ms, 3),
                    "overhead_pct": round(100 * (adapter_ms / base_ms - 1), 2),
                    "merged_lora_overhead_pct": round(100 * (merged_ms / base2_ms - 1), 2),
                }
            result[key] = entry
            print(f"[bench export] {key}: {entry}", flush=True)
        result["nnapi_decompositions"] = _decompositions(tmp, ids, mask, runs)
    result["adapter_bytes"] = int(sum(np.asarray(v).nbytes for v in tensors.values()))
    return result


def _decompositions(tmp: Path, ids: torch.Tensor, mask: torch.Tensor, runs: int) -> dict:
    """NNAPI coverage at a fixed 1×128 fp32 graph, exact and with each decomposition, with
    what each costs in parity and in CPU latency."""
    from fedadapt.adapters import BottleneckConfig
    from fedadapt.export import measure
    from fedadapt.export.decompose import decompose
    from fedadapt.export.graph import export_graph
    from fedadapt.export.mobile import make_shape_fixed, mobile_summary
    from fedadapt.onnx_adapter import open_session

    model = _adapted(BottleneckConfig(reduction_factor=32), seed=0)
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
