"""The Devices and Rollouts views, from a registry's rollout state.

The devices' signed reports (`reports.jsonl`, one per channel, kept by the update service
only after their signature checked out) are the console's source on devices: when each was
last seen, the version it runs, on which channel, how that version scores on its held-out
data, and its failures. The rollout state (`rollout.json`) and the signed channel file give
each channel's stage, and the guardrail's statistic is recomputed here with the very
functions the service halts with (`summarize`, `verdict`), so the page and the guardrail
cannot disagree.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

from fedadapt.errors import FedAdaptError
from fedadapt.server.console.readers import FileCache, Notices
from fedadapt.server.updates.rollout import (
    REPORTS_FILE,
    ROLLOUT_FILE,
    Guardrail,
    Rollouts,
    summarize,
    verdict,
)
from fedadapt.updates.cohort import CHANNEL_NAME_RE, CHANNELS_DIR, Channel, in_cohort

MAX_POINTS = 120  # the interval's chart: past this many reports, evenly spaced ones
QUIET_AFTER_S = 900.0  # a device unseen for longer is flagged as gone quiet


class Fleet:
    """Reads one registry's channels, rollouts and device reports for the console.

    Parameters
    ----------
    registry : Path
        The registry folder (`fedadapt publish --registry`).
    state : Path or None (default: None)
        The rollout state folder (default: REGISTRY.rollout, as `fedadapt rollout` has it).
    quiet_after : float (default: 900)
        Seconds without a report after which a device is flagged as gone quiet.
    """

    def __init__(
        self, registry: Path, state: Path | None = None, quiet_after: float = QUIET_AFTER_S
    ) -> None:
        self.rollouts = Rollouts(registry, state)
        self.quiet_after = quiet_after
        self.cache = FileCache()
        self._memo: dict[str, tuple[Any, dict]] = {}
        self._lock = threading.Lock()

    def channels(self) -> list[str]:
        """Every channel with a signed file in the registry or a rollout in the state."""
        names = set()
        for folder, pattern in (
            (self.rollouts.registry / CHANNELS_DIR, "*.json"),
            (self.rollouts.state, f"*/{ROLLOUT_FILE}"),
            (self.rollouts.state, f"*/{REPORTS_FILE}"),
        ):
            try:
                for p in folder.glob(pattern):
                    name = p.stem if pattern == "*.json" else p.parent.name
                    if CHANNEL_NAME_RE.match(name):
                        names.add(name)
            except OSError:
                continue
        return sorted(names)[:64]

    def _reports(self, name: str, notices: Notices) -> list[dict]:
        path = self.rollouts.state / name / REPORTS_FILE
        if not path.exists():
            return []
        rows, why = self.cache.jsonl(path, f"channel {name}: {REPORTS_FILE}")
        if why:
            notices.add(why)
        keys = ("device", "received_at", "candidate", "running", "stable", "examples")
        return [r for r in rows or [] if all(k in r for k in keys)]

    def _channel(self, name: str, notices: Notices) -> tuple[Any, Channel | None]:
        try:
            current = self.rollouts.read_channel(name)
        except FedAdaptError:
            notices.add(f"channel {name}: its signed channel file is torn or invalid")
            return None, None
        return (current[0], current[1]) if current else (None, None)

    def _rollout(self, name: str, notices: Notices) -> dict | None:
        path = self.rollouts.state / name / ROLLOUT_FILE
        if not path.exists():
            return None
        state, why = self.cache.json(path, f"channel {name}: {ROLLOUT_FILE}")
        if why:
            notices.add(why)
        if state is not None and not _rollout_shape(state):
            notices.add(f"channel {name}: {ROLLOUT_FILE} is not a rollout state; it is skipped")
            return None
        return state

    def rollout_view(self, now: float | None = None) -> dict[str, Any]:
        """Each channel: stage and fraction, exposed devices, the guardrail's interval over
        the reports received, and the halt with its reason."""
        notices = Notices()
        channels = [self._channel_view(n, notices, now) for n in self.channels()]
        return {"channels": channels, "notices": notices.lines}

    def _channel_view(self, name: str, notices: Notices, now: float | None) -> dict[str, Any]:
        meta, ch = self._channel(name, notices)
        state = self._rollout(name, notices)
        reports = self._reports(name, notices)
        now = time.time() if now is None else now
        out: dict[str, Any] = {
            "name": name,
            "stable": ch.stable if ch else None,
            "candidate": ch.candidate if ch else None,
            "fraction": ch.fraction if ch else None,
            "file_version": meta.version if meta else None,
            "expires_at": meta.expires_at if meta else None,
            "expired": _expired(meta.expires_at, now) if meta else None,
            "stage": _stage(ch, state),
            "fractions": [],
            "halted": None,
            "guardrail": None,
            "interval": {"at": [], "reports": [], "mean": [], "low": [], "high": []},
            "exposed": 0,
            "known_devices": len({r["device"] for r in reports}),
            "counted": 0,
            "verdict": None,
        }
        if ch and ch.candidate is not None:
            out["exposed"] = sum(
                in_cohort(d, ch.salt, ch.fraction) for d in {r["device"] for r in reports}
            )
        if state is None:
            return out
        out["fractions"] = state.get("fractions") or []
        out["halted"] = state.get("halted")
        out["rollout_candidate"] = state["candidate"]
        try:
            guard = Guardrail(**state["guardrail"])
        except (TypeError, FedAdaptError):
            notices.add(f"channel {name}: {ROLLOUT_FILE} holds no valid guardrail")
            return out
        out["guardrail"] = {
            "threshold": guard.threshold,
            "max_failure_rate": guard.max_failure_rate,
            "min_devices": guard.min_devices,
        }
        mine = [
            r
            for r in reports
            if r["candidate"] == state["candidate"] and r["received_at"] >= state["started_at"]
        ]
        active = ch if ch and ch.candidate == state["candidate"] else None
        out["interval"] = self._interval(name, mine, active)
        s = summarize(mine, active)
        out["counted"] = s.devices
        out["summary"] = {
            "mean": s.mean_diff,
            "low": s.low,
            "high": s.high,
            "failure_rate": s.failure_rate,
            "local_rollbacks": s.local_rollbacks,
        }
        if active is not None:
            out["verdict"] = verdict(s, guard)
        return out

    def _interval(self, name: str, reports: list[dict], channel: Channel | None) -> dict:
        """The paired difference and its 95% interval after each report (from the second
        on), as the guardrail saw it then; memoized per channel until a report arrives."""
        key = (len(reports), reports[-1]["received_at"] if reports else None, channel)
        with self._lock:
            hit = self._memo.get(name)
        if hit and hit[0] == key:
            return hit[1]
        ks = list(range(2, len(reports) + 1))
        if len(ks) > MAX_POINTS:
            step = len(ks) / MAX_POINTS
            ks = sorted({ks[int(i * step)] for i in range(MAX_POINTS)} | {ks[-1]})
        out: dict[str, list] = {"at": [], "reports": [], "mean": [], "low": [], "high": []}
        for k in ks:
            s = summarize(reports[:k], channel)
            if s.low is None:
                continue  # fewer than two counted devices yet: no interval
            out["at"].append(_iso(reports[k - 1]["received_at"]))
            out["reports"].append(k)
            out["mean"].append(s.mean_diff)
            out["low"].append(s.low)
            out["high"].append(s.high)
        with self._lock:
            self._memo[name] = (key, out)
        return out

    def device_view(self, now: float | None = None) -> dict[str, Any]:
        """Each device that ever reported: last seen, the version and channel it runs, its
        accuracy there from its latest signed report, its failures and rollbacks; a device
        unseen for `quiet_after` seconds is flagged."""
        now = time.time() if now is None else now
        notices = Notices()
        latest: dict[str, dict] = {}
        history: dict[str, dict[str, int]] = {}
        for name in self.channels():
            for r in self._reports(name, notices):
                h = history.setdefault(r["device"], {"reports": 0, "rollbacks": 0})
                h["reports"] += 1
                h["rollbacks"] += 1 if r.get("rolled_back") else 0
                seen = latest.get(r["device"])
                if seen is None or r["received_at"] >= seen["received_at"]:
                    latest[r["device"]] = {**r, "channel": name}
        devices = []
        for device, r in sorted(latest.items(), key=lambda kv: -kv[1]["received_at"]):
            on_candidate = r["running"] == r["candidate"]
            failures = r.get("candidate_failures" if on_candidate else "stable_failures")
            age = now - r["received_at"]
            devices.append(
                {
                    "device": device,
                    "channel": r["channel"],
                    "last_seen": _iso(r["received_at"]),
                    "seconds_ago": round(age, 1),
                    "quiet": age > self.quiet_after,
                    "version": r["running"],
                    "on_candidate": on_candidate,
                    "accuracy": r.get("candidate_accuracy" if on_candidate else "stable_accuracy"),
                    "stable_accuracy": r.get("stable_accuracy"),
                    "candidate_accuracy": r.get("candidate_accuracy"),
                    "examples": r["examples"],
                    "failures": failures,
                    "failing": bool(failures) or bool(r.get("rolled_back")),
                    "rolled_back": bool(r.get("rolled_back")),
                    **history[device],
                }
            )
        return {"devices": devices, "quiet_after": self.quiet_after, "notices": notices.lines}


def _rollout_shape(state: object) -> bool:
    return (
        isinstance(state, dict)
        and isinstance(state.get("candidate"), int)
        and isinstance(state.get("started_at"), int | float)
        and isinstance(state.get("guardrail"), dict)
    )


def _stage(ch: Channel | None, state: dict | None) -> str:
    """Where the channel stands, in the words `fedadapt rollout status` uses."""
    if ch is None:
        return "no channel file"
    if ch.candidate is not None:
        promotions = len((state or {}).get("fractions") or [])
        return f"rolling out v{ch.candidate} to {ch.fraction:.0%} (stage {max(promotions, 1)})"
    if state and state.get("halted"):
        return f"halted; back on stable v{ch.stable}"
    if state and state.get("candidate") == ch.stable:
        return f"finished; v{ch.stable} is stable"
    return f"stable v{ch.stable}"


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _expired(expires_at: str, now: float) -> bool | None:
    try:
        return dt.datetime.fromisoformat(expires_at).timestamp() < now
    except (TypeError, ValueError):
        return None
