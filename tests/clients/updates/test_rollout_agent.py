"""A device in a staged rollout, against a real update service on 127.0.0.1: it runs the
version its cohort gets, scores both versions on the same held-out examples, reports them
signed, rolls back on its own past its local bound (and does not flap back), switches back
after a halt without downloading, and refuses a replayed pre-halt channel file.

The scorer grades each version file by a table of its SHA-256 (a stand-in for a model over
the device's held-out split: the agent only sees per-example right/wrong, latency, failures).
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from fedadapt.clients.updates.rollout_agent import RolloutAgent, Scores, device_key
from fedadapt.clients.updates.updater import DeviceStore, fetch
from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.reports import ReportSink, load_device_keys
from fedadapt.server.updates.rollout import Rollouts
from fedadapt.server.updates.service import UpdateServer
from fedadapt.updates.bundles import BundleError
from fedadapt.updates.keys import key_id
from tests.registry_helpers import BASE, serving, two_version_registry

STABLE_RIGHT = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0, 1], bool)  # 0.7


class TableScorer:
    def __init__(self, registry, candidate_right: np.ndarray) -> None:
        full = {v: (registry / f"v{v:04d}" / "full.payload").read_bytes() for v in (1, 2)}
        self.table = {
            hashlib.sha256(full[1]).hexdigest(): STABLE_RIGHT,
            hashlib.sha256(full[2]).hexdigest(): candidate_right,
        }
        self.calls: list[int] = []

    def __call__(self, store: DeviceStore, version: int) -> Scores:
        self.calls.append(version)
        digest = hashlib.sha256(store.version_file(version).read_bytes()).hexdigest()
        return Scores(self.table[digest], 2.0, 0)


@pytest.fixture
def setup(tmp_path):
    reg, keys = two_version_registry(tmp_path)
    device = tmp_path / "device"
    pub = device_key(device).public_key()
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "d.pub").write_bytes(
        pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    rollouts = Rollouts(reg)
    sink = ReportSink(rollouts, load_device_keys(tmp_path / "devices"), keys.key)
    with serving(UpdateServer(reg, reports=sink)) as url:
        fetch(url, device, [keys.pub], BASE, version=1)
        yield reg, keys, device, rollouts, url


def agent(setup, scorer, bound: float = 0.1) -> RolloutAgent:
    _, keys, device, _, url = setup
    return RolloutAgent(device, url, "main", [keys.pub], BASE, scorer, local_bound=bound)


def test_a_cohort_device_reports_both_versions_and_switches_back_without_download(setup):
    reg, keys, device, rollouts, _ = setup
    rollouts.start("main", 2, 1.0, keys.key, stable=1)
    scorer = TableScorer(reg, ~STABLE_RIGHT | STABLE_RIGHT)  # the candidate gets all 10
    a = agent(setup, scorer)
    first = a.poll()
    assert (first.action, first.target) == ("fetched", 2)
    assert first.report["stable_accuracy"] == pytest.approx(0.7)
    assert first.report["candidate_accuracy"] == 1.0 and first.report["rolled_back"] == 0
    (stored,) = rollouts.rollout_reports("main")
    assert stored["device"] == key_id(device_key(device).public_key()) == a.device_id
    assert a.poll().report is None and scorer.calls == [1, 2]  # evaluated once

    rollouts.halt("main", keys.key)
    for payload in reg.glob("v*/*.payload"):
        payload.unlink()  # nothing could be downloaded now
    assert a.poll().action == "switched"
    assert DeviceStore(device).state().version == 1


def test_after_a_halt_a_device_that_got_the_candidate_another_way_returns_to_stable(setup):
    """It installed v2 by a plain fetch, and v1 is no longer kept: it used to keep running
    the halted candidate ('names version 1, older than installed 2, no longer keeps it')."""
    reg, keys, device, rollouts, url = setup
    rollouts.start("main", 2, 1.0, keys.key, stable=1)
    fetch(url, device, [keys.pub], BASE)  # the newest, outside the agent
    store = DeviceStore(device)
    assert store.state().version == 2
    assert fetch(url, device, [keys.pub], BASE, version=1) is None  # a plain fetch never goes back
    assert store.state().version == 2
    store.version_file(1).unlink()  # pruned, or never kept
    rollouts.halt("main", keys.key)
    result = agent(setup, TableScorer(reg, STABLE_RIGHT)).poll()
    assert (result.action, result.target) == ("fetched", 1)
    assert store.state().version == 1


def test_a_device_outside_the_cohort_never_installs_the_candidate(setup):
    reg, keys, device, rollouts, _ = setup
    rollouts.start("main", 2, 1e-12, keys.key, stable=1)
    result = agent(setup, TableScorer(reg, STABLE_RIGHT)).poll()
    assert (result.action, result.target, result.report) == ("none", 1, None)
    assert not DeviceStore(device).version_file(2).exists()


def test_past_its_local_bound_a_device_rolls_back_at_once_and_stays(setup):
    reg, keys, device, rollouts, _ = setup
    rollouts.start("main", 2, 1.0, keys.key, stable=1)
    worse = STABLE_RIGHT.copy()
    worse[:2] = False  # 0.5: 0.2 below stable, past the 0.1 bound
    a = agent(setup, TableScorer(reg, worse))
    result = a.poll()
    assert result.action == "local-rollback"
    assert result.report["rolled_back"] == 1 and result.report["running"] == 1
    assert DeviceStore(device).state().version == 1
    assert rollouts.rollout_reports("main")[0]["rolled_back"] == 1
    again = a.poll()  # the channel still offers version 2: the device does not flap back
    assert (again.action, again.target) == ("none", 1)


def test_within_its_local_bound_a_device_keeps_the_candidate(setup):
    reg, keys, device, rollouts, _ = setup
    rollouts.start("main", 2, 1.0, keys.key, stable=1)
    slightly = STABLE_RIGHT.copy()
    slightly[0] = False  # 0.6: 0.1 below stable, not past the bound
    assert agent(setup, TableScorer(reg, slightly)).poll().action == "fetched"
    assert DeviceStore(device).state().version == 2


def test_a_replayed_channel_file_from_before_the_halt_is_refused(setup, tmp_path):
    reg, keys, device, rollouts, _ = setup
    rollouts.start("main", 2, 1.0, keys.key, stable=1)
    shutil.copytree(reg / "channels", tmp_path / "old-channels")
    rollouts.halt("main", keys.key)
    a = agent(setup, TableScorer(reg, STABLE_RIGHT))
    assert a.poll().target == 1
    shutil.rmtree(reg / "channels")
    shutil.copytree(tmp_path / "old-channels", reg / "channels")
    with pytest.raises(BundleError, match="version 1 is older than version 2") as e:
        a.poll()
    assert e.value.reason == "channel-rollback"
    assert not DeviceStore(device).version_file(2).exists()


def test_a_report_from_an_unregistered_device_is_refused(setup, tmp_path):
    reg, keys, _, rollouts, url = setup
    rollouts.start("main", 2, 1.0, keys.key, stable=1)
    stranger = tmp_path / "stranger"
    fetch(url, stranger, [keys.pub], BASE, version=1)
    a = RolloutAgent(stranger, url, "main", [keys.pub], BASE, TableScorer(reg, STABLE_RIGHT))
    with pytest.raises(FedAdaptError, match=r"refused the report: .* is not registered"):
        a.poll()
    assert rollouts.rollout_reports("main") == []


def test_rollout_poll_on_a_device_without_a_graph_is_one_line(tmp_path, capsys):
    from fedadapt.cli.app import main

    (tmp_path / "data").mkdir()
    args = ["rollout", "poll", "--device-dir", str(tmp_path), "--url", "http://127.0.0.1:9"]
    args += ["--trust", "k.pub", "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--local-bound", "2"]) == 2
    assert "argument --local-bound: a fraction is in (0, 1], got '2'" in capsys.readouterr().err
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no runtime.json: install an exported model first" in err
    assert len(err.strip().splitlines()) == 1


def test_an_expired_channel_file_is_refused_as_stale(setup):
    import datetime as dt
    import time

    from fedadapt.updates.cohort import Channel

    reg, keys, device, rollouts, _ = setup
    rollouts.write_channel("main", Channel(1, 2, 1.0, "ab" * 8), keys.key, dt.timedelta(seconds=1))
    time.sleep(1.2)
    with pytest.raises(BundleError, match="expired at") as e:
        agent(setup, TableScorer(reg, STABLE_RIGHT)).poll()
    assert e.value.reason == "stale-channel"
    assert not DeviceStore(device).version_file(2).exists()


# -- `rollout poll` on real devices: the exported graph scores both versions -------------------


def _held_out_labels(device, fraction: float = 0.3, key: str = "0") -> np.ndarray:
    from fedadapt.data import local_files
    from fedadapt.model_setup import label_names
    from tests.clients.conftest import GRAPH_CFG

    names = label_names(GRAPH_CFG.dataset)
    return np.asarray(local_files.load(device / "data", names, fraction, key, 2).data.test_labels)


def _poll_cli(world, device) -> list[str]:
    from fedadapt.cli.app import main

    argv = ["rollout", "poll", "--device-dir", str(device), "--url", world.url]
    argv += ["--trust", str(world.pub_file), "--data-dir", str(device / "data")]
    assert main(argv) == 0
    return argv


@pytest.mark.slow
@pytest.mark.integration
def test_rollout_poll_on_real_devices_installs_scores_and_reports(rollout_world, capsys):
    """Version 1 always answers label 1, version 2 label 0: the device's graph must give each
    exactly the share of its label on the held-out split, and the server must record that."""
    from fedadapt.clients.runtime import EdgeRuntime
    from fedadapt.data.local_files import record_split

    world = rollout_world
    # the device trained with another run's split: the poll must score on that held-out side
    record_split(world.inside, 0.5, "7")
    _poll_cli(world, world.inside)
    out = capsys.readouterr().out
    assert "runs v2 (fetched)" in out
    labels = _held_out_labels(world.inside, 0.5, "7")
    assert labels.size != _held_out_labels(world.inside).size  # the default split differs
    (stored,) = world.rollouts.rollout_reports("main")
    assert stored["device"] == key_id(device_key(world.inside).public_key())
    assert (stored["stable"], stored["candidate"], stored["running"]) == (1, 2, 2)
    assert stored["examples"] == labels.size >= 4
    assert stored["stable_accuracy"] == pytest.approx(float((labels == 1).mean()))
    assert stored["candidate_accuracy"] == pytest.approx(float((labels == 0).mean()))
    assert (stored["stable_failures"], stored["candidate_failures"]) == (0, 0)
    assert stored["stable_latency_ms"] > 0 and stored["rolled_back"] == 0
    runtime = EdgeRuntime(world.inside)  # the personalized file follows the installed version
    assert (runtime.adapter_version, runtime.personalized) == (2, True)
    assert runtime.logits(["a film"]).argmax() == 0

    _poll_cli(world, world.outside)
    assert "runs v1 (none)" in capsys.readouterr().out
    assert DeviceStore(world.outside).state().version == 1
    assert not DeviceStore(world.outside).version_file(2).exists()
    assert len(world.rollouts.rollout_reports("main")) == 1
