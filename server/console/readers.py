"""Files read for the console: bounded in size, cached by (mtime, size), and never raising.

A console that fails on the first bad file is useless exactly when the operator needs it:
a run killed mid-write, a copy cut short, a log grown past reason. Every reader here gives
back the value, or None and a one-line notice that names the file by its role and its name
inside the run or registry (never a path on the machine, which may name a device's data).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 16 * 1024 * 1024  # a report or a metrics file is kilobytes; past this, a notice


@dataclass
class Notices:
    """The one-line notices gathered while building a view; shown on the page as they are."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        """Keep `line` once: the page polls, and a notice repeated per poll is noise."""
        line = " ".join(line.split())
        if line not in self.lines:
            self.lines.append(line)


class FileCache:
    """Parsed files by path, kept while their mtime and size stay the same.

    The page polls every two seconds; without this each poll re-parses every run's report.
    """

    def __init__(self, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: dict[tuple[Path, str], tuple[tuple[int, int], Any, str | None]] = {}

    def _read(self, path: Path, kind: str, label: str, parse) -> tuple[Any, str | None]:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None, f"{label} is missing"
        except OSError as e:
            return None, f"{label} is unreadable ({e.strerror or type(e).__name__})"
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._entries.get((path, kind))
        if hit and hit[0] == stamp:
            return hit[1], hit[2]
        if st.st_size > self.max_bytes:
            value, notice = (
                None,
                (
                    f"{label} is too large to show ({st.st_size / 2**20:.0f} MiB, "
                    f"the cap is {self.max_bytes / 2**20:.0f} MiB)"
                ),
            )
        else:
            try:
                with open(path, "rb") as f:
                    data = f.read(self.max_bytes + 1)
                value, notice = parse(data.decode("utf-8", errors="replace"), label)
            except OSError as e:
                value, notice = None, f"{label} is unreadable ({e.strerror or type(e).__name__})"
        with self._lock:
            if len(self._entries) > 4096:  # a runs folder of thousands: start over, stay bounded
                self._entries.clear()
            self._entries[(path, kind)] = (stamp, value, notice)
        return value, notice

    def json(self, path: Path, label: str) -> tuple[Any, str | None]:
        """The file's JSON value, or None and why not (missing, torn, huge)."""
        return self._read(path, "json", label, _parse_json)

    def csv(self, path: Path, label: str) -> tuple[list[dict[str, str]] | None, str | None]:
        """The CSV's rows as dicts by header; a torn last line is dropped, with a notice."""
        return self._read(path, "csv", label, _parse_csv)

    def jsonl(self, path: Path, label: str) -> tuple[list[dict] | None, str | None]:
        """One JSON object a line; unreadable lines (a torn append) are skipped and counted."""
        return self._read(path, "jsonl", label, _parse_jsonl)


def _parse_json(text: str, label: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return None, f"{label} is torn or not JSON (a write cut short?); it is skipped"


def _parse_csv(text: str, label: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """metrics.csv holds no quoted cells (`server.report` writes none), so a split will do."""
    lines = text.split("\n")
    torn = bool(lines) and lines[-1] != ""  # the writer ends every line with a newline
    lines = [line for line in lines if line.strip()]
    if not lines:
        return None, f"{label} is empty"
    head = lines[0].split(",")
    rows, bad = [], 0
    for i, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(head) or (torn and i == len(lines)):
            bad += 1
            continue
        rows.append(dict(zip(head, cells, strict=True)))
    notice = None
    if bad:
        notice = f"{label}: {bad} torn line{'s' * (bad > 1)} skipped (a write cut short?)"
    return rows, notice


def _parse_jsonl(text: str, label: str) -> tuple[list[dict] | None, str | None]:
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    notice = f"{label}: {bad} torn line{'s' * (bad > 1)} skipped" if bad else None
    return rows, notice


def number(text: str | None) -> float | int | None:
    """A metrics cell as a number (an int where it is one), None where it is empty or not one."""
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def reason_counts(text: str | None) -> dict[str, int]:
    """A round's rejected replies as `reason=count` pairs (`server.report._cell`); the older
    `{}` of a run without rejections reads as none."""
    out: dict[str, int] = {}
    for pair in (text or "").split():
        reason, _, count = pair.partition("=")
        if reason and count.isdigit():
            out[reason] = out.get(reason, 0) + int(count)
    return out
