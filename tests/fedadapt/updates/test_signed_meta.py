"""The signed-metadata envelope every registry role shares (the timestamp today, rollout
channels later): one set of signing, version, expiry and replay rules, with each role's
own rejection reasons."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedadapt.errors import FedAdaptError
from fedadapt.updates.bundles import BundleError
from fedadapt.updates.keys import key_id
from fedadapt.updates.signed_meta import TIMESTAMP, Role, SeenVersions, make_meta, verify_meta

KEY = Ed25519PrivateKey.generate()
TRUST = {key_id(KEY.public_key()): KEY.public_key()}
CHANNEL = Role("channel/stable", stale="stale-channel", replay="channel-rollback")
DAY = dt.timedelta(days=1)


def _reason(fn) -> str:
    with pytest.raises(BundleError) as e:
        fn()
    return e.value.reason


@pytest.mark.parametrize("role", [TIMESTAMP, CHANNEL])
def test_each_role_gets_the_same_rules_with_its_own_reasons(role):
    data, sig = make_meta(role, 5, {"x": 1}, KEY, DAY)
    assert verify_meta(data, sig, role, TRUST, seen=5).version == 5  # the same again is fine
    assert verify_meta(data, sig, role, TRUST, seen=4).body == {"x": 1}
    assert _reason(lambda: verify_meta(data, sig, role, TRUST, seen=6)) == role.replay
    old, old_sig = make_meta(role, 6, {}, KEY, DAY, dt.datetime.now(dt.UTC) - 2 * DAY)
    assert _reason(lambda: verify_meta(old, old_sig, role, TRUST, seen=5)) == role.stale
    flipped = sig[:-1] + bytes([sig[-1] ^ 1])
    assert _reason(lambda: verify_meta(data, flipped, role, TRUST, None)) == "bad-signature"
    assert _reason(lambda: verify_meta(data, sig, role, {}, None)) == "unknown-key"


def test_a_file_of_one_role_cannot_pose_as_another():
    data, sig = make_meta(CHANNEL, 9, {}, KEY, DAY)
    with pytest.raises(BundleError, match="a 'channel/stable' file was served as the timestamp"):
        verify_meta(data, sig, TIMESTAMP, TRUST, None)


def test_metadata_must_expire_in_the_future():
    with pytest.raises(FedAdaptError, match="must expire in the future"):
        make_meta(TIMESTAMP, 1, {}, KEY, -DAY)


def test_seen_versions_only_grow_and_are_kept_per_role(tmp_path):
    seen = SeenVersions(tmp_path)
    assert seen.get(TIMESTAMP) is None
    seen.record(TIMESTAMP, 4)
    seen.record(CHANNEL, 2)
    seen.record(TIMESTAMP, 3)  # an older one never lowers the record
    assert (seen.get(TIMESTAMP), seen.get(CHANNEL)) == (4, 2)
    assert SeenVersions(tmp_path).load() == {"channel/stable": 2, "timestamp": 4}


@pytest.mark.parametrize("role", [TIMESTAMP, CHANNEL])
def test_a_registry_and_an_equal_versions_content_are_checked(role):
    """Issue 23: the registry a device is bound to, and at the version it holds, the file it
    saw (by hash): another registry's file, or the same version with other content, is
    refused, for every role."""
    import hashlib

    data, sig = make_meta(role, 5, {"x": 1}, KEY, DAY, registry="0123456789abcdef")
    seen_hash = hashlib.sha256(data).hexdigest()
    assert verify_meta(data, sig, role, TRUST, 5, seen_sha256=seen_hash).registry is not None
    other, other_sig = make_meta(role, 5, {"x": 2}, KEY, DAY, registry="0123456789abcdef")
    refused = lambda: verify_meta(other, other_sig, role, TRUST, 5, seen_sha256=seen_hash)  # noqa: E731
    assert _reason(refused) == role.replay
    wrong = lambda: verify_meta(data, sig, role, TRUST, 5, registry="fedcba9876543210")  # noqa: E731
    assert _reason(wrong) == "wrong-registry"
    bare, bare_sig = make_meta(role, 6, {}, KEY, DAY)  # no id: no registry field at all
    assert b"registry" not in bare
    unbound = lambda: verify_meta(bare, bare_sig, role, TRUST, 5, registry="0123456789abcdef")  # noqa: E731
    assert _reason(unbound) == "wrong-registry"
    assert verify_meta(bare, bare_sig, role, TRUST, 5).registry is None  # an unbound device


def test_seen_keeps_the_hash_and_reads_the_bare_versions_of_older_devices(tmp_path):
    (tmp_path / "seen.json").write_text('{"timestamp": 4}')
    seen = SeenVersions(tmp_path)
    assert (seen.get(TIMESTAMP), seen.sha256(TIMESTAMP)) == (4, None)
    seen.record(TIMESTAMP, 4, "a" * 64)  # the same version gains its hash
    assert seen.sha256(TIMESTAMP) == "a" * 64
    seen.record(TIMESTAMP, 4, "b" * 64)  # but never another one
    assert seen.sha256(TIMESTAMP) == "a" * 64
    (tmp_path / "seen.json").write_text('{"timestamp": {"version": 4}}')
    with pytest.raises(FedAdaptError, match="must map role names to versions"):
        seen.load()
