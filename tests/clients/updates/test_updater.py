"""The full update loop against a real HTTP server on loopback, and every rejection case.

Each rejection must name its reason and leave the installed adapter byte-identical.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
import torch

from fedadapt.adapter_files import load_adapter, save_adapter
from fedadapt.adapters import AdapterModel, LoraConfig
from fedadapt.base import load_base
from fedadapt.clients.updates.updater import DeviceStore, fetch
from fedadapt.server.updates.publish import publish, read_index, refresh_timestamp
from fedadapt.server.updates.service import UpdateServer
from fedadapt.updates.bundles import BundleError, Manifest, sha256, sign
from fedadapt.updates.keys import keygen, load_private, load_public


@pytest.fixture(scope="module")
def base():
    return load_base("int8")


def _adapter(base, folder: Path, seed: int, head_only_from: Path | None = None) -> Path:
    """A trained-looking adapter; with `head_only_from`, that adapter with a new head."""
    torch.manual_seed(seed)
    m = AdapterModel(base)
    if head_only_from is None:
        m.add_adapter("a", LoraConfig(r=4, init_seed=0), num_labels=2)
    else:
        load_adapter(m, head_only_from, name="a")
    with torch.no_grad():
        for k, p in m.adapter_parameters("a").items():
            if head_only_from is None or k.startswith("head."):
                p.add_(torch.randn_like(p) * 0.01)
    save_adapter(m, "a", folder)
    m.delete_adapter("a")
    return folder


@pytest.fixture
def world(tmp_path, base):
    keys = tmp_path / "keys"
    keygen(keys)
    reg = tmp_path / "registry"
    reg.mkdir()
    (reg / "index.json").write_text('{"versions": []}')  # an empty registry, served as one
    server = UpdateServer(reg, port=0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield {
        "tmp": tmp_path,
        "reg": reg,
        "url": server.url,
        "base": base,
        "key": load_private(keys / "signing_key.pem"),
        "pub": load_public(keys / "signing_key.pub.pem"),
        "device": tmp_path / "device",
    }
    server.shutdown()
    server.server_close()


def _fetch(w, **kw):
    return fetch(w["url"], w["device"], kw.get("trust", [w["pub"]]), w["base"].sha256)


def _snapshot(device: Path) -> dict[str, bytes]:
    """The installed adapter: every file but partial downloads and `seen.json` (which
    rightly advances when a valid, newer timestamp is read before a bundle is refused)."""
    return {
        str(p.relative_to(device)): p.read_bytes()
        for p in sorted(device.rglob("*"))
        if p.is_file() and "downloads" not in p.parts and p.name != "seen.json"
    }


def test_full_then_delta_then_rollback(world):
    w = world
    publish(_adapter(w["base"], w["tmp"] / "v1", 1), w["reg"], w["key"], name="sent")
    m = _fetch(w)
    assert (m.version, m.kind) == (1, "full")
    assert _fetch(w) is None  # up to date
    # v2 changes only the head: its delta is tiny next to the full adapter
    v2 = _adapter(w["base"], w["tmp"] / "v2", 2, head_only_from=w["tmp"] / "v1")
    publish(v2, w["reg"], w["key"])
    entry = read_index(w["reg"])["versions"][-1]
    assert (
        entry["deltas"]
        and entry["deltas"][0]["payload_bytes"] < entry["full"]["payload_bytes"] / 10
    )
    m2 = _fetch(w)
    assert (m2.version, m2.kind) == (2, "delta")
    store = DeviceStore(w["device"])
    full_v2 = (w["reg"] / "v0002" / "full.payload").read_bytes()
    assert store.current_bytes() == full_v2  # the delta rebuilt the exact signed adapter
    assert store.rollback() == 1
    assert store.state().version == 1
    assert store.current_bytes() == (w["reg"] / "v0001" / "full.payload").read_bytes()


def _tamper(w, stem: str, what: str, value=None):
    path = w["reg"] / f"{stem}.{what}"
    data = bytearray(path.read_bytes())
    if value is not None:
        path.write_bytes(value)
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def _drop_deltas(w) -> None:
    """Make the device take the full bundle: the publisher edits and re-signs the index."""
    idx = read_index(w["reg"])
    idx["versions"][-1]["deltas"] = []
    (w["reg"] / "index.json").write_text(json.dumps(idx))
    refresh_timestamp(w["reg"], w["key"])


def _resign(w, stem: str, **changes):
    """A manifest the publisher's own key signs, pinned by a re-signed index: only the
    device's checks of the manifest itself stand between it and the device."""
    m = json.loads((w["reg"] / f"{stem}.manifest.json").read_bytes())
    m.update(changes)
    man = Manifest(**m)
    (w["reg"] / f"{stem}.manifest.json").write_bytes(man.canonical())
    (w["reg"] / f"{stem}.sig").write_bytes(sign(man, w["key"]))
    idx = read_index(w["reg"])
    for entry in idx["versions"]:
        for b in [entry["full"], *entry["deltas"]]:
            if b["path"] == stem:
                b["manifest_sha256"] = sha256(man.canonical())
    (w["reg"] / "index.json").write_text(json.dumps(idx))
    refresh_timestamp(w["reg"], w["key"])


@pytest.fixture
def installed_v1(world):
    publish(_adapter(world["base"], world["tmp"] / "v1", 1), world["reg"], world["key"])
    _fetch(world)
    publish(_adapter(world["base"], world["tmp"] / "v2", 2), world["reg"], world["key"])
    return world


@pytest.mark.parametrize(
    "case",
    [
        "bad-signature",
        "unknown-key",
        "hash-mismatch",
        "rollback",
        "expired",
        "wrong-base",
        "wrong-from-version",
        "truncated",
        "oversize",
    ],
)
def test_rejections_name_the_reason_and_keep_the_adapter(installed_v1, case):
    w = installed_v1
    before = _snapshot(w["device"])
    entry = read_index(w["reg"])["versions"][-1]
    stem = entry["full"]["path"]
    if entry["deltas"]:  # make the device take the full bundle, which we tamper with
        _drop_deltas(w)
    trust = [w["pub"]]
    payload = (w["reg"] / f"{stem}.payload").read_bytes()
    if case == "bad-signature":
        _tamper(w, stem, "sig")
    elif case == "unknown-key":
        keygen(w["tmp"] / "other")
        trust = [load_public(w["tmp"] / "other" / "signing_key.pub.pem")]
    elif case == "hash-mismatch":
        _tamper(w, stem, "payload")
    elif case == "rollback":
        _resign(w, stem, version=1)
    elif case == "expired":
        _resign(w, stem, expires_at=(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat())
    elif case == "wrong-base":
        _resign(w, stem, base_model_sha256="0" * 64)
    elif case == "wrong-from-version":
        _resign(w, stem, from_version=7)
    elif case == "truncated":
        _tamper(w, stem, "payload", payload[:-10])
    elif case == "oversize":
        _tamper(w, stem, "payload", payload + b"x" * 100)
    with pytest.raises(BundleError) as e:
        _fetch(w, trust=trust)
    assert e.value.reason == case
    assert case in str(e.value)
    assert _snapshot(w["device"]) == before


def test_interrupted_download_resumes_and_never_touches_the_adapter(installed_v1):
    w = installed_v1
    before = _snapshot(w["device"])
    entry = read_index(w["reg"])["versions"][-1]
    payload = (w["reg"] / f"{entry['full']['path']}.payload").read_bytes()
    store = DeviceStore(w["device"])
    # a download killed half way leaves a partial file and the old adapter in place
    manifest = json.loads((w["reg"] / f"{entry['full']['path']}.manifest.json").read_bytes())
    _drop_deltas(w)  # take the full bundle, whose partial file we plant
    name, sha = manifest["adapter_name"], manifest["payload_sha256"][:12]
    part = store.downloads / f"{name}-v0002-full-{sha}"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(payload[: len(payload) // 2])
    assert _snapshot(w["device"]) == before
    m = _fetch(w)
    assert m.version == 2 and store.current_bytes() == payload
    assert not part.exists()


def test_kill_during_apply_leaves_the_old_version(installed_v1, monkeypatch):
    import fedadapt.clients.updates.updater as up

    w = installed_v1
    before = _snapshot(w["device"])

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while writing state.json")

    monkeypatch.setattr(up, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        _fetch(w)
    after = _snapshot(w["device"])
    assert after["state.json"] == before["state.json"]
    assert DeviceStore(w["device"]).current_bytes() == before["versions/v0001.safetensors"]


def test_key_rotation_needs_no_reinstall(installed_v1):
    """A device trusting the old and the new key takes an update signed by the new one."""
    w = installed_v1
    keygen(w["tmp"] / "new")
    new_key = load_private(w["tmp"] / "new" / "signing_key.pem")
    new_pub = load_public(w["tmp"] / "new" / "signing_key.pub.pem")
    publish(_adapter(w["base"], w["tmp"] / "v3", 3), w["reg"], new_key)
    m = fetch(w["url"], w["device"], [w["pub"], new_pub], w["base"].sha256)
    assert m.version == 3
    with pytest.raises(BundleError, match="unknown-key"):  # a device left on the old key only
        fetch(w["url"], w["tmp"] / "old-device", [w["pub"]], w["base"].sha256)


def test_path_traversal_is_refused(world):
    import httpx

    (world["tmp"] / "secret.txt").write_text("no")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"):
        r = httpx.get(world["url"] + path)
        assert r.status_code == 404


def test_range_requests(world):
    import httpx

    (world["reg"] / "blob").write_bytes(bytes(range(100)))
    r = httpx.get(world["url"] + "/blob", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == bytes(range(10, 20))
    assert r.headers["Content-Range"] == "bytes 10-19/100"
    r = httpx.get(world["url"] + "/blob", headers={"Range": "bytes=-5"})
    assert r.content == bytes(range(95, 100))
    r = httpx.get(world["url"] + "/blob", headers={"Range": "bytes=200-"})
    assert r.status_code == 416
    r = httpx.get(world["url"] + "/blob")
    assert r.headers["Content-Length"] == "100"


@pytest.mark.slow
def test_200_concurrent_fetches(world):
    from concurrent.futures import ThreadPoolExecutor

    w = world
    publish(_adapter(w["base"], w["tmp"] / "v1", 1), w["reg"], w["key"])
    want = (w["reg"] / "v0001" / "full.payload").read_bytes()

    def one(i: int) -> bool:
        dev = w["tmp"] / f"dev{i}"
        for _ in range(50):  # the server sheds load with 503; a device retries
            try:
                fetch(w["url"], dev, [w["pub"]], w["base"].sha256, timeout=20)
                break
            except Exception:
                import time

                time.sleep(0.05)
        return DeviceStore(dev).current_bytes() == want

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results), f"{results.count(False)} failed or corrupt"


def test_versions_past_four_digits_keep_the_file_just_installed(tmp_path):
    """The name was parsed as int(name[1:5]): version 10000 read as 1000 and was deleted."""
    store = DeviceStore(tmp_path / "dev")
    for version in (9999, 10000, 10001):
        store.install("a", version, f"adapter {version}".encode(), "b" * 64)
        assert store.version_file(version).read_bytes() == f"adapter {version}".encode()
    assert store.version_file(10000).exists() and not store.version_file(9999).exists()
