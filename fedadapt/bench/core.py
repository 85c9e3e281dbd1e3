"""Bench section `core`: adapter training cost over fp32, int8 and int4 bases.

Bottleneck and LoRA are measured at every precision (their historical shapes, see
`fedadapt.bench.methods`); IA³, BitFit, prefix and prompt tuning over the int8 base only,
the simulations' precision, at the simulations' shapes. Same batch for every case. Each
(precision, method) runs in its own process, so its peak RSS is its own and no allocator
state leaks between cases.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fedadapt.bench.cases import run_case
from fedadapt.bench.methods import CORE_LEGACY, METHODS, adapter_config

PRECISIONS = {"fp32": "none", "int8": "int8", "int4": "int4"}
SIM_PRECISION = "int8"  # the simulations' base: every method is measured over it
BATCH, SEQ = 16, 48
PROBE = [
    "A three-hour cinema master class.",
    "The plot is thin and the jokes fall flat.",
    "An uneven but often charming portrait of a family in crisis.",
    "Nothing in this film rings true.",
]


def cases() -> list[tuple[str, str]]:
    """(precision, method) pairs: the legacy two at every precision, all six over int8."""
    return [(p, m) for p in PRECISIONS for m in METHODS if m in CORE_LEGACY or p == SIM_PRECISION]


def measure(precision: str, method: str, steps: int) -> dict:
    """One case, in this process: sizes, median step time, forward error against fp32."""
    from fedadapt.adapters import AdapterModel
    from fedadapt.base import load_base
    from fedadapt.base.bert import mean_pool
    from fedadapt.base.checkpoint import load_tokenizer, tokenize
    from fedadapt.data import rotten_tomatoes

    torch.manual_seed(0)
    tok = load_tokenizer(SEQ)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=SEQ)
    probe = tokenize(tok, PROBE)
    # Error of the mean-pooled sentence embedding, what a head sees; padded positions of
    # the last hidden state carry no meaning and would dominate a raw max.
    ref = load_base("none").encoder.eval()
    with torch.no_grad():
        ref_out = mean_pool(ref(*probe), probe[1])
    del ref
    base = load_base(PRECISIONS[precision])
    with torch.no_grad():
        err = float((mean_pool(base.encoder.eval()(*probe), probe[1]) - ref_out).abs().max())

    model = AdapterModel(base)
    model.add_adapter("a", adapter_config(method, core_legacy=True), num_labels=2)
    model.train_adapter("a")
    texts = [t for c in rotten_tomatoes.load_clients(8) for t in c.train_texts][:BATCH]
    ids, mask = tokenize(tok, texts)
    y = torch.randint(0, 2, (BATCH,))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        loss = F.cross_entropy(model(ids, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:  # warm-up steps are not timed
            times.append((time.perf_counter() - t) * 1e3)
    trainable = model.num_trainable() - sum(p.numel() for p in model.heads.parameters())
    return {
        "trainable_params": trainable,
        "trainable_fraction": trainable / base.params,
        "base_bytes": base.bytes_in_memory,
        "train_step_ms": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "forward_max_abs_err": err,
    }


def run(quick: bool = False) -> dict:
    """The section's figures, `{precision: {method: case}}`, each case in a process of its own.

    `quick` times 5 training steps per case instead of 30.
    """
    steps = 5 if quick else 30
    out: dict = {}
    for p, m in tqdm(cases(), desc="bench core", unit="case"):
        out.setdefault(p, {})[m] = run_case("fedadapt.bench.core", p, m, steps)
    for p, methods in out.items():
        for m, r in methods.items():
            tqdm.write(
                f"core {p:>4} {m:<10} step {r['train_step_ms']:7.1f} ms  "
                f"rss {r['peak_rss_mb']:6.0f} MB  base {r['base_bytes'] / 1e6:5.1f} MB  "
                f"trainable {r['trainable_fraction']:.3%}  err {r['forward_max_abs_err']:.2e}"
            )
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Measure one core bench case (internal).")
    ap.add_argument("precision", choices=PRECISIONS)
    ap.add_argument("method", choices=METHODS)
    ap.add_argument("steps", type=int)
    a = ap.parse_args()
    print(json.dumps(measure(a.precision, a.method, a.steps)))
