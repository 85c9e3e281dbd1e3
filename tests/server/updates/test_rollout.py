"""The server side of a staged rollout: the signed channel's life (start, promote, halt),
the paired statistic and the guardrail, and the report endpoint of a real update service
(signed by registered device keys; numbers only, exactly the schema; no replays)."""

from __future__ import annotations

import json

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy import stats

from fedadapt.cli.app import main
from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.reports import ReportSink, load_device_keys
from fedadapt.server.updates.rollout import (
    Guardrail,
    Rollouts,
    robust_interval,
    summarize,
    verdict,
)
from fedadapt.server.updates.service import UpdateServer
from fedadapt.updates.cohort import Channel, channel_files, channel_role, in_cohort
from fedadapt.updates.keys import key_id
from fedadapt.updates.rollout_report import SIGNATURE_HEADER, sign_report
from fedadapt.updates.signed_meta import verify_meta
from tests.registry_helpers import serving, two_version_registry


@pytest.fixture
def registry(tmp_path):
    return two_version_registry(tmp_path)


def report(device: str, stable_acc: float, cand_acc: float, seq: int = 1, **kw) -> dict:
    r = {
        "device": device,
        "channel": "main",
        "seq": seq,
        "stable": 1,
        "candidate": 2,
        "running": 2,
        "examples": 10,
        "stable_accuracy": stable_acc,
        "candidate_accuracy": cand_acc,
        "stable_latency_ms": 1.5,
        "candidate_latency_ms": 1.6,
        "stable_failures": 0,
        "candidate_failures": 0,
        "rolled_back": 0,
    }
    return {**r, **kw}


def test_the_interval_is_the_trimmed_mean_and_yuens_interval() -> None:
    diffs = [0.1, -0.2, 0.0, 0.3, -0.1, 0.05, 0.02, -0.04]
    mean, low, high = robust_interval(diffs)
    assert mean == pytest.approx(stats.trim_mean(diffs, 0.25))
    # Yuen: the winsorized variance over the h = n - 2g values kept
    n, g = len(diffs), 2
    w = sorted(diffs)
    w = [w[g]] * g + w[g : n - g] + [w[n - g - 1]] * g
    h = n - 2 * g
    se = stats.tstd(w) * (n - 1) ** 0.5 / (h * (h - 1)) ** 0.5
    half = stats.t.ppf(0.975, h - 1) * se
    assert (low, high) == pytest.approx((mean - half, mean + half))


def _honest(n: int, diff: float, start: int = 0) -> list[dict]:
    return [report(f"{start + i:016x}", 0.8, 0.8 + diff + (i % 3 - 1) * 0.01) for i in range(n)]


def test_one_liar_among_ten_cannot_block_the_halt_of_a_bad_candidate() -> None:
    """It reported first, with the best difference there is (+1): the mean was moved enough
    to keep a candidate 30 points worse on the other nine."""
    guard = Guardrail(threshold=0.05, max_failure_rate=0.1, min_devices=5)
    liar = report("f" * 16, 0.0, 1.0)
    assert verdict(summarize([liar, *_honest(9, -0.3)]), guard) is not None


def test_one_device_claiming_a_trillion_examples_cannot_halt_a_good_candidate() -> None:
    """Failure rates were pooled over examples: its 10^12 examples (half failed) outweighed
    49 honest devices."""
    guard = Guardrail(threshold=0.05, max_failure_rate=0.05, min_devices=5)
    liar = report("f" * 16, 0.8, 0.8, examples=10**12, candidate_failures=5 * 10**11)
    assert verdict(summarize([*_honest(49, 0.0), liar]), guard) is None
    many = [report(f"{i:016x}", 0.8, 0.8, candidate_failures=5) for i in range(10)]
    assert "failure rate 0.500" in verdict(summarize(many), guard)  # honest failures still halt


def test_only_devices_the_channel_put_on_the_candidate_count() -> None:
    """Six devices outside a 30% cohort halted the rollout."""
    from fedadapt.updates.cohort import in_cohort

    channel = Channel(1, 2, 0.3, "salt")
    ids = [f"{i:016x}" for i in range(60)]
    inside = [d for d in ids if in_cohort(d, "salt", 0.3)]
    outside = [d for d in ids if not in_cohort(d, "salt", 0.3)]
    reports = [report(d, 0.9, 0.4) for d in outside[:6]]
    reports += [report(d, 0.8, 0.8) for d in inside[:5]]
    s = summarize(reports, channel)
    assert s.devices == 5 and verdict(s, Guardrail(0.05, 0.1, 5)) is None
    assert summarize(reports).devices == 11  # without the channel, every device
    stale = report(inside[5], 0.9, 0.4, running=1)  # in the cohort, still on stable
    assert summarize([stale], channel).devices == 0
    back = report(inside[5], 0.9, 0.4, running=1, rolled_back=1)  # ran it, rolled back
    assert summarize([back], channel).devices == 1


def test_the_guardrail_fires_only_when_the_interval_lies_below_minus_threshold() -> None:
    guard = Guardrail(threshold=0.05, max_failure_rate=0.1, min_devices=3)
    worse = [report(f"{i:016x}", 0.8, 0.5 + i * 0.01) for i in range(4)]
    assert "lies below -0.05" in verdict(summarize(worse), guard)
    noisy = [report(f"{i:016x}", 0.8, c) for i, c in enumerate((0.5, 0.9, 0.7, 1.0))]
    assert verdict(summarize(noisy), guard) is None  # the interval straddles −0.05
    assert verdict(summarize(worse[:2]), guard) is None  # fewer than min_devices
    # a device's latest report replaces its earlier one
    assert summarize([*worse, report("0" * 16, 0.8, 0.8, seq=2)]).devices == 4


def test_the_guardrail_fires_on_the_failure_rate() -> None:
    guard = Guardrail(threshold=0.05, max_failure_rate=0.1, min_devices=3)
    failing = [report(f"{i:016x}", 0.8, 0.8, candidate_failures=2) for i in range(3)]
    assert "failure rate 0.200 > bound 0.1" in verdict(summarize(failing), guard)


def test_start_promote_halt_sign_growing_channel_versions(registry) -> None:
    reg, keys = registry
    r = Rollouts(reg)
    with pytest.raises(FedAdaptError, match="name its stable version"):
        r.start("main", 2, 0.1, keys.key)
    with pytest.raises(FedAdaptError, match="version 7 is not published"):
        r.start("main", 7, 0.1, keys.key, stable=1)
    ch = r.start("main", 2, 0.1, keys.key, stable=1)
    with pytest.raises(FedAdaptError, match="already rolls out version 2"):
        r.start("main", 2, 0.2, keys.key)
    with pytest.raises(FedAdaptError, match="promote only raises the fraction"):
        r.promote("main", 0.05, keys.key)
    assert r.promote("main", 0.5, keys.key) == Channel(1, 2, 0.5, ch.salt)
    with pytest.raises(FedAdaptError, match="promote it to 1 before finishing"):
        r.finish("main", keys.key)
    assert r.halt("main", keys.key) == Channel(1, None, 0.0, ch.salt)
    rel, rel_sig = channel_files("main")
    meta = verify_meta(
        (reg / rel).read_bytes(),
        (reg / rel_sig).read_bytes(),
        channel_role("main"),
        {key_id(keys.pub): keys.pub},
        seen=2,
    )
    assert meta.version == 3 and meta.body["candidate"] is None  # the halt, signed
    assert r.rollout("main")["halted"]["reason"] == "halted by operator"
    with pytest.raises(FedAdaptError, match="no candidate rolling out"):
        r.halt("main", keys.key)


def _device(folder, name: str) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.pub").write_bytes(pem)
    return key


def _post(url: str, body: bytes, signature: str, channel: str = "main") -> httpx.Response:
    return httpx.post(
        f"{url}/rollout/{channel}/report", content=body, headers={SIGNATURE_HEADER: signature}
    )


def test_the_report_endpoint_authenticates_checks_and_halts(registry, tmp_path) -> None:
    reg, keys = registry
    rollouts = Rollouts(reg)
    # every device in the cohort: these random keys' cohort points are not under test here
    rollouts.start("main", 2, 1.0, keys.key, stable=1, guard=Guardrail(0.05, 0.1, 3))
    devices = [_device(tmp_path / "devices", f"d{i}") for i in range(3)]
    stranger = Ed25519PrivateKey.generate()
    sink = ReportSink(rollouts, load_device_keys(tmp_path / "devices"), keys.key)
    ids = [key_id(k.public_key()) for k in devices]
    with serving(UpdateServer(reg, reports=sink)) as url:
        body, sig = sign_report(report(ids[0], 0.9, 0.5), devices[0])
        ok = _post(url, body, sig)
        assert ok.status_code == 200 and ok.json() == {"halted": None}
        assert _post(url, body, sig).status_code == 409  # the same report again: a replay

        body, sig = sign_report(report(key_id(stranger.public_key()), 0.9, 0.5), stranger)
        r = _post(url, body, sig)
        assert r.status_code == 403 and "is not registered" in r.json()["error"]
        body, _ = sign_report(report(ids[1], 0.9, 0.5), devices[1])
        _, other_sig = sign_report(report(ids[1], 0.9, 0.6), devices[1])
        r = _post(url, body, other_sig)
        assert r.status_code == 403 and "signature does not match" in r.json()["error"]

        text = report(ids[1], 0.9, 0.5, examples="ten snippets")
        r = _post(url, *sign_report(text, devices[1]))
        assert r.status_code == 400 and "examples must be an integer" in r.json()["error"]
        huge = report(ids[1], 0.9, 0.5, examples=10**400)
        r = _post(url, *sign_report(huge, devices[1]))  # it killed the handler (OverflowError)
        assert r.status_code == 400 and "examples must be an integer in" in r.json()["error"]
        huge = report(ids[1], 0.9, 0.5, stable_latency_ms=10**400)
        r = _post(url, *sign_report(huge, devices[1]))
        assert r.status_code == 400 and "stable_latency_ms must be in" in r.json()["error"]
        extra = {**report(ids[1], 0.9, 0.5), "text": "a gem of a film"}
        r = _post(url, *sign_report(extra, devices[1]))
        assert r.status_code == 400 and "unexpected ['text']" in r.json()["error"]
        assert httpx.post(f"{url}/index.json", content=b"{}").status_code == 404
        assert len(rollouts.reports("main")) == 1  # only the first was stored
        assert "text" not in (rollouts.folder("main") / "reports.jsonl").read_text()

        assert _post(url, *sign_report(report(ids[1], 0.8, 0.45), devices[1])).json() == {
            "halted": None
        }
        third = _post(url, *sign_report(report(ids[2], 0.85, 0.5), devices[2])).json()
    assert third["halted"].startswith("guardrail: paired difference")
    meta, channel = rollouts.read_channel("main")
    assert channel.candidate is None and channel.stable == 1 and meta.version == 2
    assert rollouts.rollout("main")["halted"]["reason"] == third["halted"]


def test_a_torn_last_line_is_skipped_and_counted_and_the_service_starts(registry, tmp_path):
    """It stopped the service from starting: the guardrail stayed offline."""
    reg, keys = registry
    rollouts = Rollouts(reg)
    rollouts.start("main", 2, 1.0, keys.key, stable=1)
    device = _device(tmp_path / "devices", "d")
    signed = sign_report(report(key_id(device.public_key()), 0.8, 0.8), device)
    ReportSink(rollouts, load_device_keys(tmp_path / "devices"), None).accept("main", *signed)
    path = rollouts.folder("main") / "reports.jsonl"
    with path.open("a") as f:
        f.write('{"device": "ab", "seq": ')  # a crash mid-append
    sink = ReportSink(rollouts, load_device_keys(tmp_path / "devices"), None)  # starts
    assert len(rollouts.reports("main")) == 1 and rollouts.torn == 1
    later = sign_report(report(key_id(device.public_key()), 0.8, 0.8, seq=2), device)
    sink.accept("main", *later)  # appended on a line of its own, after the torn one
    assert len(rollouts.reports("main")) == 2 and rollouts.torn == 1


def test_a_restarted_service_still_refuses_replayed_reports(registry, tmp_path) -> None:
    reg, keys = registry
    rollouts = Rollouts(reg)
    rollouts.start("main", 2, 0.5, keys.key, stable=1)
    device = _device(tmp_path / "devices", "d")
    signed = sign_report(report(key_id(device.public_key()), 0.8, 0.8), device)
    ReportSink(rollouts, load_device_keys(tmp_path / "devices"), None).accept("main", *signed)
    again = ReportSink(rollouts, load_device_keys(tmp_path / "devices"), None)
    with pytest.raises(FedAdaptError, match="already seen"):
        again.accept("main", *signed)


def start_args(base: list[str], key: str, fraction: str) -> list[str]:
    """`rollout start` of version 2 over stable 1 (a new channel)."""
    return [
        "rollout",
        "start",
        *base,
        "--key",
        key,
        "--version",
        "2",
        "--stable",
        "1",
        "--fraction",
        fraction,
    ]


def test_cli_start_promote_status_halt(registry, tmp_path, capsys) -> None:
    reg, _ = registry
    key = str(tmp_path / "keys" / "signing_key.pem")
    base = ["--registry", str(reg), "--channel", "beta"]
    assert main(start_args(base, key, "0.1")) == 0
    assert "v2 to 10%, stable v1" in capsys.readouterr().out
    assert main(["rollout", "promote", *base, "--key", key, "--fraction", "0.05"]) == 2
    assert "promote only raises the fraction" in capsys.readouterr().err
    assert main(["rollout", "promote", *base, "--key", key, "--fraction", "0.5"]) == 0
    rollouts = Rollouts(reg)
    salt = rollouts.read_channel("beta")[1].salt
    devices = []  # three devices the channel puts on the candidate (only those count)
    while len(devices) < 3:
        k = _device(tmp_path / "devices", f"d{len(devices)}")
        if in_cohort(key_id(k.public_key()), salt, 0.5):
            devices.append(k)
        else:
            (tmp_path / "devices" / f"d{len(devices)}.pub").unlink()
    sink = ReportSink(rollouts, load_device_keys(tmp_path / "devices"), None)
    for i, k in enumerate(devices):
        r = report(key_id(k.public_key()), 0.7, 0.8 + i * 0.05, channel="beta")
        sink.accept("beta", *sign_report(r, k))
    plot = tmp_path / "paired.png"
    capsys.readouterr()
    assert main(["rollout", "status", *base, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "v2 to 50% of devices" in out and "3 devices reported" in out
    assert "paired difference +15.0 pts" in out and "guardrail: ok" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["rollout", "halt", *base, "--key", key]) == 0
    assert "halted, back to stable v1" in capsys.readouterr().out
    assert json.loads((reg / "channels" / "beta.json").read_bytes())["body"]["candidate"] is None


def test_cli_errors_are_one_line_naming_the_problem(registry, tmp_path, capsys) -> None:
    reg, keys = registry
    key = str(tmp_path / "keys" / "signing_key.pem")
    base = ["--registry", str(reg), "--channel", "main"]
    assert main(["rollout", "halt", *base, "--key", key]) == 2
    assert "channel 'main' has no candidate rolling out" in capsys.readouterr().err
    assert main(start_args(base, key, "0")) == 2
    assert "a fraction is in (0, 1], got '0'" in capsys.readouterr().err
    Rollouts(reg).start("main", 2, 0.1, keys.key, stable=1)
    reports = Rollouts(reg).folder("main") / "reports.jsonl"
    reports.write_text('{"candidate": 2, "dev')  # torn: skipped and counted, not fatal
    assert main(["rollout", "status", *base]) == 0
    assert "1 unreadable line of reports.jsonl skipped" in capsys.readouterr().out


def test_finish_makes_the_fully_promoted_candidate_stable(registry) -> None:
    reg, keys = registry
    r = Rollouts(reg)
    ch = r.start("main", 2, 0.5, keys.key, stable=1)
    r.promote("main", 1.0, keys.key)
    assert r.finish("main", keys.key) == Channel(2, None, 0.0, ch.salt)
    assert r.read_channel("main")[0].version == 3
