"""Manifest and payload parsers under fuzzing: only clean `BundleError`s come out."""

import contextlib
import datetime as dt
import json
import os
from dataclasses import asdict

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedadapt.updates.bundles import (
    BundleError,
    Manifest,
    apply_delta,
    make_delta,
    parse_manifest,
    sign,
    verify_manifest,
)
from fedadapt.updates.keys import key_id

# >= 10k inputs in CI; a bench run can raise it with FEDADAPT_FUZZ_EXAMPLES.
FUZZ = int(os.environ.get("FEDADAPT_FUZZ_EXAMPLES", "10000"))
KEY = Ed25519PrivateKey.generate()
GOOD = Manifest(
    "a",
    2,
    "b" * 64,
    "c" * 64,
    10,
    "2999-01-01T00:00:00+00:00",
    None,
    "d" * 64,
    key_id(KEY.public_key()),
)


def test_canonical_manifest_round_trips_and_verifies():
    data = GOOD.canonical()
    assert parse_manifest(data) == GOOD
    assert verify_manifest(data, sign(GOOD, KEY), {GOOD.key_id: KEY.public_key()}) == GOOD


def test_non_canonical_manifest_is_refused():
    with pytest.raises(BundleError, match="canonical"):
        parse_manifest(GOOD.canonical().replace(b",", b", ", 1))


def test_expiry_is_checked_against_now():
    later = dt.datetime(3000, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(BundleError) as e:
        verify_manifest(GOOD.canonical(), sign(GOOD, KEY), {GOOD.key_id: KEY.public_key()}, later)
    assert e.value.reason == "expired"


@pytest.mark.slow
@settings(max_examples=FUZZ, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda b, i: GOOD.canonical()[:i] + b + GOOD.canonical()[i:],
            st.binary(max_size=8),
            st.integers(0, 400),
        ),
    )
)
def test_manifest_parser_fuzz(data):
    with contextlib.suppress(BundleError):
        verify_manifest(data, b"\0" * 64, {GOOD.key_id: KEY.public_key()})


def _file(values: bytes) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return save({"w": np.frombuffer(values.ljust(16, b"\0")[:16], dtype=np.float32)})


OLD = _file(b"\x01" * 16)
DELTA = make_delta(OLD, _file(b"\x02" * 16))


def test_delta_is_bit_exact():
    assert apply_delta(OLD, DELTA) == _file(b"\x02" * 16)


@pytest.mark.slow
@settings(max_examples=FUZZ, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda i, b: DELTA[:i] + b + DELTA[i + 1 :],
            st.integers(0, len(DELTA)),
            st.binary(min_size=1, max_size=2),
        ),
    )
)
def test_delta_payload_fuzz(data):
    with contextlib.suppress(BundleError):
        apply_delta(OLD, data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", "7", "version must be an integer >= 1, got '7'"),
        ("version", True, "version must be an integer >= 1, got True"),
        ("version", 0, "version must be an integer >= 1, got 0"),
        ("payload_bytes", -1, "payload_bytes must be an integer >= 0, got -1"),
        ("from_version", 1.5, "from_version must be an integer >= 1, got 1.5"),
        ("expires_at", "garbage", "expires_at must be an ISO 8601 time with an offset"),
        ("expires_at", "2999-01-01T00:00:00", "expires_at must be an ISO 8601 time with an offset"),
        ("expires_at", 5, "expires_at must be an ISO 8601 time with an offset, got 5"),
        ("payload_sha256", "C" * 64, "payload_sha256 must be lowercase hex"),
        ("key_id", "xyz", "key_id must be lowercase hex"),
        ("adapter_name", "", "adapter_name must be a non-empty string"),
        ("adapter_name", ["a"], "adapter_name must be a non-empty string"),
    ],
)
def test_manifest_fields_of_unexpected_types_are_named(field, value, message):
    """A signed manifest with a field of the wrong type or form is refused as malformed,
    naming the field, before it is trusted for anything (a naive expiry once raised a
    TypeError when compared with now)."""
    data = json.dumps({**asdict(GOOD), field: value}, sort_keys=True, separators=(",", ":"))
    with pytest.raises(BundleError) as e:
        verify_manifest(data.encode(), b"\0" * 64, {GOOD.key_id: KEY.public_key()})
    assert e.value.reason == "malformed"
    assert message in str(e.value)


@pytest.mark.parametrize("data", [b"[]", b"1", b'"x"', b"{}", b'{"version":1}'])
def test_manifests_that_are_not_objects_of_the_fields_are_malformed(data):
    with pytest.raises(BundleError) as e:
        parse_manifest(data)
    assert e.value.reason == "malformed"
