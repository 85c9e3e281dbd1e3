"""The device side of updates: fetch, verify, apply atomically, roll back.

Device folder:

    state.json                   installed adapter name, version and the previous version
    versions/v0003.safetensors   full adapter files (the current one and the previous one)
    versions/v0003.onnx_adapter  the same, for the edge runtime (where a graph is installed)
    downloads/                   partial downloads, resumed with HTTP Range

`state.json` is the commit point: a new version file is written (temp file, fsync, rename)
before `state.json` names it, so a crash at any moment leaves the old version installed.
Verification order: signature and key, expiry, base model, version, delta start, payload
size and hash, then the rebuilt adapter's hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import safetensors.numpy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedadapt.atomic import atomic_write_bytes, atomic_write_text
from fedadapt.bundles import (
    MAX_MANIFEST_BYTES,
    BundleError,
    Manifest,
    apply_delta,
    check_against_installed,
    check_payload,
    sha256,
    verify_manifest,
)
from fedadapt.clients.runtime import RUNTIME_FILE, STATE_FILE, adapter_file
from fedadapt.errors import FedAdaptError
from fedadapt.onnx_adapter import write_onnx_adapter
from fedadapt.keys import key_id

MAX_INDEX_BYTES = 1 << 20
KEEP_VERSIONS = 2


@dataclass
class Installed:
    adapter_name: str | None = None
    version: int | None = None
    previous: int | None = None


class DeviceStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.versions = self.folder / "versions"
        self.downloads = self.folder / "downloads"

    def state(self) -> Installed:
        path = self.folder / STATE_FILE
        return Installed(**json.loads(path.read_text())) if path.exists() else Installed()

    def version_file(self, version: int) -> Path:
        return self.versions / f"v{version:04d}.safetensors"

    def current_bytes(self) -> bytes | None:
        s = self.state()
        return None if s.version is None else self.version_file(s.version).read_bytes()

    def install(self, name: str, version: int, adapter: bytes, base_sha256: str) -> None:
        """Write the version's files, then name it in `state.json` (the commit point). On a
        device with an exported graph the runtime's `.onnx_adapter` is written here too."""
        s = self.state()
        atomic_write_bytes(self.version_file(version), adapter)
        if (self.folder / RUNTIME_FILE).exists():
            tensors = safetensors.numpy.load(adapter)
            write_onnx_adapter(adapter_file(self.folder, version), tensors, version, base_sha256)
        new = Installed(name, version, s.version)
        atomic_write_text(self.folder / STATE_FILE, json.dumps(new.__dict__) + "\n")
        keep = {version, s.version}
        for f in self.versions.glob("v*.*"):
            if f.name.startswith("v") and int(f.name[1:5]) not in keep:
                f.unlink(missing_ok=True)

    def rollback(self) -> int:
        s = self.state()
        if s.previous is None or not self.version_file(s.previous).exists():
            raise FedAdaptError("no previous version to roll back to")
        new = Installed(s.adapter_name, s.previous, None)
        atomic_write_text(self.folder / STATE_FILE, json.dumps(new.__dict__) + "\n")
        return s.previous


def _get(client: httpx.Client, url: str, cap: int) -> bytes:
    with client.stream("GET", url) as r:
        if r.status_code != 200:
            raise FedAdaptError(f"GET {url}: HTTP {r.status_code}")
        data = bytearray()
        for chunk in r.iter_bytes():
            data += chunk
            if len(data) > cap:
                raise BundleError(f"{url} is larger than {cap} bytes", "oversize")
    return bytes(data)


def download(client: httpx.Client, url: str, part: Path, size: int) -> bytes:
    """Download into `part`, resuming what is there; never read past `size` (the signed cap)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with client.stream("GET", url, headers=headers) as r:
            if r.status_code not in (200, 206):
                raise FedAdaptError(f"GET {url}: HTTP {r.status_code}")
            mode = "ab" if r.status_code == 206 else "wb"
            written = have if mode == "ab" else 0
            with open(part, mode) as f:
                for chunk in r.iter_bytes():
                    written += len(chunk)
                    if written > size:
                        raise BundleError(
                            f"{url} sends more than the {size} signed bytes", "oversize"
                        )
                    f.write(chunk)
    return part.read_bytes()


def pick(index: dict, installed: int | None) -> dict | None:
    """The smallest bundle that reaches the newest version from what is installed."""
    latest = max(index.get("versions", []), key=lambda v: v["version"], default=None)
    if latest is None or (installed is not None and latest["version"] <= installed):
        return None
    options = [latest["full"]] + [d for d in latest["deltas"] if d["from_version"] == installed]
    return min(options, key=lambda b: b["payload_bytes"])


def fetch(
    url: str,
    device_dir: str | Path,
    trusted: list[Ed25519PublicKey],
    base_sha256: str,
    timeout: float = 30.0,
) -> Manifest | None:
    """Bring the device to the newest version; None when it is already there."""
    device = DeviceStore(device_dir)
    installed = device.state()
    keys = {key_id(k): k for k in trusted}
    base = url.rstrip("/")
    with httpx.Client(timeout=timeout) as client:
        try:
            index = json.loads(_get(client, f"{base}/index.json", MAX_INDEX_BYTES))
        except json.JSONDecodeError as e:
            raise FedAdaptError(f"{base}/index.json is not JSON: {e}") from e
        bundle = pick(index, installed.version)
        if bundle is None:
            return None
        stem = f"{base}/{bundle['path']}"
        manifest_bytes = _get(client, f"{stem}.manifest.json", MAX_MANIFEST_BYTES)
        signature = _get(client, f"{stem}.sig", 1024)
        m = verify_manifest(manifest_bytes, signature, keys)
        check_against_installed(m, base_sha256, installed.version)
        part = (
            device.downloads / f"{m.adapter_name}-v{m.version:04d}-{m.kind}-{m.payload_sha256[:12]}"
        )
        payload = download(client, f"{stem}.payload", part, m.payload_bytes)
    try:
        check_payload(m, payload)
    except BundleError:
        part.unlink(missing_ok=True)  # a bad download must not be resumed
        raise
    adapter = payload if m.from_version is None else apply_delta(device.current_bytes(), payload)
    if sha256(adapter) != m.result_sha256:
        raise BundleError("the rebuilt adapter does not match the signed result", "hash-mismatch")
    device.install(m.adapter_name, m.version, adapter, base_sha256)
    part.unlink(missing_ok=True)
    return m
