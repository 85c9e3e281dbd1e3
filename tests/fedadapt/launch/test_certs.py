"""Certificates and SuperNode keys are what Flower and TLS clients accept, and keys are 0600."""

from __future__ import annotations

import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedadapt.errors import FedAdaptError
from fedadapt.launch.certs import make_certs


def test_certs_chain_sans_and_key_modes(tmp_path):
    make_certs(tmp_path, ["127.0.0.1", "edge.example"], supernodes=2)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    link = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    link.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "edge.example" in sans.get_values_for_type(x509.DNSName)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    private = ["ca.key", "superlink.key", "supernodes/node-1", "supernodes/node-2"]
    for name in private:
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    key = load_ssh_private_key((tmp_path / "supernodes/node-1").read_bytes(), None)
    pub = load_ssh_public_key((tmp_path / "supernodes/node-1.pub").read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert pub.public_numbers() == key.public_key().public_numbers()


def test_existing_keys_are_never_overwritten(tmp_path):
    make_certs(tmp_path, ["127.0.0.1"], supernodes=1)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(FedAdaptError, match="refusing to overwrite"):
        make_certs(tmp_path, ["127.0.0.1"], supernodes=1)
    assert (tmp_path / "ca.key").read_bytes() == before


def _expiry(path) -> object:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def test_the_cli_encrypts_the_ca_key_and_renews_without_new_device_keys(
    tmp_path, capsys, monkeypatch
):
    from cryptography.hazmat.primitives import serialization

    from fedadapt.cli.app import main

    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out)]) == 2  # no passphrase: the key is never in clear
    assert "--passphrase-env VAR is needed" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("CA_PASS", "correct horse")
    argv = ["--out", str(out), "--passphrase-env", "CA_PASS"]
    assert main(["certs", *argv, "--days", "30", "--supernodes", "2"]) == 0
    with pytest.raises(TypeError):  # encrypted: unreadable without the passphrase
        serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    serialization.load_pem_private_key((out / "ca.key").read_bytes(), b"correct horse")
    first = _expiry(out / "ca.crt")
    assert (
        29
        <= (
            first
            - x509.load_pem_x509_certificate((out / "ca.crt").read_bytes()).not_valid_before_utc
        ).days
        <= 30
    )
    keys = {p.name: p.read_bytes() for p in (out / "supernodes").iterdir()}
    old_link = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    old_ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())

    assert main(["certs", "renew", *argv, "--days", "400"]) == 0
    assert "renewed for 400 days" in capsys.readouterr().out
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    link = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    assert _expiry(out / "ca.crt") > first and _expiry(out / "superlink.crt") > first
    link.verify_directly_issued_by(ca)
    link.verify_directly_issued_by(old_ca)  # a device still holding the old ca.crt trusts it
    assert link.public_key().public_numbers() == old_link.public_key().public_numbers()
    assert link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == (
        old_link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert {p.name: p.read_bytes() for p in (out / "supernodes").iterdir()} == keys

    monkeypatch.setenv("CA_PASS", "wrong")
    assert main(["certs", "renew", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedadapt: error: cannot read the CA key") and "\n" not in err
