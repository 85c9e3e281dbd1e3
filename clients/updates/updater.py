"""The device side of updates: fetch, verify, apply atomically, roll back.

Device folder:

    state.json                   installed adapter name, version and the previous version
    versions/v0003.safetensors   full adapter files (the current one and the previous one)
    versions/v0003.onnx_adapter  the same, for the edge runtime (where a graph is installed)
    seen.json                    the newest signed timestamp version seen, with its hash
                                 (replay and equal-version mix-and-match guard)
    registry.json                the registry id and adapter name the device is bound to
                                 (`clients/updates/binding.py`)
    downloads/                   the partial download of the bundle being fetched: a killed
                                 fetch resumes it with HTTP Range; a refused one, and any
                                 other file there, is deleted

`state.json` is the commit point: a new version file is written (temp file, fsync, rename)
before `state.json` names it, so a crash at any moment leaves the old version installed.
Verification order: the signed timestamp (signature and key, not older than seen, expiry),
the index against the timestamp's hash, the manifest against the index's hash; then the
manifest's signature and key, expiry, adapter name, base model, version, delta start,
payload size and hash, and the rebuilt adapter's hash. The whole fetch runs under one
deadline (`clients/updates/downloads.py`).

Fetches, applies and rollbacks into one folder take turns on a `flock` of the folder itself
(blocking, waited for up to the fetch's timeout; no lock file, so a refused fetch still
writes nothing). Without it, the update loop of `device run`
and a manual `fedadapt fetch` of another version each pruned the other's file and left
`state.json` naming a version file that no longer existed. It is not `device run`'s own
lock (a `flock` of `run.lock`, held for the service's life), so the loop inside it takes
this one freely.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import safetensors.numpy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedadapt import runlock
from fedadapt.atomic import PRIVATE, atomic_write_bytes, atomic_write_text
from fedadapt.clients.personalized import graph_tensors, refresh
from fedadapt.clients.runtime import RUNTIME_FILE, STATE_FILE, adapter_file
from fedadapt.clients.updates.binding import Binding
from fedadapt.clients.updates.downloads import Deadline, Downloader, check_url
from fedadapt.errors import FedAdaptError
from fedadapt.onnx_adapter import write_onnx_adapter
from fedadapt.updates.bundles import (
    MAX_MANIFEST_BYTES,
    BundleError,
    Manifest,
    apply_delta,
    check_against_installed,
    check_payload,
    sha256,
    verify_manifest,
)
from fedadapt.updates.index import (
    INDEX_FILE,
    MAX_INDEX_BYTES,
    TIMESTAMP_FILE,
    TIMESTAMP_SIG,
    check_index_matches,
    parse_index,
)
from fedadapt.updates.keys import key_id
from fedadapt.updates.signed_meta import MAX_META_BYTES, TIMESTAMP, SeenVersions, verify_meta

KEEP_VERSIONS = 2
LOCK_TIMEOUT_S = 60.0
_VERSION_FILE = re.compile(r"v(\d+)\.")  # a version file's name: its number, any width


@dataclass
class Installed:
    """The contents of `state.json`: what is installed, and what a rollback would go back to.

    All None on a device that never installed an update (it runs its export's own adapter).
    """

    adapter_name: str | None = None
    version: int | None = None
    previous: int | None = None


class DeviceStore:
    """The update state of one device folder: installed versions, their files, the commit point.

    Only `install`, `rollback` (and the rollout agent's `switch_to`) write `state.json`; each
    rewrites the personalized file afterwards, so the runtime serves the version installed.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.versions = self.folder / "versions"
        self.downloads = self.folder / "downloads"

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the folder's update lock for a fetch, apply, rollback or switch (not
        reentrant), waiting up to `timeout` s for another one to finish."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with runlock.waiting(self.folder, timeout, f"the device folder {self.folder}"):
            yield

    def state(self) -> Installed:
        """The installed state: an empty `Installed()` when nothing was installed.

        A corrupt file raises `FedAdaptError` rather than being guessed at: a wrong version would
        break delta updates and rollback.
        """
        path = self.folder / STATE_FILE
        if not path.exists():
            return Installed()
        try:
            return Installed(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:  # ValueError: bad JSON or UTF-8
            raise FedAdaptError(f"{path} is corrupt ({e}); restore it or reinstall") from e

    def version_file(self, version: int) -> Path:
        """Where `version`'s full safetensors file lives (it may have been pruned)."""
        return self.versions / f"v{version:04d}.safetensors"

    def current_bytes(self) -> bytes | None:
        """The installed version's safetensors bytes (a delta's starting point); None if none."""
        s = self.state()
        return None if s.version is None else self.version_file(s.version).read_bytes()

    def install(self, name: str, version: int, adapter: bytes, base_sha256: str) -> None:
        """Write the version's files, then name it in `state.json` (the commit point). On a
        device with an exported graph the runtime's `.onnx_adapter` is written here too."""
        s = self.state()
        atomic_write_bytes(self.version_file(version), adapter, PRIVATE)
        runtime = self.folder / RUNTIME_FILE
        if runtime.exists():  # in the graph's layout (a device graph stacks a personal branch)
            stack = json.loads(runtime.read_text()).get("stack")
            tensors = graph_tensors(safetensors.numpy.load(adapter), None, stack)
            write_onnx_adapter(adapter_file(self.folder, version), tensors, version, base_sha256)
        kept = s.version is not None and self.version_file(s.version).exists()
        new = Installed(name, version, s.version if kept else None)  # no rollback to a lost file
        atomic_write_text(self.folder / STATE_FILE, json.dumps(new.__dict__) + "\n", PRIVATE)
        keep = {version, s.version}
        for f in self.versions.glob("v*.*"):
            number = _VERSION_FILE.match(f.name)  # v0012.x, and v12345.x past four digits
            if number and int(number.group(1)) not in keep:
                f.unlink(missing_ok=True)
        refresh(self.folder)  # the personalized file follows the installed version

    def rollback(self) -> int:
        """Make the previous version the installed one again; returns its number.

        One step only: the state then has no previous version. Nothing marks the newer version as
        bad, so a later plain `fetch` installs it again. Takes the folder's update lock.
        """
        with self.locked():
            return self._rollback()

    def _rollback(self) -> int:
        s = self.state()
        if s.previous is None or not self.version_file(s.previous).exists():
            raise FedAdaptError("no previous version to roll back to")
        new = Installed(s.adapter_name, s.previous, None)
        atomic_write_text(self.folder / STATE_FILE, json.dumps(new.__dict__) + "\n", PRIVATE)
        refresh(self.folder)
        return s.previous


def pick(
    index: dict,
    installed: int | None,
    target: int | None = None,
    older: bool = False,
    can_delta: bool = True,
) -> dict | None:
    """The smallest bundle that reaches the newest version (or `target`, which a rollout
    channel names) from what is installed. With `older`, a `target` below the installed
    version is taken too, as its full bundle (a signed channel sent the device back).
    Without `can_delta` (the installed version's file is gone), only a full bundle."""
    latest = max(index.get("versions", []), key=lambda v: v["version"], default=None)
    if target is not None:
        latest = next((v for v in index.get("versions", []) if v["version"] == target), None)
        if latest is None:
            raise FedAdaptError(f"version {target} is not in the registry's index")
    if latest is None or (installed is not None and latest["version"] == installed):
        return None
    if installed is not None and latest["version"] < installed:
        return latest["full"] if older and target is not None else None
    # `parse_index` allows an entry without deltas, and a delta entry without from_version
    deltas = latest.get("deltas", [])
    options = [latest["full"]]
    if can_delta:
        options += [d for d in deltas if d.get("from_version") == installed]
    return min(options, key=lambda b: b["payload_bytes"])


def fetch(
    url: str,
    device_dir: str | Path,
    trusted: list[Ed25519PublicKey],
    base_sha256: str,
    timeout: float = 30.0,
    version: int | None = None,
    older: bool = False,
    adapter_name: str | None = None,
) -> Manifest | None:
    """Bring the device to the newest version (or `version`); None when it is already there.
    `timeout` bounds the whole fetch, not each read (and the wait for the folder's update
    lock). `older` lets `version` be below the installed one: only a signed, fresh rollout
    channel asks for that (a halt sends every device on the candidate back to stable,
    however it got there); a plain fetch never downgrades. `adapter_name` provisions the
    adapter this device runs (kept in `registry.json`); without one, the first install
    takes the bound registry's adapter."""
    base = check_url(url)
    device = DeviceStore(device_dir)
    deadline = Deadline(timeout)
    with device.locked(timeout):
        return _fetch(base, device, trusted, base_sha256, deadline, version, older, adapter_name)


def _fetch(
    base: str,
    device: DeviceStore,
    trusted: list[Ed25519PublicKey],
    base_sha256: str,
    deadline: Deadline,
    version: int | None,
    older: bool,
    adapter_name: str | None,
) -> Manifest | None:
    """`fetch`, with the folder's update lock held."""
    installed = device.state()
    binding = Binding.load(device.folder)
    binding.expect_name(adapter_name)
    keys = {key_id(k): k for k in trusted}
    # a lost version file (deleted, restored from an old backup) cannot be a delta's start
    can_delta = installed.version is not None and device.version_file(installed.version).exists()
    with Downloader(deadline) as net:
        index = trusted_index(net, base, keys, device.folder, binding)
        bundle = pick(index, installed.version, version, older, can_delta)
        if bundle is None:
            _clean_downloads(device, None)
            return None
        stem = f"{base}/{bundle['path']}"
        manifest_bytes = net.get(f"{stem}.manifest.json", MAX_MANIFEST_BYTES)
        if "manifest_sha256" in bundle and sha256(manifest_bytes) != bundle["manifest_sha256"]:
            raise BundleError(
                f"{stem}.manifest.json is not the one the index pins", "hash-mismatch"
            )
        signature = net.get(f"{stem}.sig", 1024)
        m = verify_manifest(manifest_bytes, signature, keys)
        back = older and installed.version is not None and m.version < installed.version
        # going back is checked as a first install would be: same base and adapter, full bundle
        since = None if back and m.from_version is None else installed.version
        name = installed.adapter_name or binding.adapter_name or _index_name(index)
        check_against_installed(m, base_sha256, since, name)
        part = (
            device.downloads / f"{m.adapter_name}-v{m.version:04d}-{m.kind}-{m.payload_sha256[:12]}"
        )
        _clean_downloads(device, part)  # what an older fetch left is never resumed
        payload = net.download(f"{stem}.payload", part, m.payload_bytes)
    try:
        check_payload(m, payload)
        old = None if m.from_version is None else device.current_bytes()
        adapter = payload if old is None else apply_delta(old, payload)
        if sha256(adapter) != m.result_sha256:
            raise BundleError(
                "the rebuilt adapter does not match the signed result", "hash-mismatch"
            )
        if binding.adapter_name is None:
            binding.adapter_name = m.adapter_name
        binding.save(device.folder)
        device.install(m.adapter_name, m.version, adapter, base_sha256)
    except Exception:
        part.unlink(missing_ok=True)  # a bad download must not be resumed
        raise
    part.unlink(missing_ok=True)
    return m


def _index_name(index: dict) -> str | None:
    """The adapter the registry's (signed) index is for, when it names one."""
    name = index.get("adapter_name")
    return name if isinstance(name, str) and name else None


def _clean_downloads(device: DeviceStore, keep: Path | None) -> None:
    """Delete every file in `downloads/` but `keep` (the bundle being fetched)."""
    if device.downloads.is_dir():
        for f in device.downloads.iterdir():
            if f != keep and f.is_file():
                f.unlink(missing_ok=True)


def trusted_index(
    net: Downloader,
    base: str,
    keys: dict[str, Ed25519PublicKey],
    device_dir: Path,
    binding: Binding | None = None,
) -> dict:
    """The registry's index, once its signed timestamp is trusted, of the registry the
    device is bound to (the first one that names itself binds it), not older than the newest
    seen nor of the same version with other content, and not expired, and the index is the
    one it pins. The timestamp's version and hash are recorded at once, so a replay of an
    older one is refused from now on."""
    seen = SeenVersions(device_dir)
    binding = binding or Binding.load(device_dir)
    data = net.get(f"{base}/{TIMESTAMP_FILE}", MAX_META_BYTES)
    sig = net.get(f"{base}/{TIMESTAMP_SIG}", 1024)
    ts = verify_meta(
        data,
        sig,
        TIMESTAMP,
        keys,
        seen.get(TIMESTAMP),
        seen_sha256=seen.sha256(TIMESTAMP),
        registry=binding.registry_id,
    )
    if binding.registry_id is None and ts.registry is not None:
        binding.registry_id = ts.registry  # trust on first use: bound from now on
        binding.save(device_dir)
    seen.record(TIMESTAMP, ts.version, sha256(data))
    index_bytes = net.get(f"{base}/{INDEX_FILE}", MAX_INDEX_BYTES)
    check_index_matches(index_bytes, ts)
    return parse_index(index_bytes)
