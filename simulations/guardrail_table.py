"""Issue 24's guardrail table: the share of lying reporters needed to move a rollout decision.

Honest devices report a paired held-out difference drawn around the candidate's true effect
(a good candidate: 0 points; a bad one: -30 points; sd 5 points, 50 examples each, a failure
rate of 1% or, for a failing candidate, 20%). Liars report the extreme that serves them, with
a claim of 10^12 examples. For each attack, the smallest number of liars that flips the
guardrail's decision is found by trying 0, 1, 2, ... liars among `n` devices, over several
seeds; the table gives it as a share of the reporters.

Two rules are compared on the same reports: the guardrail as it is (`server.updates.rollout`:
one device one vote, a 25% trimmed mean with Yuen's interval, per-device failure rates) and
the rule it replaced (the plain mean with a t interval, failures pooled over examples),
re-stated here only to measure it.

    python simulations/guardrail_table.py --out simulations/results/guardrail
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from fedadapt.server.updates.rollout import Guardrail, summarize, verdict

GUARD = Guardrail(threshold=0.05, max_failure_rate=0.05, min_devices=5)
EXAMPLES = 50
SEEDS = range(5)
# attack: (honest candidate's effect, honest failure rate, the liar's report, the goal)
ATTACKS = {
    "force a halt (liars: -100 pts)": (0.0, 0.01, {"diff": -1.0}, "halt"),
    "force a halt (liars: all failed, 10^12 examples)": (
        0.0,
        0.01,
        {"failed": 1.0, "examples": 10**12},
        "halt",
    ),
    "block a halt (liars: +100 pts)": (-0.30, 0.01, {"diff": 1.0}, "no halt"),
    "block a halt (liars: no failure, 10^12 examples)": (
        0.0,
        0.20,
        {"failed": 0.0, "examples": 10**12},
        "no halt",
    ),
}


def _report(i: int, diff: float, failed: float, examples: int = EXAMPLES) -> dict:
    stable = 0.8
    cand = min(1.0, max(0.0, stable + diff))
    return {
        "device": f"{i:016x}",
        "candidate": 2,
        "running": 2,
        "rolled_back": 0,
        "stable_accuracy": stable if diff >= -stable else 1.0,
        "candidate_accuracy": cand if diff >= -stable else 0.0,
        "examples": examples,
        "candidate_failures": round(failed * examples),
    }


def reports(n: int, liars: int, attack: str, seed: int) -> list[dict]:
    effect, rate, lie, _ = ATTACKS[attack]
    rng = np.random.default_rng([seed, n, liars])
    out = [
        _report(i, float(rng.normal(effect, 0.05)), float(rng.binomial(EXAMPLES, rate)) / EXAMPLES)
        for i in range(n - liars)
    ]
    for j in range(liars):
        out.insert(0, _report(n + j, lie.get("diff", 0.0), lie.get("failed", 0.0),
                              lie.get("examples", EXAMPLES)))  # fmt: skip
    return out


def old_rule_halts(rows: list[dict]) -> bool:
    """The guardrail before issue 24: mean difference with a t interval; failures pooled."""
    diffs = [r["candidate_accuracy"] - r["stable_accuracy"] for r in rows]
    failure = sum(r["candidate_failures"] for r in rows) / sum(r["examples"] for r in rows)
    if failure > GUARD.max_failure_rate:
        return True
    mean, sem = float(np.mean(diffs)), float(stats.sem(diffs))
    high = mean + float(stats.t.ppf(0.975, len(diffs) - 1)) * sem
    return high < -GUARD.threshold


def new_rule_halts(rows: list[dict]) -> bool:
    return verdict(summarize(rows), GUARD) is not None


def liars_needed(n: int, attack: str, halts) -> float | None:
    """The smallest share of liars that reaches the attack's goal on every seed; None if even
    all-but-one liars do not."""
    goal = ATTACKS[attack][3]
    for liars in range(n):
        reached = [halts(reports(n, liars, attack, s)) == (goal == "halt") for s in SEEDS]
        if all(reached):
            return liars / n
    return None


def table(sizes: list[int]) -> tuple[list[dict], str]:
    rows, lines = [], []
    lines.append("| attack | devices | old rule: liars needed | guardrail now: liars needed |")
    lines.append("|---|---:|---:|---:|")
    for attack in ATTACKS:
        for n in sizes:
            old = liars_needed(n, attack, old_rule_halts)
            new = liars_needed(n, attack, new_rule_halts)
            rows.append({"attack": attack, "devices": n, "old": old, "new": new})
            lines.append(f"| {attack} | {n} | {_share(old)} | {_share(new)} |")
    return rows, "\n".join(lines) + "\n"


def _share(x: float | None) -> str:
    return "never" if x is None else f"{math.ceil(x * 1000) / 10:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="simulations/results/guardrail", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50, 200])
    args = parser.parse_args()
    rows, md = table(args.sizes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guardrail.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "table.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
