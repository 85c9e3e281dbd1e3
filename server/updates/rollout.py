"""Staged rollout of a candidate adapter on a channel, and the guardrail that halts it.

The operator's side (`fedadapt rollout start|promote|halt|status`) and the update service's
report endpoint both change a channel through these functions, under one file lock, so a
halt signed by the service and a promote typed by the operator never interleave. Every
change writes the next version of the signed channel file (`fedadapt.updates.cohort`), so a device
refuses an older one replayed at it: a halt cannot be undone by serving the file from
before it.

Rollout state, outside the served registry (reports are not for download):

    STATE/devices/*.pub           the registered devices' Ed25519 public keys
    STATE/NAME/rollout.json       candidate, guardrail bounds, start time, halt time/reason
    STATE/NAME/reports.jsonl      accepted reports, one a line, numbers only

The statistic is paired: each device scores the candidate and the stable version on the same
held-out examples, so its difference is free of how easy its own data is. One device, one
vote: each device gives one difference and one failure rate (its failures over its own
examples, so a claim of 10^12 examples buys nothing), and only a device the channel put on
the candidate counts (in the cohort at the current fraction, reporting on the candidate it
runs or ran). The votes are combined by a 25% trimmed mean, with its 95% interval (Yuen's,
from the winsorized variance): fewer than a quarter of the reporters, lying in one
direction, are cut whole and cannot move the decision. The guardrail fires when the whole
interval lies below −threshold (the candidate is worse by more than the tolerance, with 95%
confidence), or when the trimmed failure rate exceeds its bound. It waits for `min_devices`
reports: an interval over two devices says little.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from fedadapt.atomic import atomic_write_bytes, atomic_write_text
from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.publish import read_index, registry_id
from fedadapt.updates.bundles import BundleError
from fedadapt.updates.cohort import (
    Channel,
    channel_files,
    channel_role,
    check_channel_name,
    in_cohort,
)
from fedadapt.updates.signed_meta import SignedMeta, make_meta, parse_meta

CHANNEL_EXPIRES_IN = dt.timedelta(days=1)
TRIM = 0.25  # cut at each end of the devices' votes: fewer than a quarter cannot move them
ROLLOUT_FILE, REPORTS_FILE = "rollout.json", "reports.jsonl"


@dataclass(frozen=True)
class Guardrail:
    """When a rollout halts on its own; checked when made, and stored with the rollout.

    Parameters
    ----------
    threshold : float (default: 0.02)
        The accuracy loss tolerated: the guardrail fires when the whole 95% interval of the
        paired difference lies below -threshold. In [0, 1).
    max_failure_rate : float (default: 0.05)
        The devices' failure rates (failed candidate inferences over their examples scored),
        trimmed-mean combined. In [0, 1].
    min_devices : int (default: 5)
        Devices that must have reported before either test runs; at least 2.
    """

    threshold: float = 0.02  # tolerated accuracy loss (the interval must lie below −this)
    max_failure_rate: float = 0.05  # failed candidate inferences / examples scored
    min_devices: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1 or not 0 <= self.max_failure_rate <= 1:
            raise FedAdaptError("threshold must be in [0, 1) and max failure rate in [0, 1]")
        if self.min_devices < 2:
            raise FedAdaptError(f"min_devices must be at least 2, got {self.min_devices}")


@dataclass(frozen=True)
class Summary:
    """The candidate's reports so far: the latest per device."""

    devices: int
    mean_diff: float | None
    low: float | None
    high: float | None
    failure_rate: float | None
    local_rollbacks: int


def robust_interval(values: list[float], trim: float = TRIM) -> tuple[float, float, float]:
    """The trimmed mean of `values` (`trim` cut at each end) and Yuen's 95% interval (n >= 2).

    Yuen's standard error comes from the winsorized variance over the `h` values kept, with a
    t of `h - 1` degrees of freedom; scipy's `mstats.trimmed_mean_ci` uses the asymptotic
    error instead, which is too narrow for the handful of devices a rollout starts with.
    """
    n = len(values)
    if n < 2:
        raise FedAdaptError("an interval needs at least two devices")
    x = np.sort(np.asarray(values, dtype=np.float64))
    g = int(trim * n)
    h = n - 2 * g
    mean = float(x[g : n - g].mean())
    if h < 2:
        return mean, mean, mean
    w = np.clip(x, x[g], x[n - g - 1])  # winsorized: the cut values set to the nearest kept
    se = float(np.std(w, ddof=1)) * math.sqrt((n - 1) / (h * (h - 1)))
    half = float(stats.t.ppf(0.975, h - 1)) * se
    return mean, mean - half, mean + half


def counted(reports: list[dict[str, Any]], channel: Channel | None) -> list[dict[str, Any]]:
    """Each device's latest report, of the devices `channel` puts on its candidate: in the
    cohort at its fraction, and running that candidate or having rolled it back. Without a
    channel (a rollout no longer active), every device's latest report."""
    latest: dict[str, dict[str, Any]] = {}
    for r in reports:
        latest[r["device"]] = r
    rows = list(latest.values())
    if channel is None or channel.candidate is None:
        return rows
    return [
        r
        for r in rows
        if r["candidate"] == channel.candidate
        and in_cohort(r["device"], channel.salt, channel.fraction)
        and (r["running"] == channel.candidate or r["rolled_back"])
    ]


def summarize(reports: list[dict[str, Any]], channel: Channel | None = None) -> Summary:
    """`reports` are one candidate's, in arrival order; a device's latest one counts, once.

    Each counted device gives one paired difference and one failure rate; both are combined
    by a trimmed mean (`robust_interval`), the difference with its 95% interval.
    """
    rows = counted(reports, channel)
    diffs = [r["candidate_accuracy"] - r["stable_accuracy"] for r in rows]
    rates = [r["candidate_failures"] / r["examples"] for r in rows]
    mean = low = high = None
    if len(diffs) >= 2:
        mean, low, high = robust_interval(diffs)
    elif diffs:
        mean = diffs[0]
    failure = float(stats.trim_mean(rates, TRIM)) if rates else None
    rollbacks = sum(r["rolled_back"] for r in rows)
    return Summary(len(rows), mean, low, high, failure, rollbacks)


def verdict(s: Summary, guard: Guardrail) -> str | None:
    """Why the rollout must halt, or None."""
    if s.devices < guard.min_devices:
        return None
    if s.failure_rate is not None and s.failure_rate > guard.max_failure_rate:
        return f"failure rate {s.failure_rate:.3f} > bound {guard.max_failure_rate:g}"
    if s.high is not None and s.high < -guard.threshold:
        return (
            f"paired difference {s.mean_diff:+.3f}, 95% interval [{s.low:+.3f}, {s.high:+.3f}] "
            f"lies below -{guard.threshold:g} over {s.devices} devices"
        )
    return None


class Rollouts:
    """One registry's channels and their rollout state."""

    def __init__(self, registry: str | Path, state: str | Path | None = None) -> None:
        self.registry = Path(registry)
        self.state = (
            Path(state) if state else self.registry.with_name(self.registry.name + ".rollout")
        )
        self.torn = 0  # lines of the last reports file read that were not JSON

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state folder's exclusive file lock, across processes, for one change.

        Not reentrant: a method called inside it must not take it again (hence `_halt`).
        """
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # --- the signed channel file -------------------------------------------------------
    def read_channel(self, name: str) -> tuple[SignedMeta, Channel] | None:
        """The channel file's signed metadata and body, or None if the channel was never written.

        A file that exists but does not parse raises `FedAdaptError`: writing over it would lose
        the version number that stops a replay.
        """
        path = self.registry / channel_files(name)[0]
        if not path.exists():
            return None
        try:
            meta = parse_meta(path.read_bytes(), channel_role(name))
            return meta, Channel.parse(meta.body)
        except (OSError, BundleError) as e:
            raise FedAdaptError(f"{path} is corrupt ({e}): restore it before changing it") from e

    def write_channel(
        self, name: str, channel: Channel, key: Ed25519PrivateKey, expires_in=CHANNEL_EXPIRES_IN
    ) -> int:
        """Sign `channel` as the next version of the channel file; returns that version."""
        old = self.read_channel(name)
        version = old[0].version + 1 if old else 1
        rid = registry_id(read_index(self.registry))  # devices bound to it check it
        role = channel_role(name)
        data, sig = make_meta(role, version, channel.body(), key, expires_in, registry=rid)
        rel, rel_sig = channel_files(name)
        atomic_write_bytes(self.registry / rel_sig, sig)
        atomic_write_bytes(self.registry / rel, data)
        return version

    # --- rollout state -------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        """The channel's state folder; the name is checked, so it cannot reach outside the state."""
        return self.state / check_channel_name(name)

    def rollout(self, name: str) -> dict[str, Any]:
        """The channel's rollout state (`rollout.json`); raises `FedAdaptError` if there is none."""
        path = self.folder(name) / ROLLOUT_FILE
        if not path.exists():
            raise FedAdaptError(f"channel {name!r} has no rollout: `fedadapt rollout start` first")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FedAdaptError(f"{path} is unreadable ({e}); restore it") from e

    def _save_rollout(self, name: str, state: dict[str, Any]) -> None:
        atomic_write_text(self.folder(name) / ROLLOUT_FILE, json.dumps(state, indent=1) + "\n")

    def reports(self, name: str, candidate: int | None = None) -> list[dict[str, Any]]:
        """The channel's stored reports, in arrival order, on every rollout ever run.

        Parameters
        ----------
        name : str
            The channel.
        candidate : int or None (default: None)
            Keep only reports on this candidate version; None keeps all.

        Returns
        -------
        list of dict
            One row per report, with its `received_at` time; empty when none arrived. A line
            that is not JSON (torn by a crash mid-append) is skipped and counted in `torn`, so
            the service still starts and the guardrail stays on.
        """
        path = self.folder(name) / REPORTS_FILE
        if not path.exists():
            return []
        rows, self.torn = [], 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:  # a torn line after a crash, or an edit: skipped and counted
                self.torn += 1
                continue
            if isinstance(row, dict) and (candidate is None or row.get("candidate") == candidate):
                rows.append(row)
        return rows

    def rollout_reports(self, name: str) -> list[dict[str, Any]]:
        """The reports on the current (or last) rollout's candidate since it started: an
        earlier rollout of the same version does not count."""
        state = self.rollout(name)
        reports = self.reports(name, state["candidate"])
        return [r for r in reports if r["received_at"] >= state["started_at"]]

    def guardrail(self, name: str) -> Guardrail:
        """The guardrail the channel's current (or last) rollout was started with."""
        return Guardrail(**self.rollout(name)["guardrail"])

    # --- operations ------------------------------------------------------------------------
    def start(
        self,
        name: str,
        version: int,
        fraction: float,
        key: Ed25519PrivateKey,
        stable: int | None = None,
        guard: Guardrail | None = None,
    ) -> Channel:
        """Offer `version` to `fraction` of the channel's devices, with a fresh salt."""
        _check_fraction(fraction)
        known = {v["version"] for v in read_index(self.registry)["versions"]}
        for v in (version, stable):
            if v is not None and v not in known:
                raise FedAdaptError(f"version {v} is not published in {self.registry}")
        with self.locked():
            current = self.read_channel(name)
            if current and current[1].candidate is not None:
                raise FedAdaptError(
                    f"channel {name!r} already rolls out version {current[1].candidate}: "
                    "promote or halt it first"
                )
            stable = stable or (current[1].stable if current else None)
            if stable is None:
                raise FedAdaptError(f"channel {name!r} is new: name its stable version (--stable)")
            if version == stable:
                raise FedAdaptError(f"version {version} is already the stable version")
            channel = Channel(stable, version, fraction, secrets.token_hex(8))
            self.write_channel(name, channel, key)
            guard = guard or Guardrail()
            self._save_rollout(
                name,
                {
                    "candidate": version,
                    "stable": stable,
                    "started_at": time.time(),
                    "guardrail": asdict(guard),
                    "fractions": [[time.time(), fraction]],
                    "halted": None,
                },
            )
            return channel

    def promote(self, name: str, fraction: float, key: Ed25519PrivateKey) -> Channel:
        """Raise the candidate's fraction; lowering it would move devices back and forth."""
        _check_fraction(fraction)
        with self.locked():
            channel = self._active(name)
            if fraction < channel.fraction:
                raise FedAdaptError(
                    f"promote only raises the fraction ({channel.fraction:g} now, asked "
                    f"{fraction:g}); use `rollout halt` to stop"
                )
            channel = Channel(channel.stable, channel.candidate, fraction, channel.salt)
            self.write_channel(name, channel, key)
            state = self.rollout(name)
            state["fractions"].append([time.time(), fraction])
            self._save_rollout(name, state)
            return channel

    def finish(self, name: str, key: Ed25519PrivateKey) -> Channel:
        """Make a candidate that runs on every device the stable version (signed)."""
        with self.locked():
            channel = self._active(name)
            if channel.fraction < 1.0:
                raise FedAdaptError(
                    f"the candidate runs on {channel.fraction:.0%} of devices: promote it to "
                    "1 before finishing"
                )
            assert channel.candidate is not None
            done = Channel(channel.candidate, None, 0.0, channel.salt)
            self.write_channel(name, done, key)
            return done

    def halt(
        self, name: str, key: Ed25519PrivateKey, reason: str = "halted by operator"
    ) -> Channel:
        """Revert the channel to its stable version now, signed as the next version.

        Raises `FedAdaptError` when no candidate is rolling out. `reason` is stored with the
        rollout state and shown by `fedadapt rollout status`.
        """
        with self.locked():
            return self._halt(name, key, reason)

    def _halt(self, name: str, key: Ed25519PrivateKey, reason: str) -> Channel:
        """Revert the channel to stable (signed, the next version); the caller holds the lock."""
        channel = self._active(name)
        reverted = Channel(channel.stable, None, 0.0, channel.salt)
        self.write_channel(name, reverted, key)
        state = self.rollout(name)
        state["halted"] = {"at": time.time(), "reason": reason}
        self._save_rollout(name, state)
        return reverted

    def _active(self, name: str) -> Channel:
        current = self.read_channel(name)
        if current is None or current[1].candidate is None:
            raise FedAdaptError(f"channel {name!r} has no candidate rolling out")
        return current[1]

    def record_report(
        self, name: str, report: dict[str, Any], key: Ed25519PrivateKey | None
    ) -> str | None:
        """Append an accepted report; when it trips the guardrail, halt (if a key is given to
        sign the revert). Returns the halt reason, or None."""
        with self.locked():
            folder = self.folder(name)
            folder.mkdir(parents=True, exist_ok=True)
            line = json.dumps({**report, "received_at": time.time()}, sort_keys=True) + "\n"
            with open(folder / REPORTS_FILE, "a") as f:
                if f.tell() and not _ends_with_newline(folder / REPORTS_FILE):
                    f.write("\n")  # after a torn line: this report starts a line of its own
                f.write(line)
                f.flush()
                os.fsync(f.fileno())  # a counted report survives a crash
            current = self.read_channel(name)
            if current is None or current[1].candidate != report["candidate"]:
                return None  # a late report on a halted or finished rollout: kept, not acted on
            summary = summarize(self.rollout_reports(name), current[1])
            why = verdict(summary, self.guardrail(name))
            if why is None:
                return None
            reason = f"guardrail: {why}"
            if key is not None:
                self._halt(name, key, reason)
            return reason


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, int | float) and 0.0 < fraction <= 1.0):
        raise FedAdaptError(f"a rollout fraction is in (0, 1], got {fraction!r}")
