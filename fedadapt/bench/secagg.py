"""Bench section `secagg`: what SecAgg+ costs per round, in time and bytes, at 3 and 10 nodes.

Each case is a real two-round run of the same apps on Flower's Simulation Engine, plain
FedAvg against SecAgg+ with the same sample and clipping. Round 1 is timed (round 2 also
evaluates every client); bytes are everything serialized both ways in round 1, per client:
the delta upload plus, under SecAgg+, the key exchange, the shares and the masked vector.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tqdm import tqdm


def bench_config(nodes: int, secagg: bool, folder: Path, **extra):
    """The bench's run: `nodes` clients all sampled, two rounds, clipping on, no personal training.

    Plain and SecAgg+ differ in `secagg` only, so their figures compare; the `deploy` section
    reuses it. `extra` overrides or adds `SimConfig` fields (e.g. `grid_poll_s`).
    """
    from fedadapt.simconfig import SimConfig

    return SimConfig(
        num_clients=nodes,
        clients_per_round=nodes,
        rounds=2,
        evaluate_every=2,
        local_epochs=1,
        personalization="finetune",  # no personal training: rounds time the federation
        baselines=False,
        clip_norm=0.5,
        secagg=secagg,
        out=str(folder),
        **extra,
    )


def measure(nodes: int, secagg: bool, folder: Path) -> dict:
    """Run one case in simulation: round 1's seconds, and its bytes both ways per client."""
    from fedadapt.launch import simulate

    simulate.run(bench_config(nodes, secagg, folder))
    row = json.loads((folder / "report.json").read_text())["rounds"][0]
    return {
        "round_s": row["seconds"],
        "bytes": (row["upload_bytes"] + row["download_bytes"]) / row["clients"],
    }


def run(quick: bool = False) -> dict:
    """The section's figures, keyed by node count: plain and SecAgg+ round seconds and bytes.

    `quick` measures 3 nodes only.
    """
    out: dict = {}
    sizes = (3,) if quick else (3, 10)
    cases = [(n, s) for n in sizes for s in (False, True)]
    with tempfile.TemporaryDirectory() as tmp:
        for n, secure in tqdm(cases, desc="bench secagg", unit="run"):
            m = measure(n, secure, Path(tmp) / f"{n}-{secure}")
            mode = "secagg" if secure else "plain"
            row = out.setdefault(str(n), {})
            row[f"{mode}_round_s"], row[f"{mode}_bytes"] = m["round_s"], round(m["bytes"])
    for n, r in out.items():
        tqdm.write(
            f"secagg {n:>2} nodes: round {r['plain_round_s']:.1f}s plain, "
            f"{r['secagg_round_s']:.1f}s SecAgg+; {r['plain_bytes'] / 1e3:.0f} kB plain, "
            f"{r['secagg_bytes'] / 1e3:.0f} kB SecAgg+ per client"
        )
    return out
