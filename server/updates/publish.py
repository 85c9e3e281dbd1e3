"""`fedadapt publish`: a signed, versioned adapter update in a registry of static files.

Layout (any web server or CDN can serve it as-is):

    index.json                       the registry's id, versions, their bundles, payload
                                     sizes and manifest hashes
    timestamp.{json,sig}             signed, versioned, short-lived: pins index.json by hash
                                     (TUF's timestamp role; `refresh_timestamp` re-signs it)
    v0003/full.{manifest.json,sig,payload}
    v0003/from-0002.{manifest.json,sig,payload}   a delta, written only when smaller

Files are written payload first, manifest last, the index after all of them and the
timestamp last, each atomically: a reader never sees a manifest whose payload is not
complete, and a device never trusts an index that the timestamp does not pin.

A publish and a re-sign each read the last version and write the next, so they take turns
under an exclusive `flock` on the registry's lock file, `.NAME.lock` beside the registry
folder NAME (beside, not in it: it is not served, and a first publish that fails leaves no
registry behind): without it, 50 concurrent refreshes signed 27 distinct versions, some of
them twice with different content.

The registry's id (16 random hex digits) is drawn when the registry is made and signed into
every timestamp and channel file, so a device bound to it refuses another registry's files
signed by the same key. A registry made before ids existed gets one at its next publish or
refresh; until then its timestamps carry none, and a device that never saw an id accepts
them (the alternative, refusing, would cut every older device off until its registry is
re-signed).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from fedadapt import runlock
from fedadapt.adapter_files import read_adapter
from fedadapt.atomic import atomic_write_bytes, atomic_write_text
from fedadapt.errors import FedAdaptError
from fedadapt.updates.bundles import BundleError, Manifest, make_delta, sha256, sign
from fedadapt.updates.index import (
    INDEX_FILE,
    TIMESTAMP_FILE,
    TIMESTAMP_SIG,
    parse_index,
    timestamp_body,
)
from fedadapt.updates.keys import key_id
from fedadapt.updates.signed_meta import TIMESTAMP, make_meta, parse_meta

INDEX = INDEX_FILE
TIMESTAMP_EXPIRES_IN = dt.timedelta(days=1)
LOCK_TIMEOUT_S = 120.0


@contextmanager
def registry_lock(registry: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the registry's lock: one publish or re-sign at a time, across processes."""
    registry = Path(registry).absolute()
    lock = registry.with_name(f".{registry.name}.lock")
    with runlock.waiting(lock, timeout, f"the registry {registry}"):
        yield


def registry_id(index: dict) -> str | None:
    """The id an index names, or None for a registry made before ids existed."""
    rid = index.get("registry_id")
    return rid if isinstance(rid, str) else None


def read_index(registry: Path) -> dict:
    """The registry's index (empty for a new registry); a corrupt one is an error, never
    silently replaced, since publishing over it would drop every version it lists."""
    path = Path(registry) / INDEX
    if not path.exists():
        return {"versions": []}
    try:
        return parse_index(path.read_bytes())
    except (OSError, BundleError) as e:
        raise FedAdaptError(
            f"{path} is unreadable or corrupt ({e}); restore it from a backup"
        ) from e


def refresh_timestamp(
    registry: str | Path, key: Ed25519PrivateKey, expires_in: dt.timedelta = TIMESTAMP_EXPIRES_IN
) -> int:
    """Re-sign `timestamp.json` over the current index with the next version and a new
    expiry; returns that version. Run it (`fedadapt refresh-index`) more often than the
    expiry, or devices report `stale-index`. Takes the registry's lock."""
    registry = Path(registry)
    if not (registry / INDEX).is_file():
        raise FedAdaptError(f"{registry} is not a registry: it has no {INDEX}")
    with registry_lock(registry):
        return _sign_timestamp(registry, key, expires_in)


def _sign_timestamp(registry: Path, key: Ed25519PrivateKey, expires_in: dt.timedelta) -> int:
    """The re-sign itself; the caller holds the registry's lock."""
    index = read_index(registry)  # never sign a corrupt index
    version = _timestamp_version(registry) + 1  # nor over a corrupt timestamp
    if registry_id(index) is None:  # an older registry gets its id now
        index = {**index, "registry_id": secrets.token_hex(8)}
        atomic_write_text(registry / INDEX, json.dumps(index, indent=1) + "\n")
    index_bytes = (registry / INDEX).read_bytes()
    body = timestamp_body(index_bytes)
    data, sig = make_meta(TIMESTAMP, version, body, key, expires_in, registry=registry_id(index))
    atomic_write_bytes(registry / TIMESTAMP_SIG, sig)
    atomic_write_bytes(registry / TIMESTAMP_FILE, data)
    return version


def _timestamp_version(registry: Path) -> int:
    path = registry / TIMESTAMP_FILE
    if not path.exists():
        return 0
    try:
        return parse_meta(path.read_bytes(), TIMESTAMP).version
    except (OSError, BundleError) as e:
        raise FedAdaptError(
            f"{path} is corrupt ({e}): its version must only grow, so restore it first"
        ) from e


def full_payload(adapter_dir: Path, version: int) -> tuple[bytes, dict]:
    """The adapter as one safetensors file: its tensors, with its config in the metadata."""
    config, blob = read_adapter(adapter_dir)
    if not isinstance(config.get("base_model_sha256"), str):
        raise FedAdaptError(f"{adapter_dir}: its config names no base_model_sha256")
    config = {**config, "version": version}
    meta = {"adapter_config": json.dumps(config, sort_keys=True)}
    try:
        tensors = np_load(blob)
    except SafetensorError as e:
        raise FedAdaptError(f"{adapter_dir}: the adapter tensors are unreadable: {e}") from e
    return np_save(dict(sorted(tensors.items())), metadata=meta), config


def _write_bundle(
    folder: Path, stem: str, manifest: Manifest, payload: bytes, key: Ed25519PrivateKey
) -> dict:
    atomic_write_bytes(folder / f"{stem}.payload", payload)
    atomic_write_bytes(folder / f"{stem}.sig", sign(manifest, key))
    atomic_write_bytes(folder / f"{stem}.manifest.json", manifest.canonical())
    return {
        "path": f"{folder.name}/{stem}",
        "payload_bytes": len(payload),
        "from_version": manifest.from_version,
        "manifest_sha256": sha256(manifest.canonical()),
    }


def publish(
    adapter_dir: str | Path,
    registry: str | Path,
    key: Ed25519PrivateKey,
    name: str | None = None,
    expires_in: dt.timedelta = dt.timedelta(days=30),
    timestamp_expires_in: dt.timedelta = TIMESTAMP_EXPIRES_IN,
) -> dict:
    """Publish the adapter in `adapter_dir` as the next version; returns its index entry.
    The manifests live `expires_in`; the index's signed timestamp `timestamp_expires_in`.
    Takes the registry's lock (a new registry's folder is made for it)."""
    adapter_dir, registry = Path(adapter_dir), Path(registry)
    if expires_in <= dt.timedelta(0) or timestamp_expires_in <= dt.timedelta(0):
        raise FedAdaptError("expiry times must be positive")
    with registry_lock(registry):
        return _publish(adapter_dir, registry, key, name, expires_in, timestamp_expires_in)


def _publish(
    adapter_dir: Path,
    registry: Path,
    key: Ed25519PrivateKey,
    name: str | None,
    expires_in: dt.timedelta,
    timestamp_expires_in: dt.timedelta,
) -> dict:
    """The publish itself; the caller holds the registry's lock."""
    index = read_index(registry)
    _timestamp_version(registry)  # a corrupt timestamp stops a publish before any write
    version = max((v["version"] for v in index["versions"]), default=0) + 1
    payload, config = full_payload(adapter_dir, version)
    name = name or index.get("adapter_name") or adapter_dir.name
    expires = (dt.datetime.now(dt.UTC) + expires_in).isoformat(timespec="seconds")
    folder = registry / f"v{version:04d}"

    def manifest(p: bytes, from_version: int | None) -> Manifest:
        return Manifest(
            adapter_name=name,
            version=version,
            base_model_sha256=config["base_model_sha256"],
            payload_sha256=sha256(p),
            payload_bytes=len(p),
            expires_at=expires,
            from_version=from_version,
            result_sha256=sha256(payload),
            key_id=key_id(key.public_key()),
        )

    entry = {
        "version": version,
        "full": _write_bundle(folder, "full", manifest(payload, None), payload, key),
        "deltas": [],
    }
    for old in index["versions"]:
        try:
            old_payload = (registry / f"{old['full']['path']}.payload").read_bytes()
        except OSError as e:
            raise FedAdaptError(f"{registry}: version {old['version']} is incomplete: {e}") from e
        delta = make_delta(old_payload, payload)
        if delta is not None and len(delta) < len(payload):
            stem = f"from-{old['version']:04d}"
            entry["deltas"].append(
                _write_bundle(folder, stem, manifest(delta, old["version"]), delta, key)
            )
    index = {
        "adapter_name": name,
        "latest": version,
        "registry_id": registry_id(index) or secrets.token_hex(8),
        "versions": [*index["versions"], entry],
    }
    atomic_write_text(registry / INDEX, json.dumps(index, indent=1) + "\n")
    _sign_timestamp(registry, key, timestamp_expires_in)
    return entry
