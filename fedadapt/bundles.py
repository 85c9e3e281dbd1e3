"""Signed adapter update bundles: format, signing and verification.

A bundle is a manifest (canonical JSON), its Ed25519 signature, and a payload. The payload of
a *full* bundle is the adapter as one safetensors file (tensors, with the adapter config in
its metadata). A *delta* bundle carries, per tensor, the XOR of the new and the old raw bytes
as uint8 tensors in a safetensors file, xz-compressed: XOR makes the result bit-exact (a
float difference would not be), unchanged tensors compress to nothing, and the device checks
the rebuilt file against `result_sha256` from the signed manifest.

Checks follow TUF's threats: the signature and key (arbitrary payloads), the expiry
(indefinite freeze), the base model (mix-and-match), version monotonicity (rollback), the
delta's starting version, and the payload's size and hash (endless data, tampering).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import lzma
from dataclasses import asdict, dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from fedadapt.errors import FedAdaptError
from fedadapt.keys import key_id

MAX_MANIFEST_BYTES = 64 * 1024


class BundleError(FedAdaptError):
    """A bundle was rejected; `reason` is a short stable tag (`bad-signature`, `rollback`...)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Manifest:
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
        return "full" if self.from_version is None else "delta"

    def canonical(self) -> bytes:
        """Sorted keys, no whitespace, UTF-8: the exact bytes that are signed."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    if manifest.key_id != key_id(key.public_key()):
        raise ValueError("the manifest names another key than the one signing it")
    return key.sign(manifest.canonical())


def parse_manifest(data: bytes) -> Manifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"manifest of {len(data)} bytes is over the limit", "malformed")
    try:
        raw = json.loads(data)
        m = Manifest(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise BundleError(f"manifest is not valid: {e}", "malformed") from e
    if m.canonical() != data:
        raise BundleError("manifest is not in canonical form", "malformed")
    if (
        not isinstance(m.version, int)
        or not isinstance(m.payload_bytes, int)
        or m.payload_bytes < 0
    ):
        raise BundleError("manifest fields have wrong types", "malformed")
    return m


def verify_manifest(
    data: bytes,
    signature: bytes,
    trusted: dict[str, Ed25519PublicKey],
    now: dt.datetime | None = None,
) -> Manifest:
    """Signature, key and expiry; the caller then checks what is installed."""
    m = parse_manifest(data)
    key = trusted.get(m.key_id)
    if key is None:
        raise BundleError(
            f"signed by key {m.key_id}, which this device does not trust", "unknown-key"
        )
    try:
        key.verify(signature, data)
    except InvalidSignature as e:
        raise BundleError("the signature does not match the manifest", "bad-signature") from e
    now = now or dt.datetime.now(dt.UTC)
    try:
        expires = dt.datetime.fromisoformat(m.expires_at)
    except ValueError as e:
        raise BundleError(f"bad expiry {m.expires_at!r}", "malformed") from e
    if expires <= now:
        raise BundleError(f"the manifest expired at {m.expires_at}", "expired")
    return m


def check_against_installed(m: Manifest, base_sha256: str, installed: int | None) -> None:
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
    try:
        raw = lzma.decompress(delta)
        xor, meta = np_load(raw), json.loads(_metadata(raw)["target"])
        base = np_load(old)
        out = {}
        for k, v in base.items():
            bits = np.bitwise_xor(v.view(np.uint8).ravel(), xor[k])
            out[k] = bits.view(v.dtype).reshape(v.shape)
    except (lzma.LZMAError, SafetensorError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise BundleError(f"delta payload does not apply: {e}", "malformed") from e
    return np_save(out, metadata=meta or None)


def _metadata(blob: bytes) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]).get("__metadata__", {}) or {}
