"""Issue 24's attack table: global and personalized accuracy under attack, with the defaults
(the round's weight and norm bounds, the trimmed mean of `strategy = "auto"`), against the
same config without attackers. `results/attacks-fedavg/` holds the same table under FedAvg,
the default before.

Each run is `quick.toml` without baselines (`make attack-table` makes them), the attackers
fixed by the seed: one client (5%), 10% or 20% of the 20, claiming the server's cap of 1000
examples with a negated delta (`claim-cap`), scaling their delta by 1e6 (`scale`), flipping
and scaling it x10 (`sign-flip`), or sending 1e36 everywhere (`huge`). The difference to the
clean run is paired over the same clients, with a 95% bootstrap interval. The final round of
quick.toml swings by several points from round to round, so the table also gives the mean
global accuracy of the last five rounds.

    python simulations/attack_table.py --runs simulations/results/attacks [--run-missing]

`--run-missing` first makes every run whose report.json is missing (about 5-9 minutes each
on 2 cores; `make attack-table`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from fedadapt.errors import FedAdaptError
from fedadapt.report_tables import interval, load_json, markdown, write
from fedadapt.server.report import bootstrap_diff

# run folder name: (attack, share of clients)
RUNS = {
    "claim-cap-1": ("claim-cap", 0.05),
    "claim-cap-10": ("claim-cap", 0.10),
    "claim-cap-20": ("claim-cap", 0.20),
    "scale-10": ("scale", 0.10),
    "scale-20": ("scale", 0.20),
    "sign-flip-10": ("sign-flip", 0.10),
    "sign-flip-20": ("sign-flip", 0.20),
    "huge-10": ("huge", 0.10),
    "huge-20": ("huge", 0.20),
}
KEYS = ("global_accuracy", "personalized_accuracy")
QUICK = Path(__file__).resolve().parent / "quick.toml"


def run_missing(runs: Path) -> None:
    """`fedadapt simulate` for each run without a report, the clean one first."""
    for name, (attack, share) in {"clean": ("sign-flip", 0.0), **RUNS}.items():
        out = runs / name
        if (out / "report.json").exists():
            continue
        cmd = [sys.executable, "-m", "fedadapt", "simulate", "--config", str(QUICK)]
        cmd += ["--no-baselines", "--out", str(out), "--set", f"malicious_fraction={share}"]
        cmd += ["--set", f"attack={attack}"]
        print(f"running {name}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True)


def paired(attacked: dict, clean: dict, key: str) -> dict:
    """The attacked run's per-client `key` minus the clean run's, over their common clients."""
    a, b = attacked["per_client"], clean["per_client"]
    both = sorted(set(a) & set(b), key=int)
    return bootstrap_diff([a[c][key] for c in both], [b[c][key] for c in both])


def last5(report: dict) -> str:
    """The mean global accuracy of the run's last five evaluated rounds."""
    accs = [r["global_accuracy"] for r in report["rounds"] if r.get("global_accuracy") is not None]
    return f"{sum(accs[-5:]) / len(accs[-5:]):.3f}" if accs else "—"


def table(runs: Path) -> tuple[str, dict]:
    clean = load_json(runs / "clean" / "report.json", "the clean run's report")
    rows = [["clean", "—", f"{clean['final']['global_accuracy']:.3f}", "", last5(clean),
             f"{clean['final']['personalized_accuracy']:.3f}", "", "—"]]  # fmt: skip
    data: dict = {"clean": clean["final"]}
    for name, (attack, share) in RUNS.items():
        path = runs / name / "report.json"
        if not path.exists():
            rows.append([attack, f"{share:.0%}", "not run", "", "", "", "", ""])
            continue
        report = load_json(path, f"the {name} run's report")
        cmp = {key: paired(report, clean, key) for key in KEYS}
        rejected: dict[str, int] = {}
        for r in report["rounds"]:
            for reason, count in (r.get("rejected") or {}).items():
                rejected[reason] = rejected.get(reason, 0) + count
        rows.append(
            [
                attack,
                f"{share:.0%}",
                f"{report['final']['global_accuracy']:.3f}",
                interval(cmp["global_accuracy"]),
                last5(report),
                f"{report['final']['personalized_accuracy']:.3f}",
                interval(cmp["personalized_accuracy"]),
                ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none",
            ]
        )
        data[name] = {"final": report["final"], "vs_clean": cmp, "rejected": rejected}
    header = [
        "attack",
        "attackers",
        "global",
        "global − clean (95% CI)",
        "global, mean of rounds 6-10",
        "personalized",
        "personalized − clean (95% CI)",
        "replies refused",
    ]
    return markdown(header, rows), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="simulations/results/attacks", help="the runs' folder")
    parser.add_argument(
        "--run-missing", action="store_true", help="first make the runs that have no report"
    )
    args = parser.parse_args()
    try:
        if args.run_missing:
            run_missing(Path(args.runs))
        text, data = table(Path(args.runs))
    except FedAdaptError as e:
        sys.exit(f"attack_table: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"attack_table: a run failed ({e.returncode}); its folder keeps its log")
    write(Path(args.runs), text, data)


if __name__ == "__main__":
    main()
