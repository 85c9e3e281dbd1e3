"""`fedadapt device run`: the SuperNode's command line, the update loop, and, against a real
SuperLink with TLS on loopback, start, SIGTERM, restart and a killed device command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedadapt.clients.service import (
    LOG_FILE,
    PID_FILE,
    WORKER_PID_FILE,
    DeviceService,
    ServiceOptions,
    node_config,
    supernode_command,
)
from fedadapt.clients.warm_link import socket_path
from fedadapt.errors import FedAdaptError
from fedadapt.launch.simulate import free_port


def _opts(tmp_path: Path, **kw) -> ServiceOptions:
    from fedadapt.launch.certs import make_certs

    if not (tmp_path / "certs" / "ca.crt").exists():
        make_certs(tmp_path / "certs", ["127.0.0.1"], 1)  # real ones: they are checked
    base = {
        "device_dir": tmp_path / "device",
        "superlink": "127.0.0.1:9",
        "root_cert": tmp_path / "certs" / "ca.crt",
        "node_key": tmp_path / "certs" / "supernodes" / "node-1",
        "demo_data": True,
    }
    return ServiceOptions(**{**base, **kw})


def test_the_supernode_gets_tls_its_key_and_the_device_and_data_folders(tmp_path):
    (tmp_path / "data").mkdir()
    opts = _opts(tmp_path, data_dir=tmp_path / "data", partition_id=2, num_partitions=3)
    cmd = supernode_command(opts)
    assert cmd[cmd.index("--root-certificates") + 1] == str(opts.root_cert)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(opts.node_key)
    assert "--insecure" not in cmd
    assert node_config(opts) == (
        f'partition-id=2 num-partitions=3 device-dir="{(tmp_path / "device").resolve()}" '
        f'data-dir="{(tmp_path / "data").resolve()}"'
    )


def test_no_data_folder_keeps_the_demo_partition(tmp_path):
    assert "data-dir" not in node_config(_opts(tmp_path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"root_cert": Path("/nonexistent/ca.crt")}, "the CA certificate /nonexistent/ca.crt"),
        ({"update_url": "http://127.0.0.1:9"}, "updates need both --update-url and --trust"),
        ({"data_dir": Path("/nonexistent/data")}, "the data folder /nonexistent/data"),
        ({"channel": "main"}, "--channel needs --update-url and --trust"),
        (
            {"channel": "main", "update_url": "http://127.0.0.1:9", "trust": (Path("k.pub"),)},
            r"--channel needs the device's data folder \(--data-dir, or DEVICE_DIR/data\)",
        ),
        ({"channel": "Main!"}, "a channel name is 1-32 of a-z, 0-9"),
    ],
)
def test_bad_options_are_refused_in_one_line(tmp_path, change, message):
    with pytest.raises(FedAdaptError, match=message):
        DeviceService(_opts(tmp_path, **change))


def test_a_failed_update_check_is_retried_soon_then_less_often(tmp_path, capsys):
    """An unreachable registry must not stop the device: it logs and tries again later."""
    from fedadapt.updates.keys import keygen

    _, pub = keygen(tmp_path / "keys")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    opts = _opts(tmp_path, update_url=url, trust=(pub,), update_interval=100)
    service = DeviceService(opts)
    (tmp_path / "device").mkdir()
    service.step(now=100.0)
    # a first check failed (the update server not up yet): tried again soon, not in an hour
    assert service.next_update == 130.0
    service.step(now=130.0)
    assert service.next_update == 190.0  # then less often: 30 s, 60 s, ... up to the interval
    service.step(now=190.0)
    assert service.next_update == 290.0
    assert "update check failed" in capsys.readouterr().err
    capsys.readouterr()
    service.step(now=200.0)  # not due yet: no attempt
    assert "update check" not in capsys.readouterr().err


def test_a_device_without_a_data_folder_is_refused_unless_demo_data_is_asked_for(tmp_path, capsys):
    """It used to train on the demo partition without a word."""
    from fedadapt.cli.app import main

    opts = _opts(tmp_path)
    argv = ["device", "run", "--device-dir", str(opts.device_dir), "--superlink", "127.0.0.1:9"]
    argv += ["--root-cert", str(opts.root_cert), "--node-key", str(opts.node_key)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedadapt: error: no data folder: put this device's examples in ")
    assert "--demo-data" in err and "\n" not in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"superlink": "127.0.0.1"}, "--superlink '127.0.0.1' has no port: give HOST:PORT"),
        ({"superlink": "127.0.0.1:99999"}, "the port must be a number in 1..65535"),
        ({"superlink": "::1:9092"}, "write an IPv6 host in brackets"),
        ({"node_key": "pub"}, "is a public key: give the private one (without .pub)"),
        ({"node_key": "garbage"}, "is not a private key Flower can use"),
        ({"root_cert": "garbage"}, "is not a PEM certificate"),
    ],
)
def test_device_run_checks_its_arguments_before_anything_starts(tmp_path, capsys, change, message):
    """Each used to restart the SuperNode forever, the reason only in supernode.log."""
    from fedadapt.cli.app import main

    opts = _opts(tmp_path)
    (tmp_path / "garbage").write_text("not a key\n")
    files = {
        "pub": str(opts.node_key) + ".pub",
        "garbage": str(tmp_path / "garbage"),
    }
    args = {
        "superlink": opts.superlink,
        "root_cert": str(opts.root_cert),
        "node_key": str(opts.node_key),
    }
    args.update({k: files.get(v, v) for k, v in change.items()})
    argv = ["device", "run", "--device-dir", str(opts.device_dir), "--demo-data"]
    argv += ["--superlink", args["superlink"], "--root-cert", args["root_cert"]]
    argv += ["--node-key", args["node_key"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not opts.device_dir.exists()  # nothing started, nothing written


def test_a_second_device_run_on_a_folder_in_use_is_refused_and_touches_nothing(tmp_path, capsys):
    """It kept failing in its log, then deleted the first device's socket and pid files."""
    from fedadapt import runlock
    from fedadapt.cli.app import main

    opts = _opts(tmp_path)
    first = runlock.acquire(opts.device_dir)  # the first device run holds the folder
    try:
        (opts.device_dir / "warm").mkdir()
        kept = [opts.device_dir / "warm" / "worker.sock", opts.device_dir / "supernode.pid"]
        for path in kept:
            path.write_text("the first device's\n")
        argv = ["device", "run", "--device-dir", str(opts.device_dir), "--demo-data"]
        argv += ["--superlink", opts.superlink, "--root-cert", str(opts.root_cert)]
        argv += ["--node-key", str(opts.node_key)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(
            f"fedadapt: error: {opts.device_dir} is in use by the live run of PID"
        )
        assert all(p.read_text() == "the first device's\n" for p in kept)
    finally:
        os.close(first)


def test_device_run_channel_without_updates_is_one_line(tmp_path, capsys):
    from fedadapt.cli.app import main

    opts = _opts(tmp_path)
    argv = ["device", "run", "--device-dir", str(opts.device_dir), "--superlink", "127.0.0.1:9"]
    argv += ["--root-cert", str(opts.root_cert), "--node-key", str(opts.node_key)]
    assert main([*argv, "--channel", "main"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fedadapt: error: --channel needs --update-url and --trust"


def test_a_failed_rollout_poll_is_logged_and_retried_soon(tmp_path, capsys):
    """On a channel, a device without a graph cannot score: logged, the loop goes on."""
    from fedadapt.updates.keys import keygen

    _, pub = keygen(tmp_path / "keys")
    (tmp_path / "data").mkdir()
    url = f"http://127.0.0.1:{free_port()}"
    service = DeviceService(
        _opts(tmp_path, update_url=url, trust=(pub,), channel="main", data_dir=tmp_path / "data")
    )
    service.step(now=10.0)
    err = capsys.readouterr().err
    assert "rollout poll of channel 'main' failed: " in err
    assert "has no runtime.json: install an exported model first" in err
    assert service.next_update == 10.0 + 30.0  # a failed poll is retried soon (RETRY_S)


@pytest.mark.slow
@pytest.mark.integration
def test_device_run_on_a_channel_installs_the_candidate_reports_and_follows_a_halt(
    rollout_world, tmp_path, capsys
):
    """`device run --channel main` turns, without its SuperNode: the cohort device fetches
    version 2 and reports it scored by its graph; after a halt it switches back to version 1
    with nothing downloadable, and its personalized file serves version 1 again."""
    from fedadapt.clients.runtime import EdgeRuntime
    from fedadapt.clients.updates.updater import DeviceStore
    from fedadapt.updates.keys import load_private

    world = rollout_world
    device = world.inside
    opts = _opts(
        tmp_path, device_dir=device, data_dir=device / "data", update_url=world.url,
        trust=(world.pub_file,), channel="main", update_interval=60,
    )  # fmt: skip
    service = DeviceService(opts)
    service.step(now=0.0)
    assert "channel main version 1: runs v2 (fetched)" in capsys.readouterr().err
    (stored,) = world.rollouts.rollout_reports("main")
    assert (stored["running"], stored["rolled_back"]) == (2, 0)
    assert stored["candidate_accuracy"] == pytest.approx(1 - stored["stable_accuracy"])
    assert stored["candidate_accuracy"] > stored["stable_accuracy"]
    assert EdgeRuntime(device).adapter_version == 2

    world.rollouts.halt("main", load_private(world.key_file))
    for payload in world.registry.glob("v*/*.payload"):
        payload.unlink()  # a switch back must not download
    service.step(now=30.0)  # not due: nothing happens
    assert DeviceStore(device).state().version == 2
    service.step(now=60.0)
    assert "channel main version 2: runs v1 (switched)" in capsys.readouterr().err
    runtime = EdgeRuntime(device)
    assert (runtime.adapter_version, runtime.personalized) == (1, True)
    assert runtime.logits(["a film"]).argmax() == 1


def _answers(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def _until(check, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout  # a worker imports torch: slow on a busy machine
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        time.sleep(0.2)


def test_a_warm_worker_that_dies_is_started_again(tmp_path, capsys):
    service = DeviceService(_opts(tmp_path))
    path = socket_path(service.folder)
    try:
        first = service.start_worker()
        _until(lambda: _answers(path))
        os.killpg(first.pid, signal.SIGKILL)  # no cleanup: its socket file stays behind
        first.wait()
        _until(lambda: not _answers(path), timeout=30)  # the worker, killed too, is gone
        assert path.exists()
        service.step(now=100.0)
        assert service.worker is None
        assert "warm worker exited with code -9; restarting in 2 s" in capsys.readouterr().err
        service.step(now=101.0)
        assert service.worker is None  # not yet: the delay grows with each death
        service.step(now=102.0)
        assert service.worker is not None and service.worker.pid != first.pid
        _until(lambda: _answers(path))
    finally:
        service.stop_worker()
    assert not (service.folder / WORKER_PID_FILE).exists()
    assert not path.exists()  # a clean stop removes the socket


# -- against a real SuperLink --------------------------------------------------------------------


def _device_cmd(cluster, device: Path) -> list[str]:
    return [
        sys.executable, "-m", "fedadapt", "device", "run",
        "--device-dir", str(device),
        "--superlink", cluster.address,
        "--root-cert", str(cluster.certs / "ca.crt"),
        "--node-key", str(cluster.node_key(1)),
        "--port", str(free_port()), "--demo-data",
    ]  # fmt: skip


def _start(cluster, device: Path) -> tuple[subprocess.Popen, list[int]]:
    """The device command, and the pids of its SuperNode's tree (supervisor, SuperNode)."""
    proc = subprocess.Popen(
        _device_cmd(cluster, device), env=cluster.env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (device / PID_FILE).exists() or not (tree := _supernode_tree(device)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the device command started no SuperNode"
        time.sleep(0.2)
    return proc, tree


def _worker_tree(device: Path) -> list[int]:
    """The warm worker's supervisor and the worker below it, once it listens."""
    _until(lambda: _answers(socket_path(device)))
    top = psutil.Process(int((device / WORKER_PID_FILE).read_text()))
    return [top.pid, *(p.pid for p in top.children(recursive=True))]


def _supernode_tree(device: Path) -> list[int]:
    """The supervisor named in the pid file and the flower-supernode below it."""
    try:
        top = psutil.Process(int((device / PID_FILE).read_text()))
        tree = [top, *top.children(recursive=True)]
    except (psutil.NoSuchProcess, ValueError, FileNotFoundError):
        return []
    if any("flower-supernode" in " ".join(_cmdline(p)) for p in tree[1:]):
        return [p.pid for p in tree]
    return []


def _cmdline(proc: psutil.Process) -> list[str]:
    """A child that ended between listing and reading (a ClientApp's process) has none."""
    try:
        return proc.cmdline()
    except psutil.NoSuchProcess:
        return []


def _deactivations(cluster) -> int:
    log = cluster.folder / "superlink.log"
    return log.read_text(errors="replace").count("[Fleet.DeactivateNode] Deactivated")


def _activations(device: Path) -> int:
    """How many times a SuperNode of this folder joined: Flower logs its id once activated."""
    log = device / LOG_FILE
    return log.read_text(errors="replace").count("SuperNode ID:") if log.exists() else 0


def _gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _wait_online(cluster, n: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while (seen := cluster.online()) < n and time.monotonic() < deadline:
        time.sleep(1)
    return seen


@pytest.mark.slow
@pytest.mark.integration
def test_start_sigterm_restart_and_a_killed_device_command(tmp_path):
    from fedadapt.launch.deploy import Cluster

    cluster = Cluster(tmp_path / "cluster", nodes=1)
    device = tmp_path / "device"
    procs: list[subprocess.Popen] = []
    try:
        cluster.start()
        proc, supernode = _start(cluster, device)
        procs.append(proc)
        assert _wait_online(cluster, 1) == 1  # TLS and the registered key: it joined
        worker = _worker_tree(device)
        assert len(worker) == 2

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "SuperNode stopped" in err and "warm worker stopped" in err
        assert _gone(supernode) and _gone(worker)
        assert not (device / PID_FILE).exists() and not (device / WORKER_PID_FILE).exists()

        # it left the SuperLink on its way out (one TERM: a second one killed it before that)
        assert _activations(device) == 1 and _deactivations(cluster) == 1

        proc, again = _start(cluster, device)  # a restart: same key, same folder
        procs.append(proc)
        assert set(again).isdisjoint(supernode)
        # so the same key joins again at once, without the SuperNode exiting on a refused
        # activation and the service restarting it (that would change the supervisor)
        _until(lambda: _activations(device) == 2, timeout=120)
        assert _supernode_tree(device)[:1] == again[:1] and proc.poll() is None
        again = _supernode_tree(device)  # read again: its children may have changed
        worker = _worker_tree(device)

        os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs: the death signal must do it
        proc.wait(timeout=30)
        assert _gone(again) and _gone(worker)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        cluster.stop()


def test_a_supernode_that_exits_at_start_up_ends_device_run_with_its_reason(tmp_path):
    """It restarted forever with a growing delay, the reason only in supernode.log."""
    fake = tmp_path / "flower-supernode"
    fake.write_text(
        "#!/bin/sh\necho 'INFO: starting'\n"
        "echo 'ERROR: SuperLink address (127.0.0.1) cannot be parsed.'\nexit 1\n"
    )
    fake.chmod(0o755)
    service = DeviceService(_opts(tmp_path, supernode_exe=str(fake)))
    service.start_worker = lambda: None  # the worker has nothing to do with this
    t0 = time.monotonic()
    with pytest.raises(FedAdaptError) as e:
        service.run(tick=0.1)
    assert time.monotonic() - t0 < 30
    assert str(e.value) == (
        "the SuperNode exited during start-up (code 1): "
        "ERROR: SuperLink address (127.0.0.1) cannot be parsed."
    )
    assert service.supernode is None and not (service.folder / PID_FILE).exists()
