"""A device's side of a staged rollout: which version to run, scoring it, rolling back.

At each poll the device reads its channel's signed file (`fedadapt.updates.cohort`: trusted key,
not older than the newest seen, not expired, so a replayed pre-halt file is refused), and
runs the version the channel names for it: the candidate when its key id falls in the
cohort, else the stable version. A version it still keeps (the updater keeps the previous
one) is switched to without a download; that is how a halted candidate is undone on the next
poll. Anything else is fetched and verified by the ordinary updater.

Holding both versions, the device scores both on the same held-out examples of its own data
(a `Scorer`), and reports numbers only, signed with its own key (`identity/`), to the update
service (`fedadapt.server.updates.reports`). When the candidate's held-out accuracy is below
the stable version's by more than `local_bound`, it goes back to stable at once, without
waiting for the server, remembers that candidate as rejected (so it never flaps back), and
says so in its report.

Device-local state, `rollout.json`, written atomically: the report sequence number, the
candidates already evaluated and rejected, and a report not yet delivered (resent next poll).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedadapt.atomic import PRIVATE, atomic_write_text
from fedadapt.clients.personalized import refresh
from fedadapt.clients.runtime import STATE_FILE, EdgeRuntime, adapter_file
from fedadapt.clients.updates.binding import Binding
from fedadapt.clients.updates.downloads import Deadline, Downloader, check_url
from fedadapt.clients.updates.updater import DeviceStore, Installed, fetch
from fedadapt.errors import FedAdaptError
from fedadapt.updates.bundles import BundleError, sha256
from fedadapt.updates.cohort import Channel, channel_files, channel_role
from fedadapt.updates.keys import PRIVATE_FILE, key_id, keygen, load_private
from fedadapt.updates.rollout_report import SIGNATURE_HEADER, sign_report
from fedadapt.updates.signed_meta import MAX_META_BYTES, SeenVersions, verify_meta

AGENT_FILE = "rollout.json"
IDENTITY_DIR = "identity"


@dataclass
class Scores:
    """One version on the held-out examples: per example right or wrong (a failed inference
    counts as wrong), the mean latency per example, and how many inferences failed."""

    correct: np.ndarray
    latency_ms: float
    failures: int

    @property
    def accuracy(self) -> float:
        """The fraction right; 0.0 when no example was scored."""
        return float(self.correct.mean()) if self.correct.size else 0.0


Scorer = Callable[[DeviceStore, int], Scores]


@dataclass
class PollResult:
    """What one `RolloutAgent.poll` did, for the service's log and `fedadapt rollout poll`.

    Parameters
    ----------
    channel_version : int
        The signed channel file's version that was read.
    target : int
        The adapter version this device runs now (stable when the candidate was rejected here).
    action : str
        "none", "fetched", "switched" or "local-rollback".
    report : dict or None (default: None)
        The report sent on this poll, when the candidate was evaluated.
    halted : str or None (default: None)
        The guardrail's reason, when a report sent on this poll halted the rollout.
    events : list of str (default: [])
        Notes on the poll; nothing fills it at present.
    """

    channel_version: int
    target: int
    action: str  # "none", "fetched", "switched", "local-rollback"
    report: dict[str, Any] | None = None
    halted: str | None = None  # the guardrail's reason, when this report tripped it
    events: list[str] = field(default_factory=list)


def device_key(device_dir: str | Path) -> Ed25519PrivateKey:
    """The device's own report key, created on first use; its key id is the device id."""
    folder = Path(device_dir) / IDENTITY_DIR
    if not (folder / PRIVATE_FILE).exists():
        keygen(folder)
    return load_private(folder / PRIVATE_FILE)


def switch_to(store: DeviceStore, version: int) -> None:
    """Run a version the device still keeps: no download, `state.json` is the commit point.
    Takes the folder's update lock, as a fetch does."""
    with store.locked():
        s = store.state()
        if not store.version_file(version).exists():
            raise FedAdaptError(f"version {version} is not kept on this device")
        new = Installed(s.adapter_name, version, s.version)
        atomic_write_text(store.folder / STATE_FILE, json.dumps(new.__dict__) + "\n", PRIVATE)
        refresh(store.folder)


class OrtScorer:
    """A version scored with the device's exported ONNX graph on its held-out texts."""

    def __init__(
        self,
        device_dir: str | Path,
        texts: list[str],
        labels: list[int],
        runtime: EdgeRuntime | None = None,
    ) -> None:
        self.runtime = runtime or EdgeRuntime(device_dir, personalized=False)
        self.texts, self.labels = texts, np.asarray(labels)

    def __call__(self, store: DeviceStore, version: int) -> Scores:
        start = time.perf_counter()
        try:
            self.runtime.activate(adapter_file(store.folder, version))
            predicted = self.runtime.logits(self.texts).argmax(axis=1)
        except (FedAdaptError, RuntimeError, ValueError):  # ORT raises RuntimeError subclasses
            return Scores(np.zeros(len(self.texts), bool), 0.0, len(self.texts))
        ms = (time.perf_counter() - start) * 1000 / max(1, len(self.texts))
        return Scores(predicted == self.labels, ms, 0)


class RolloutAgent:
    """One device's polls of one channel (see the module docstring)."""

    def __init__(
        self,
        device_dir: str | Path,
        url: str,
        channel: str,
        trusted: list[Ed25519PublicKey],
        base_sha256: str,
        scorer: Scorer,
        local_bound: float = 0.1,
        timeout: float = 30.0,
    ) -> None:
        self.store = DeviceStore(device_dir)
        self.url, self.channel = check_url(url), channel
        self.role = channel_role(channel)
        self.trusted = trusted
        self.keys = {key_id(k): k for k in trusted}
        self.base_sha256, self.scorer = base_sha256, scorer
        self.local_bound, self.timeout = local_bound, timeout
        self.key = device_key(device_dir)
        self.device_id = key_id(self.key.public_key())

    # --- device-local state --------------------------------------------------------------
    def local(self) -> dict[str, Any]:
        """The device-local rollout state (`rollout.json`): report sequence number, candidates
        evaluated and rejected, a report not yet delivered. Fresh when the file does not exist.
        """
        path = self.store.folder / AGENT_FILE
        if not path.exists():
            return {"seq": 0, "evaluated": [], "rejected": [], "pending": None}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FedAdaptError(f"{path} is unreadable ({e}); restore it") from e

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write_text(
            self.store.folder / AGENT_FILE, json.dumps(state, sort_keys=True) + "\n", PRIVATE
        )

    # --- one poll ------------------------------------------------------------------------
    def read_channel(self) -> tuple[int, Channel]:
        """The channel file, trusted, of the registry the device is bound to, not older than
        seen nor of the same version with other content; its version and hash are recorded."""
        seen = SeenVersions(self.store.folder)
        binding = Binding.load(self.store.folder)
        rel, rel_sig = channel_files(self.channel)
        for attempt in (1, 2):
            with Downloader(Deadline(self.timeout)) as net:
                data = net.get(f"{self.url}/{rel}", MAX_META_BYTES)
                sig = net.get(f"{self.url}/{rel_sig}", 1024)
            try:
                meta = verify_meta(
                    data,
                    sig,
                    self.role,
                    self.keys,
                    seen.get(self.role),
                    seen_sha256=seen.sha256(self.role),
                    registry=binding.registry_id,
                )
                break
            except BundleError as e:
                # the file and its signature are two reads: a change between them looks
                # like a bad signature once; twice in a row it is one
                if e.reason != "bad-signature" or attempt == 2:
                    raise
        channel = Channel.parse(meta.body)
        if binding.registry_id is None and meta.registry is not None:
            binding.registry_id = meta.registry  # trust on first use, as a fetch does
            binding.save(self.store.folder)
        seen.record(self.role, meta.version, sha256(data))
        return meta.version, channel

    def poll(self) -> PollResult:
        """One poll: read the channel, run the version it names for this device, resend a pending
        report, and evaluate and report a candidate not evaluated before.

        Raises `FedAdaptError` when the channel file or an update is refused or a report cannot
        be delivered; an undelivered report is kept and resent at the next poll.
        """
        version, channel = self.read_channel()
        state = self.local()
        target = channel.version_for(self.device_id)
        if target in state["rejected"]:
            target = channel.stable
        result = PollResult(version, target, self._run(target))
        if state["pending"] is not None:
            result.halted = self._send(state, state["pending"])
        candidate = channel.candidate
        if target == candidate and candidate not in state["evaluated"]:
            report = self._evaluate(channel, state)
            if report is not None:
                result.report = report
                if report["rolled_back"]:
                    result.action = "local-rollback"
                result.halted = self._send(state, report)
        return result

    def _run(self, target: int) -> str:
        installed = self.store.state().version
        if installed == target:
            return "none"
        if self.store.version_file(target).exists():
            switch_to(self.store, target)
            return "switched"
        # the signed, fresh channel names `target`: followed even below the installed version
        # (a halt sends every device on the candidate back, however it got there)
        m = fetch(
            self.url, self.store.folder, self.trusted, self.base_sha256, self.timeout, target, True
        )
        if m is None:  # not reachable while pick() finds the version: kept as a guard
            raise FedAdaptError(f"channel {self.channel!r} names version {target}: not fetched")
        return "fetched"

    def _evaluate(self, channel: Channel, state: dict[str, Any]) -> dict[str, Any] | None:
        """Score both versions on the same examples; roll back locally past the bound."""
        assert channel.candidate is not None
        if not self.store.version_file(channel.stable).exists():
            return None  # nothing to pair with: this device never ran stable
        stable = self.scorer(self.store, channel.stable)
        cand = self.scorer(self.store, channel.candidate)
        if stable.correct.size == 0 or stable.correct.size != cand.correct.size:
            raise FedAdaptError("the two versions must be scored on the same held-out examples")
        rolled_back = stable.accuracy - cand.accuracy > self.local_bound
        if rolled_back:
            switch_to(self.store, channel.stable)
            state["rejected"].append(channel.candidate)
        state["evaluated"].append(channel.candidate)
        running = self.store.state().version
        self._save(state)
        return {
            "device": self.device_id,
            "channel": self.channel,
            "stable": channel.stable,
            "candidate": channel.candidate,
            "running": running
            if running in (channel.stable, channel.candidate)
            else channel.stable,
            "examples": int(stable.correct.size),
            "stable_accuracy": stable.accuracy,
            "candidate_accuracy": cand.accuracy,
            "stable_latency_ms": float(stable.latency_ms),
            "candidate_latency_ms": float(cand.latency_ms),
            "stable_failures": int(stable.failures),
            "candidate_failures": int(cand.failures),
            "rolled_back": int(rolled_back),
            "seq": 0,  # set when sent
        }

    def _send(self, state: dict[str, Any], report: dict[str, Any]) -> str | None:
        """POST the signed report; undelivered, it waits in `rollout.json` for the next poll.
        Returns the guardrail's halt reason when this report tripped it."""
        state["seq"] += 1
        report = {**report, "seq": state["seq"]}
        state["pending"] = report
        self._save(state)
        body, signature = sign_report(report, self.key)
        url = f"{self.url}/rollout/{self.channel}/report"
        try:
            r = httpx.post(
                url,
                content=body,
                headers={SIGNATURE_HEADER: signature, "Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as e:
            raise FedAdaptError(f"cannot send the rollout report to {url}: {e}") from e
        if r.status_code != 200:
            state["pending"] = None if r.status_code in (400, 403) else report  # never valid
            self._save(state)
            raise FedAdaptError(f"the update service refused the report: {r.text.strip()}")
        state["pending"] = None
        self._save(state)
        return r.json().get("halted")


def device_agent(
    device_dir: str | Path,
    url: str,
    channel: str,
    trust: list[Path],
    data_dir: str | Path,
    local_bound: float = 0.1,
    test_fraction: float | None = None,
    split_key: str | None = None,
    timeout: float = 30.0,
) -> RolloutAgent:
    """The agent of a real device: its ONNX graph (whose `runtime.json` names the base) scores
    both versions on the held-out split of its own data folder: by default the split the
    ClientApp keeps out of training (the run's `test_fraction` and seed, which it records in
    the device folder). `rollout poll` and `device run --channel` both use it, so a poll by
    hand and the service's polls score alike."""
    from fedadapt.data import local_files
    from fedadapt.updates.keys import load_public

    runtime = EdgeRuntime(device_dir, personalized=False)  # no graph: one line, here
    trusted = [load_public(p) for p in trust]
    recorded = local_files.recorded_split(Path(device_dir))
    fraction = recorded[0] if test_fraction is None else test_fraction
    key = recorded[1] if split_key is None else split_key
    local = local_files.load(Path(data_dir), runtime.labels, fraction, key, min_examples=2)
    scorer = OrtScorer(device_dir, local.data.test_texts, local.data.test_labels, runtime)
    base = str(runtime.meta["base_sha256"])
    return RolloutAgent(device_dir, url, channel, trusted, base, scorer, local_bound, timeout)
