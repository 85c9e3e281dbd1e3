"""What a device tells its own operator: the last event of each kind, kept in its folder.

The ClientApp (in the warm worker or in Flower's process) and `device run` write to one small
private file, `status.json`: the last round trained (examples, loss), the data it read
(usable and skipped rows, by file), the last evaluation, the last error and the last update
check. `fedadapt device status` reads it with the installed versions and the SuperNode's
pid; `device run` prints one console line per new event. Everything here stays on the
device (0600): file names and error texts are for its owner, never for a reply.

No torch, no Flower: `device status` must answer on a device without them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from fedadapt.atomic import PRIVATE, atomic_write_text, private_folder

STATUS_FILE = "status.json"
KINDS = ("data", "trained", "evaluated", "error", "update", "supernode")


def read(folder: Path) -> dict[str, dict[str, Any]]:
    """The last event of each kind; empty for a device that has done nothing yet (or a torn
    file, which the next event rewrites whole)."""
    try:
        data = json.loads((Path(folder) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k in KINDS and isinstance(v, dict)}


def note(folder: str | Path | None, kind: str, **fields: Any) -> None:
    """Record the event `kind` now (replacing the last one of that kind). Never raises: a
    device that cannot write its status still trains and replies."""
    if not folder or kind not in KINDS:
        return
    path = Path(folder) / STATUS_FILE
    with contextlib.suppress(OSError):
        private_folder(folder)
        lock = os.open(Path(folder) / ".status.lock", os.O_RDWR | os.O_CREAT, PRIVATE)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the worker and device run both write it
            data = read(Path(folder))
            data[kind] = {"at": time.time(), **fields}
            atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n", PRIVATE)
        finally:
            os.close(lock)


def line(kind: str, event: dict[str, Any]) -> str:
    """One event as the console line `device run` prints."""
    if kind == "data":
        skipped = ", ".join(f"{f} {n}" for f, n in sorted(event.get("bad_by_file", {}).items()))
        return (
            f"read {event.get('usable')} usable examples ({event.get('train')} train, "
            f"{event.get('held_out')} held out), {event.get('bad_rows')} rows skipped"
            + (f" ({skipped})" if skipped else "")
        )
    if kind == "trained":
        return (
            f"trained round {event.get('round')}: {event.get('examples')} examples, "
            f"loss {event.get('loss', float('nan')):.4f}"
        )
    if kind == "evaluated":
        return f"evaluated round {event.get('round')}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(event.items()) if k.endswith("accuracy")
        )
    if kind == "error":
        return f"{event.get('message_type', 'a message')} failed: {event.get('message')}"
    return f"{kind}: {event.get('message', '')}"


def _when(event: dict[str, Any]) -> str:
    at = event.get("at")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "unknown time"


def _pid_alive(folder: Path, name: str) -> str:
    try:
        pid = int((folder / name).read_text().strip())
    except (OSError, ValueError):
        return "not running"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"not running (pid {pid} is gone)"
    except PermissionError:
        pass
    return f"running (pid {pid})"


def report(folder: str | Path) -> str:
    """`fedadapt device status`: what this device runs and the last thing that happened."""
    folder = Path(folder)
    events = read(folder)
    lines = [f"device {folder}"]
    lines.append(f"SuperNode: {_pid_alive(folder, 'supernode.pid')}")
    lines.append(f"warm worker: {_pid_alive(folder, 'worker.pid')}")
    try:
        state = json.loads((folder / "state.json").read_text())
        installed = f"version {state.get('version')} of {state.get('name')!r}"
        if state.get("previous") is not None:
            installed += f" (rollback to {state['previous']})"
    except (OSError, ValueError, AttributeError):
        installed = "no signed version yet"
    lines.append(f"installed: {installed}")
    pending = (
        sorted(p.name for p in (folder / "downloads").glob("*"))
        if (folder / "downloads").is_dir()
        else []
    )
    lines.append(f"pending downloads: {', '.join(pending) if pending else 'none'}")
    personalized = folder / "personalized.onnx_adapter"
    trained = events.get("trained")
    if personalized.exists():
        served = f"personalized.onnx_adapter, written {_when({'at': personalized.stat().st_mtime})}"
    else:
        served = "none (no exported graph, or a mode that keeps no personal part)"
    lines.append(f"personalized model: {served}")
    for kind, title in (
        ("trained", "last round trained"),
        ("data", "data"),
        ("evaluated", "last evaluation"),
        ("update", "last update check"),
        ("error", "last error"),
    ):
        event = events.get(kind)
        text = f"{line(kind, event)} ({_when(event)})" if event else "none yet"
        lines.append(f"{title}: {text}")
    if trained is None and "error" not in events:
        lines.append("(no round yet: is the SuperLink reachable? see supernode.log)")
    return "\n".join(lines)
