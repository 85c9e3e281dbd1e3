"""What a run writes: report.json (docs/reference/formats.md), metrics.csv and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedadapt.atomic import atomic_write_text
from fedadapt.server.timing import PARTS

ROUND_FIELDS = [
    "round",
    "clients",
    "upload_bytes",
    "download_bytes",
    "train_loss",
    "global_accuracy",
    "personalized_accuracy",
    "seconds",
    *PARTS,  # where the round's time went (server.timing)
    "server_peak_rss_mb",
    "actor_peak_rss_mb",  # in a simulation (fedadapt.ray_nodes)
]

PERSONAL_STACK = "personal_stack_accuracy"


def bootstrap_diff(a: list[float], b: list[float], seed: int = 0, n: int = 2000) -> dict[str, Any]:
    """Mean of paired per-client differences `a − b`, with a 95% bootstrap CI over clients."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "mean_diff": float(d.mean()),
        "ci95_low": float(lo),
        "ci95_high": float(hi),
        "clients": len(d),
    }


def comparisons(per_client: dict[int, dict[str, float]], seed: int) -> dict[str, Any]:
    """The paired comparisons of report.json: for each pair of per-client accuracies, the mean
    difference with its bootstrap CI, over the clients that have both figures.

    A pair no client has both of (a baseline not run) is left out, not reported as empty.

    Parameters
    ----------
    per_client : dict of int to dict of str to float
        Each client's final figures, by client id.
    seed : int
        The bootstrap's seed (the run's), so a report can be reproduced.

    Returns
    -------
    dict
        Comparison name to `bootstrap_diff`'s result.
    """
    pairs = {
        "personalized_vs_local_only": ("personalized_accuracy", "local_only_accuracy"),
        "personalized_vs_full_model_fedavg": ("personalized_accuracy", "full_model_accuracy"),
        "global_vs_full_model_fedavg": ("global_accuracy", "full_model_accuracy"),
        "personalized_vs_full_model_fedavg_personalized": (
            "personalized_accuracy",
            "full_model_personalized_accuracy",
        ),
        "personalized_vs_local_majority": ("personalized_accuracy", "local_majority_accuracy"),
        # fedrep-head-bias: the personal stack before its head bias (FedRep's own figure)
        "personal_stack_vs_full_model_fedavg_personalized": (
            PERSONAL_STACK,
            "full_model_personalized_accuracy",
        ),
    }
    out = {}
    for name, (x, y) in pairs.items():
        clients = [c for c, m in sorted(per_client.items()) if x in m and y in m]
        if clients:
            out[name] = bootstrap_diff(
                [per_client[c][x] for c in clients], [per_client[c][y] for c in clients], seed
            )
    return out


def mean_of(per_client: dict[int, dict[str, float]], key: str) -> float | None:
    """The mean of `key` over the clients that have it; None when none does."""
    vals = [m[key] for m in per_client.values() if key in m]
    return float(np.mean(vals)) if vals else None


def assemble(
    cfg: Any,
    base: Any,
    trainable: int,
    rows: list[dict[str, Any]],
    full_rows: list[dict[str, Any]],
    per_client: dict[int, dict[str, float]],
    full_msg: int,
    wall_seconds: float,
) -> dict[str, Any]:
    """report.json from a finished run's rows and per-client figures: a pure function, so the
    ServerApp only gathers what went in (`base`: the frozen base, `full_msg`: the wire size of
    one full-model message, for the bytes-equivalent of full-model FedAvg)."""
    up = sum(r["upload_bytes"] for r in rows)
    down = sum(r["download_bytes"] for r in rows)
    client_rounds = sum(r["clients"] for r in rows)
    final = {
        k: mean_of(per_client, k)
        for k in (
            "global_accuracy",
            "personalized_accuracy",
            "local_only_accuracy",
            "zero_shot_accuracy",
        )
    }
    final["full_model_fedavg_accuracy"] = mean_of(per_client, "full_model_accuracy")
    final["full_model_fedavg_personalized_accuracy"] = mean_of(
        per_client, "full_model_personalized_accuracy"
    )
    final["local_majority_accuracy"] = mean_of(per_client, "local_majority_accuracy")
    if (stack := mean_of(per_client, PERSONAL_STACK)) is not None:  # fedrep-head-bias only
        final[PERSONAL_STACK] = stack
    return {
        "base_model": {k: v for k, v in base.describe().items() if k != "sha256"}
        | {"sha256": base.sha256},
        "adapter": {
            "method": cfg.method,
            "trainable_params": trainable,
            "fraction_of_base": trainable / base.params,
        },
        "config": cfg.to_dict(),
        "rounds": [
            {k: r.get(k) for k in ROUND_FIELDS}
            | {"rejected": r.get("rejected", {})}
            | ({"dp_epsilon": r["dp_epsilon"]} if "dp_epsilon" in r else {})
            | ({"ray_nodes": r["ray_nodes"]} if "ray_nodes" in r else {})
            for r in rows
        ],
        "final": final,
        "comparisons": comparisons(per_client, cfg.seed),
        "communication": {
            "upload_bytes_total": up,
            "download_bytes_total": down,
            "upload_bytes_per_client_round": up / max(client_rounds, 1),
            "full_model_bytes_per_client_round": full_msg,
            "full_model_fedavg_bytes_equivalent": 2 * full_msg * client_rounds,
            "full_model_fedavg_bytes_measured": sum(
                r["upload_bytes"] + r["download_bytes"] for r in full_rows
            )
            or None,
        },
        "full_model_fedavg_rounds": [{k: r.get(k) for k in ROUND_FIELDS} for r in full_rows],
        "per_client": {str(k): v for k, v in sorted(per_client.items())},
        "wall_seconds": round(wall_seconds, 1),
    }


def _cell(value: Any) -> str:
    """A CSV cell: a list (a round's Ray node ids) space-separated, and a mapping (a round's
    rejected replies by reason) as `reason=count` pairs, so no comma splits either."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv: one line per round, the `ROUND_FIELDS` first, then any other keys a row has
    (sorted), so a new figure shows up without a schema change. A missing value is an empty
    cell. Written atomically.
    """
    extra = sorted({k for r in rows for k in r} - set(ROUND_FIELDS))
    lines = [",".join(ROUND_FIELDS + extra)]
    for r in rows:
        lines.append(",".join(_cell(r.get(k)) for k in ROUND_FIELDS + extra))
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write `report` to `out`/report.json, atomically, so a reader never sees half a report."""
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, sort_keys=False) + "\n")


def plot(
    out: Path, rows: list[dict[str, Any]], full_rows: list[dict[str, Any]], final: dict[str, Any]
) -> list[Path]:
    """Draw plots/accuracy.png (accuracy per evaluated round, final baselines as lines) and
    plots/upload_bytes.png (upload per round, log scale) under `out`.

    Parameters
    ----------
    out : Path
        The run's output folder.
    rows, full_rows : list of dict
        The run's rounds, and those of the full-model FedAvg baseline (empty when not run).
    final : dict
        report.json's "final" figures; the baselines among them that are set become lines.

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    ev = [r for r in rows if r.get("global_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(
        [r["round"] for r in ev], [r["global_accuracy"] for r in ev], "o-", label="global adapter"
    )
    ax.plot(
        [r["round"] for r in ev],
        [r["personalized_accuracy"] for r in ev],
        "s-",
        label="personalized",
    )
    fev = [r for r in full_rows if r.get("global_accuracy") is not None]
    if fev:
        ax.plot(
            [r["round"] for r in fev],
            [r["global_accuracy"] for r in fev],
            "^--",
            label="full-model FedAvg",
        )
    baselines = (
        ("local_only_accuracy", ":", "tab:green"),
        ("local_majority_accuracy", "-.", "grey"),
        ("zero_shot_accuracy", "--", "tab:purple"),
        ("full_model_fedavg_accuracy", "--", "tab:red"),
        ("full_model_fedavg_personalized_accuracy", ":", "tab:red"),
    )
    for key, style, color in baselines:
        if final.get(key) is not None:
            label = f"{key.removesuffix('_accuracy').replace('_', ' ')} (final) {final[key]:.3f}"
            ax.axhline(final[key], linestyle=style, color=color, linewidth=1, label=label)
    ax.set(xlabel="round", ylabel="mean client test accuracy", title="Accuracy per round")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    written.append(plots / "accuracy.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [r["round"] for r in rows], [r["upload_bytes"] for r in rows], "o-", label="adapter deltas"
    )
    if full_rows:
        ax.plot(
            [r["round"] for r in full_rows],
            [r["upload_bytes"] for r in full_rows],
            "^--",
            label="full-model FedAvg",
        )
    ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="upload bytes (all clients)", title="Upload per round")
    ax.legend()
    fig.tight_layout()
    written.append(plots / "upload_bytes.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written
