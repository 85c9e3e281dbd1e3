"""Bench section `export`: what adapter branches cost at inference, per graph precision.

Graphs are exported once per graph dtype: the base with only a head, each method's adapter
at the simulations' shape (`fedadapt.bench.methods`) as overridable inputs, and a LoRA (r=8,
q/v) merged into the base weights. The fp32 graphs are quantized by ONNX Runtime to
fp32/int8/int4; fp16 graphs are the whole model cast (`fedadapt export --precision fp16`).
Latency is timed at batch 1 for seq 128 and 32, interleaving graphs so machine drift hits
all alike, on the execution provider asked for (`fedadapt bench --provider`). `methods`
holds each method's overhead over the same-precision base graph; the section's top-level
`adapter` figures are the bottleneck's (its historical keys).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from fedadapt.bench.methods import METHODS, adapter_config

SEQS = (128, 32)
# Each precision: the dtype its graphs are exported in, and ORT's quantization of their base.
GRAPHS = {
    "fp32": (torch.float32, "none"),
    "fp16": (torch.float16, "none"),
    "int8": (torch.float32, "int8"),
    "int4": (torch.float32, "int4"),
}


def precisions(provider: str) -> tuple[str, ...]:
    """The precisions measured on `provider`. fp16 only on CUDA, with no opt-in on the CPU:
    ORT's x86 CPU provider lacks fp16 kernels for most of this graph (MatMul, LayerNorm,
    Softmax) and wraps them in Casts to fp32, so a CPU latency would time the casts, not
    fp16; fp16's parity on the CPU is tested in tests/export/test_fp16.py. int4 stays on
    CUDA too: MatMulNBits has a CUDA kernel, and `placement` records any node that fell
    back to the CPU."""
    return ("fp32", "fp16", "int8", "int4") if provider == "cuda" else ("fp32", "int8", "int4")


def _adapted(cfg, seed: int):
    from fedadapt.adapters import AdapterModel
    from fedadapt.base import load_base

    model = AdapterModel(load_base("none"))
    model.add_adapter("a", cfg, num_labels=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking values: with zero up-projections parity is trivial
        for p in model.adapter_parameters("a").values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.set_active("a")
    return model.eval()


def _export_graphs(
    folder: Path, ids: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
) -> tuple[dict, dict]:
    """Writes `<graph>.onnx` in `dtype` for the base, the merged LoRA and each method;
    returns each method's fp32 torch logits (the parity reference, so an fp16 graph's parity
    shows what fp16 costs) and the bottleneck's default tensors."""
    from fedadapt.adapters import LoraConfig
    from fedadapt.export.graph import export_graph
    from fedadapt.export.merge import merge_lora

    references, tensors = {}, {}
    for seed, method in enumerate(METHODS):
        model = _adapted(adapter_config(method), seed)
        with torch.no_grad():
            references[method] = model(ids, mask).numpy()
        model.to(dtype)
        tensors[method] = export_graph(model, folder / f"{method}.onnx", dtype=dtype)
        if method == "bottleneck":  # the base graph: the same head, no adapter
            model.set_active(None, head="a")
            export_graph(model, folder / "base.onnx", dtype=dtype)
    lora = _adapted(LoraConfig(r=8), seed=1)
    merge_lora(lora, "a")
    export_graph(lora.to(dtype), folder / "merged.onnx", dtype=dtype)
    return references, tensors["bottleneck"]


def placement(path: Path, providers: Sequence[str], seq: int = 32) -> dict:
    """Where ORT ran each node of the graph at `path`, from one profiled call: a session
    silently runs a node with no kernel on the first provider on the next one (the CPU),
    and latency alone would not say so. `fallback_ops` are the op types that ran elsewhere
    than on `providers[0]`."""
    from fedadapt.export import measure

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(".profile"))
    sess = ort.InferenceSession(str(path), opts, providers=list(providers))
    ids = np.full((1, seq), 2000)
    sess.run(["logits"], measure.feed(ids, np.ones_like(ids)))
    trace = Path(sess.end_profiling())
    nodes = {
        e["name"]: (e["args"]["provider"], e["args"]["op_name"])
        for e in json.loads(trace.read_text())
        if e.get("cat") == "Node" and "provider" in e.get("args", {})
    }
    trace.unlink()
    return {
        "nodes_by_provider": dict(Counter(p for p, _ in nodes.values())),
        "fallback_ops": sorted({op for p, op in nodes.values() if p != providers[0]}),
    }


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


def _precision(
    folder: Path,
    quantize: str,
    held_out: tuple[torch.Tensor, torch.Tensor, dict],
    tensors: dict,
    runs: int,
    providers: Sequence[str],
) -> dict:
    """One precision's entry: size, parity, swap time, the bottleneck's and merged LoRA's
    latency overhead, every method's, and where the nodes ran."""
    from fedadapt.base.checkpoint import base_sha256
    from fedadapt.export import measure
    from fedadapt.export.quantize import quantize_base
    from fedadapt.onnx_adapter import open_session

    ids, mask, references = held_out
    sessions = {}
    for graph in ("base", "merged", *METHODS):
        out = folder / f"{graph}-{quantize}.onnx"
        quantize_base(folder / f"{graph}.onnx", out, quantize)
        sessions[graph] = open_session(out, providers=providers)
    methods = {
        m: {
            "parity_max_abs": measure.parity(sessions[m], ids.numpy(), mask.numpy(), references[m]),
            **_latency(sessions["base"], sessions[m], runs),
        }
        for m in METHODS
    }
    bottleneck = methods["bottleneck"]
    entry = {
        "size_bytes": (folder / f"bottleneck-{quantize}.onnx").stat().st_size,
        "parity_max_abs": bottleneck["parity_max_abs"],
        "swap_ms": round(
            measure.swap_ms(sessions["bottleneck"], folder, tensors, base_sha256()), 3
        ),
    }
    merged = _latency(sessions["base"], sessions["merged"], runs)
    for seq in merged:
        entry[seq] = bottleneck[seq] | {"merged_lora_overhead_pct": merged[seq]["overhead_pct"]}
    entry["methods"] = methods
    return entry | placement(folder / f"bottleneck-{quantize}.onnx", providers)


def run(quick: bool = False, provider: str = "cpu") -> dict:
    """The section on `provider` (a key of `fedadapt.onnx_adapter.PROVIDERS`). Latency on
    CUDA includes copying the inputs and logits between host and GPU, as a device app's
    `session.run` with numpy arrays does. The NNAPI decompositions are measured on the CPU
    run only: they are about mobile graphs and CPU latency."""
    from fedadapt.base.checkpoint import load_tokenizer, tokenize
    from fedadapt.export.exporter import held_out_sentences
    from fedadapt.onnx_adapter import execution_providers

    providers = execution_providers(provider)
    runs = 15 if quick else 80
    ids, mask = tokenize(load_tokenizer(128), held_out_sentences())
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        exported: dict[torch.dtype, tuple[Path, dict, dict]] = {}
        for key in precisions(provider):
            dtype, quantize = GRAPHS[key]
            if dtype not in exported:
                folder = tmp / str(dtype).removeprefix("torch.")
                folder.mkdir()
                exported[dtype] = (folder, *_export_graphs(folder, ids, mask, dtype))
            folder, references, tensors = exported[dtype]
            entry = _precision(folder, quantize, (ids, mask, references), tensors, runs, providers)
            result[key] = {"provider": provider} | entry
            print(f"[bench export] {key} on {provider}: {result[key]}", flush=True)
        if provider == "cpu":
            result["nnapi_decompositions"] = _decompositions(tmp, ids, mask, runs)
    fp32_tensors = exported[torch.float32][2]
    result["adapter_bytes"] = int(sum(np.asarray(v).nbytes for v in fp32_tensors.values()))
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
