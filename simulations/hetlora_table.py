"""HetLoRA device tiers (bbc-hetlora.toml, ranks 2, 4, 8) against homogeneous ranks 8 and 2.

    .venv/bin/python simulations/hetlora_table.py [--out simulations/results/hetlora]
        [--het PATH] [--r8 PATH] [--r2 PATH]

Inputs, as `make method-table` leaves them:
- --het: bbc-hetlora.toml (simulations/results/hetlora/bbc-het/report.json);
- --r2: the same with lora_tier_ranks = 2 (simulations/results/hetlora/bbc-het-r2/report.json);
- --r8: bbc-dirichlet.toml with method = lora (simulations/results/methods/lora/report.json):
  FFA-LoRA at rank 8 on the same clients and seed, without tiers and with baselines on.
  The notes list every config key in which the three runs differ.

A report holds no per-tier figures, so they are derived here: a client's tier is
`fedadapt.hetlora.client_rank(config, partition)`, the function the run itself drew it with,
and its accuracies are the report's per-client ones. A tier's upload is derived from the
real adapter: the serialized delta (run's codec) of the trainable tensors of that rank's
model, framed as the reply's arrays record; the reply's metrics and metadata add a few
hundred bytes, which the homogeneous runs' measured bytes show beside the derived ones.
Paired comparisons are over the same clients, with the bootstrap of `fedadapt.report_tables`.
"""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path
from typing import Any

from fedadapt import hetlora
from fedadapt.errors import FedAdaptError
from fedadapt.report_tables import (
    check_present,
    config_differences,
    interval,
    load_json,
    markdown,
    require,
    shown,
    size,
    write,
)
from fedadapt.simconfig import SimConfig

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {
    "het": RESULTS / "hetlora" / "bbc-het" / "report.json",
    "r8": RESULTS / "methods" / "lora" / "report.json",
    "r2": RESULTS / "hetlora" / "bbc-het-r2" / "report.json",
}
LABELS = {"het": "HetLoRA", "r8": "homogeneous r=8", "r2": "homogeneous r=2"}
METRICS = ("global_accuracy", "personalized_accuracy")
SAME_RUN = frozenset({"out", "resume"})


@cache
def tier_upload(cfg: SimConfig, rank: int) -> dict[str, int]:
    """What a rank-`rank` client uploads, from the real adapter: trainable tensors (FFA-LoRA's
    B and the head), their codec bytes, and the arrays record those take on the wire. Cached:
    each call builds a model over the base."""
    import torch
    from flwr.app import RecordDict

    from fedadapt.codecs import encode
    from fedadapt.model_setup import GLOBAL, build_model
    from fedadapt.records import pack_delta, wire_bytes

    model = build_model(hetlora.client_config(cfg, rank))
    model.train_adapter(GLOBAL)
    state = model.adapter_state(GLOBAL, trainable_only=True)
    blob = encode({k: torch.zeros_like(v) for k, v in state.items()}, cfg.codec)
    return {
        "trainable_params": sum(v.numel() for v in state.values()),
        "delta_bytes": len(blob),
        "arrays_wire_bytes": wire_bytes(RecordDict({"arrays": pack_delta(blob)})),
    }


def _config(report: dict[str, Any], where: str) -> SimConfig:
    if require(report, "adapter.method", where) != "lora":
        raise FedAdaptError(f"{where} is not a LoRA run")
    return SimConfig.from_dict(require(report, "config", where))


def _clients(report: dict[str, Any], where: str) -> dict[int, dict[str, float]]:
    per_client = require(report, "per_client", where)
    return {int(pid): m for pid, m in per_client.items()}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _compare(
    a: dict[int, dict], b: dict[int, dict], pids: list[int], key: str, seed: int
) -> dict | None:
    """Paired `a − b` over the clients in `pids` that both runs evaluated."""
    from fedadapt.server.report import bootstrap_diff

    both = [p for p in pids if key in a.get(p, {}) and key in b.get(p, {})]
    if not both:
        return None
    return bootstrap_diff([a[p][key] for p in both], [b[p][key] for p in both], seed)


def _group(runs: dict[str, dict[int, dict]], pids: list[int], seed: int) -> dict[str, Any]:
    """One row's figures: each run's mean accuracies over `pids`, HetLoRA minus each
    homogeneous run, paired."""
    row: dict[str, Any] = {"clients": len(pids)}
    for key in METRICS:
        for run, clients in runs.items():
            row[f"{run}_{key}"] = _mean([clients[p][key] for p in pids if key in clients[p]])
        for other in ("r8", "r2"):
            row[f"het_vs_{other}_{key}"] = _compare(runs["het"], runs[other], pids, key, seed)
    return row


def build(reports: dict[str, dict[str, Any]], where: dict[str, Path]) -> dict:
    """The table's data: per tier, over all clients, and per run."""
    configs = {run: _config(r, shown(where[run])) for run, r in reports.items()}
    het = configs["het"]
    tiers = hetlora.parse_tiers(het.lora_tier_ranks)
    if len(tiers) < 2:
        raise FedAdaptError(f"{where['het']} has no device tiers (lora_tier_ranks)")
    runs = {run: _clients(r, shown(where[run])) for run, r in reports.items()}
    ranks = {run: hetlora.global_rank(cfg) for run, cfg in configs.items()}
    for run, want in (("r8", 8), ("r2", 2)):
        if ranks[run] != want or len(hetlora.parse_tiers(configs[run].lora_tier_ranks)) > 1:
            raise FedAdaptError(f"{where[run]} is not a homogeneous rank-{want} LoRA run")
    uploads = {r: tier_upload(het, r) for r in sorted(set(tiers) | {2, 8})}
    tier_of = {pid: hetlora.client_rank(het, pid) for pid in runs["het"]}
    rows = [
        {"tier_rank": r, "upload": uploads[r]}
        | _group(runs, sorted(p for p, t in tier_of.items() if t == r), het.seed)
        for r in sorted(tiers)
    ]
    overall = _group(runs, sorted(tier_of), het.seed)
    return {
        "config": "simulations/bbc-hetlora.toml",
        "tiers": rows,
        "all_clients": overall,
        "runs": {
            run: {
                "report": shown(where[run]),
                "ranks": configs[run].lora_tier_ranks or str(configs[run].lora_r),
                "global_accuracy": require(reports[run], "final.global_accuracy", where[run]),
                "personalized_accuracy": require(
                    reports[run], "final.personalized_accuracy", where[run]
                ),
                "upload_bytes_per_client_round": require(
                    reports[run], "communication.upload_bytes_per_client_round", where[run]
                ),
                "derived_upload_at_global_rank": uploads.get(ranks[run]),
            }
            for run in reports
        },
        "config_differences": config_differences(reports, SAME_RUN),
    }


def _acc(row: dict, key: str) -> str:
    vals = [row[f"{run}_{key}"] for run in ("het", "r8", "r2")]
    return " / ".join("—" if v is None else f"{v:.3f}" for v in vals)


def render(table: dict[str, Any]) -> str:
    header = [
        "tier rank",
        "clients",
        "upload / client-round (derived)",
        "global: Het / r8 / r2",
        "Het − r8 global [95% CI]",
        "Het − r2 global [95% CI]",
        "personalized: Het / r8 / r2",
        "Het − r8 pers. [95% CI]",
        "Het − r2 pers. [95% CI]",
    ]
    rows = [
        {**t, "label": str(t["tier_rank"]), "bytes": size(t["upload"]["arrays_wire_bytes"])}
        for t in table["tiers"]
    ]
    het_up = table["runs"]["het"]["upload_bytes_per_client_round"]
    rows.append({**table["all_clients"], "label": "all", "bytes": f"{size(het_up)} measured"})
    body = [
        [
            r["label"],
            str(r["clients"]),
            r["bytes"],
            _acc(r, "global_accuracy"),
            interval(r["het_vs_r8_global_accuracy"]),
            interval(r["het_vs_r2_global_accuracy"]),
            _acc(r, "personalized_accuracy"),
            interval(r["het_vs_r8_personalized_accuracy"]),
            interval(r["het_vs_r2_personalized_accuracy"]),
        ]
        for r in rows
    ]
    runs_header = ["run", "ranks", "global", "personalized", "upload / client-round", "derived"]
    runs_body = [
        [
            LABELS[run],
            r["ranks"],
            f"{r['global_accuracy']:.3f}",
            f"{r['personalized_accuracy']:.3f}",
            f"{size(r['upload_bytes_per_client_round'])} measured",
            "—"
            if r["derived_upload_at_global_rank"] is None or run == "het"
            else size(r["derived_upload_at_global_rank"]["arrays_wire_bytes"]),
        ]
        for run, r in table["runs"].items()
    ]
    notes = [
        f"Runs: {table['config']} (tiers drawn per client from the seed) and the two "
        "homogeneous runs on the same clients; accuracies are client means, each tier's over "
        "its own clients in all three runs. A tier's global accuracy is the global adapter "
        "cut to that tier's rank, as its clients evaluate it.",
        "Upload per tier is derived, not measured (a report records no per-tier bytes): the "
        "serialized delta of that rank's trainable tensors (B and the head; A is frozen), "
        "framed as the reply's arrays record. Measured means per run are in the runs table; "
        "the gap to the derived size is the reply's metrics and metadata.",
        "* the 95% interval (paired bootstrap over clients) excludes 0.",
    ]
    for key, values in table["config_differences"].items():
        notes.append(f"Config differs in {key}: {values}.")
    return (
        markdown(header, body)
        + "\n"
        + markdown(runs_header, runs_body)
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "hetlora")
    for run, path in DEFAULTS.items():
        p.add_argument(f"--{run}", type=Path, default=path, help=f"{LABELS[run]} report.json")
    args = p.parse_args(argv)
    where = {run: getattr(args, run) for run in DEFAULTS}
    check_present({f"{LABELS[run]} report": path for run, path in where.items()})
    reports = {run: load_json(path, f"the {LABELS[run]} report") for run, path in where.items()}
    table = build(reports, where)
    text = render(table)
    write(args.out, text, table)


if __name__ == "__main__":
    try:
        main()
    except FedAdaptError as e:
        sys.exit(f"hetlora_table: {e}")
