"""`fedadapt publish`: a signed, versioned adapter update in a registry of static files.

Layout (any web server or CDN can serve it as-is):

    index.json                       versions, their bundles and payload sizes (unsigned:
                                     every bundle it points to is signed, and expiry bounds
                                     how long a stale index can freeze a device)
    v0003/full.{manifest.json,sig,payload}
    v0003/from-0002.{manifest.json,sig,payload}   a delta, written only when smaller

Files are written payload first, manifest last, and the index after all of them, each
atomically: a reader never sees a manifest whose payload is not complete.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from fedadapt.adapter_files import read_adapter
from fedadapt.atomic import atomic_write_bytes, atomic_write_text
from fedadapt.bundles import Manifest, make_delta, sha256, sign
from fedadapt.keys import key_id

INDEX = "index.json"


def read_index(registry: Path) -> dict:
    path = registry / INDEX
    return json.loads(path.read_text()) if path.exists() else {"versions": []}


def full_payload(adapter_dir: Path, version: int) -> tuple[bytes, dict]:
    """The adapter as one safetensors file: its tensors, with its config in the metadata."""
    config, blob = read_adapter(adapter_dir)
    config = {**config, "version": version}
    meta = {"adapter_config": json.dumps(config, sort_keys=True)}
    return np_save(dict(sorted(np_load(blob).items())), metadata=meta), config


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
    }


def publish(
    adapter_dir: str | Path,
    registry: str | Path,
    key: Ed25519PrivateKey,
    name: str | None = None,
    expires_in: dt.timedelta = dt.timedelta(days=30),
) -> dict:
    """Publish the adapter in `adapter_dir` as the next version; returns its index entry."""
    adapter_dir, registry = Path(adapter_dir), Path(registry)
    index = read_index(registry)
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
        old_payload = (registry / f"{old['full']['path']}.payload").read_bytes()
        delta = make_delta(old_payload, payload)
        if delta is not None and len(delta) < len(payload):
            stem = f"from-{old['version']:04d}"
            entry["deltas"].append(
                _write_bundle(folder, stem, manifest(delta, old["version"]), delta, key)
            )
    index = {"adapter_name": name, "latest": version, "versions": [*index["versions"], entry]}
    atomic_write_text(registry / INDEX, json.dumps(index, indent=1) + "\n")
    return entry
