"""The rollout fleet: hundreds of devices (threads) against a real update service on
127.0.0.1, each with its own folder, key, signed fetches, installs, reports and rollbacks.

Two scenarios (`make rollout-demo`):
- `good`: a better-fitted head is rolled out to 10%, promoted to 50% and then 100% once the
  reports of each cohort are in and the guardrail holds;
- `bad`: a sign-flipped head goes to 10%; devices roll it back locally, the guardrail halts
  the channel, and every device that ran it is back on stable.

Per device everything is real (`RolloutAgent`: the signed channel, the cohort, `fetch` with
its verification, the install, the switch back, the signed POST); only the scoring shares a
cache (`fedadapt.launch.rollout_pool.HeadScorer`). The figures go to `rollout.json` as
docs/reference/formats.md fixes them; `fraction_final` is the largest fraction the candidate
was offered, `seconds_halt_to_all_rolled_back` is 0 when every device that ran it had already
gone back on its own (local rollback) before the halt.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from fedadapt.atomic import atomic_write_text
from fedadapt.clients.updates.rollout_agent import RolloutAgent, device_key
from fedadapt.clients.updates.updater import DeviceStore, fetch
from fedadapt.errors import FedAdaptError
from fedadapt.launch.rollout_pool import HeadScorer, Pool, cached_pool
from fedadapt.server.updates.publish import publish
from fedadapt.server.updates.reports import ReportSink, load_device_keys
from fedadapt.server.updates.rollout import Guardrail, Rollouts, summarize
from fedadapt.server.updates.service import UpdateServer
from fedadapt.server.updates.status import plot
from fedadapt.updates.cohort import cohort_point
from fedadapt.updates.keys import (
    PRIVATE_FILE,
    PUBLIC_FILE,
    key_id,
    keygen,
    load_private,
    load_public,
)

CHANNEL, STABLE, CANDIDATE = "main", 1, 2


@dataclass
class Watch:
    """What one device did, seen after each of its polls."""

    point: float
    exposed: bool = False  # ever installed the candidate
    back_at: float | None = None  # last time it went from the candidate back to stable
    on: int | None = None
    rejected: bool = False  # rolled the candidate back on its own
    outside: bool = False  # installed the candidate while outside the cohort offered then
    errors: list[str] = field(default_factory=list)
    polled_from: float = 0.0  # when its last finished poll began


class Fleet:
    """A registry, an update service and `devices` device folders for one scenario under `root`.

    The constructor creates a signing key, publishes the stable head as version 1 and the
    candidate as version 2, gives every device its own key and registers those for signed
    reports. `root` must be fresh: an existing key or device-key folder is refused. The
    service is built, not started; the caller serves it and shuts it down.

    Parameters
    ----------
    root : Path
        The scenario's folder (registry, keys, devices).
    pool : Pool
        The heads and per-device held-out rows (`fedadapt.launch.rollout_pool`).
    candidate : str
        Which of the pool's heads is version 2: `good` or `bad`.
    devices : int
        How many devices (threads) the fleet runs.
    poll_s : float
        The mean seconds between a device's polls (each wait is jittered by ±50%).
    """

    def __init__(self, root: Path, pool: Pool, candidate: str, devices: int, poll_s: float):
        self.root, self.pool, self.poll_s = root, pool, poll_s
        keygen(root / "keys")
        self.key = load_private(root / "keys" / PRIVATE_FILE)
        self.pub = load_public(root / "keys" / PUBLIC_FILE)
        self.registry = root / "registry"
        publish(pool.adapters["stable"], self.registry, self.key, name="rt")
        publish(pool.adapters[candidate], self.registry, self.key, name="rt")
        self.rollouts = Rollouts(self.registry)
        self.scorer = HeadScorer(pool)
        self.folders = [root / "devices" / f"d{i:04d}" for i in range(devices)]
        keys = root / "device-keys"
        keys.mkdir(parents=True)
        self.ids = []
        for folder in self.folders:
            pub = device_key(folder).public_key()
            self.ids.append(key_id(pub))
            (keys / f"{self.ids[-1]}.pub").write_bytes(
                pub.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        sink = ReportSink(self.rollouts, load_device_keys(keys), self.key)
        self.server = UpdateServer(self.registry, max_connections=devices + 32, reports=sink)
        self.stop = threading.Event()
        self.offered = 0.0  # the candidate's fraction now (raised before the channel is)
        self.watch: list[Watch] = []

    def bootstrap(self) -> None:
        """Every device installs the stable version with a real, verified fetch."""
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(self._install_stable, self.folders))

    def _install_stable(self, folder: Path) -> None:
        fetch(self.server.url, folder, [self.pub], self.pool.base_sha256, version=STABLE)

    def run_device(self, i: int, agent: RolloutAgent) -> None:
        """Device `i`'s thread: poll with `agent` until `stop` is set, recording into `watch[i]`.

        A `FedAdaptError` from a poll is kept in `Watch.errors`, not raised, so one device's
        failure does not end the scenario.
        """
        w, store = self.watch[i], DeviceStore(self.folders[i])
        rng = random.Random(i)
        self.stop.wait(rng.uniform(0, self.poll_s))
        while not self.stop.is_set():
            began = time.time()
            try:
                agent.poll()
            except FedAdaptError as e:
                w.errors.append(str(e))
            on = store.state().version
            w.rejected = CANDIDATE in agent.local()["rejected"]
            newly = not w.exposed and store.version_file(CANDIDATE).exists()
            w.exposed |= newly
            w.outside |= newly and w.point >= self.offered
            if (w.on == CANDIDATE or newly) and on == STABLE:
                w.back_at = time.time()
            w.on, w.polled_from = on, began
            self.stop.wait(self.poll_s * rng.uniform(0.5, 1.5))

    def start_devices(self, salt: str, local_bound: float) -> list[threading.Thread]:
        """Start one polling thread per device; returns them so the caller can join them.

        Parameters
        ----------
        salt : str
            The rollout's cohort salt, which places each device's point in [0, 1).
        local_bound : float
            How much worse than stable a device lets the candidate score before it rolls it back
            on its own (`RolloutAgent`).
        """
        self.watch = [Watch(cohort_point(d, salt)) for d in self.ids]
        threads = []
        for i, folder in enumerate(self.folders):
            agent = RolloutAgent(
                folder,
                self.server.url,
                CHANNEL,
                [self.pub],
                self.pool.base_sha256,
                self.scorer.for_device(i),
                local_bound,
                timeout=30.0,
            )
            t = threading.Thread(target=self.run_device, args=(i, agent), daemon=True)
            t.start()
            threads.append(t)
        return threads

    def reported(self) -> set[str]:
        """The ids of the devices that have reported on the current rollout."""
        return {r["device"] for r in self.rollouts.rollout_reports(CHANNEL)}

    def wait(self, done, timeout: float) -> bool:
        """Poll `done()` every 0.2 s for up to `timeout` seconds; returns its last value."""
        end = time.time() + timeout
        while time.time() < end:
            if done():
                return True
            time.sleep(0.2)
        return done()


def run_scenario(
    kind: str,
    pool: Pool,
    root: Path,
    devices: int,
    poll_s: float = 1.0,
    stage_timeout: float = 90.0,
    guard: Guardrail | None = None,
    local_bound: float = 0.2,
    fractions: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Run one scenario ("good" or "bad") with a fresh registry and fleet under `root`;
    `fractions` are the cohort's steps (default 10% → 50% → 100% for good, 10% for bad)."""
    fractions = fractions or ((0.1, 0.5, 1.0) if kind == "good" else (0.1,))
    guard = guard or Guardrail(threshold=0.02, max_failure_rate=0.05, min_devices=5)
    fleet = Fleet(root, pool, kind, devices, poll_s)
    with ExitStack() as stack:
        server_thread = threading.Thread(target=fleet.server.serve_forever, daemon=True)
        server_thread.start()
        stack.callback(fleet.server.server_close)
        stack.callback(fleet.server.shutdown)
        fleet.bootstrap()
        fleet.offered = fractions[0]
        channel = fleet.rollouts.start(CHANNEL, CANDIDATE, fractions[0], fleet.key, STABLE, guard)
        started = time.time()
        threads = fleet.start_devices(channel.salt, local_bound)
        stack.callback(lambda: [t.join(timeout=10) for t in threads])
        stack.callback(fleet.stop.set)
        for fraction in fractions[1:]:
            offered = fleet.offered
            cohort = {d for d, w in zip(fleet.ids, fleet.watch, strict=True) if w.point < offered}
            ok = fleet.wait(lambda c=cohort: c <= fleet.reported() or _halted(fleet), stage_timeout)
            if not ok or _halted(fleet):
                break
            fleet.offered = fraction
            fleet.rollouts.promote(CHANNEL, fraction, fleet.key)
        if kind == "good":
            fleet.wait(
                lambda: all(w.on == CANDIDATE or w.rejected for w in fleet.watch), stage_timeout
            )
        else:
            fleet.wait(lambda: _halted(fleet), stage_timeout)
            fleet.wait(lambda: _settled_after_halt(fleet), stage_timeout)
        ended = time.time()
    return _figures(fleet, ended - started)


def _halted(fleet: Fleet) -> bool:
    return fleet.rollouts.rollout(CHANNEL)["halted"] is not None


def _settled_after_halt(fleet: Fleet) -> bool:
    """Every device has finished a poll begun after the halt, and every exposed one is on
    stable. Without the first half, a device whose poll read the channel just before the halt
    could still be installing the candidate when the scenario ends: it goes back on its next
    poll, which the scenario would never see (a CI run under load caught exactly that)."""
    halted = fleet.rollouts.rollout(CHANNEL)["halted"]
    if halted is None:
        return False
    return all(w.polled_from >= halted["at"] for w in fleet.watch) and all(
        w.on == STABLE for w in fleet.watch if w.exposed
    )


def _figures(fleet: Fleet, seconds: float) -> dict[str, Any]:
    state = fleet.rollouts.rollout(CHANNEL)
    reports = fleet.rollouts.rollout_reports(CHANNEL)
    s = summarize(reports)
    halted = state["halted"]
    exposed = [w for w in fleet.watch if w.exposed]
    to_halt = back = None
    if halted and reports:
        to_halt = round(halted["at"] - min(r["received_at"] for r in reports), 3)
        if all(w.on == STABLE for w in exposed):
            last = max((w.back_at or halted["at"] for w in exposed), default=halted["at"])
            back = round(max(0.0, last - halted["at"]), 3)
    return {
        "devices": len(fleet.watch),
        "fraction_final": fleet.offered,
        "exposed_share": round(len(exposed) / len(fleet.watch), 4),
        "halted": halted is not None,
        "seconds_first_report_to_halt": to_halt,
        "seconds_halt_to_all_rolled_back": back,
        "installed_outside_cohort": sum(w.outside for w in fleet.watch),
        "halt_reason": halted["reason"] if halted else None,
        "reports": len(reports),
        "local_rollbacks": s.local_rollbacks,
        "paired_difference": [s.mean_diff, s.low, s.high],
        "running_candidate_at_end": sum(1 for w in fleet.watch if w.on == CANDIDATE),
        "device_errors": sum(len(w.errors) for w in fleet.watch),
        "device_error_kinds": sorted({_kind(e) for w in fleet.watch for e in w.errors}),
        "poll_interval_s": fleet.poll_s,
        "seconds_total": round(seconds, 2),
    }


def _kind(error: str) -> str:
    """An error's kind, without the URL and port that make every message different."""
    return re.sub(r"https?://\S+", "URL", error)[:100]


def main(argv: list[str] | None = None) -> int:
    """`python -m fedadapt.launch.rollout_fleet`: both scenarios, their figures and plots."""
    p = argparse.ArgumentParser(description="Staged-rollout fleet: a good and a bad candidate.")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--poll", type=float, default=1.0, help="seconds between a device's polls")
    p.add_argument("--work", default="out/rollout", help="registries, devices, pool cache")
    p.add_argument("--out", default="simulations/results/rollout/rollout.json")
    args = p.parse_args(argv)
    work = Path(args.work)
    pool = cached_pool(args.devices, work / "pool")
    results = {}
    for kind in ("good", "bad"):
        root = work / f"{kind}-{int(time.time())}"
        results[kind] = run_scenario(kind, pool, root, args.devices, args.poll)
        print(kind, json.dumps(results[kind]), flush=True)
        rollouts = Rollouts(root / "registry")
        png = Path(args.out).parent / f"{kind}-paired.png"
        plot(
            rollouts.rollout_reports(CHANNEL),
            0.02,
            png,
            f"{kind} candidate, {args.devices} devices",
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps({"scenarios": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
