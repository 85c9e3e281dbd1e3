"""Signed registry metadata with a version and an expiry: TUF's timestamp role, and the one
envelope that every later role (a rollout channel) reuses, so all of them follow the same
signing, versioning, expiry and replay rules.

A metadata file is canonical JSON, signed with Ed25519 like a manifest (the signature is in
a sibling `.sig` file):

    {"body": {...}, "expires_at": "2026-12-03T06:00:00+00:00", "key_id": "…",
     "role": "timestamp", "version": 12}

A device accepts it only when all of these hold, and otherwise names the reason:
- the key is trusted and the signature covers the exact bytes (`unknown-key`, `bad-signature`);
- `role` is the one asked for (a channel file cannot pose as a timestamp);
- `version` is not older than the newest the device has seen for that role, which it keeps
  in `seen.json` (`Role.replay`, e.g. `index-rollback`): a replayed old file is refused;
- `expires_at` is in the future (`Role.stale`, e.g. `stale-index`): a registry that stops
  being re-signed, or a frozen mirror, is reported instead of trusted forever.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedadapt.atomic import atomic_write_text
from fedadapt.errors import FedAdaptError
from fedadapt.updates.bundles import (
    KEY_ID_RE,
    BundleError,
    canonical_json,
    check_fresh,
    check_hex,
    check_int,
    check_signature,
    parse_canonical,
)
from fedadapt.updates.keys import key_id

MAX_META_BYTES = 64 * 1024
SEEN_FILE = "seen.json"


@dataclass(frozen=True)
class Role:
    """A kind of signed metadata, with the reasons a device gives when it refuses one."""

    name: str  # "timestamp"; a channel would be e.g. "channel/stable"
    stale: str  # reason when it has expired
    replay: str  # reason when it is older than one already seen


TIMESTAMP = Role("timestamp", stale="stale-index", replay="index-rollback")


@dataclass(frozen=True)
class SignedMeta:
    """One signed metadata file: the envelope fields and the role's own `body`.

    Not validated on construction: `parse_meta` checks bytes from outside, `verify_meta`
    also checks trust, replay and expiry.
    """

    role: str
    version: int
    expires_at: str  # ISO 8601 with an offset
    key_id: str
    body: dict[str, Any]

    def canonical(self) -> bytes:
        """The canonical JSON bytes that are signed and served."""
        return canonical_json(asdict(self))


def make_meta(
    role: Role,
    version: int,
    body: dict[str, Any],
    key: Ed25519PrivateKey,
    expires_in: dt.timedelta,
    now: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """The canonical bytes of a new metadata file and their signature."""
    if expires_in <= dt.timedelta(0):
        raise FedAdaptError(f"a {role.name} must expire in the future, not in {expires_in}")
    now = now or dt.datetime.now(dt.UTC)
    expires = (now + expires_in).isoformat(timespec="seconds")
    meta = SignedMeta(role.name, version, expires, key_id(key.public_key()), body)
    data = meta.canonical()
    return data, key.sign(data)


def parse_meta(data: bytes, role: Role) -> SignedMeta:
    """Fields and types only; no trust (a publisher reads its own last version this way)."""
    raw = parse_canonical(data, MAX_META_BYTES, role.name)
    try:
        meta = SignedMeta(**raw)
    except TypeError as e:
        raise BundleError(f"{role.name} fields are not the expected ones: {e}", "malformed") from e
    if meta.role != role.name:
        raise BundleError(f"a {meta.role!r} file was served as the {role.name}", "malformed")
    check_int(meta.version, f"{role.name} version", 1)
    check_hex(meta.key_id, f"{role.name} key_id", KEY_ID_RE)
    if not isinstance(meta.body, dict):
        raise BundleError(f"{role.name} body must be a JSON object", "malformed")
    return meta


def verify_meta(
    data: bytes,
    signature: bytes,
    role: Role,
    trusted: dict[str, Ed25519PublicKey],
    seen: int | None,
    now: dt.datetime | None = None,
) -> SignedMeta:
    """Signature and key, then version against the newest seen, then expiry."""
    meta = parse_meta(data, role)
    check_signature(data, signature, meta.key_id, trusted, role.name)
    if seen is not None and meta.version < seen:
        raise BundleError(
            f"{role.name} version {meta.version} is older than version {seen}, already seen "
            "(a replayed registry)",
            role.replay,
        )
    check_fresh(meta.expires_at, now, role.name, role.stale)
    return meta


class SeenVersions:
    """The newest version of each role a device has accepted, in `seen.json`, written
    atomically: losing it would let a replayed registry in again."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / SEEN_FILE

    def load(self) -> dict[str, int]:
        """Role name → newest accepted version; empty if the file does not exist yet.

        A file that exists but is unreadable or malformed raises `FedAdaptError` rather than
        counting as empty, since that would let a replay in.
        """
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FedAdaptError(f"{self.path} is unreadable ({e}); restore it") from e
        if not isinstance(raw, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in raw.values()
        ):
            raise FedAdaptError(f"{self.path} must map role names to versions; restore it")
        return raw

    def get(self, role: Role) -> int | None:
        """The newest version of `role` accepted so far, or None if none was."""
        return self.load().get(role.name)

    def record(self, role: Role, version: int) -> None:
        """Remember `version` of `role` as accepted; the stored version never goes down."""
        seen = self.load()
        if seen.get(role.name, 0) < version:
            seen[role.name] = version
            atomic_write_text(self.path, json.dumps(seen, sort_keys=True) + "\n")
