"""Ed25519 signing keys for adapter updates, via `cryptography`.

The private key is written with mode 0600 from the first byte (created with O_EXCL, never
chmod-ed after the fact) and may be passphrase-protected. A key is named by its id: the
first 16 hex digits of the SHA-256 of its raw public bytes, so devices can trust several
keys at once and a publisher can rotate without reinstalling anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedadapt.atomic import create_private
from fedadapt.errors import FedAdaptError

PRIVATE_FILE, PUBLIC_FILE = "signing_key.pem", "signing_key.pub.pem"


class SigningKeyError(FedAdaptError):
    """A key file is missing, malformed, or needs a passphrase."""


def key_id(public: Ed25519PublicKey) -> str:
    """The key's id: the first 16 hex digits of the SHA-256 of its raw public bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(out: str | Path, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Create a new signing key pair in `out`; an existing private key is never overwritten.

    Parameters
    ----------
    out : str | Path
        The folder to write `signing_key.pem` (mode 0600) and `signing_key.pub.pem` to;
        created if missing.
    passphrase : bytes | None (default: None)
        Encrypts the private key if given and non-empty.

    Returns
    -------
    tuple[Path, Path]
        The private and the public key file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    enc = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    priv_path, pub_path = out / PRIVATE_FILE, out / PUBLIC_FILE
    try:
        create_private(priv_path, pem)
    except FileExistsError as e:
        raise SigningKeyError(f"{priv_path} exists; refusing to overwrite a signing key") from e
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path, pub_path


def load_private(path: str | Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file `path`.

    Every failure (missing file, wrong or missing passphrase, another key type) raises
    `SigningKeyError` with a message an operator can act on.
    """
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=passphrase)
    except FileNotFoundError as e:
        raise SigningKeyError(f"no private key at {path}") from e
    except TypeError as e:  # encrypted without a passphrase, or the reverse
        raise SigningKeyError(f"{path}: {e}") from e
    except ValueError as e:
        raise SigningKeyError(f"{path} is not a usable private key (wrong passphrase?): {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def load_public(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file `path`; any failure raises `SigningKeyError`."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError as e:
        raise SigningKeyError(f"no public key at {path}") from e
    except ValueError as e:
        raise SigningKeyError(f"{path} is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key
