"""Signed adapter update bundles: format, signing and verification.

A bundle is a manifest (canonical JSON), its Ed25519 signature, and a payload. The payload of
a *full* bundle is the adapter as one safetensors file (tensors, with the adapter config in
its metadata). A *delta* bundle carries, per tensor, the XOR of the new and the old raw bytes
as uint8 tensors in a safetensors file, xz-compressed: XOR makes the result bit-exact (a
float difference would not be), unchanged tensors compress to nothing, and the device checks
the rebuilt file against `result_sha256` from the signed manifest.

Checks follow TUF's threats: the signature and key (arbitrary payloads), the expiry
(indefinite freeze), the adapter name and base model (mix-and-match), version monotonicity
(rollback), the delta's starting version, and the payload's size and hash (endless data,
tampering). Every field is checked for type and form before it is used, so a signed but
odd manifest is `malformed`, never a crash. The registry's index is guarded the same way
by a signed timestamp (`fedadapt.updates.signed_meta`, `fedadapt.updates.index`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import lzma
import re
from dataclasses import asdict, dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from fedadapt.errors import FedAdaptError
from fedadapt.updates.keys import key_id

MAX_MANIFEST_BYTES = 64 * 1024


class BundleError(FedAdaptError):
    """A bundle was rejected; `reason` is a short stable tag (`bad-signature`, `rollback`...)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
    """What a bundle claims about its payload; the signature covers exactly `canonical()`.

    Fields are not validated here: `parse_manifest` does that for bytes from outside.
    `from_version` is None for a full bundle and names the version a delta applies to
    otherwise; `result_sha256` is the hash of the full adapter file after installing, and
    `key_id` names the signing key (`fedadapt.updates.keys.key_id`).
    """

    adapter_name: str
    version: int
    base_model_sha256: str
    payload_sha256: str
    payload_bytes: int
    expires_at: str  # ISO 8601, UTC
    from_version: int | None  # set for a delta bundle
    result_sha256: str  # SHA-256 of the full adapter file the device ends up with
    key_id: str

    @property
    def kind(self) -> str:
        """`full` or `delta`, from whether `from_version` is set."""
        return "full" if self.from_version is None else "delta"

    def canonical(self) -> bytes:
        """The canonical JSON bytes that are signed and shipped as the manifest file."""
        return canonical_json(asdict(self))


def sha256(data: bytes) -> str:
    """Lowercase hex SHA-256, the form every hash in a manifest takes."""
    return hashlib.sha256(data).hexdigest()


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    """The Ed25519 signature of `manifest.canonical()`.

    Raises `ValueError` if the manifest's `key_id` is not this key's: a device looks the key
    up by that id, so such a bundle could never verify.
    """
    if manifest.key_id != key_id(key.public_key()):
        raise ValueError("the manifest names another key than the one signing it")
    return key.sign(manifest.canonical())


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def check_int(value: object, what: str, minimum: int) -> int:
    """`value` as an int of at least `minimum`; bools and numeric strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BundleError(f"{what} must be an integer >= {minimum}, got {value!r}", "malformed")
    return value


def parse_time(value: object, what: str) -> dt.datetime:
    """An ISO 8601 time with a UTC offset (a naive time cannot be compared with now)."""
    try:
        t = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise BundleError(
            f"{what} must be an ISO 8601 time with an offset, got {value!r}", "malformed"
        )
    return t


def check_hex(value: object, what: str, pattern: re.Pattern[str] = _HEX64) -> str:
    """`value` if it is a string matching `pattern` (64 lowercase hex digits by default).

    Raises `BundleError` (`malformed`) naming `what` otherwise.
    """
    if not isinstance(value, str) or not pattern.match(value):
        raise BundleError(
            f"{what} must be lowercase hex ({pattern.pattern}), got {value!r}", "malformed"
        )
    return value


def parse_canonical(data: bytes, cap: int, what: str) -> dict:
    """A JSON object that is byte-for-byte in canonical form (what was signed is what is read)."""
    if len(data) > cap:
        raise BundleError(f"{what} of {len(data)} bytes is over the {cap}-byte limit", "malformed")
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{what} is not valid JSON: {e}", "malformed") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{what} must be a JSON object", "malformed")
    if canonical_json(raw) != data:
        raise BundleError(f"{what} is not in canonical form", "malformed")
    return raw


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the exact bytes that are signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def parse_manifest(data: bytes) -> Manifest:
    """A manifest from untrusted bytes, every field checked for type and form.

    The signature is not checked here (`verify_manifest` does both). Raises `BundleError`
    (`malformed`) for anything that is not canonical JSON with exactly the expected fields.
    """
    raw = parse_canonical(data, MAX_MANIFEST_BYTES, "manifest")
    try:
        m = Manifest(**raw)
    except TypeError as e:
        raise BundleError(f"manifest fields are not the expected ones: {e}", "malformed") from e
    if not isinstance(m.adapter_name, str) or not m.adapter_name:
        raise BundleError(
            f"adapter_name must be a non-empty string, got {m.adapter_name!r}", "malformed"
        )
    check_int(m.version, "version", 1)
    check_int(m.payload_bytes, "payload_bytes", 0)
    if m.from_version is not None:
        check_int(m.from_version, "from_version", 1)
    for field in ("base_model_sha256", "payload_sha256", "result_sha256"):
        check_hex(getattr(m, field), field)
    check_hex(m.key_id, "key_id", KEY_ID_RE)
    parse_time(m.expires_at, "expires_at")
    return m


def check_signature(
    data: bytes, signature: bytes, signer: str, trusted: dict[str, Ed25519PublicKey], what: str
) -> None:
    """The key named in signed data is trusted, and its signature covers exactly `data`."""
    key = trusted.get(signer)
    if key is None:
        raise BundleError(
            f"{what} is signed by key {signer}, which this device does not trust", "unknown-key"
        )
    try:
        key.verify(signature, data)
    except InvalidSignature as e:
        raise BundleError(f"the signature does not match the {what}", "bad-signature") from e


def check_fresh(expires_at: str, now: dt.datetime | None, what: str, reason: str) -> None:
    """Expired signed data names the moment it expired, so an operator sees how stale it is."""
    now = now or dt.datetime.now(dt.UTC)
    if parse_time(expires_at, "expires_at") <= now:
        raise BundleError(
            f"the {what} expired at {expires_at} (now {now.isoformat(timespec='seconds')})",
            reason,
        )


def verify_manifest(
    data: bytes,
    signature: bytes,
    trusted: dict[str, Ed25519PublicKey],
    now: dt.datetime | None = None,
) -> Manifest:
    """Signature, key and expiry; the caller then checks what is installed."""
    m = parse_manifest(data)
    check_signature(data, signature, m.key_id, trusted, "manifest")
    check_fresh(m.expires_at, now, "manifest", "expired")
    return m


def check_against_installed(
    m: Manifest, base_sha256: str, installed: int | None, name: str | None = None
) -> None:
    """Mix-and-match: the bundle is for this device's base, adapter and installed version."""
    if name is not None and m.adapter_name != name:
        raise BundleError(
            f"the bundle is for adapter {m.adapter_name!r}, this device runs {name!r}",
            "adapter-name-mismatch",
        )
    if m.base_model_sha256 != base_sha256:
        raise BundleError(
            f"built for base {m.base_model_sha256[:12]}…, this device has {base_sha256[:12]}…",
            "wrong-base",
        )
    if installed is not None and m.version <= installed:
        raise BundleError(
            f"version {m.version} is not newer than installed {installed}", "rollback"
        )
    if m.from_version is not None and m.from_version != installed:
        raise BundleError(
            f"delta starts from version {m.from_version}, installed is {installed}",
            "wrong-from-version",
        )


def check_payload(m: Manifest, payload: bytes) -> None:
    """The payload has exactly the signed size and hash.

    Raises `BundleError` with reason `truncated`, `oversize` or `hash-mismatch`.
    """
    if len(payload) < m.payload_bytes:
        raise BundleError(f"{len(payload)} of {m.payload_bytes} bytes", "truncated")
    if len(payload) > m.payload_bytes:
        raise BundleError(f"{len(payload)} bytes, manifest says {m.payload_bytes}", "oversize")
    if sha256(payload) != m.payload_sha256:
        raise BundleError("payload hash does not match the manifest", "hash-mismatch")


def make_delta(old: bytes, new: bytes) -> bytes | None:
    """The XOR delta from adapter file `old` to `new`, or None when their tensors differ."""
    a, b = np_load(old), np_load(new)
    if set(a) != set(b) or any(a[k].shape != b[k].shape or a[k].dtype != b[k].dtype for k in a):
        return None
    xor = {k: np.bitwise_xor(a[k].view(np.uint8).ravel(), b[k].view(np.uint8).ravel()) for k in b}
    meta = _metadata(new)
    return lzma.compress(np_save(xor, metadata={"target": json.dumps(meta, sort_keys=True)}))


def apply_delta(old: bytes, delta: bytes) -> bytes:
    """Rebuild the new adapter file from the installed one and an XOR delta (`make_delta`).

    The result is not checked here: the caller compares its hash with the manifest's
    `result_sha256` before installing it. A delta that does not fit `old` raises
    `BundleError` (`malformed`).
    """
    try:
        raw = lzma.decompress(delta)
        xor, meta = np_load(raw), json.loads(_metadata(raw)["target"])
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError(f"its target metadata is not names to strings: {str(meta)[:40]}")
        base = np_load(old)
        out = {}
        for k, v in base.items():
            bits = np.bitwise_xor(v.view(np.uint8).ravel(), xor[k])
            out[k] = bits.view(v.dtype).reshape(v.shape)
    except (lzma.LZMAError, SafetensorError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise BundleError(f"delta payload does not apply: {e}", "malformed") from e
    return np_save(out, metadata=meta or None)


def _metadata(blob: bytes) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]).get("__metadata__", {}) or {}
