"""The same apps on Flower's Deployment Engine: a SuperLink with TLS and SuperNode
authentication, SuperNodes as separate processes, all on loopback.

`Cluster` starts and stops the processes with the start scripts in `server/` and
`clients/` (the commands the README documents for real machines), so the demo and the tests
exercise exactly what an operator runs. Every process is stopped by PID, however a run ends,
and runs under a supervisor (`fedadapt.supervise`) that takes it down if this process dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedadapt import runlock, supervise
from fedadapt.base.cache import BASE_CACHE_ENV
from fedadapt.errors import FedAdaptError
from fedadapt.launch.certs import make_certs
from fedadapt.launch.simulate import (
    OFFLINE_ENV,
    free_port,
    project_dir,
    sigterm_interrupts,
    wait_healthy,
)
from fedadapt.simconfig import SimConfig

CONNECTION = "fedadapt-deploy"


@dataclass
class Cluster:
    """A SuperLink and `nodes` SuperNodes on loopback, all state under `folder`.

    `folder` holds the certificates, Flower's home (`.flwr`), the SuperLink's state, one device
    folder per node and every process's log. Call `stop` however the run ends: otherwise the
    processes live on until this process exits (their supervisors then take them down).

    Parameters
    ----------
    folder : Path
        Where everything of this cluster lives; reused certificates are kept across starts.
    nodes : int (default: 3)
        How many SuperNodes (and node keys, and demo partitions) the cluster has.
    port : int (default: a free port)
        The SuperLink's Fleet API port on 127.0.0.1.
    lock : int | None (default: None)
        The run folder's lock descriptor (`runlock`); every supervisor keeps it open.
    """

    folder: Path
    nodes: int = 3
    port: int = field(default_factory=free_port)
    link: subprocess.Popen | None = None
    supernodes: dict[int, subprocess.Popen] = field(default_factory=dict)
    lock: int | None = None  # the run folder's lock (`runlock`), kept by every supervisor

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.certs = self.folder / "certs"
        self.home = self.folder / ".flwr"
        bin_dir = Path(sys.executable).parent
        path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
        self.env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(self.home), "PATH": path}
        # the quantized base cached once for every process, as `fedadapt device run` does
        self.env[BASE_CACHE_ENV] = str(self.folder / "cache")

    @property
    def address(self) -> str:
        """The SuperLink's `host:port`, as SuperNodes and the connection config use it."""
        return f"127.0.0.1:{self.port}"

    def node_key(self, i: int) -> Path:
        """Node `i`'s private key (1-based); its public key is the same path plus `.pub`."""
        return self.certs / "supernodes" / f"node-{i}"

    def device_dir(self, i: int) -> Path:
        """Node `i`'s device folder: its personal adapter and, if present, its own `data/`."""
        return self.folder / "devices" / f"node-{i}"

    def _spawn(self, cmd: list[str], log: str) -> subprocess.Popen:
        """Start `cmd` under a supervisor: it and what it starts die with this process."""
        hold = [] if self.lock is None else [self.lock]
        with open(self.folder / log, "ab") as f:
            return supervise.popen(cmd, env=self.env, stdout=f, hold_fds=hold)

    def start(self) -> None:
        """Certificates (once), the SuperLink, the connection config, registered node keys."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.certs / "ca.crt").exists():
            make_certs(self.certs, ["127.0.0.1", "localhost"], self.nodes)
        self.home.mkdir(exist_ok=True)
        conf = {
            "superlink": {
                "default": CONNECTION,
                CONNECTION: {
                    "address": self.address,
                    "root-certificates": str(self.certs / "ca.crt"),
                },
            }
        }
        (self.home / "config.toml").write_text(tomli_w.dumps(conf))
        self.start_superlink()
        for i in range(1, self.nodes + 1):
            self.register(self.node_key(i))

    def start_superlink(self) -> None:
        """Start the SuperLink with `server/start-superlink.sh` and wait until it answers over TLS.

        Raises if it exits or does not become healthy in time (`wait_healthy`).
        """
        script = project_dir() / "server" / "start-superlink.sh"
        cmd = [
            "bash",
            str(script),
            str(self.certs),
            str(self.folder / "state"),
            "127.0.0.1",
            str(self.port),
        ]
        self.link = self._spawn(cmd, "superlink.log")
        wait_healthy(
            f"https://{self.address}",
            self.link,
            self.folder / "superlink.log",
            verify=str(self.certs / "ca.crt"),
        )

    def register(self, key: Path) -> None:
        """`flwr supernode register`: only registered keys may connect."""
        res = self.flwr("supernode", "register", f"{key}.pub", CONNECTION)
        if res.returncode != 0 and "already" not in res.stdout + res.stderr:
            raise FedAdaptError(f"registering {key.name} failed:\n{res.stdout}{res.stderr}")

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run this environment's `flwr` CLI with the cluster's `FLWR_HOME`.

        Output is captured and the exit code is not checked: callers read both.
        """
        exe = str(Path(sys.executable).parent / "flwr")
        return subprocess.run(
            [exe, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start_supernode(self, i: int, key: Path | None = None) -> subprocess.Popen:
        """Start SuperNode `i` with `clients/start-supernode.sh`, without waiting for it to connect.

        Parameters
        ----------
        i : int
            The node number, 1-based; it serves demo partition `i - 1` and uses `device_dir(i)`.
            The device's own `data/` folder is passed on if it exists.
        key : Path | None (default: None)
            The private key to authenticate with; `node_key(i)` if None. A key never
            registered lets one test that the SuperLink refuses it.

        Returns
        -------
        subprocess.Popen
            The supervisor, also kept in `supernodes[i]` for `kill_supernode` and `stop`.
        """
        script = project_dir() / "clients" / "start-supernode.sh"
        cmd = [
            "bash",
            str(script),
            self.address,
            str(self.certs / "ca.crt"),
            str(key or self.node_key(i)),
            str(i - 1),
            str(self.nodes),
            str(self.device_dir(i)),
            str(free_port()),
        ]
        data = self.device_dir(i) / "data"
        if data.is_dir():  # the device's own files (`fedadapt.data.local_files`)
            cmd.append(str(data))
        proc = self._spawn(cmd, f"supernode-{i}.log")
        self.supernodes[i] = proc
        return proc

    def start_supernodes(self) -> None:
        """SuperNodes 1..N, each with its registered key, partition and device folder."""
        for i in range(1, self.nodes + 1):
            self.start_supernode(i)

    def online(self) -> int:
        """How many SuperNodes the SuperLink lists as online; 0 if `flwr` printed no JSON."""
        res = self.flwr("supernode", "list", CONNECTION, "--format", "json", timeout=60)
        try:
            nodes = json.loads(res.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def submit(self, cfg: SimConfig, **popen) -> subprocess.Popen:
        """Submit this project's apps with `cfg`; the process streams the run's output."""
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        run_config = out / "run_config.toml"
        run_config.write_text(tomli_w.dumps({**cfg.to_dict(), "out": str(out)}))
        exe = str(Path(sys.executable).parent / "flwr")
        cmd = [exe, "run", str(project_dir()), CONNECTION, "--run-config", str(run_config)]
        return subprocess.Popen([*cmd, "--stream"], env=self.env, **popen)

    def run(self, cfg: SimConfig) -> int:
        """Submit and wait for the run to end; returns `flwr run`'s exit code."""
        return self.submit(cfg).wait()

    def kill_supernode(self, i: int) -> None:
        """Stop SuperNode `i` with one SIGTERM, so it deactivates itself at the SuperLink."""
        supervise.stop(self.supernodes.pop(i))

    def kill_superlink(self) -> None:
        """`kill -9` the SuperLink and what it started (the ServerApp): a crash, no cleanup."""
        os.killpg(self.link.pid, signal.SIGKILL)
        self.link.wait()
        self.link = None

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink; safe to call twice or after a failed start."""
        for proc in [*self.supernodes.values(), self.link]:
            if proc is not None:
                supervise.stop(proc)
        self.supernodes.clear()
        self.link = None


def demo(cfg: SimConfig, folder: Path, nodes: int = 3) -> Path:
    """SuperLink + `nodes` SuperNodes + one run of `cfg`; returns the run folder. `folder`
    is locked while any process of the demo lives: a second demo into it is refused."""
    from fedadapt.data import local_files
    from fedadapt.data.partitions import client_data
    from fedadapt.export.device_graph import install_device_graphs
    from fedadapt.launch.device_report import write_devices

    t0 = time.monotonic()
    with runlock.hold(Path(folder)) as lock, sigterm_interrupts():
        cluster = Cluster(Path(folder), nodes=nodes, lock=lock)
        try:
            cluster.start()
            for i in range(1, nodes + 1):  # each device's own files: its partition's movie
                path = cluster.device_dir(i) / "data" / "reviews.jsonl"
                local_files.write_jsonl(path, client_data(cfg, i - 1))
            devices = {i: cluster.device_dir(i) for i in range(1, nodes + 1)}
            install_device_graphs(cfg, list(devices.values()))  # each serves ORT too
            cluster.start_supernodes()
            code = cluster.run(cfg)
            if code != 0 or not (Path(cfg.out) / "report.json").exists():
                raise FedAdaptError(
                    f"the deployed run failed (flwr run exited {code}); logs in {cluster.folder}"
                )
        finally:
            cluster.stop()
    print(f"deployed run done in {time.monotonic() - t0:.0f}s", flush=True)
    write_devices(cfg, devices, Path(folder))
    return Path(cfg.out)
