"""Publishing: the signed timestamp that pins the index (versioned, short-lived, refreshable
without a new adapter version), and one-line errors that leave the registry untouched."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.publish import publish, read_index, refresh_timestamp
from fedadapt.updates.bundles import sha256
from fedadapt.updates.signed_meta import TIMESTAMP, parse_meta
from tests.registry_helpers import make_keys, tiny_adapter


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path / "keys")


def _timestamp(reg: Path):
    return parse_meta((reg / "timestamp.json").read_bytes(), TIMESTAMP)


def _files(reg: Path) -> dict[str, bytes]:
    return {str(p.relative_to(reg)): p.read_bytes() for p in sorted(reg.rglob("*")) if p.is_file()}


def test_each_publish_and_refresh_signs_the_next_timestamp_version(tmp_path, keys):
    reg = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), reg, keys.key)
    t1 = _timestamp(reg)
    index = (reg / "index.json").read_bytes()
    assert t1.version == 1
    assert t1.body == {"index_bytes": len(index), "index_sha256": sha256(index)}
    expires = dt.datetime.fromisoformat(t1.expires_at) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < expires <= dt.timedelta(days=1)  # the default: 1 day
    keys.pub.verify((reg / "timestamp.sig").read_bytes(), (reg / "timestamp.json").read_bytes())

    assert refresh_timestamp(reg, keys.key, dt.timedelta(hours=2)) == 2
    t2 = _timestamp(reg)
    assert (reg / "index.json").read_bytes() == index  # no new adapter version
    assert t2.body == t1.body
    expires = dt.datetime.fromisoformat(t2.expires_at) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1) < expires <= dt.timedelta(hours=2)

    publish(tiny_adapter(tmp_path / "a2", 2), reg, keys.key)
    assert _timestamp(reg).version == 3
    assert [v["version"] for v in read_index(reg)["versions"]] == [1, 2]


def test_the_index_pins_each_manifest_by_hash(tmp_path, keys):
    reg = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), reg, keys.key)
    publish(tiny_adapter(tmp_path / "a2", 2), reg, keys.key)
    for entry in read_index(reg)["versions"]:
        for b in [entry["full"], *entry["deltas"]]:
            manifest = (reg / f"{b['path']}.manifest.json").read_bytes()
            assert b["manifest_sha256"] == sha256(manifest)


def test_refresh_refuses_a_folder_that_is_not_a_registry(tmp_path, keys):
    with pytest.raises(FedAdaptError, match=r"is not a registry: it has no index\.json"):
        refresh_timestamp(tmp_path, keys.key)
    assert not (tmp_path / "timestamp.json").exists()


def test_expiry_times_must_be_positive(tmp_path, keys):
    with pytest.raises(FedAdaptError, match="expiry times must be positive"):
        publish(
            tiny_adapter(tmp_path / "a1", 1),
            tmp_path / "reg",
            keys.key,
            timestamp_expires_in=dt.timedelta(0),
        )
    assert not (tmp_path / "reg").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("index", r"index\.json is unreadable or corrupt .*restore it from a backup"),
        ("index-shape", r"index\.json is unreadable or corrupt .*version must be an integer"),
        ("timestamp", r"timestamp\.json is corrupt .*its version must only grow"),
        ("tensors", r"the adapter tensors are unreadable"),
    ],
)
def test_a_damaged_registry_or_adapter_is_one_line_and_nothing_is_written(
    tmp_path, keys, damage, message
):
    reg = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), reg, keys.key)
    new = tiny_adapter(tmp_path / "a2", 2)
    if damage == "index":
        (reg / "index.json").write_text('{"versions": [')
    elif damage == "index-shape":
        index = json.loads((reg / "index.json").read_text())
        index["versions"][0]["version"] = "1"
        (reg / "index.json").write_text(json.dumps(index))
    elif damage == "timestamp":
        (reg / "timestamp.json").write_text("{}")
    elif damage == "tensors":
        (new / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    before = _files(reg)
    with pytest.raises(FedAdaptError, match=message) as e:
        publish(new, reg, keys.key)
    assert "\n" not in str(e.value)
    assert _files(reg) == before


def test_refresh_index_from_the_command_line(tmp_path, keys, capsys):
    from fedadapt.cli.app import main

    reg = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), reg, keys.key)
    key = str(tmp_path / "keys" / "signing_key.pem")
    args = ["refresh-index", "--registry", str(reg), "--key", key, "--index-expires-hours", "6"]
    assert main(args) == 0
    assert capsys.readouterr().out == "signed timestamp version 2, valid 6 h\n"
    assert _timestamp(reg).version == 2
    (tmp_path / "empty").mkdir()
    assert main(["refresh-index", "--registry", str(tmp_path / "empty"), "--key", key]) == 2
    err = capsys.readouterr().err
    assert "is not a registry: it has no index.json" in err
    assert len(err.strip().splitlines()) == 1


def _refresh_many(reg: str, key_file: str, n: int) -> list[int]:
    """`n` refreshes in one process (run in several at once by the test below)."""
    from fedadapt.updates.keys import load_private

    key = load_private(key_file)
    return [refresh_timestamp(reg, key) for _ in range(n)]


def test_concurrent_refreshes_and_publishes_each_sign_their_own_version(tmp_path, keys):
    """Issue 23: without a lock, 50 concurrent refreshes signed 27 distinct versions (two
    writers read the same last version). Under the registry's lock, threads and processes
    each get the next version, and the last file on disk is the highest."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    reg = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), reg, keys.key)
    with ThreadPoolExecutor(max_workers=50) as pool:
        threads = list(pool.map(lambda _: refresh_timestamp(reg, keys.key), range(50)))
    assert sorted(threads) == list(range(2, 52))
    key_file = str(tmp_path / "keys" / "signing_key.pem")
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as pool:
        jobs = [pool.submit(_refresh_many, str(reg), key_file, 5) for _ in range(4)]
        with ThreadPoolExecutor(max_workers=2) as publishers:  # publishes race them too
            for seed in (2, 3):
                publishers.submit(publish, tiny_adapter(tmp_path / f"a{seed}", seed), reg, keys.key)
        processes = [v for job in jobs for v in job.result()]
    assert len(set(processes)) == 20 and min(processes) > 51
    assert _timestamp(reg).version == 51 + 20 + 2  # two publishes each signed one too
    assert [v["version"] for v in read_index(reg)["versions"]] == [1, 2, 3]


def test_a_registry_has_an_id_signed_into_its_timestamps(tmp_path, keys):
    """Set once when the registry is made; a registry from before ids gets one at its next
    refresh, and the timestamp of a registry without one has no registry field at all."""
    reg = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1), reg, keys.key)
    rid = read_index(reg)["registry_id"]
    assert len(rid) == 16 and _timestamp(reg).registry == rid
    publish(tiny_adapter(tmp_path / "a2", 2), reg, keys.key)
    assert read_index(reg)["registry_id"] == rid == _timestamp(reg).registry

    old = json.loads((reg / "index.json").read_text())
    del old["registry_id"]
    (reg / "index.json").write_text(json.dumps(old))
    refresh_timestamp(reg, keys.key)
    new = read_index(reg)["registry_id"]
    assert new != rid and _timestamp(reg).registry == new
