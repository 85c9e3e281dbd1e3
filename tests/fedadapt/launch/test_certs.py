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
