"""Bench section `scale`: what a round costs as the fleet grows from 100 to 1000 clients.

Each fleet is `simulations/fleet-1000.toml` resized (10% of the clients train and are
evaluated every round, all of them after the last) and run for a few rounds through
`fedadapt simulate` in its own process. Its report's round rows hold the server's own laps
(`server.timing`: sampling, client work, aggregation, evaluation), its peak RSS and the
largest ClientApp actor's peak RSS (`fedadapt.ray_nodes`); figures are of the first round,
whose evaluation is the sampled one. Each fleet's report.json and metrics.csv are kept in
`simulations/results/fleet-N/`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "simulations" / "fleet-1000.toml"
FLEETS = (100, 1000)


def command(clients: int, rounds: int, out: Path) -> list[str]:
    """The `fedadapt simulate` command line of one fleet (the README quotes it)."""
    tenth = str(max(1, clients // 10))
    return [
        *(sys.executable, "-m", "fedadapt", "simulate", "--config", str(CONFIG)),
        *("--clients", str(clients), "--clients-per-round", tenth, "--rounds", str(rounds)),
        *("--set", f"evaluate_sample={tenth}", "--set", "evaluate_every=1"),
        *("--no-baselines", "--out", str(out)),
    ]


def figures(report: dict, wall_s: float) -> dict:
    """The bench entry of one fleet, from its report's first round."""
    first = report["rounds"][0]
    rows = report["rounds"]
    return {
        "clients_per_round": first["clients"],
        "round_s": first["seconds"],
        "server_peak_rss_mb": max(r["server_peak_rss_mb"] for r in rows),
        "actor_rss_mb": max((r.get("actor_peak_rss_mb") or 0.0) for r in rows) or None,
        # the first round's aggregation also pays one-time imports and layouts (1.4 s of
        # 1.41 s for 10 replies): the steady state is the fastest round's
        "aggregate_ms": round(min(r["aggregate_s"] for r in rows) * 1e3, 1),
        "aggregate_first_round_ms": round(first["aggregate_s"] * 1e3, 1),
        "evaluate_s": first["evaluate_s"],
        "split_s": {
            "sampling": first["sample_s"],
            "client_work": first["train_s"],
            "aggregation": first["aggregate_s"],
            "evaluation": first["evaluate_s"],
        },
        "final_evaluate_all_s": rows[-1]["evaluate_s"] if len(rows) > 1 else None,
        "rounds": len(rows),
        "wall_s": round(wall_s, 1),
    }


def measure(clients: int, rounds: int) -> dict:
    """Run one fleet in its own process; its first round's figures (`figures`).

    Copies the run's report.json and metrics.csv to `simulations/results/fleet-N/`; a failed
    run raises `RuntimeError`.
    """
    with tempfile.TemporaryDirectory(prefix="fedadapt-scale-") as tmp:
        out = Path(tmp) / "run"
        t = time.perf_counter()
        res = subprocess.run(command(clients, rounds, out), cwd=ROOT, text=True, check=False)
        wall = time.perf_counter() - t
        if res.returncode != 0:
            raise RuntimeError(f"the {clients}-client fleet run failed (exit {res.returncode})")
        keep = ROOT / "simulations" / "results" / f"fleet-{clients}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "metrics.csv"):
            shutil.copyfile(out / name, keep / name)
        return figures(json.loads((out / "report.json").read_text()), wall)


def run(quick: bool = False) -> dict:
    """Both fleets for 2 rounds; `quick`: the 100-client fleet only."""
    return {str(n): measure(n, rounds=2) for n in (FLEETS[:1] if quick else FLEETS)}
