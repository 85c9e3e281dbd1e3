"""The adapter-method table for bbc-dirichlet.toml (issue #15): one row per method.

    .venv/bin/python simulations/method_table.py [--out simulations/results/methods]
        [--report METHOD=PATH ...] [--bench simulations/results/bench.json]

Reads six run reports of bbc-dirichlet.toml that differ only in `method` (the bottleneck's is
simulations/results/bbc-dirichlet/report.json, the others simulations/results/methods/
<method>/report.json, as `make method-table` writes them) and bench.json's `core` and
`export` sections. Per method: trainable parameters (adapter and head, from the report),
upload bytes per client-round (measured on the wire), final global and personalized
accuracy with their paired 95% intervals against full-model FedAvg, the CPU training step
over the int8 base (bench core) and the ORT latency overhead over the int8 base graph (bench
export). Writes table.md and table.json to --out and prints the table. A missing input is
one line naming it; a figure the bench has not measured yet reads "not measured".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedadapt.errors import FedAdaptError
from fedadapt.report_tables import (
    NOT_MEASURED,
    check_present,
    config_differences,
    interval,
    load_json,
    lookup,
    markdown,
    require,
    shown,
    size,
    write,
)
from fedadapt.simconfig import FEDERATED_METHODS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_REPORTS = {
    m: RESULTS / ("bbc-dirichlet" if m == "bottleneck" else f"methods/{m}") / "report.json"
    for m in FEDERATED_METHODS
}
COMPARISONS = ("global_vs_full_model_fedavg", "personalized_vs_full_model_fedavg")
# Keys a method run may differ in from the bottleneck's without changing what is compared:
# the method itself, where the full-model baseline came from (reused with or without the
# run's own baselines, which add only local-only and zero-shot columns), how long the server
# waits for a round, where the run wrote to.
SAME_RUN = frozenset({"method", "full_model_from", "baselines", "round_timeout", "out", "resume"})
PRECISION = "int8"  # the simulations' base; bench figures are read at this precision


def _report_row(method: str, report: dict[str, Any], where: str) -> dict[str, Any]:
    got = require(report, "adapter.method", where)
    if got != method:
        raise FedAdaptError(f"{where} is a {got!r} run, not {method!r}")
    row: dict[str, Any] = {"method": method, "report": where}
    for key, dotted in (
        ("trainable_params", "adapter.trainable_params"),
        ("fraction_of_base", "adapter.fraction_of_base"),
        ("upload_bytes_per_client_round", "communication.upload_bytes_per_client_round"),
        ("global_accuracy", "final.global_accuracy"),
        ("personalized_accuracy", "final.personalized_accuracy"),
    ):
        row[key] = require(report, dotted, where)
    hint = "run with baselines = true or full_model_from"
    row["full_model_fedavg_accuracy"] = require(
        report, "final.full_model_fedavg_accuracy", where, hint
    )
    for name in COMPARISONS:
        row[name] = require(report, f"comparisons.{name}", where, hint)
    return row


def _bench_figures(method: str, bench: dict[str, Any]) -> dict[str, Any]:
    """The step time and ORT overheads for `method`, None where not measured. The export
    section's top-level figures are the bottleneck's graph (same shape as the runs'), so
    they stand in for a bench.json written before the per-method entries existed."""
    export = lookup(bench, f"export.{PRECISION}") or {}
    measured = lookup(export, f"methods.{method}")
    if measured is None and method == "bottleneck":
        measured = export
    return {
        "train_step_ms": lookup(bench, f"core.{PRECISION}.{method}.train_step_ms"),
        "ort_overhead_pct": {
            seq: lookup(measured, f"{seq}.overhead_pct") for seq in ("seq128", "seq32")
        },
    }


def build(reports: dict[str, dict[str, Any]], bench: dict[str, Any], where: dict) -> dict:
    """The table's data: one row per method, plus what the reader needs to judge it."""
    rows = [_report_row(m, reports[m], shown(where[m])) | _bench_figures(m, bench) for m in reports]
    first = reports[next(iter(reports))]
    return {
        "config": "simulations/bbc-dirichlet.toml",
        "codec": lookup(first, "config.codec"),
        "rows": rows,
        "full_model_fedavg_accuracy": {r["method"]: r["full_model_fedavg_accuracy"] for r in rows},
        "full_model_bytes_per_client_round": lookup(
            first, "communication.full_model_bytes_per_client_round"
        ),
        "config_differences": config_differences(reports, SAME_RUN),
        # each section's own machine (bench.json's `machines`; older files: `machine`)
        "bench_machines": {
            section: lookup(bench, f"machines.{section}") or bench.get("machine")
            for section in ("core", "export")
        },
        "merged_lora_overhead_pct": {
            seq: lookup(bench, f"export.{PRECISION}.{seq}.merged_lora_overhead_pct")
            for seq in ("seq128", "seq32")
        },
    }


def _machine(m: dict[str, Any] | None) -> str:
    if not m:
        return "machine not recorded"
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('date', 'date unknown')}"


def _pct(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:+.1f}%"


def _overhead(pcts: dict[str, float | None]) -> str:
    if all(v is None for v in pcts.values()):
        return NOT_MEASURED
    return f"{_pct(pcts['seq128'])} / {_pct(pcts['seq32'])}"


def render(table: dict[str, Any]) -> str:
    header = [
        "method",
        "trainable params",
        "upload / client-round",
        "global acc",
        "global − full FedAvg [95% CI]",
        "personalized acc",
        "personalized − full FedAvg [95% CI]",
        f"train step ({PRECISION} base)",
        "ORT overhead (seq 128 / 32)",
    ]
    body = [
        [
            r["method"],
            f"{r['trainable_params']:,} ({r['fraction_of_base']:.2%})",
            size(r["upload_bytes_per_client_round"]),
            f"{r['global_accuracy']:.3f}",
            interval(r["global_vs_full_model_fedavg"]),
            f"{r['personalized_accuracy']:.3f}",
            interval(r["personalized_vs_full_model_fedavg"]),
            NOT_MEASURED if r["train_step_ms"] is None else f"{r['train_step_ms']:.0f} ms",
            _overhead(r["ort_overhead_pct"]),
        ]
        for r in table["rows"]
    ]
    full = sorted({round(v, 4) for v in table["full_model_fedavg_accuracy"].values()})
    machines = table["bench_machines"]
    notes = [
        f"Runs: {table['config']}, one per method. Full-model FedAvg (the interval's "
        f"reference, paired over the same clients): accuracy {', '.join(map(str, full))}, "
        f"{size(table['full_model_bytes_per_client_round'])} per client-round.",
        "Trainable params: the adapter plus the head, as the report counts them. Upload: the "
        f"mean serialized reply per client-round ({table['codec']} codec).",
        "* the 95% interval (bootstrap over clients) excludes 0.",
        f"Train step: bench.json's core ({_machine(machines['core'])}); ORT overhead: its "
        f"export ({_machine(machines['export'])}). Step: median AdamW step, batch 16 × 48 "
        f"tokens, over the {PRECISION} base; bottleneck and LoRA at the core section's fixed "
        "shapes (reduction factor 16; LoRA r 8 with A trained), the other four at the runs' "
        "shapes. ORT: batch 1, each adapter as overridable inputs (the runs' shapes), "
        f"against the {PRECISION} base graph with the same head.",
    ]
    merged = table["merged_lora_overhead_pct"]
    if any(v is not None for v in merged.values()):
        notes.append(f"LoRA merged into the base weights instead: {_overhead(merged)}.")
    for key, values in table["config_differences"].items():
        notes.append(f"Config differs in {key}: {values}.")
    return markdown(header, body) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _parse_reports(pairs: list[str]) -> dict[str, Path]:
    paths = dict(DEFAULT_REPORTS)
    for pair in pairs:
        method, sep, path = pair.partition("=")
        if not sep or method not in paths:
            raise FedAdaptError(
                f"--report takes METHOD=PATH with METHOD one of {', '.join(paths)}; got {pair!r}"
            )
        paths[method] = Path(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "methods")
    p.add_argument("--bench", type=Path, default=RESULTS / "bench.json")
    p.add_argument("--report", action="append", default=[], metavar="METHOD=PATH")
    args = p.parse_args(argv)
    paths = _parse_reports(args.report)
    check_present({f"{m} report": path for m, path in paths.items()} | {"bench": args.bench})
    reports = {m: load_json(path, f"the {m} report") for m, path in paths.items()}
    table = build(reports, load_json(args.bench, "bench file"), paths)
    text = render(table)
    write(args.out, text, table)


if __name__ == "__main__":
    try:
        main()
    except FedAdaptError as e:
        sys.exit(f"method_table: {e}")
