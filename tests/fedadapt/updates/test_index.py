"""The index parser: every field a device reads is checked before it is used."""

from __future__ import annotations

import json

import pytest

from fedadapt.updates.bundles import BundleError
from fedadapt.updates.index import parse_index

FULL = {"path": "v0001/full", "payload_bytes": 10, "from_version": None}


def _index(**entry) -> bytes:
    return json.dumps({"versions": [{"version": 1, "full": FULL, "deltas": [], **entry}]}).encode()


def test_a_well_formed_index_parses():
    assert parse_index(_index())["versions"][0]["full"] == FULL


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "index.json is not valid JSON"),
        (b"[]", "must be an object with a list of versions"),
        (_index(version="1"), "versions[0].version must be an integer >= 1, got '1'"),
        (_index(full={**FULL, "path": "../../etc/passwd"}), "path must look like v0003/full"),
        (_index(full={**FULL, "payload_bytes": -1}), "payload_bytes must be an integer >= 0"),
        (_index(deltas={}), "deltas must be a list"),
        (
            _index(deltas=[{**FULL, "manifest_sha256": "x"}]),
            "manifest_sha256 must be lowercase hex",
        ),
    ],
)
def test_a_malformed_index_names_the_field(data, message):
    with pytest.raises(BundleError) as e:
        parse_index(data)
    assert e.value.reason == "malformed"
    assert message in str(e.value)
