"""`fedadapt simulate --ray-address` on a 2-node Ray cluster started as a Ray user would.

Two raylets on this machine (`ray start --head`, then `ray start --address` with its own
resources), one CPU each, so each node hosts one ClientApp actor. The run must spread its
client work over both nodes and end with the global adapter, bit for bit, of the same run on
a private single-node Ray. The cluster is stopped by PID: `ray stop` would end every Ray on
the machine, other people's runs included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from fedadapt.launch.simulate import end_processes, free_port
from tests.fedadapt.launch.test_simulate import _simulate

RAY = str(Path(sys.executable).parent / "ray")


def _ports(*flags: str) -> list[str]:
    """Free ports for the per-node agents, which would collide on one machine."""
    return [f"{flag}={free_port()}" for flag in flags]


def _cluster_pids(temp_dir: str) -> set[int]:
    """Every process of this cluster: those that name its temp dir, and their children."""
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in arg for arg in p.info["cmdline"] or ()):
            found.add(p.info["pid"])
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update(c.pid for c in p.children(recursive=True))
    found.discard(os.getpid())
    return found


def _stop(pids: set[int]) -> None:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    end_processes(procs)


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: unix socket paths
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    agents = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")
    agents += ("--metrics-export-port", "--runtime-env-agent-port")
    head = [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0"]
    head += ["--include-dashboard=false", f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1"]
    head += _ports("--ray-client-server-port", *agents)
    second = [RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--num-gpus=0"]
    # no --temp-dir: a worker node takes the head's, so no other Ray on the machine finds it
    second += ['--resources={"node2": 1}', "--node-ip-address=127.0.0.1", *_ports(*agents)]
    try:
        for cmd in (head, second):
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        _stop(_cluster_pids(temp_dir))
        left = _cluster_pids(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes outlived the cluster: {sorted(left)}"


@pytest.mark.slow
@pytest.mark.integration
def test_run_on_a_two_node_ray_cluster_equals_the_single_node_run(
    tmp_path, two_node_cluster, uninterrupted_ci_run
):
    out = tmp_path / "run"
    res = _simulate(
        *("--config", "simulations/ci.toml", "--no-baselines", "--rounds", "3"),
        *("--out", str(out), "--ray-address", two_node_cluster),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    nodes = {n for r in report["rounds"] for n in r["ray_nodes"]}
    assert len(nodes) == 2, report["rounds"]
    assert all(r["actor_peak_rss_mb"] > 100 for r in report["rounds"])
    a = load_file(uninterrupted_ci_run / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
    single = json.loads((uninterrupted_ci_run / "report.json").read_text())
    assert report["final"] == single["final"]


def test_end_processes_kills_what_ignores_term_after_the_grace():
    """What stops the cluster (and a simulation's SuperLink tree): a raylet that ignores
    TERM must still be gone."""
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", stubborn]) for _ in range(2)]
    polite = subprocess.Popen(["sleep", "60"])
    time.sleep(1.0)  # the handlers are installed
    watched = [psutil.Process(p.pid) for p in (*procs, polite)]
    end_processes(watched, grace=1)
    assert [w.returncode for w in watched] == [-9, -9, -15]  # reaped here, by psutil
    assert not any(w.is_running() for w in watched)
