"""rt-full.toml's personalization modes against full-model FedAvg (issue 13): one row each.

    .venv/bin/python simulations/personalization_table.py
        [--out simulations/results/personalization] [--report MODE=PATH ...]

Inputs, the runs of simulations/rt-full*.toml that differ only in `personalization` (the
rf rows: only in the global adapter's width):
- head-bias: simulations/results/rt-full/report.json (rt-full.toml, with the full-model
  baseline trained in the same run);
- fedrep-head-bias: simulations/results/rt-full-fedrep-head-bias/report.json. It also gives
  the `fedrep` row: its devices report the personal stack before the head bias
  (`personal_stack_accuracy`), and the bias is fitted only at evaluation, on top, so FedRep's
  training is this run's;
- ditto: simulations/results/rt-full-ditto/report.json;
- head-bias-rf8 and head-bias-rf4: simulations/results/rt-full-rf{8,4}/report.json, the
  head bias over a global adapter 4x and 8x as wide (reduction_factor 8 and 4): not modes of
  their own but changes to the global training, the rows whose global column may differ.
`--report fedrep=PATH` takes the fedrep row from a run of rt-full-fedrep.toml instead;
`--without MODE` leaves out a run not made yet (its row says so).

Per row: the final global and personalized accuracy, and the paired 95% intervals of
personalized − full-model FedAvg personalized (the issue's goal: above 0) and global −
full-model FedAvg (the goal: within 1 pt). The notes list every config key in which the runs
differ besides the personalization. A missing input is one line naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedadapt.errors import FedAdaptError
from fedadapt.report_tables import (
    check_present,
    config_differences,
    interval,
    load_json,
    markdown,
    require,
    shown,
    write,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_REPORTS = {
    "head-bias": RESULTS / "rt-full" / "report.json",
    "fedrep-head-bias": RESULTS / "rt-full-fedrep-head-bias" / "report.json",
    "ditto": RESULTS / "rt-full-ditto" / "report.json",
}
# rows that are not a personalization mode: head-bias over a wider global adapter, by its
# reduction factor (rt-full-rf{n}.toml)
WIDER = {f"head-bias-rf{n}": n for n in (8, 4)}
DEFAULT_REPORTS |= {row: RESULTS / f"rt-full-rf{n}" / "report.json" for row, n in WIDER.items()}
STACK_FROM = "fedrep-head-bias"  # the run whose personal stack is the fedrep row
PERSONALIZED_GOAL = "personalized_vs_full_model_fedavg_personalized"
GLOBAL_GOAL = "global_vs_full_model_fedavg"
# What the runs may differ in without changing what is compared: the mode and its own
# settings, where the full-model baseline came from, the run's own baselines, where it wrote.
SAME_RUN = frozenset(
    {"personalization", "ditto_lambda", "full_model_from", "baselines", "out", "resume"}
)


def _row(mode: str, report: dict[str, Any], where: str, stack: bool = False) -> dict[str, Any]:
    """One row's figures; `stack`: the fedrep row read from a fedrep-head-bias run."""
    run_mode = require(report, "config.personalization", where)
    want = STACK_FROM if stack else "head-bias" if mode in WIDER else mode
    if run_mode != want:
        raise FedAdaptError(f"{where} is a {run_mode!r} run, not {want!r}")
    personalized = "personal_stack_accuracy" if stack else "personalized_accuracy"
    goal = "personal_stack_vs_full_model_fedavg_personalized" if stack else PERSONALIZED_GOAL
    return {
        "row": mode,
        "personalization": "fedrep" if stack else run_mode,
        "report": where,
        "global_accuracy": require(report, "final.global_accuracy", where),
        "personalized_accuracy": require(report, f"final.{personalized}", where),
        "full_model_fedavg_accuracy": require(report, "final.full_model_fedavg_accuracy", where),
        "full_model_fedavg_personalized_accuracy": require(
            report, "final.full_model_fedavg_personalized_accuracy", where
        ),
        PERSONALIZED_GOAL: require(report, f"comparisons.{goal}", where),
        GLOBAL_GOAL: require(report, f"comparisons.{GLOBAL_GOAL}", where),
    }


def build(
    reports: dict[str, dict[str, Any]], where: dict[str, Path], without: tuple[str, ...] = ()
) -> dict[str, Any]:
    rows = [_row(mode, r, shown(where[mode])) for mode, r in reports.items() if mode != "fedrep"]
    if "fedrep" in reports:
        rows.insert(1, _row("fedrep", reports["fedrep"], shown(where["fedrep"])))
    elif STACK_FROM in reports:
        rows.insert(1, _row("fedrep", reports[STACK_FROM], shown(where[STACK_FROM]), stack=True))
    else:
        without = ("fedrep", *without)
    return {
        "config": "simulations/rt-full.toml",
        "rows": rows,
        "not_run": list(without),
        "config_differences": config_differences(reports, SAME_RUN),
    }


def _label(row: str) -> str:
    return f"`head-bias`, reduction_factor {WIDER[row]}" if row in WIDER else f"`{row}`"


def render(table: dict[str, Any]) -> str:
    header = [
        "personalization",
        "global adapter",
        "personalized",
        "personalized − full-model FedAvg personalized (95% CI)",
        "global − full-model FedAvg (95% CI)",
    ]
    body = [
        [
            _label(r["row"]),
            f"{r['global_accuracy']:.3f}",
            f"{r['personalized_accuracy']:.3f}",
            interval(r[PERSONALIZED_GOAL]),
            interval(r[GLOBAL_GOAL]),
        ]
        for r in table["rows"]
    ]
    body += [[_label(m), *["not run"] * 4] for m in table["not_run"]]
    first = table["rows"][0]
    notes = [
        f"Full-model FedAvg: global {first['full_model_fedavg_accuracy']:.3f}, personalized "
        f"with the head bias {first['full_model_fedavg_personalized_accuracy']:.3f} (the "
        "recorded rt-full baseline, reused by the other runs).",
        "Goals (issue 13): personalized − full-model FedAvg personalized with the interval "
        "above 0; global within 1 pt of full-model FedAvg.",
        "* the 95% interval (paired bootstrap over clients) excludes 0.",
    ]
    notes += [f"Config differs in {k}: {v}." for k, v in table["config_differences"].items()]
    return markdown(header, body) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _reports(pairs: list[str], without: list[str]) -> dict[str, Path]:
    optional = [m for m in DEFAULT_REPORTS if m != "head-bias"]  # head-bias holds the baseline
    if unknown := sorted(set(without) - set(optional)):
        raise FedAdaptError(f"--without takes {' or '.join(optional)}, not {', '.join(unknown)}")
    where = {m: p for m, p in DEFAULT_REPORTS.items() if m not in without}
    for pair in pairs:
        mode, sep, path = pair.partition("=")
        if not sep or mode not in {*DEFAULT_REPORTS, "fedrep"}:
            modes = ", ".join(["fedrep", *DEFAULT_REPORTS])
            raise FedAdaptError(f"--report takes MODE=PATH, MODE one of {modes}; got {pair!r}")
        where[mode] = Path(path)
    return where


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "personalization")
    p.add_argument("--report", action="append", default=[], metavar="MODE=PATH")
    p.add_argument("--without", action="append", default=[], metavar="MODE", help="not run yet")
    args = p.parse_args(argv)
    where = _reports(args.report, args.without)
    check_present({f"the {mode} report": path for mode, path in where.items()})
    reports = {mode: load_json(path, f"the {mode} report") for mode, path in where.items()}
    table = build(reports, where, tuple(args.without))
    write(args.out, render(table), table)


if __name__ == "__main__":
    try:
        main()
    except FedAdaptError as e:
        sys.exit(f"personalization_table: {e}")
