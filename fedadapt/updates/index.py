"""The registry's index and its signed timestamp: what the publisher writes and the device
trusts, in one place.

`index.json` lists the versions and their bundles; each bundle entry carries the SHA-256 of
its manifest, so the index pins the exact manifests (an old manifest served at a new path
is refused). `timestamp.json` (TUF's timestamp role, see `fedadapt.updates.signed_meta`) is small,
signed, versioned and short-lived; its body pins the index by size and hash:

    {"body": {"index_bytes": 812, "index_sha256": "…"}, "expires_at": "…",
     "key_id": "…", "role": "timestamp", "version": 7}

A publisher re-signs it at every publish and whenever it refreshes the expiry
(`fedadapt refresh-index`), each time with the next version.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fedadapt.updates.bundles import BundleError, check_hex, check_int, sha256
from fedadapt.updates.signed_meta import SignedMeta

INDEX_FILE = "index.json"
TIMESTAMP_FILE, TIMESTAMP_SIG = "timestamp.json", "timestamp.sig"
MAX_INDEX_BYTES = 1 << 20
_PATH = re.compile(r"^v\d{4,}/(full|from-\d{4,})$")


def timestamp_body(index_bytes: bytes) -> dict[str, Any]:
    """The timestamp's body for these exact index bytes: their size and SHA-256.

    Sign the bytes that are served: `check_index_matches` compares byte for byte.
    """
    return {"index_bytes": len(index_bytes), "index_sha256": sha256(index_bytes)}


def check_index_matches(index_bytes: bytes, timestamp: SignedMeta) -> None:
    """The index is the one the timestamp signed, byte for byte."""
    want = timestamp.body
    size = check_int(want.get("index_bytes"), "timestamp index_bytes", 0)
    digest = check_hex(want.get("index_sha256"), "timestamp index_sha256")
    if len(index_bytes) != size or sha256(index_bytes) != digest:
        raise BundleError(
            f"index.json ({len(index_bytes)} B) is not the one the timestamp signed "
            f"({size} B, {digest[:12]}…)",
            "hash-mismatch",
        )


def _bundle(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BundleError(f"{where} must be an object", "malformed")
    path = raw.get("path")
    if not isinstance(path, str) or not _PATH.match(path):
        raise BundleError(f"{where}.path must look like v0003/full, got {path!r}", "malformed")
    check_int(raw.get("payload_bytes"), f"{where}.payload_bytes", 0)
    if raw.get("from_version") is not None:
        check_int(raw["from_version"], f"{where}.from_version", 1)
    if "manifest_sha256" in raw:
        check_hex(raw["manifest_sha256"], f"{where}.manifest_sha256")
    return raw


def parse_index(data: bytes) -> dict[str, Any]:
    """The index, with every field a device reads checked for type and form."""
    try:
        index = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"index.json is not valid JSON: {e}", "malformed") from e
    return check_index(index)


def check_index(index: object) -> dict[str, Any]:
    """`index` (parsed JSON of any shape) as an index, or `malformed` naming the field."""
    if not isinstance(index, dict) or not isinstance(index.get("versions"), list):
        raise BundleError("index.json must be an object with a list of versions", "malformed")
    for i, entry in enumerate(index["versions"]):
        where = f"index.json versions[{i}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{where} must be an object", "malformed")
        check_int(entry.get("version"), f"{where}.version", 1)
        _bundle(entry.get("full"), f"{where}.full")
        if not isinstance(entry.get("deltas", []), list):
            raise BundleError(f"{where}.deltas must be a list", "malformed")
        for j, d in enumerate(entry.get("deltas", [])):
            _bundle(d, f"{where}.deltas[{j}]")
    return index
