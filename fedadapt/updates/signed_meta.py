"""Signed registry metadata with a version and an expiry: TUF's timestamp role, and the one
envelope that every later role (a rollout channel) reuses, so all of them follow the same
signing, versioning, expiry and replay rules.

A metadata file is canonical JSON, signed with Ed25519 like a manifest (the signature is in
a sibling `.sig` file):

    {"body": {...}, "expires_at": "2026-12-03T06:00:00+00:00", "key_id": "…",
     "registry": "…", "role": "timestamp", "version": 12}

A device accepts it only when all of these hold, and otherwise names the reason:
- the key is trusted and the signature covers the exact bytes (`unknown-key`, `bad-signature`);
- `role` is the one asked for (a channel file cannot pose as a timestamp);
- `registry` is the registry the device is bound to (`wrong-registry`): one key may sign
  several registries, and a file from another one must not even be recorded as seen, or its
  higher version would make the device refuse its own registry's next file as a replay;
- `version` is not older than the newest the device has seen for that role, which it keeps
  in `seen.json` with the SHA-256 of the file (`Role.replay`, e.g. `index-rollback`): a
  replayed old file is refused, and so is a file of the same version with other content (a
  mix-and-match through an equal version);
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
    sha256,
)
from fedadapt.updates.keys import key_id

MAX_META_BYTES = 64 * 1024
SEEN_FILE = "seen.json"
REGISTRY_ID_RE = KEY_ID_RE  # 16 lowercase hex digits, drawn when the registry is created


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
    also checks trust, registry, replay and expiry. `registry` is None in the files of a
    registry made before registries had an id; such a file has no `registry` field at all.
    """

    role: str
    version: int
    expires_at: str  # ISO 8601 with an offset
    key_id: str
    body: dict[str, Any]
    registry: str | None = None  # the registry's id (`REGISTRY_ID_RE`)

    def canonical(self) -> bytes:
        """The canonical JSON bytes that are signed and served (no `registry` field when
        there is no id, so an older registry's files keep their exact bytes)."""
        fields = asdict(self)
        if self.registry is None:
            del fields["registry"]
        return canonical_json(fields)


def make_meta(
    role: Role,
    version: int,
    body: dict[str, Any],
    key: Ed25519PrivateKey,
    expires_in: dt.timedelta,
    now: dt.datetime | None = None,
    registry: str | None = None,
) -> tuple[bytes, bytes]:
    """The canonical bytes of a new metadata file and their signature; `registry` is the
    id of the registry it belongs to (None only for a registry without one)."""
    if expires_in <= dt.timedelta(0):
        raise FedAdaptError(f"a {role.name} must expire in the future, not in {expires_in}")
    now = now or dt.datetime.now(dt.UTC)
    expires = (now + expires_in).isoformat(timespec="seconds")
    meta = SignedMeta(role.name, version, expires, key_id(key.public_key()), body, registry)
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
    if "registry" in raw:
        check_hex(meta.registry, f"{role.name} registry", REGISTRY_ID_RE)
    return meta


def verify_meta(
    data: bytes,
    signature: bytes,
    role: Role,
    trusted: dict[str, Ed25519PublicKey],
    seen: int | None,
    now: dt.datetime | None = None,
    seen_sha256: str | None = None,
    registry: str | None = None,
) -> SignedMeta:
    """Signature and key, then the registry, then version against the newest seen (and, at
    the same version, the content against `seen_sha256`), then expiry.

    `registry` is the id the device is bound to; None accepts any (a device not bound yet).
    A bound device refuses a file without an id too: dropping the id must not unbind it.
    """
    meta = parse_meta(data, role)
    check_signature(data, signature, meta.key_id, trusted, role.name)
    if registry is not None and meta.registry != registry:
        raise BundleError(
            f"the {role.name} is from registry {meta.registry or '(no id)'}, this device is "
            f"bound to registry {registry}",
            "wrong-registry",
        )
    if seen is not None and meta.version < seen:
        raise BundleError(
            f"{role.name} version {meta.version} is older than version {seen}, already seen "
            "(a replayed registry)",
            role.replay,
        )
    if meta.version == seen and seen_sha256 is not None and sha256(data) != seen_sha256:
        raise BundleError(
            f"{role.name} version {meta.version} was already seen with other content (a "
            "mix-and-match through an equal version)",
            role.replay,
        )
    check_fresh(meta.expires_at, now, role.name, role.stale)
    return meta


class SeenVersions:
    """The newest version of each role a device has accepted, with the SHA-256 of that file,
    in `seen.json`, written atomically: losing it would let a replayed registry in again.

        {"timestamp": {"sha256": "…", "version": 7}}

    A bare version (`{"timestamp": 7}`, what devices wrote before the hash was kept) is read
    as that version with no hash known; the next file accepted records one.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / SEEN_FILE

    def entries(self) -> dict[str, tuple[int, str | None]]:
        """Role name → (newest accepted version, its file's SHA-256 or None); empty if the
        file does not exist yet.

        A file that exists but is unreadable or malformed raises `FedAdaptError` rather than
        counting as empty, since that would let a replay in.
        """
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FedAdaptError(f"{self.path} is unreadable ({e}); restore it") from e
        out: dict[str, tuple[int, str | None]] = {}
        for role, value in raw.items() if isinstance(raw, dict) else [(None, None)]:
            if _is_version(value):
                out[role] = (value, None)
            elif (
                isinstance(value, dict)
                and set(value) == {"version", "sha256"}
                and _is_version(value["version"])
                and isinstance(value["sha256"], str)
            ):
                out[role] = (value["version"], value["sha256"])
            else:
                raise FedAdaptError(f"{self.path} must map role names to versions; restore it")
        return out

    def load(self) -> dict[str, int]:
        """Role name → newest accepted version (see `entries`)."""
        return {role: v for role, (v, _) in self.entries().items()}

    def get(self, role: Role) -> int | None:
        """The newest version of `role` accepted so far, or None if none was."""
        return self.load().get(role.name)

    def sha256(self, role: Role) -> str | None:
        """The SHA-256 of the newest `role` file accepted, or None if none is known."""
        return self.entries().get(role.name, (0, None))[1]

    def record(self, role: Role, version: int, digest: str | None = None) -> None:
        """Remember `version` of `role` (whose file hashes to `digest`) as accepted; the
        stored version never goes down."""
        seen = self.entries()
        old = seen.get(role.name, (0, None))
        if old[0] < version or (old[0] == version and digest is not None and old[1] is None):
            seen[role.name] = (version, digest)
            body = {
                r: v if h is None else {"sha256": h, "version": v} for r, (v, h) in seen.items()
            }
            atomic_write_text(self.path, json.dumps(body, sort_keys=True) + "\n")


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
