"""The Deployment Engine for real, on loopback: TLS, SuperNode authentication, a run.

One cluster serves every check, because starting one costs most of the time: intruders are
refused (an unregistered key, a plaintext client, a client without the CA), then the three
registered SuperNodes run the same apps as `simulate` and write the same report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedadapt.launch.certs import node_key
from fedadapt.launch.deploy import CONNECTION, Cluster
from fedadapt.launch.simulate import free_port
from fedadapt.simconfig import SimConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _rogue(cluster: Cluster, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """A SuperNode started by hand, not by the start script, logging to `rogue-<name>.log`
    (a file, not a pipe: the SuperExec it starts would hold a pipe open after it exits)."""
    exe = str(Path(sys.executable).parent / "flower-supernode")
    cmd = [exe, "--superlink", cluster.address, "--max-retries", "2", "--max-wait-time", "15"]
    cmd += ["--port", str(free_port()), *args]
    log = cluster.folder / f"rogue-{name}.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=cluster.env, stdout=f, stderr=subprocess.STDOUT)
    return proc, log


# What each refused intruder logs (flwr 1.42). A plaintext client gets no HTTP answer from
# the TLS port (without TLS it would reach node auth and be refused for its missing key);
# a client that does not trust the CA fails the certificate check (without TLS: no
# certificate to check). Exit code 305: it never connected, so it got no node id.
REFUSALS = {
    # the TLS listener drops a plaintext client before any HTTP answer; whether the client then
    # reads a reset or a close is the kernel's race, so the test pins the refusal, not its wording
    "plaintext": ("Starting insecure channel", "Failed to initialize the connection"),
    "no-ca": ("SSL/TLS handshake error detected", "CERTIFICATE_VERIFY_FAILED"),
}


def _nodes(cluster: Cluster) -> list[dict]:
    """The SuperLink's node list (`flwr supernode list`): every node it ever created."""
    res = cluster.flwr("supernode", "list", CONNECTION, "--format", "json", timeout=60)
    return json.loads(res.stdout)["nodes"]


def _wait_online(cluster: Cluster, n: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while (seen := cluster.online()) < n and time.monotonic() < deadline:
        time.sleep(2)
    return seen


def test_tls_auth_and_a_deployed_run(tmp_path):
    cluster = Cluster(tmp_path / "cluster", nodes=3)
    pids = []
    rogues: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        cluster.start()
        intruder = node_key(tmp_path / "intruder")
        unregistered = cluster.start_supernode(9, key=intruder)  # TLS fine, key not registered
        rogues = {
            "plaintext": _rogue(cluster, "plaintext", "--insecure"),
            # a registered key, but no CA: it cannot trust the SuperLink's certificate
            "no-ca": _rogue(
                cluster, "no-ca", "--auth-supernode-private-key", str(cluster.node_key(1))
            ),
        }
        assert unregistered.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in (cluster.folder / "supernode-9.log").read_text()
        del cluster.supernodes[9]
        for name, (proc, log) in rogues.items():
            assert proc.wait(timeout=120) != 0, name
            text = log.read_text()
            for line in (*REFUSALS[name], "Exit Code: 305"):
                assert line in text, f"{name}: {line!r} not in {text[-2000:]}"
            assert "Receiving:" not in text and "Failed to activate" not in text, name
            assert "[code:" not in text, f"{name}: the SuperLink answered it over HTTP"
        # only the three registered keys are nodes, and none has ever been online
        assert sorted(n["status"] for n in _nodes(cluster)) == ["registered"] * 3

        cluster.start_supernodes()
        assert _wait_online(cluster, 3) == 3
        pids = [p.pid for p in (*cluster.supernodes.values(), cluster.link)]
        out = tmp_path / "run"
        # the deployed run aggregates under SecAgg+, with client-side clipping
        cfg = SimConfig(
            num_clients=3,
            clients_per_round=3,
            rounds=1,
            baselines=False,
            secagg=True,
            clip_norm=0.5,
            out=str(out),
        )
        assert cluster.run(cfg) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["config"]["secagg"] and report["rounds"][0]["clients"] == 3
        assert report["final"]["global_accuracy"] is not None
        assert report["communication"]["upload_bytes_per_client_round"] > 0
        assert (out / "metrics.csv").exists() and (out / "adapter" / "adapter_config.json").exists()
    finally:
        for proc, _ in rogues.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        cluster.stop()
    time.sleep(1)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def _rows(out: Path) -> list[dict]:
    import csv

    path = out / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _three_rounds(out: Path) -> SimConfig:
    """Three rounds on all 3 nodes; a lost node's replies time out in 2 minutes."""
    return SimConfig(
        num_clients=3,
        clients_per_round=3,
        rounds=3,
        baselines=False,
        personalization="fedrep",  # a personal adapter, to see it survive a restart
        round_timeout=120,
        out=str(out),
    )


def test_a_killed_supernode_leaves_the_round_going_and_rejoins_with_its_state(tmp_path):
    cluster = Cluster(tmp_path / "cluster", nodes=3)
    out = tmp_path / "run"
    cfg = _three_rounds(out)
    personal = cluster.device_dir(3) / "personal.safetensors"
    try:
        cluster.start()
        cluster.start_supernodes()
        run = cluster.submit(cfg)
        log = cluster.folder / "supernode-3.log"

        def count(marker: str) -> int:
            return log.read_text().count(marker) if log.exists() else 0

        # Kill node 3 while it trains in round 2 (its SuperNode log says it got the message).
        _until(lambda: count("Receiving: train message") >= 2, 600, "node 3 in round 2")
        assert count("Sending: train message") == 1
        kept = personal.read_bytes()  # from round 1
        cluster.kill_supernode(3)
        _until(lambda: len(_rows(out)) >= 2, 900, "round 2 to complete without node 3")
        assert personal.read_bytes() == kept
        # Round 3 waits for the minimum of available nodes (3): node 3 must rejoin.
        cluster.start_supernode(3)  # same key, so the same node id
        assert run.wait(timeout=900) == 0
    finally:
        cluster.stop()
    rows = _rows(out)
    assert [int(r["clients"]) for r in rows] == [3, 2, 3]
    assert "timeout" in rows[1]["rejected"] or "client-error" in rows[1]["rejected"]
    assert personal.read_bytes() != kept  # trained again after the restart, from its state
    assert json.loads((out / "report.json").read_text())["final"]["global_accuracy"] is not None


def test_a_killed_superlink_restarts_and_the_run_resumes_from_its_checkpoint(tmp_path):
    """`kill -9` of the SuperLink and its ServerApp mid-run; a restart loses at most a round."""
    cluster = Cluster(tmp_path / "cluster", nodes=3)
    out = tmp_path / "run"
    cfg = _three_rounds(out)
    try:
        cluster.start()
        cluster.start_supernodes()
        first = cluster.submit(cfg, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: len(_rows(out)) >= 1, 600, "round 1 to be checkpointed")
        done_before = len(_rows(out))
        cluster.kill_superlink()
        first.wait(timeout=120)  # `flwr run` loses its SuperLink and ends
        assert not (out / "report.json").exists()

        cluster.start_superlink()  # same database: the node keys stay registered
        for i, proc in list(cluster.supernodes.items()):
            if proc.poll() is not None:  # a SuperNode that gave up on the link
                cluster.start_supernode(i)
        resumed = cluster.submit(
            SimConfig.from_dict({**cfg.to_dict(), "resume": True}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output, _ = resumed.communicate(timeout=900)
        assert resumed.returncode == 0, output[-3000:]
    finally:
        cluster.stop()
    rows = _rows(out)
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    resumed_after = int(output.split("resuming after round ")[1].split()[0])
    assert resumed_after >= done_before  # at most the round in flight was lost
    assert json.loads((out / "report.json").read_text())["final"]["global_accuracy"] is not None
