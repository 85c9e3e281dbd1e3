"""`fedadapt device run`: the one long-running command on a device.

It runs four things and owns their lifetime:
- the SuperNode (`flower-supernode`, TLS to the SuperLink with the CA certificate, authenticated
  by the node key), whose node config names the device folder and its data folder, so each
  round trains on the device's own data and keeps the personal state in the device folder;
- the warm worker (`clients/warm_worker.py`): torch and the ClientApp's handlers imported
  once, so the `flwr-clientapp` process Flower 1.42 starts for every message only forwards the
  message to it over a Unix socket in the device folder instead of importing torch (1-2 s);
- the signed-update loop (`clients/updates/updater.fetch`) every `update_interval` seconds,
  when an update URL and a trusted key are given: each install rewrites the personalized
  file. With a rollout `channel`, each turn is instead one poll of the rollout agent
  (`clients/updates/rollout_agent.device_agent`): the version the channel names for this
  device (switched to without a download when still kept), both versions scored on the
  held-out split of the device's data folder, the signed report, and the local rollback
  past its bound;
- the personalized ORT model: the ClientApp rewrites it after each round, each fetch and
  rollback rewrites it, and the service rewrites it at start, so a restarted device serves its
  personal state at once.

SIGTERM or SIGINT stops all of it: the SuperNode's and the worker's process groups get
SIGTERM, then SIGKILL after a grace period, and the command exits 0. A device command killed
outright (SIGKILL, the OOM killer) takes them down too: each runs under `fedadapt.supervise`,
which holds `PR_SET_PDEATHSIG` and, as a child subreaper, ends the SuperNode and every
ClientApp process it started. A SuperNode or worker that dies on its own is restarted with a
growing delay; while the worker is down, messages run in the ClientApp process itself. One
that cannot come up, or keeps dying, ends the command with its reason (`clients/exits.py`).
A restart resumes: the node key keeps the node id, and the personal state is in the folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from fedadapt import runlock, supervise
from fedadapt.atomic import private_folder
from fedadapt.base.cache import BASE_CACHE_ENV
from fedadapt.clients import status
from fedadapt.clients.exits import Exits
from fedadapt.errors import FedAdaptError

GRACE_S = 15.0  # for the supervisor, which gives its tree supervise.GRACE before SIGKILL
MAX_RESTART_DELAY_S = 60.0
# a failed update check is tried again this soon, then less often, up to the interval
RETRY_S = 30.0
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
PID_FILE = "supernode.pid"
LOG_FILE = "supernode.log"
WORKER_PID_FILE = "worker.pid"
WORKER_LOG_FILE = "worker.log"


@dataclass(frozen=True)
class ServiceOptions:
    """What `fedadapt device run` needs, one field per flag; `check` refuses a bad set early.

    Parameters
    ----------
    device_dir : Path
        The device folder: personal state, logs, pid files, the warm worker's socket.
    superlink : str
        The SuperLink's HOST:PORT.
    root_cert : Path
        The CA certificate the SuperNode checks the SuperLink's TLS certificate against.
    node_key : Path
        The SuperNode's private key; the same key keeps the same node id across restarts.
    port : int (default: 9094)
        The SuperNode's own port.
    partition_id, num_partitions : int (default: 0, 1)
        The demo partition, passed on in the node config.
    data_dir : Path or None (default: None)
        The device's own data folder; needed with `channel`, to score on its held-out split.
    demo_data : bool (default: False)
        Without a data folder, train on the demo partition `partition_id`. Off by default:
        a device that silently trained on demo data would report figures about no user.
    update_url : str or None (default: None)
        The update registry; with `trust`, turns on the update loop.
    trust : tuple of Path (default: ())
        Public keys whose signatures on updates are accepted.
    update_interval : float (default: 3600.0)
        Seconds between update checks (or rollout polls); must be > 0.
    fetch_timeout : float (default: 60.0)
        Seconds for each network operation of a fetch or poll.
    channel : str or None (default: None)
        Follow this rollout channel instead of the newest version.
    local_bound : float (default: 0.1)
        The candidate's accuracy drop, on this device, that rolls it back locally.
    supernode_exe : str (default: the `flower-supernode` next to this Python)
        The SuperNode executable.
    """

    device_dir: Path
    superlink: str
    root_cert: Path
    node_key: Path
    port: int = 9094
    partition_id: int = 0
    num_partitions: int = 1
    data_dir: Path | None = None
    demo_data: bool = False
    update_url: str | None = None
    trust: tuple[Path, ...] = ()
    update_interval: float = 3600.0
    fetch_timeout: float = 60.0
    channel: str | None = None  # follow this rollout channel instead of the newest version
    local_bound: float = 0.1  # the candidate's accuracy drop that rolls it back on the device
    supernode_exe: str = field(
        default_factory=lambda: str(Path(sys.executable).parent / "flower-supernode")
    )

    def check(self) -> None:
        """Refuse, with one line, what would only fail later inside the SuperNode."""
        for what, path in (("CA certificate", self.root_cert), ("node key", self.node_key)):
            if not Path(path).is_file():
                raise FedAdaptError(f"the {what} {path} does not exist")
        # what the SuperNode would otherwise only write to its log, restarting forever
        check_address(self.superlink)
        check_node_key(Path(self.node_key))
        check_root_cert(Path(self.root_cert))
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FedAdaptError(f"the data folder {self.data_dir} does not exist")
        if bool(self.update_url) != bool(self.trust):
            raise FedAdaptError("updates need both --update-url and --trust (or neither)")
        if self.channel is not None:
            from fedadapt.updates.cohort import check_channel_name

            check_channel_name(self.channel)
            if not self.update_url:
                raise FedAdaptError("--channel needs --update-url and --trust")
            if self.data_dir is None:
                raise FedAdaptError(
                    "--channel needs the device's data folder (--data-dir, or DEVICE_DIR/data) "
                    "to score both versions on its held-out split"
                )
        if self.update_interval <= 0:
            raise FedAdaptError(f"--update-interval must be > 0 s, got {self.update_interval}")
        if self.data_dir is None and not self.demo_data:
            raise FedAdaptError(
                f"no data folder: put this device's examples in {Path(self.device_dir) / 'data'} "
                "(JSON Lines or CSV, docs/how-to/device.md), name one with --data-dir, or pass "
                "--demo-data to train on a demo partition"
            )


def check_address(address: str) -> None:
    """The SuperLink's address as HOST:PORT (an IPv6 host in brackets), or one line saying
    what is missing."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or host in ("[", "[]"):
        raise FedAdaptError(
            f"--superlink {address!r} has no port: give HOST:PORT, e.g. 10.0.0.5:9092"
        )
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise FedAdaptError(f"--superlink {address!r}: the port must be a number in 1..65535")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise FedAdaptError(f"--superlink {address!r}: write an IPv6 host in brackets, [::1]:9092")


def check_node_key(path: Path) -> None:
    """The SuperNode's private key as Flower reads it (OpenSSH or PEM); its `.pub` or any
    other file is refused in one line."""
    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    if data.lstrip().startswith((b"ecdsa-", b"ssh-")):
        raise FedAdaptError(
            f"the node key {path} is a public key: give the private one (without .pub)"
        )
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            serialization.load_ssh_private_key(data, None)
        else:
            serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise FedAdaptError(
            f"the node key {path} is not a private key Flower can use: {e}"
        ) from None


def check_root_cert(path: Path) -> None:
    """The CA certificate as PEM, or one line naming the file."""
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as e:
        raise FedAdaptError(f"the CA certificate {path} is not a PEM certificate: {e}") from None


def node_config(opts: ServiceOptions) -> str:
    """Flower's `--node-config`: space-separated `key=value`, strings quoted (TOML values)."""
    items = {
        "partition-id": str(opts.partition_id),
        "num-partitions": str(opts.num_partitions),
        "device-dir": _quote(Path(opts.device_dir).resolve()),
    }
    if opts.data_dir is not None:
        items["data-dir"] = _quote(Path(opts.data_dir).resolve())
    return " ".join(f"{k}={v}" for k, v in items.items())


def _quote(path: Path) -> str:
    text = str(path)
    if '"' in text or "\\" in text:
        raise FedAdaptError(f"{text}: a folder for the node config may not hold quotes")
    return f'"{text}"'


def supernode_command(opts: ServiceOptions) -> list[str]:
    """The `flower-supernode` command line: TLS with `root_cert`, authenticated by `node_key`."""
    return [
        opts.supernode_exe,
        "--root-certificates",
        str(opts.root_cert),
        "--superlink",
        opts.superlink,
        "--auth-supernode-private-key",
        str(opts.node_key),
        "--node-config",
        node_config(opts),
        "--port",
        str(opts.port),
    ]


def worker_command(opts: ServiceOptions) -> list[str]:
    """The warm worker, on the device folder the node config names (the same resolved path,
    so the ClientApp finds the same socket)."""
    device = str(Path(opts.device_dir).resolve())
    return [sys.executable, "-m", "fedadapt.clients.warm_worker", device]


def _log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[device {stamp}] {msg}", file=sys.stderr, flush=True)


class DeviceService:
    """The SuperNode, the update loop and the personalized model of one device folder."""

    def __init__(self, opts: ServiceOptions) -> None:
        opts.check()
        self.opts = opts
        self.folder = Path(opts.device_dir)
        self.stopping = threading.Event()
        self.supernode: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.next_update = 0.0
        self.update_failures = 0  # update checks failed in a row
        # events recorded before this start are not news
        self.seen = {k: e.get("at", 0) for k, e in status.read(self.folder).items()}
        self.restarts = 0
        self.worker_restarts = 0
        self.worker_due: float | None = None  # when a worker that died is started again
        self.lock: int | None = None  # the device folder's lock while `run` holds it
        self.supernode_exits = Exits("SuperNode", self.folder / LOG_FILE)
        self.worker_exits = Exits("warm worker", self.folder / WORKER_LOG_FILE, startup_limit=3)

    # -- the SuperNode and the warm worker ----------------------------------------------------
    def _start(self, cmd: list[str], log_file: str, pid_file: str, what: str) -> subprocess.Popen:
        private_folder(self.folder)  # the user's data and personal state: theirs alone
        env = {**os.environ, **OFFLINE_ENV}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env[BASE_CACHE_ENV] = str(self.folder / "cache")  # the int8 base, built once
        with open(self.folder / log_file, "ab") as log:
            # under a supervisor (own session, PR_SET_PDEATHSIG, child subreaper): the
            # process and what it starts end with this command, however it ends
            # the supervisors hold the folder's lock too: after a crash it stays locked
            # until the last process of this device is gone
            held = [self.lock] if self.lock is not None else []
            proc = supervise.popen(cmd, env=env, stdout=log, hold_fds=held)
        (self.folder / pid_file).write_text(f"{proc.pid}\n")
        _log(f"{what} started (pid {proc.pid}), log {self.folder / log_file}")
        return proc

    def _stop(self, proc: subprocess.Popen | None, pid_file: str, what: str) -> None:
        if proc is None:
            return
        # the supervisor alone is signalled: a second TERM from a `killpg` would cut the
        # SuperNode's graceful exit short, before it deactivates itself at the SuperLink
        supervise.stop(proc, timeout=GRACE_S)
        (self.folder / pid_file).unlink(missing_ok=True)
        _log(f"{what} stopped (pid {proc.pid})")

    def start_supernode(self) -> subprocess.Popen:
        """Start the SuperNode under a supervisor; log in `supernode.log`, pid in `supernode.pid`.

        The pid file holds the supervisor's pid, for tools outside this process.
        """
        self.supernode = self._start(supernode_command(self.opts), LOG_FILE, PID_FILE, "SuperNode")
        self.supernode_exits.start()
        return self.supernode

    def stop_supernode(self) -> None:
        """Stop the SuperNode (TERM, KILL after `GRACE_S`); nothing if it is not running."""
        proc, self.supernode = self.supernode, None
        self._stop(proc, PID_FILE, "SuperNode")

    def start_worker(self) -> subprocess.Popen:
        """Start the warm worker under a supervisor; log in `worker.log`, pid in `worker.pid`."""
        self.worker = self._start(
            worker_command(self.opts), WORKER_LOG_FILE, WORKER_PID_FILE, "warm worker"
        )
        self.worker_exits.start()
        return self.worker

    def stop_worker(self) -> None:
        """Stop the warm worker, if running; messages then run in the ClientApp process."""
        proc, self.worker = self.worker, None
        self._stop(proc, WORKER_PID_FILE, "warm worker")

    # -- updates and the personalized file --------------------------------------------------
    def refresh_model(self) -> None:
        """Rewrite the personalized ONNX model from the state in the folder.

        A failure is logged, not raised: the service keeps running on the file it has.
        """
        from fedadapt.clients.personalized import refresh

        try:
            path = refresh(self.folder)
        except (FedAdaptError, OSError) as e:
            _log(f"personalized model not refreshed: {e}")
            return
        if path is not None:
            _log(f"personalized model: {path}")

    def update_once(self) -> bool:
        """One fetch (or one rollout poll, on a channel); False when it failed (logged, never
        fatal: `step` tries again soon, then less often)."""
        if self.opts.channel is not None:
            return self.poll_channel()
        from fedadapt.clients.updates.updater import fetch
        from fedadapt.updates.keys import load_public

        try:
            trusted = [load_public(p) for p in self.opts.trust]
            m = fetch(
                self.opts.update_url, self.folder, trusted, self.base_sha256(),
                timeout=self.opts.fetch_timeout,
            )  # fmt: skip
        except (FedAdaptError, OSError) as e:
            _log(f"update check failed: {e}")
            status.note(self.folder, "update", ok=False, message=f"check failed: {e}")
            return False
        if m is None:
            _log("update check: already up to date")
            status.note(self.folder, "update", ok=True, message="up to date")
        else:
            _log(f"installed {m.adapter_name} version {m.version} ({m.kind})")
            message = f"installed {m.adapter_name} version {m.version} ({m.kind})"
            status.note(self.folder, "update", ok=True, message=message)
        return True

    def poll_channel(self) -> bool:
        """One poll of the rollout agent; installs and switches rewrite the personalized file
        (`DeviceStore.install`, `rollout_agent.switch_to`), so it serves the version run."""
        from fedadapt.clients.updates.rollout_agent import device_agent

        opts, channel = self.opts, self.opts.channel
        assert channel is not None and opts.update_url and opts.data_dir is not None
        try:
            agent = device_agent(
                self.folder, opts.update_url, channel, list(opts.trust), opts.data_dir,
                opts.local_bound, timeout=opts.fetch_timeout,
            )  # fmt: skip
            r = agent.poll()
        except (FedAdaptError, OSError, RuntimeError) as e:  # ORT raises RuntimeError's kin
            _log(f"rollout poll of channel {channel!r} failed: {e}")
            return False
        _log(f"channel {channel} version {r.channel_version}: runs v{r.target} ({r.action})")
        if r.report:
            _log(
                f"reported v{r.report['stable']} {r.report['stable_accuracy']:.3f} vs "
                f"v{r.report['candidate']} {r.report['candidate_accuracy']:.3f} on "
                f"{r.report['examples']} held-out examples"
            )
        if r.halted:
            _log(f"the update service halted the rollout: {r.halted}")
        return True

    def base_sha256(self) -> str:
        """The installed graph names its base (no torch needed); else this machine's base."""
        import json

        from fedadapt.onnx_adapter import RUNTIME_FILE

        runtime = self.folder / RUNTIME_FILE
        if runtime.exists():
            return str(json.loads(runtime.read_text())["base_sha256"])
        from fedadapt.base.checkpoint import base_sha256

        return base_sha256()

    # -- the loop -------------------------------------------------------------------------------
    def step(self, now: float) -> None:
        """One turn of the loop: keep the SuperNode and the worker up, fetch when due."""
        proc = self.supernode
        if proc is not None and proc.poll() is not None:
            code = proc.returncode
            status.note(self.folder, "supernode", message=f"exited with code {code}")
            self.supernode = None
            (self.folder / PID_FILE).unlink(missing_ok=True)
            self.supernode_exits.exited(code)  # raises when restarting would not help
            self.restarts += 1
            delay = min(MAX_RESTART_DELAY_S, 2.0**self.restarts)
            _log(f"SuperNode exited with code {code}; restarting in {delay:.0f} s")
            if self.stopping.wait(delay):
                return
            self.start_supernode()
        worker = self.worker
        if worker is not None and worker.poll() is not None:
            self.worker = None
            (self.folder / WORKER_PID_FILE).unlink(missing_ok=True)
            self.worker_exits.exited(worker.returncode)
            # no wait here: the ClientApp runs messages itself meanwhile; the growing gap
            # between tries keeps a worker that cannot start from taking the CPU
            self.worker_restarts += 1
            self.worker_due = now + min(MAX_RESTART_DELAY_S, 2.0**self.worker_restarts)
            _log(
                f"warm worker exited with code {worker.returncode}; restarting in "
                f"{self.worker_due - now:.0f} s"
            )
        if self.worker is None and self.worker_due is not None and now >= self.worker_due:
            self.worker_due = None
            self.start_worker()
        self.print_events()
        if self.opts.update_url and now >= self.next_update:
            if self.update_once():
                self.update_failures = 0
                self.next_update = now + self.opts.update_interval
            else:  # the server may just not be up yet: soon, then less often
                self.update_failures += 1
                retry = RETRY_S * 2.0 ** (self.update_failures - 1)
                self.next_update = now + min(self.opts.update_interval, retry)

    def print_events(self) -> None:
        """One console line per event the ClientApp recorded since the last turn (a round
        trained, the data read, an error): the operator sees them here, not only in logs."""
        for kind, event in status.read(self.folder).items():
            if kind in ("update", "supernode") or event.get("at", 0) <= self.seen.get(kind, 0):
                continue  # those two this service printed itself
            self.seen[kind] = event["at"]
            _log(status.line(kind, event))

    def run(self, tick: float = 1.0) -> int:
        """Until SIGTERM/SIGINT; returns the exit code (0 on a clean stop).

        The device folder is locked for the service's life, as a run folder is
        (`fedadapt.runlock`): a second `device run` on it is refused in one line naming the
        holder, before it starts or removes anything of the first.
        """
        with runlock.hold(self.folder) as lock:
            self.lock = lock
            return self._run(tick)

    def _run(self, tick: float) -> int:
        restore = _stop_on_signals(self.stopping.set)
        try:
            self.refresh_model()
            self.start_worker()
            self.start_supernode()
            while not self.stopping.is_set():
                self.step(time.monotonic())
                self.stopping.wait(tick)
            _log("stopping")
        finally:
            self.stop_supernode()
            self.stop_worker()
            restore()
        return 0


def _stop_on_signals(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` on SIGTERM/SIGINT (main thread only); returns what restores them."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, lambda signum, frame: callback())

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore
