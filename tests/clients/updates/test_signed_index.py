"""Freeze and mix-and-match protection on the device, against a real `serve-updates`:
the signed timestamp that pins the index, the newest version seen, the expiry, the index's
pins on manifests, and the installed adapter's name. Each case names its reason and leaves
the installed adapter as it was."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest

from fedadapt.clients.updates.updater import DeviceStore, fetch
from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.publish import publish, refresh_timestamp
from fedadapt.updates.bundles import BundleError, Manifest, sha256, sign
from fedadapt.updates.index import timestamp_body
from fedadapt.updates.signed_meta import TIMESTAMP, make_meta, parse_meta
from tests.registry_helpers import BASE, make_keys, tiny_adapter, update_server

META = ("index.json", "timestamp.json", "timestamp.sig")


@pytest.fixture
def reg(tmp_path):
    """A registry with v1 of adapter `sent` and a device that installed it."""
    keys = make_keys(tmp_path / "keys")
    registry = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), registry, keys.key, name="sent")
    device = tmp_path / "device"
    with update_server(registry) as url:
        fetch(url, device, [keys.pub], BASE)
        yield {"tmp": tmp_path, "reg": registry, "keys": keys, "device": device, "url": url}


def _fetch(w, trust=None):
    return fetch(w["url"], w["device"], trust or [w["keys"].pub], BASE, timeout=10)


def _installed(w) -> tuple[int | None, bytes]:
    store = DeviceStore(w["device"])
    return store.state().version, (w["device"] / "state.json").read_bytes()


def _refused(w, reason: str, trust=None) -> BundleError:
    before = _installed(w)
    with pytest.raises(BundleError) as e:
        _fetch(w, trust)
    assert e.value.reason == reason
    assert str(e.value).startswith(f"{reason}: ")
    assert _installed(w) == before
    return e.value


def test_a_replayed_older_index_is_refused_not_up_to_date(reg):
    """The attack: a mirror keeps serving the v1 registry after v2 is out. Without a
    version on the signed index, the device at v2 would answer 'already up to date'."""
    w = reg
    old = {name: (w["reg"] / name).read_bytes() for name in META}
    publish(tiny_adapter(w["tmp"] / "a2", 2), w["reg"], w["keys"].key)
    assert _fetch(w).version == 2
    assert _fetch(w) is None  # the same signed timestamp again is fine
    ts = sha256((w["reg"] / "timestamp.json").read_bytes())
    assert json.loads((w["device"] / "seen.json").read_text()) == {
        "timestamp": {"sha256": ts, "version": 2}
    }
    for name, data in old.items():  # replay the v1 registry, validly signed, unexpired
        (w["reg"] / name).write_bytes(data)
    e = _refused(w, "index-rollback")
    assert "version 1 is older than version 2" in str(e)


def test_an_expired_index_is_stale_even_when_nothing_is_newer(reg):
    """A frozen registry (nothing re-signed) is reported once its timestamp expires,
    instead of 'already up to date' forever; the message says when it expired."""
    w = reg
    assert _fetch(w) is None
    current = parse_meta((w["reg"] / "timestamp.json").read_bytes(), TIMESTAMP)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    data, sig = make_meta(
        TIMESTAMP,
        current.version + 1,
        current.body,
        w["keys"].key,
        dt.timedelta(days=1),
        long_ago,
        registry=current.registry,
    )
    (w["reg"] / "timestamp.json").write_bytes(data)
    (w["reg"] / "timestamp.sig").write_bytes(sig)
    e = _refused(w, "stale-index")
    expired = (long_ago + dt.timedelta(days=1)).isoformat(timespec="seconds")
    assert f"expired at {expired}" in str(e)


def test_a_timestamp_with_a_bad_signature_is_refused(reg):
    sig = bytearray((reg["reg"] / "timestamp.sig").read_bytes())
    sig[5] ^= 0x01
    (reg["reg"] / "timestamp.sig").write_bytes(bytes(sig))
    assert "timestamp" in str(_refused(reg, "bad-signature"))


def test_a_timestamp_from_an_unknown_key_is_refused(reg):
    other = make_keys(reg["tmp"] / "other")
    assert "timestamp is signed by key" in str(_refused(reg, "unknown-key", [other.pub]))


def test_an_index_the_timestamp_does_not_pin_is_refused(reg):
    """An attacker edits index.json (here: hides a version) but cannot re-sign."""
    publish(tiny_adapter(reg["tmp"] / "a2", 2), reg["reg"], reg["keys"].key)
    index = json.loads((reg["reg"] / "index.json").read_text())
    index["versions"] = index["versions"][:1]
    (reg["reg"] / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    assert "not the one the timestamp signed" in str(_refused(reg, "hash-mismatch"))


def test_an_old_manifest_at_a_pinned_path_is_refused(reg):
    """Mix and match: a validly signed manifest that is not the one the index pins."""
    publish(tiny_adapter(reg["tmp"] / "a2", 2), reg["reg"], reg["keys"].key)
    for path in (reg["reg"] / "v0002").glob("*.manifest.json"):  # full and delta
        m = json.loads(path.read_bytes())
        m["expires_at"] = "2999-01-01T00:00:00+00:00"
        man = Manifest(**m)
        path.write_bytes(man.canonical())
        path.with_name(path.name.replace(".manifest.json", ".sig")).write_bytes(
            sign(man, reg["keys"].key)
        )
    assert "not the one the index pins" in str(_refused(reg, "hash-mismatch"))


def test_a_bundle_for_another_adapter_is_refused(reg):
    publish(tiny_adapter(reg["tmp"] / "b2", 2), reg["reg"], reg["keys"].key, name="spam-filter")
    e = _refused(reg, "adapter-name-mismatch")
    assert "'spam-filter', this device runs 'sent'" in str(e)


def test_the_newest_seen_version_survives_and_a_corrupt_record_stops_fetch(reg):
    """`seen.json` is what stops a replay; a corrupt one is an error, never a reset."""
    shutil.copy(reg["device"] / "seen.json", reg["tmp"] / "seen.bak")
    (reg["device"] / "seen.json").write_text("{not json")
    with pytest.raises(FedAdaptError, match=r"seen\.json is unreadable"):
        _fetch(reg)
    (reg["device"] / "seen.json").write_text('{"timestamp": "7"}')
    with pytest.raises(FedAdaptError, match="must map role names to versions"):
        _fetch(reg)


def test_a_corrupt_state_file_is_one_clear_error(reg):
    (reg["device"] / "state.json").write_text('{"version": 1, "bogus": 2}')
    with pytest.raises(FedAdaptError, match=r"state\.json is corrupt"):
        _fetch(reg)
    (reg["device"] / "state.json").write_bytes(b"\xff\xfe")
    with pytest.raises(FedAdaptError, match=r"state\.json is corrupt"):
        _fetch(reg)


def test_a_registry_without_a_timestamp_is_refused(reg):
    """An old unsigned registry (or a stripped one) is not trusted on its index alone."""
    (reg["reg"] / "timestamp.json").unlink()
    with pytest.raises(FedAdaptError, match=r"timestamp\.json: HTTP 404"):
        _fetch(reg)


def test_an_equal_version_that_pins_another_index_is_refused(reg):
    """Issue 23: a timestamp of the version the device holds, but pinning a different index
    (here one that hides nothing and adds a field), was accepted: a mix-and-match through
    an equal version. The device keeps the hash of what it saw with its version."""
    w = reg
    current = parse_meta((w["reg"] / "timestamp.json").read_bytes(), TIMESTAMP)
    index = json.loads((w["reg"] / "index.json").read_text())
    index["note"] = "another index"
    index_bytes = (json.dumps(index, indent=1) + "\n").encode()
    (w["reg"] / "index.json").write_bytes(index_bytes)
    data, sig = make_meta(
        TIMESTAMP,
        current.version,
        timestamp_body(index_bytes),
        w["keys"].key,
        dt.timedelta(days=1),
        registry=current.registry,
    )
    (w["reg"] / "timestamp.json").write_bytes(data)
    (w["reg"] / "timestamp.sig").write_bytes(sig)
    e = _refused(w, "index-rollback")
    assert "already seen with other content" in str(e)


def test_a_timestamp_of_another_registry_under_the_same_key_is_never_recorded(reg):
    """Issue 23: metadata was not bound to its registry. A timestamp of another registry
    signed by the same key (with a higher version) was recorded as seen, and the device then
    refused its own registry's next update as `index-rollback`."""
    w = reg
    other = w["tmp"] / "other-reg"
    publish(tiny_adapter(w["tmp"] / "o1", 7), other, w["keys"].key, name="sent")
    for _ in range(5):
        refresh_timestamp(other, w["keys"].key)
    seen = (w["device"] / "seen.json").read_bytes()
    with update_server(other) as other_url, pytest.raises(BundleError) as e:
        fetch(other_url, w["device"], [w["keys"].pub], BASE, timeout=10)
    assert e.value.reason == "wrong-registry"
    assert (w["device"] / "seen.json").read_bytes() == seen  # not recorded
    publish(tiny_adapter(w["tmp"] / "a2", 2), w["reg"], w["keys"].key)
    assert _fetch(w).version == 2  # its own registry's next update still installs


def test_a_bound_device_refuses_a_timestamp_without_a_registry(reg):
    """Dropping the id from a re-signed timestamp must not unbind the device."""
    w = reg
    current = parse_meta((w["reg"] / "timestamp.json").read_bytes(), TIMESTAMP)
    data, sig = make_meta(
        TIMESTAMP, current.version + 1, current.body, w["keys"].key, dt.timedelta(days=1)
    )
    (w["reg"] / "timestamp.json").write_bytes(data)
    (w["reg"] / "timestamp.sig").write_bytes(sig)
    assert "(no id)" in str(_refused(w, "wrong-registry"))


def test_a_registry_from_before_ids_still_updates_its_devices(tmp_path):
    """A registry without an id (its timestamps carry none) serves an unbound device as
    before; its next refresh gives it an id, which binds the device."""
    keys = make_keys(tmp_path / "keys")
    registry = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), registry, keys.key, name="sent")
    index = json.loads((registry / "index.json").read_text())
    del index["registry_id"]
    index_bytes = (json.dumps(index, indent=1) + "\n").encode()
    (registry / "index.json").write_bytes(index_bytes)
    data, sig = make_meta(TIMESTAMP, 2, timestamp_body(index_bytes), keys.key, dt.timedelta(1))
    (registry / "timestamp.json").write_bytes(data)
    (registry / "timestamp.sig").write_bytes(sig)
    device = tmp_path / "device"
    with update_server(registry) as url:
        assert fetch(url, device, [keys.pub], BASE).version == 1
        assert json.loads((device / "registry.json").read_text())["registry_id"] is None
        refresh_timestamp(registry, keys.key)
        assert fetch(url, device, [keys.pub], BASE) is None
    rid = json.loads((registry / "index.json").read_text())["registry_id"]
    assert json.loads((device / "registry.json").read_text())["registry_id"] == rid


def test_the_first_install_checks_the_adapter_the_device_was_provisioned_for(tmp_path):
    """Issue 23: the first install accepted any adapter name. A device provisioned for
    `sent` (`fetch --adapter-name`, kept in registry.json) refuses a registry of another
    adapter, then and at every later fetch, in one line."""
    from fedadapt.cli.app import main

    keys = make_keys(tmp_path / "keys")
    registry = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), registry, keys.key, name="spam-filter")
    device = tmp_path / "device"
    with update_server(registry) as url:
        with pytest.raises(BundleError) as e:
            fetch(url, device, [keys.pub], BASE, adapter_name="sent")
        assert e.value.reason == "adapter-name-mismatch"
        assert not (device / "state.json").exists()
        with pytest.raises(BundleError, match="adapter-name-mismatch"):
            fetch(url, device, [keys.pub], BASE)  # provisioned once, kept
        with pytest.raises(FedAdaptError, match="provisioned for adapter 'sent', not 'x'"):
            fetch(url, device, [keys.pub], BASE, adapter_name="x")
        (device / "runtime.json").write_text(json.dumps({"base_sha256": BASE}))
        pub = str(tmp_path / "keys" / "signing_key.pub.pem")
        args = ["fetch", "--url", url, "--device-dir", str(device), "--trust", pub]
        assert main([*args, "--adapter-name", "sent"]) == 2
