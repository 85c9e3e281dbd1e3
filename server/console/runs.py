"""The Runs view: every run under the runs folder, round by round, while it trains and after.

A run is a folder that `fedadapt simulate` (or `deploy-demo`) writes: `config.json` first,
`metrics.csv` after every round, `report.json` and `plots/` at the end, and `devices.json`
after a deployment. The view is built from those files alone, so it follows a run written by
another process, on this machine or copied from another, with no hook into the trainer.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

from fedadapt.server.console.readers import FileCache, Notices, number, reason_counts

MARKERS = ("config.json", "metrics.csv", "report.json", "devices.json")
MAX_RUNS = 200  # a results folder of every experiment ever: the newest 200 are shown
SERIES = ("global_accuracy", "personalized_accuracy", "upload_bytes", "seconds", "train_loss")
# What a run may serve: its own records and plots, and the global adapter. Nothing else in
# the folder, since a deployment's folder also holds its devices' data.
SERVED = re.compile(
    r"^(report\.json|metrics\.csv|config\.json|devices\.json|plots/[\w.-]+\.png"
    r"|adapter/adapter_config\.json|adapter/adapter_model\.safetensors)$"
)
RUNNING_FOR_S = 120.0  # no round for longer than this (or 3 rounds' time): no longer running


def find_runs(root: Path) -> dict[str, Path]:
    """Run folders by id (the folder's path under `root`; `.` when `root` is one run), to a
    depth of two (a results folder groups runs, as `simulations/results/attacks/*` does)."""
    root = Path(root)
    found: dict[str, Path] = {}
    if _is_run(root):
        found["."] = root
    frontier = [root]
    for _ in range(2):
        nxt = []
        for folder in frontier:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                continue
            for child in children:
                if child.name.startswith(".") or child.name in ("checkpoints", "plots"):
                    continue
                if _is_run(child):
                    found[child.relative_to(root).as_posix()] = child
                else:
                    nxt.append(child)
        frontier = nxt
    if len(found) > MAX_RUNS:
        newest = sorted(found, key=lambda k: _mtime(found[k]), reverse=True)[:MAX_RUNS]
        found = {k: found[k] for k in sorted(newest)}
    return found


def _is_run(folder: Path) -> bool:
    return any((folder / m).is_file() for m in MARKERS)


def _mtime(folder: Path) -> float:
    stamps = []
    for m in MARKERS:
        try:
            stamps.append((folder / m).stat().st_mtime)
        except OSError:
            continue
    return max(stamps, default=0.0)


def read_run(run_id: str, folder: Path, cache: FileCache, now: float | None = None) -> dict:
    """One run as plain data for the page: its rounds as series (one entry per round, None
    where a round has no figure), its progress and state, the final table with its
    intervals, its files, and a notice for each file that could not be read."""
    now = time.time() if now is None else now
    notices = Notices()
    label = "this run" if run_id == "." else f"run {run_id}"
    config, why = cache.json(folder / "config.json", f"{label}: config.json")
    if why and (folder / "config.json").exists():
        notices.add(why)
    report, why = cache.json(folder / "report.json", f"{label}: report.json")
    if why and (folder / "report.json").exists():
        notices.add(why)
    report = report if isinstance(report, dict) else None
    config = config if isinstance(config, dict) else (report or {}).get("config")
    rows, why = cache.csv(folder / "metrics.csv", f"{label}: metrics.csv")
    if why and (folder / "metrics.csv").exists():
        notices.add(why)
    rounds, bad = _series(rows or [])
    if bad:
        notices.add(
            f"{label}: metrics.csv: {bad} line{'s' * (bad > 1)} with no round number skipped"
        )
    total = config.get("rounds") if isinstance(config, dict) else None
    done = len(rounds["round"])
    last_write = _age(folder / "metrics.csv", now)
    return {
        "id": run_id,
        "name": folder.name if run_id == "." else run_id,
        "state": _state(report, rounds, last_write),
        "rounds_done": done,
        "rounds_total": total if isinstance(total, int) and total > 0 else None,
        "last_round": rounds["round"][-1] if done else None,
        "seconds_since_write": None if last_write is None else round(last_write, 1),
        "rounds": rounds,
        "final": _final(report),
        "comparisons": _comparisons(report),
        "files": _files(folder),
        "checkpoints": _checkpoints(folder),
        "devices": _devices(folder, label, cache, notices),
        "notices": notices.lines,
    }


def _series(rows: list[dict[str, str]]) -> tuple[dict[str, Any], int]:
    """Per-round lists, sorted by round (a round written twice, by a resume, counts once),
    and the number of rows that had no round number."""
    by_round: dict[int, dict[str, str]] = {}
    bad = 0
    for row in rows:
        r = number(row.get("round"))
        if isinstance(r, int) and r >= 1:
            by_round[r] = row
        else:
            bad += 1
    order = sorted(by_round)
    out: dict[str, Any] = {"round": order}
    for key in SERIES:
        out[key] = [number(by_round[r].get(key)) for r in order]
    per_round = [reason_counts(by_round[r].get("rejected")) for r in order]
    reasons = sorted({k for counts in per_round for k in counts})
    out["rejected"] = {k: [counts.get(k, 0) for counts in per_round] for k in reasons}
    out["rejected_total"] = [sum(counts.values()) for counts in per_round]
    return out, bad


def _age(path: Path, now: float) -> float | None:
    try:
        return max(0.0, now - path.stat().st_mtime)
    except OSError:
        return None


def _state(report: dict | None, rounds: dict[str, Any], age: float | None) -> str:
    if report is not None:
        return "done"
    if age is None:
        return "waiting"  # config written, no round yet (or a deployment's devices only)
    seconds = [s for s in rounds["seconds"] if isinstance(s, int | float)]
    patience = max(RUNNING_FOR_S, 3 * max(seconds, default=0))
    return "running" if age <= patience else "stopped"


def _final(report: dict | None) -> dict[str, float] | None:
    final = (report or {}).get("final")
    if not isinstance(final, dict):
        return None
    return {k: v for k, v in final.items() if isinstance(v, int | float)}


def _comparisons(report: dict | None) -> list[dict[str, Any]]:
    comps = (report or {}).get("comparisons")
    if not isinstance(comps, dict):
        return []
    out = []
    for name, c in comps.items():
        if isinstance(c, dict) and all(
            isinstance(c.get(k), int | float) for k in ("mean_diff", "ci95_low", "ci95_high")
        ):
            out.append(
                {
                    "name": name,
                    "mean_diff": c["mean_diff"],
                    "low": c["ci95_low"],
                    "high": c["ci95_high"],
                    "clients": c.get("clients"),
                }
            )
    return out


def _files(folder: Path) -> list[dict[str, Any]]:
    """The run's files the console serves (`SERVED`), with their sizes."""
    out = []
    candidates = [*(folder / m for m in MARKERS), folder / "adapter" / "adapter_config.json"]
    candidates.append(folder / "adapter" / "adapter_model.safetensors")
    with contextlib.suppress(OSError):
        candidates += sorted((folder / "plots").glob("*.png"))
    for path in candidates:
        rel = path.relative_to(folder).as_posix()
        try:
            if SERVED.match(rel) and path.is_file():
                out.append({"name": rel, "bytes": path.stat().st_size})
        except OSError:
            continue
    return out


def _checkpoints(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in (folder / "checkpoints").iterdir() if p.is_file())[:20]
    except OSError:
        return []


def _devices(folder: Path, label: str, cache: FileCache, notices: Notices) -> list[dict] | None:
    """A deployment's `devices.json`: each device's global and personalized accuracy."""
    path = folder / "devices.json"
    if not path.exists():
        return None
    data, why = cache.json(path, f"{label}: devices.json")
    if why:
        notices.add(why)
    rows = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        if data is not None:
            notices.add(f"{label}: devices.json holds no device list")
        return None
    keep = (
        "node",
        "examples_train",
        "examples_heldout",
        "global_accuracy",
        "personalized_accuracy_torch",
        "personalized_accuracy_ort",
    )
    return [
        {k: r.get(k) for k in keep if isinstance(r.get(k), int | float)}
        for r in rows[:10000]
        if isinstance(r, dict)
    ]


def run_file(runs: dict[str, Path], run_id: str, name: str) -> Path | None:
    """The file `name` of run `run_id`, if the console serves it; None for anything else
    (an unknown run, a name outside `SERVED`, a link out of the run's folder)."""
    folder = runs.get(run_id)
    if folder is None or not SERVED.match(name):
        return None
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        return None
    return path
