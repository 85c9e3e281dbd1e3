"""Bench section `aggregate`: one round's aggregation of 10, 100 and 1000 replies.

`fedadapt` = screening delta replies (decode, check, fold into the weighted mean delta as
they come, as the server does for FedAvg) plus Flower's FedAvg on the one mean reply;
`flower_fedavg` = Flower's FedAvg alone on replies that already carry full adapter weights
(what a stock Flower app would send). `fedadapt_trimmed` / `flower_trimmed`: the same for
trimmed mean (the server's stacked, vectorized rule, then Flower's FedTrimmedAvg on the one
combined reply; Flower's FedTrimmedAvg on every full reply). All see the same adapter shape
and values. `floor_ms` is the bandwidth floor on the same machine: one numpy add of each
reply's delta bytes. Peak memory is the rise of the process's peak RSS over the replies
already held (Linux `clear_refs` resets the high-water mark before each aggregation).
Each path first aggregates 2 other replies of the same kind, as a warm-up round.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from fedadapt.bench.cases import run_case

SIZES = (10, 100, 1000)
T = TypeVar("T")


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rise(fn: Callable[[], T]) -> tuple[T, float, float]:
    """`(fn(), ms, MB)`: its wall time, and how far the process's peak RSS rose above what
    was resident before (the high-water mark is reset first, so earlier peaks don't count)."""
    held = _rss_mb("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    out = fn()
    ms = (time.perf_counter() - t) * 1e3
    return out, ms, max(0.0, _rss_mb("VmHWM") - held)


PATHS = ("fedadapt", "flower_fedavg", "fedadapt_trimmed", "flower_trimmed")


def _floor(replies: list) -> float:
    """ms of the bandwidth floor: one numpy add of each reply's fp32 delta bytes, in place."""
    import numpy as np

    views = []
    for m in replies:
        blob = m.content["arrays"]["delta"].data
        start = len(blob) - m.content["arrays"]["delta"].shape[0]  # the npy header
        head = int.from_bytes(blob[start : start + 8], "little")
        views.append(np.frombuffer(blob, dtype=np.float32, offset=start + 8 + head))
    acc = np.zeros_like(views[0])
    t = time.perf_counter()
    for v in views:
        acc += v
    return (time.perf_counter() - t) * 1e3


def make_replies(n: int, ours: bool) -> tuple[list, dict, set[str], float]:
    """`n` replies of quick.toml's adapter: delta replies (`ours`) or full-weight ones, with
    the same seeded values; also the global state, the trainable keys and the trim fraction."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedadapt.codecs import encode
    from fedadapt.model_setup import build_fresh_global, trainable_global_keys
    from fedadapt.records import pack_delta, state_to_record
    from fedadapt.simconfig import SimConfig

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
    cfg = SimConfig()  # quick.toml's adapter shape; n is only how many replies arrive
    global_state = build_fresh_global(cfg)
    keys = set(trainable_global_keys(cfg))
    g = torch.Generator().manual_seed(0)
    replies = []
    for i in range(n):
        delta = {k: torch.randn(global_state[k].shape, generator=g) * 1e-3 for k in keys}
        metrics = MetricRecord({"num-examples": 10 + i % 7, "train_loss": 0.5})
        if ours:
            content = RecordDict(
                {
                    "arrays": pack_delta(encode(delta)),
                    "metrics": metrics,
                    "delta-meta": ConfigRecord({"base-sha256": "x"}),
                }
            )
        else:
            full = {k: v + delta[k] if k in delta else v for k, v in global_state.items()}
            content = RecordDict({"arrays": state_to_record(full), "metrics": metrics})
        replies.append(Message(content, dst_node_id=i + 1, message_type="train"))
    return replies, global_state, keys, cfg.trim_fraction


def measure(n: int, path: str) -> dict[str, float]:
    """One case: `path` aggregating `n` replies of quick.toml's adapter, in this process."""
    from flwr.serverapp.strategy import FedAvg, FedTrimmedAvg

    from fedadapt.server.replies import screen

    ours, trimmed = path.startswith("fedadapt"), path.endswith("trimmed")
    replies, global_state, keys, trim = make_replies(n + 2, ours)
    replies, warm = replies[:n], replies[n:]  # Flower's FedTrimmedAvg consumes its replies
    kw = {"min_train_nodes": 1, "min_available_nodes": 1}
    strategy = FedTrimmedAvg(**kw, beta=trim) if trimmed else FedAvg(**kw)
    rule = ("trimmed-mean", trim) if trimmed else None

    def aggregate(batch: list = replies):
        accepted = batch
        if ours:
            fold = None if trimmed else "num-examples"
            screened = screen(batch, global_state, keys, "x", 10**8, fold_by=fold, robust=rule)
            assert screened.clients == len(batch), f"the bench's replies were rejected: {screened}"
            accepted = screened.accepted
        return strategy.aggregate_train(1, accepted)[0]

    # a server aggregates every round: one warm-up round of 2 other replies (the same for
    # every path) keeps first-call costs (lazy imports, caches, allocations) out of the figure
    aggregate(warm)
    arrays, ms, peak_mb = peak_rise(aggregate)
    assert arrays is not None
    out = {"ms": ms, "peak_mb": peak_mb}
    if path == "fedadapt":
        out["floor_ms"] = min(_floor(replies) for _ in range(3))
    return out


def run(quick: bool = False) -> dict:
    """The section's figures, keyed by reply count: `<path>_<figure>` per path, plus `floor_ms`.

    Each case runs in a process of its own; the median of 3 runs (1 with `quick`) is kept.
    """
    out: dict = {}
    repeats = 1 if quick else 3
    cases = [(n, p) for n in SIZES for p in PATHS]
    for n, path in tqdm(cases, desc="bench aggregate", unit="case"):
        runs = []
        for _ in range(repeats):
            runs.append(run_case("fedadapt.bench.aggregate", n, path))
        best = sorted(runs, key=lambda r: r["ms"])[len(runs) // 2]
        row = out.setdefault(str(n), {})
        # bench.json's key for the floor (docs/reference/formats.md) is plain `floor_ms`:
        # it belongs to no path
        row.update({k if k == "floor_ms" else f"{path}_{k}": v for k, v in best.items()})
    for n in SIZES:
        r = out[str(n)]
        tqdm.write(
            f"aggregate {n:>5} replies: fedadapt {r['fedadapt_ms']:8.1f} ms "
            f"({r['fedadapt_peak_mb']:.0f} MB, {r['fedadapt_ms'] / r['floor_ms']:.1f}x "
            f"the {r['floor_ms']:.1f} ms floor)  flower FedAvg "
            f"{r['flower_fedavg_ms']:8.1f} ms ({r['flower_fedavg_peak_mb']:.0f} MB)  "
            f"trimmed mean: fedadapt {r['fedadapt_trimmed_ms']:8.1f} ms, "
            f"flower {r['flower_trimmed_ms']:8.1f} ms"
        )
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Measure one aggregate bench case (internal).")
    ap.add_argument("n", type=int)
    ap.add_argument("path", choices=PATHS)
    a = ap.parse_args()
    print(json.dumps(measure(a.n, a.path)))
