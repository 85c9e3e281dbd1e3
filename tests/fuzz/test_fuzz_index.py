"""Fuzzing the update index and its signed timestamp as a device reads them.

The device reads `timestamp.json` (signed, versioned, expiring), checks that `index.json`
is the one it pins, parses the index and picks a bundle from it. Every field may be missing
or of any type, versions huge, negative or repeated: only `FedAdaptError`s may come out,
and no tampered timestamp may verify.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given
from hypothesis import strategies as st

from fedadapt.clients.updates.updater import pick
from fedadapt.errors import FedAdaptError
from fedadapt.updates.index import check_index_matches, parse_index, timestamp_body
from fedadapt.updates.keys import key_id
from fedadapt.updates.signed_meta import TIMESTAMP, make_meta, verify_meta
from tests.fuzz.support import count, dumps, fuzz, json_values, mutated_bytes, mutated_dict

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
BUNDLE = {"path": "v0003/full", "payload_bytes": 1200, "manifest_sha256": "c" * 64}
DELTA = {"path": "v0003/from-0002", "from_version": 2, "payload_bytes": 90}
ENTRY = {"version": 3, "full": BUNDLE, "deltas": [DELTA]}
INDEX = dumps({"versions": [ENTRY]})
TS, TS_SIG = make_meta(TIMESTAMP, 5, timestamp_body(INDEX), KEY, dt.timedelta(days=1), NOW)
bundles = st.one_of(st.just(BUNDLE), mutated_dict(BUNDLE), mutated_dict(DELTA), json_values)
entries = st.one_of(
    st.just(ENTRY),
    mutated_dict(ENTRY),
    st.fixed_dictionaries(
        {
            "version": st.one_of(st.integers(-3, 10), json_values),
            "full": bundles,
            "deltas": st.one_of(st.lists(bundles, max_size=3), json_values),
        }
    ),
    json_values,
)
indexes = st.one_of(
    st.fixed_dictionaries({"versions": st.lists(entries, max_size=4)}),
    st.fixed_dictionaries({"versions": json_values}),
    json_values,
)
installed_versions = st.one_of(st.none(), st.integers(-2, 5))


def _read(data: bytes, installed: int | None) -> dict | None:
    """What `fetch` does with the index's bytes once the timestamp pins them."""
    return pick(parse_index(data), installed)


@fuzz(1)
@given(indexes, installed_versions)
@example({"versions": [{"version": 3, "full": BUNDLE}]}, None)  # no deltas: KeyError in pick
@example({"versions": [{"version": 3, "full": BUNDLE, "deltas": [BUNDLE]}]}, 2)  # no from_version
def test_index_of_any_shape_is_picked_or_refused(index, installed: int | None) -> None:
    count("index:structured")
    with contextlib.suppress(FedAdaptError):
        _read(dumps(index), installed)


@fuzz(4)
@given(st.one_of(st.binary(max_size=200), mutated_bytes(INDEX)), installed_versions)
def test_index_bytes_are_picked_or_refused(data: bytes, installed: int | None) -> None:
    count("index:bytes")
    with contextlib.suppress(FedAdaptError):
        _read(data, installed)


@fuzz(1.5)
@given(st.data(), st.one_of(st.none(), st.integers(1, 9)))
def test_no_tampered_timestamp_verifies(data: st.DataObject, seen: int | None) -> None:
    ts = data.draw(st.one_of(st.just(TS), mutated_bytes(TS)))
    sig = data.draw(st.one_of(st.just(TS_SIG), mutated_bytes(TS_SIG)))
    index = data.draw(st.one_of(st.just(INDEX), mutated_bytes(INDEX)))
    count("index:timestamp")
    try:
        meta = verify_meta(ts, sig, TIMESTAMP, TRUSTED, seen, now=NOW)
        check_index_matches(index, meta)
        _read(index, 2)
    except FedAdaptError:
        return
    assert (ts, sig, index) == (TS, TS_SIG, INDEX), "a tampered timestamp or index verified"


@fuzz(1)
@given(mutated_dict(json.loads(TS)), st.one_of(st.none(), st.integers(1, 9)))
def test_signed_timestamp_fields_of_any_type(fields: dict, seen: int | None) -> None:
    """A correctly signed timestamp whose fields are missing, extra or of any JSON type."""
    count("index:timestamp-fields")
    data = dumps(fields)
    try:
        meta = verify_meta(data, KEY.sign(data), TIMESTAMP, TRUSTED, seen, now=NOW)
        check_index_matches(INDEX, meta)
    except FedAdaptError:
        pass
