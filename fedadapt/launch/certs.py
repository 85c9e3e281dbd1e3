"""TLS certificates and SuperNode keys for Flower's Deployment Engine, via `cryptography`.

Layout written by `fedadapt certs --out DIR`:

    ca.crt, ca.key                the CA that signs the SuperLink's certificate
    superlink.crt, superlink.key  the SuperLink's TLS identity (host names and IPs as SANs)
    supernodes/node-1, ...        one ECDSA P-384 key pair per SuperNode, OpenSSH format,
    supernodes/node-1.pub, ...    as `flwr supernode register` and `flower-supernode` read them

Private keys are created with mode 0600 (O_EXCL: an existing key is never overwritten).
The CA key is encrypted with a passphrase when one is given (`fedadapt certs` always gives
one): whoever copies the folder cannot sign a SuperLink certificate without it.

`renew_certs` re-issues the CA's and the SuperLink's certificates for a new validity period
with their same keys, names and subjects: every SuperNode keeps its key pair and its
registration, and a device that holds the old CA certificate still verifies a SuperLink
certificate signed by the same CA key until that old certificate itself expires; ship it the
new `ca.crt` before then.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedadapt.atomic import atomic_write_bytes, create_private
from fedadapt.errors import FedAdaptError

VALID_DAYS = 365


def _write_private(path: Path, data: bytes) -> None:
    try:
        create_private(path, data)
    except FileExistsError as e:
        raise FedAdaptError(f"{path} exists; refusing to overwrite a private key") from e


def _pem_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName] | None = None,
    days: int = VALID_DAYS,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if issuer is None:  # the CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(x509.SubjectAlternativeName(sans or []), False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
    return builder.sign(signer, hashes.SHA384())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certs(
    out: str | Path,
    hosts: list[str],
    supernodes: int,
    days: int = VALID_DAYS,
    passphrase: bytes | None = None,
) -> dict[str, Path]:
    """Write the CA, the SuperLink certificate for `hosts`, and `supernodes` key pairs.

    Parameters
    ----------
    days : int (default: 365)
        How long both certificates are valid.
    passphrase : bytes or None (default: None)
        Encrypts the CA key; None leaves it in the clear (a throwaway loopback demo only).
    """
    out = Path(out)
    (out / "supernodes").mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _cert("fedadapt CA", ca_key, None, ca_key, days=days)
    link_key = ec.generate_private_key(ec.SECP384R1())
    sans = [_san(h) for h in hosts]
    link = _cert("fedadapt SuperLink", link_key, ca.subject, ca_key, sans, days)
    _write_private(out / "ca.key", _pem_key(ca_key, passphrase))
    _write_private(out / "superlink.key", _pem_key(link_key))
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "superlink.crt").write_bytes(link.public_bytes(serialization.Encoding.PEM))
    for i in range(1, supernodes + 1):
        node_key(out / "supernodes" / f"node-{i}")
    return {"ca": out / "ca.crt", "cert": out / "superlink.crt", "key": out / "superlink.key"}


def renew_certs(
    out: str | Path, days: int = VALID_DAYS, passphrase: bytes | None = None
) -> dict[str, Path]:
    """Re-issue `ca.crt` and `superlink.crt` in `out` for `days` more, with the same keys,
    subjects and host names; SuperNode keys are not touched. Returns the new expiry dates."""
    out = Path(out)
    try:
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), passphrase)
        link_key = serialization.load_pem_private_key((out / "superlink.key").read_bytes(), None)
        old_link = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    except FileNotFoundError as e:
        raise FedAdaptError(
            f"{out} has no {Path(e.filename).name}: not a `fedadapt certs` folder"
        ) from None
    except TypeError as e:  # encrypted without a passphrase, or the reverse
        raise FedAdaptError(f"{out / 'ca.key'}: {e}") from None
    except ValueError as e:
        raise FedAdaptError(
            f"cannot read the CA key or certificates in {out} (wrong passphrase?): {e}"
        ) from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not isinstance(
        link_key, ec.EllipticCurvePrivateKey
    ):
        raise FedAdaptError(f"{out}: the CA and SuperLink keys must be ECDSA keys")
    sans = list(old_link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    ca = _cert("fedadapt CA", ca_key, None, ca_key, days=days)
    link = _cert("fedadapt SuperLink", link_key, ca.subject, ca_key, sans, days)
    atomic_write_bytes(out / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(out / "superlink.crt", link.public_bytes(serialization.Encoding.PEM))
    return {"ca": out / "ca.crt", "cert": out / "superlink.crt"}


def node_key(path: Path) -> Path:
    """One SuperNode's ECDSA P-384 key pair in OpenSSH format (`path`, `path.pub`)."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.with_name(path.name + ".pub").write_bytes(pub + b"\n")
    return path
