"""Fuzzing the signed-manifest parser and verifier and the delta-bundle decoder.

Whatever the bytes, `parse_manifest`, `verify_manifest`, `check_against_installed`,
`check_payload` and `apply_delta` either succeed or raise a `FedAdaptError`; and no mutation
of a signed manifest or of its signature verifies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import lzma

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.numpy import save as np_save

from fedadapt.errors import FedAdaptError
from fedadapt.updates.bundles import (
    Manifest,
    apply_delta,
    check_against_installed,
    check_payload,
    parse_manifest,
    sha256,
    verify_manifest,
)
from fedadapt.updates.keys import key_id
from tests.fuzz.support import (
    canonical_safetensors,
    count,
    dumps,
    fuzz,
    json_values,
    mutated_bytes,
    mutated_dict,
    safetensors_blob,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}
BASE = "b" * 64
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
PAYLOAD = b"adapter bytes"
VALID = Manifest(
    adapter_name="sst2",
    version=3,
    base_model_sha256=BASE,
    payload_sha256=sha256(PAYLOAD),
    payload_bytes=len(PAYLOAD),
    expires_at="2030-02-01T00:00:00+00:00",
    from_version=None,
    result_sha256=sha256(PAYLOAD),
    key_id=key_id(KEY.public_key()),
)
VALID_BYTES = VALID.canonical()
VALID_SIG = KEY.sign(VALID_BYTES)
installed_versions = st.one_of(st.none(), st.integers(-2, 5))


def _check_all(data: bytes, signature: bytes, installed: int | None, payload: bytes) -> None:
    """Everything a device checks about a bundle, in the device's order."""
    m = verify_manifest(data, signature, TRUSTED, now=NOW)
    check_against_installed(m, BASE, installed, "sst2")
    check_payload(m, payload)


@fuzz(9)
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    count("manifest:bytes")
    with contextlib.suppress(FedAdaptError):
        parse_manifest(data)


@fuzz(2)
@given(
    mutated_dict(json.loads(VALID_BYTES)),
    st.booleans(),
    installed_versions,
    st.sampled_from([PAYLOAD, b"", PAYLOAD + b"x"]),
)
def test_manifest_fields_of_any_type(
    fields: dict, honest_key: bool, installed: int | None, payload: bytes
) -> None:
    """A correctly signed manifest whose fields are missing, extra or of any JSON type: what
    a publisher's bug, or a stolen key, could produce."""
    count("manifest:fields")
    data = dumps(fields)
    with contextlib.suppress(FedAdaptError):
        _check_all(data, (KEY if honest_key else OTHER).sign(data), installed, payload)


@fuzz(2)
@given(st.data(), installed_versions)
def test_no_mutation_of_a_signed_manifest_verifies(data: st.DataObject, installed) -> None:
    manifest = data.draw(st.one_of(st.just(VALID_BYTES), mutated_bytes(VALID_BYTES)))
    signature = data.draw(st.one_of(st.just(VALID_SIG), mutated_bytes(VALID_SIG)))
    count("manifest:mutated")
    try:
        _check_all(manifest, signature, installed, PAYLOAD)
    except FedAdaptError:
        return
    assert (manifest, signature) == (VALID_BYTES, VALID_SIG), "a tampered manifest verified"


@fuzz(1)
@given(json_values)
def test_manifest_of_any_json_shape(value) -> None:
    count("manifest:json")
    with contextlib.suppress(FedAdaptError):
        parse_manifest(dumps(value))


# -- delta bundles ------------------------------------------------------------------------------
OLD = np_save(
    {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, dtype=np.float16)},
    metadata={"version": "1"},
)
NEW = np_save(
    {"a": np.arange(6, dtype=np.float32).reshape(2, 3) * 2, "b": np.zeros(4, dtype=np.float16)},
    metadata={"version": "2"},
)


@st.composite
def delta_payloads(draw: st.DrawFn) -> bytes:
    """The XOR delta from OLD to NEW as `make_delta` writes it, with up to two defects: a
    tensor missing, extra, of another length or dtype, a `target` metadata of any JSON
    shape; then compressed, or its compressed bytes damaged."""
    xor = {k: np.frombuffer(v.tobytes(), np.uint8).copy() for k, v in _tensors(NEW).items()}
    target: object = {"version": "2"}
    for defect in draw(st.lists(st.sampled_from(["missing", "extra", "length", "dtype", "meta"]))):
        k = draw(st.sampled_from(["a", "b"]))
        if defect == "missing":
            xor.pop(k, None)
        elif defect == "extra":
            xor["c"] = np.zeros(3, np.uint8)
        elif defect == "length":
            xor[k] = np.zeros(draw(st.integers(0, 40)), np.uint8)
        elif defect == "dtype":
            xor[k] = np.zeros(draw(st.integers(0, 6)), draw(st.sampled_from(["f4", "i8", "?"])))
        else:
            target = draw(json_values)
    meta = draw(
        st.one_of(
            st.just({"target": json.dumps(target)}),
            st.dictionaries(st.sampled_from(["target", "x"]), st.text(max_size=20)),
        )
    )
    raw = canonical_safetensors(np_save(xor, metadata=meta))
    if draw(st.booleans()):
        return _xz(draw(st.one_of(st.just(raw), mutated_bytes(raw))))
    return draw(mutated_bytes(_xz(raw)))


def _tensors(blob: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(blob)


def _xor_delta(target: str) -> bytes:
    """A delta whose tensors apply to OLD, with `target` as its metadata's raw JSON."""
    xor = {k: np.zeros(v.nbytes, np.uint8) for k, v in _tensors(OLD).items()}
    return _xz(np_save(xor, metadata={"target": target}))


def _xz(data: bytes) -> bytes:
    """xz as `make_delta` writes it, at the fastest preset (the format is the same)."""
    return lzma.compress(data, preset=0)


@fuzz(1)
@example(_xor_delta("5"))  # a target that is not an object: TypeError from np_save
@example(_xor_delta('{"version": 2}'))  # a metadata value that is not a string
@given(
    st.one_of(
        delta_payloads(),
        safetensors_blob(names=["a", "b", "c"], metadata=st.just({"target": "{}"})).map(_xz),
        st.binary(max_size=64),
    )
)
def test_delta_payloads_apply_or_are_refused(delta: bytes) -> None:
    count("bundle:delta")
    try:
        out = apply_delta(OLD, delta)
    except FedAdaptError:
        return
    assert isinstance(out, bytes)
