"""The full-model FedAvg baseline taken from an earlier run instead of trained again.

On rt-full the baseline is 30 rounds of 90 MB messages and a costly evaluation: hours, for
figures that depend only on the data, the clients, the seed, the rounds and the full-model
settings, never on the adapter method or strategy under test. A run with
`full_model_from = FOLDER` reads that folder's `report.json` (its config and per-client
`full_model_accuracy` / `full_model_personalized_accuracy`) and uses those figures.

What must match, each refused in one line naming the key otherwise (before the run starts,
and the client set again once the server knows its nodes):
- the keys of `MUST_MATCH`, from the source's recorded config;
- how the full model was personalized (`full_model_personalization`), with the setting that
  way uses (`head_bias_l2` or `finetune_steps`);
- the same base model, and per-client figures for exactly this run's clients.

Reuse is by partition id, so it means the same data only in simulations (and deployments on
the demo partitions); devices training on their own files have no such baseline to share.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedadapt.base.checkpoint import BASE_MODEL_NAME
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig, full_model_personalization

REPORT = "report.json"
# What the full-model baseline's figures depend on: the clients and their splits, the seed,
# and how the full model is trained.
MUST_MATCH = (
    "dataset",
    "num_clients",
    "min_examples",
    "test_fraction",
    "dirichlet_alpha",
    "seed",
    "rounds",
    "clients_per_round",
    "batch_size",
    "max_length",
    "full_model_lr",
    "full_model_epochs",
)
# The setting each way of personalizing the full model depends on.
WAY_SETTING = {"head-bias": "head_bias_l2", "finetune": "finetune_steps"}
FIGURES = ("full_model_accuracy", "full_model_personalized_accuracy")


@dataclass(frozen=True)
class ReusedBaseline:
    """The full-model baseline read from an earlier run's report, already checked against this
    run's config (`load`); `check_clients` checks the client set once the nodes are known.
    """

    report: Path
    per_client: dict[int, dict[str, float]]  # FIGURES, by partition id
    rounds: list[dict[str, Any]]  # the source's full-model round rows, for the report


def report_path(source: str | Path) -> Path:
    """`source` as given: a run folder (its report.json) or the report file itself."""
    path = Path(source)
    return path if path.suffix == ".json" else path / REPORT


def resolved(cfg: SimConfig, cwd: Path | None = None) -> SimConfig:
    """`cfg` with `full_model_from` made absolute (the ServerApp runs elsewhere) and checked
    against the source's config, so a mismatch is refused before any process starts."""
    if not cfg.full_model_from:
        return cfg
    source = Path(cfg.full_model_from)
    source = source if source.is_absolute() else (cwd or Path.cwd()) / source
    out = dataclasses.replace(cfg, full_model_from=str(source.resolve()))
    if out.full_model_baseline:
        load(out)
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedAdaptError(
            f"full_model_from: {path} does not exist (run that run first)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedAdaptError(f"full_model_from: cannot read {path}: {e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("config"), dict):
        raise FedAdaptError(f"full_model_from: {path} is not a run's report (no config)")
    return report


def _mismatch(path: Path, key: str, theirs: Any, ours: Any) -> FedAdaptError:
    return FedAdaptError(
        f"full_model_from: {path} is not this run's full-model baseline: {key} = {theirs!r} "
        f"there, {ours!r} here"
    )


def load(cfg: SimConfig, base_name: str = BASE_MODEL_NAME) -> ReusedBaseline:
    """The source's full-model figures, checked to be this run's baseline."""
    path = report_path(cfg.full_model_from)
    report = _read(path)
    theirs = report["config"]
    for key in MUST_MATCH:
        if theirs.get(key) != getattr(cfg, key):
            raise _mismatch(path, key, theirs.get(key), getattr(cfg, key))
    way = full_model_personalization(cfg.personalization)
    their_way = full_model_personalization(str(theirs.get("personalization")))
    if their_way != way:
        raise _mismatch(path, "full-model personalization", their_way, way)
    setting = WAY_SETTING[way]
    if theirs.get(setting) != getattr(cfg, setting):
        raise _mismatch(path, setting, theirs.get(setting), getattr(cfg, setting))
    their_base = (report.get("base_model") or {}).get("name")
    if their_base != base_name:
        raise _mismatch(path, "base model", their_base, base_name)
    per_client = {}
    for pid, m in (report.get("per_client") or {}).items():
        if isinstance(m, dict) and all(isinstance(m.get(k), int | float) for k in FIGURES):
            per_client[int(pid)] = {k: float(m[k]) for k in FIGURES}
    if not per_client:
        raise FedAdaptError(
            f"full_model_from: {path} holds no per-client full-model accuracies "
            "(that run had no full-model baseline)"
        )
    return ReusedBaseline(path, per_client, list(report.get("full_model_fedavg_rounds") or []))


def check_clients(reused: ReusedBaseline, clients: Iterable[int]) -> None:
    """The source must have figures for exactly this run's clients (partition ids)."""
    ours, theirs = set(clients), set(reused.per_client)
    if ours != theirs:
        missing, extra = sorted(ours - theirs), sorted(theirs - ours)
        raise FedAdaptError(
            f"full_model_from: {reused.report} has the full-model baseline of other clients "
            f"({len(missing)} of this run's missing{f', e.g. {missing[:3]}' if missing else ''}; "
            f"{len(extra)} not in this run{f', e.g. {extra[:3]}' if extra else ''})"
        )


def merge(per_client: dict[int, dict[str, float]], reused: ReusedBaseline) -> None:
    """The reused figures into this run's per-client metrics, as a trained baseline's are."""
    for pid, figures in reused.per_client.items():
        per_client.setdefault(pid, {}).update(figures)
