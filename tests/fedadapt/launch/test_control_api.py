"""The SuperLink's operator APIs, tried from a device's position (issue 23).

A device holds only what `package-client` ships it: `ca.crt` and its node key. In Flower
1.42 the Fleet, Control and Runtime APIs share the SuperLink's one port and the Control API
authenticates no one, so with a plain `flower-superlink` that device can register a node key
and submit a run (the first test pins that). The deployment's `start-superlink.sh` runs the
SuperLink behind `server/superlink_guard.py`: the second test shows the same device refused
both, while its SuperNode still joins over the Fleet API and the operator (on the SuperLink's
host) still registers nodes.

The device must not be on the operator's address, so its traffic goes through a TCP relay
that connects from 127.0.0.2 (any other host, as the SuperLink sees it); TLS passes through
the relay untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from fedadapt.launch.certs import make_certs, node_key
from fedadapt.launch.deploy import CONNECTION, Cluster
from fedadapt.launch.simulate import free_port, project_dir, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def relay(upstream: tuple[str, int], source: str = "127.0.0.2") -> Iterator[str]:
    """A TCP relay on 127.0.0.1 whose upstream connections come from `source`."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
                up = socket.create_connection(upstream, source_address=(source, 0))
            except OSError:
                continue
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def device_home(tmp: Path, certs: Path, address: str) -> dict[str, str]:
    """A device's position: its package's `ca.crt` and node key, and a Flower home whose only
    connection names the SuperLink (here through the relay) with that CA."""
    device = tmp / "device-package"
    (device / "trust").mkdir(parents=True)
    shutil.copy(certs / "ca.crt", device / "trust" / "ca.crt")
    for suffix in ("", ".pub"):
        shutil.copy(
            certs / "supernodes" / f"node-1{suffix}", device / "trust" / f"node.key{suffix}"
        )
    home = device / ".flwr"
    home.mkdir()
    root = str(device / "trust" / "ca.crt")
    conf = {
        "superlink": {"default": "link", "link": {"address": address, "root-certificates": root}}
    }
    (home / "config.toml").write_text(tomli_w.dumps(conf))
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    return {**os.environ, "FLWR_HOME": str(home), "PATH": path, "FLWR_TELEMETRY_ENABLED": "0"}


def flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=180
    )


def attempts(env: dict[str, str], tmp: Path) -> tuple[subprocess.CompletedProcess, ...]:
    """The device registers a key of its own making, and submits this project as a run."""
    rogue = node_key(tmp / "rogue")
    register = flwr(env, "supernode", "register", f"{rogue}.pub", "link")
    run = flwr(env, "run", str(project_dir()), "link")
    return register, run


def test_a_plain_superlink_lets_a_device_register_a_node_and_submit_a_run(tmp_path):
    """Pins what Flower 1.42 does on its own: nothing but TLS between a device and the
    Control API. If this starts failing, Flower closed it; revisit the guard."""
    certs = tmp_path / "certs"
    make_certs(certs, ["127.0.0.1", "localhost"], 1)
    port = free_port()
    cmd = [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt")]
    cmd += ["--ssl-certfile", str(certs / "superlink.crt"), "--enable-supernode-auth"]
    cmd += ["--ssl-keyfile", str(certs / "superlink.key"), "--isolation", "process"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--database", str(tmp_path / "db")]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    with (tmp_path / "superlink.log").open("w") as log:
        link = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"https://127.0.0.1:{port}"
        wait_healthy(url, link, tmp_path / "superlink.log", verify=str(certs / "ca.crt"))
        with relay(("127.0.0.1", port)) as address:
            register, run = attempts(device_home(tmp_path, certs, address), tmp_path)
        assert register.returncode == 0, register.stdout + register.stderr
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        link.terminate()
        link.wait(30)


def test_the_deployment_refuses_both_and_keeps_the_fleet_api_open(tmp_path):
    cluster = Cluster(tmp_path / "cluster", nodes=1)
    try:
        cluster.start()  # the operator registers node-1 from the SuperLink's host: allowed
        with relay(("127.0.0.1", cluster.port)) as address:
            env = device_home(tmp_path, cluster.certs, address)
            register, run = attempts(env, tmp_path)
            for tried in (register, run):
                assert tried.returncode != 0, tried.stdout + tried.stderr
                assert "the operator APIs answer" in tried.stdout + tried.stderr
            nodes = cluster.flwr("supernode", "list", CONNECTION, "--format", "json", timeout=60)
            assert len(json.loads(nodes.stdout)["nodes"]) == 1  # node-1, not the device's key
            runs = cluster.flwr("ls", CONNECTION, "--format", "json", timeout=60)
            assert json.loads(runs.stdout).get("runs", []) == [], runs.stdout  # none submitted
            # the device's SuperNode still joins, through the same relay, over the Fleet API
            cmd = [
                str(BIN / "flower-supernode"),
                "--superlink",
                address,
                "--port",
                str(free_port()),
            ]
            cmd += ["--root-certificates", env["FLWR_HOME"] + "/../trust/ca.crt"]
            cmd += ["--auth-supernode-private-key", str(cluster.node_key(1))]
            with (tmp_path / "supernode.log").open("w") as log:
                node = subprocess.Popen(cmd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = 90
                while cluster.online() < 1 and deadline > 0:
                    deadline -= 2
                    threading.Event().wait(2)
                assert cluster.online() == 1, (tmp_path / "supernode.log").read_text()[-2000:]
            finally:
                node.terminate()
                node.wait(30)
    finally:
        cluster.stop()
