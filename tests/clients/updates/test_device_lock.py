"""One device folder, several writers (issue 23): fetches of different versions at once (the
update loop of `device run` and a manual `fedadapt fetch`), rollbacks among them, and a
device whose installed version file is gone. Real threads against a real `UpdateServer`."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from safetensors.numpy import load, save

from fedadapt import runlock
from fedadapt.adapter_files import WEIGHTS_FILE
from fedadapt.clients.updates.updater import DeviceStore, fetch
from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.publish import publish
from tests.registry_helpers import BASE, make_keys, tiny_adapter, update_server


def _edited(src: Path, dest: Path, value: float) -> Path:
    """`src`'s adapter with one weight changed: a delta from it is a few bytes."""
    tiny_adapter(dest, 0)
    w = load((src / WEIGHTS_FILE).read_bytes())["head.weight"].copy()
    w[0] = value
    (dest / WEIGHTS_FILE).write_bytes(save({"head.weight": w}))
    return dest


@pytest.fixture
def world(tmp_path):
    keys = make_keys(tmp_path / "keys")
    reg = tmp_path / "reg"
    first = tiny_adapter(tmp_path / "a1", 1)
    publish(first, reg, keys.key, name="sent")
    for v in (2, 3):
        publish(_edited(first, tmp_path / f"a{v}", float(v)), reg, keys.key, name="sent")
    with update_server(reg, max_connections=16) as url:
        yield {"tmp": tmp_path, "reg": reg, "pub": keys.pub, "url": url}


def _check_consistent(device: Path) -> None:
    store = DeviceStore(device)
    state = store.state()
    assert state.version is not None and store.version_file(state.version).exists(), state
    if state.previous is not None:
        assert store.version_file(state.previous).exists(), state
    assert [p.name for p in (device / "downloads").glob("*")] == []


def test_concurrent_fetches_of_different_versions_leave_a_consistent_folder(world):
    """Three threads fetch versions 1, 2 and 3 into one folder at once, again and again,
    with rollbacks among them. Without the folder's update lock, one fetch pruned the file
    another had just named in `state.json`, and a delta applied to a version that changed
    under it left its partial download behind."""
    device = world["tmp"] / "device"
    fetch(world["url"], device, [world["pub"]], BASE)

    def one(version: int) -> None:
        fetch(world["url"], device, [world["pub"]], BASE, timeout=30, version=version, older=True)

    def back() -> None:
        try:
            DeviceStore(device).rollback()
        except FedAdaptError as e:
            assert "no previous version" in str(e)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(12):
            jobs = [pool.submit(one, v) for v in (1, 2, 3)] + [pool.submit(back)]
            for job in jobs:
                job.result()  # none fails: they take turns
            _check_consistent(device)


def test_a_fetch_waits_for_the_lock_and_says_so_past_its_timeout(world):
    """The lock is held (here by hand, as a long fetch would): a fetch waits for it up to its
    timeout, then gives up in one line; `device run`'s own run.lock is another file."""
    device = world["tmp"] / "device"
    device.mkdir()
    with runlock.waiting(device, 1, "test"):
        with pytest.raises(FedAdaptError, match="is busy") as e:
            fetch(world["url"], device, [world["pub"]], BASE, timeout=0.5)
        assert "\n" not in str(e.value)
        with runlock.hold(device):  # device run's lock does not block a fetch
            pass
    with runlock.hold(device):
        assert fetch(world["url"], device, [world["pub"]], BASE).version == 3


def test_a_missing_installed_version_file_falls_back_to_the_full_bundle(world):
    """Issue 23: a device whose installed version file was gone failed with a raw `No such
    file or directory` when a delta was on offer; it now takes the full bundle."""
    device = world["tmp"] / "device"
    assert fetch(world["url"], device, [world["pub"]], BASE, version=2).version == 2
    index = json.loads((world["reg"] / "index.json").read_text())
    assert any(d["from_version"] == 2 for d in index["versions"][2]["deltas"])
    DeviceStore(device).version_file(2).unlink()
    m = fetch(world["url"], device, [world["pub"]], BASE)
    assert (m.version, m.kind) == (3, "full")
    _check_consistent(device)


def test_a_refused_bundle_leaves_no_partial_download(world):
    """A payload that fails its hash is deleted, and so is anything an older fetch left."""
    device = world["tmp"] / "device"
    fetch(world["url"], device, [world["pub"]], BASE, version=1)
    (device / "downloads").mkdir(exist_ok=True)
    (device / "downloads" / "sent-v0009-full-stale").write_bytes(b"left by a killed fetch")
    payload = world["reg"] / "v0003" / "full.payload"
    for p in (world["reg"] / "v0003").glob("*.payload"):
        p.write_bytes(bytes(len(p.read_bytes())))  # right size, wrong bytes
    with pytest.raises(FedAdaptError, match="hash-mismatch"):
        fetch(world["url"], device, [world["pub"]], BASE)
    assert payload.exists() and list((device / "downloads").glob("*")) == []
    assert DeviceStore(device).state().version == 1


def test_the_update_lock_is_taken_by_rollback_too(world):
    device = world["tmp"] / "device"
    fetch(world["url"], device, [world["pub"]], BASE, version=1)
    fetch(world["url"], device, [world["pub"]], BASE, version=2)
    done = threading.Event()
    with runlock.waiting(device, 1, "test"):
        t = threading.Thread(target=lambda: (DeviceStore(device).rollback(), done.set()))
        t.start()
        assert not done.wait(0.3)  # waits for the lock
    t.join(5)
    assert done.is_set() and DeviceStore(device).state().version == 1
