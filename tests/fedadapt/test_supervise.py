"""What fedadapt starts dies with it, and one live run holds an output folder.

The first tests use a stand-in CLI (a Python process that starts a supervised command whose
daemon escapes into a session of its own, as Ray's do) and take seconds. The last two crash
the real `simulate` and `deploy-demo` with `kill -9` of their process group, as an OOM kill
or a closed terminal would, and look for any process of the run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from fedadapt import runlock, supervise
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig
from tests.fedadapt.launch.test_simulate import ROOT, _simulate

# A command that ignores SIGTERM and starts a daemon (double fork, new session) that
# ignores it too: only the supervisor's SIGKILL ends them. It writes both PIDs to argv[1].
STUBBORN = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1], "w").write(f"{os.getppid()} {os.getpid()}")
        time.sleep(600)
    os._exit(0)
time.sleep(600)
"""

# The stand-in CLI: locks argv[1], starts STUBBORN under a supervisor holding the lock.
CLI = r"""
import sys, time
from fedadapt import runlock, supervise
lock = runlock.acquire(sys.argv[1])
supervise.popen([sys.executable, "-c", sys.argv[2], sys.argv[3]], hold_fds=[lock])
time.sleep(600)
"""


def _start(code: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, start_new_session=True, **popen
    )


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                living.append(p)
        except psutil.NoSuchProcess:
            pass
    return living


def _crash(cli: subprocess.Popen) -> float:
    """`kill -9` the CLI's process group; returns when it happened."""
    os.killpg(cli.pid, signal.SIGKILL)
    cli.wait()
    return time.monotonic()


@pytest.mark.integration
def test_a_killed_cli_takes_its_supervised_tree_down_and_frees_the_folder_last(tmp_path):
    pids = tmp_path / "pids"
    cli = _start(CLI, str(tmp_path), STUBBORN, str(pids))
    try:
        _until(pids.exists, 30, "the daemon")
        _until(lambda: len(pids.read_text().split()) == 2, 5, "the daemon's pids")
        adopter, daemon = (psutil.Process(int(p)) for p in pids.read_text().split())
        tree = [p for p in psutil.Process(cli.pid).children(recursive=True)]
        assert daemon in tree  # the supervisor adopted it (subreaper)
        assert adopter.cmdline()[1:3] == ["-m", "fedadapt.supervise"]
        assert os.getsid(daemon.pid) not in (os.getsid(cli.pid), adopter.pid)
        killed = _crash(cli)
        # the stubborn tree outlives SIGTERM; until it is gone the folder stays locked
        with pytest.raises(FedAdaptError, match=f"crashed run of PID {cli.pid} .*stopping"):
            os.close(runlock.acquire(tmp_path))
        _until(lambda: not _alive(tree), 10, "the supervised tree to end")
        assert time.monotonic() - killed < 10
        os.close(runlock.acquire(tmp_path))
    finally:
        if cli.poll() is None:
            _crash(cli)


@pytest.mark.integration
def test_a_supervised_command_keeps_its_exit_code_and_leaves_nothing_behind(tmp_path):
    from fedadapt import supervise

    cmd = ["bash", "-c", f"sleep 600 & echo $! > {tmp_path / 'pid'}; exit 3"]
    assert supervise.popen(cmd).wait(timeout=30) == 3
    assert not psutil.pid_exists(int((tmp_path / "pid").read_text()))


def _holder(folder: Path) -> subprocess.Popen:
    code = "import sys, time; from fedadapt import runlock; runlock.acquire(sys.argv[1]); "
    code += "print('held', flush=True); time.sleep(600)"
    proc = _start(code, str(folder), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def _refused(*args: str) -> str:
    """Run the CLI; it must stop with exit code 2 and one line on stderr, returned."""
    res = subprocess.run(
        [sys.executable, "-m", "fedadapt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.count("\n") == 1, res.stderr[-2000:]
    return res.stderr


# Counts the SIGTERMs it gets during a graceful exit that takes a second, as Flower's do
# (a SuperNode deactivates itself at the SuperLink); writes the count to argv[1].
COUNT_TERMS = r"""
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *a: got.append(1))
open(sys.argv[1], "w").write("ready")
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1.0)
open(sys.argv[1], "w").write(str(len(got)))
"""


def test_stop_gives_each_descendant_one_sigterm_however_long_it_takes_to_exit(tmp_path):
    # a second TERM reaches Flower's default handler and kills it mid-exit: a SuperNode
    # stopped so never deactivated, and its restart was refused by the SuperLink for 60 s
    out = tmp_path / "terms"
    proc = supervise.popen([sys.executable, "-c", COUNT_TERMS, str(out)])
    _until(lambda: out.exists() and out.read_text() == "ready", 60, "the command to start")
    supervise.stop(proc)
    assert out.read_text() == "1"
    assert proc.returncode == 0


@pytest.mark.integration
def test_a_run_into_a_locked_folder_is_refused_naming_the_live_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(SimConfig(out=str(run)).to_dict()))
    holder = _holder(run)
    try:
        command = shlex.join(psutil.Process(holder.pid).cmdline())
        named = f"is in use by the live run of PID {holder.pid} ({command}); wait for it"
        for args in (
            ["simulate", "--config", "simulations/ci.toml", "--out", str(run)],
            ["simulate", "--resume", str(run)],
            ["deploy-demo", "--out", str(run)],
        ):
            err = _refused(*args)
            assert err.startswith(f"fedadapt: error: {run} {named}")
        assert sorted(p.name for p in run.iterdir()) == ["config.json", runlock.LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    os.close(runlock.acquire(run))  # a dead holder's lock is taken over
    assert (run / runlock.LOCK_NAME).read_text().startswith(f"{os.getpid()}\n")


def _of_run(folder: Path) -> list[psutil.Process]:
    """Live processes of the run in `folder`: its FLWR_HOME in their environment (Ray's
    daemons and actors inherit it), or a path inside the folder on their command line."""
    home, inside = str(folder / ".flwr"), str(folder)
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            args = p.cmdline()
            if p.environ().get("FLWR_HOME") == home or any(
                a == inside or inside + os.sep in a for a in args
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _programs(procs: list[psutil.Process]) -> list[str]:
    """The program each process runs (the script's name for a Python entry point, the module
    for `python -m`; the SuperLink runs as `python -m fedadapt.server.superlink_guard`, which
    is `flower-superlink` behind the guard, and is named so)."""
    names = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            args = p.cmdline()
            script = len(args) > 1 and Path(args[0]).name.startswith("python")
            if script and args[1] == "-m" and len(args) > 2:
                module = args[2]
                names.append("flower-superlink" if module.endswith("superlink_guard") else module)
                continue
            names.append(Path(args[1] if script else args[0]).name)
    return names


def _cli(folder: Path, *args: str) -> subprocess.Popen:
    """The real CLI in a process group of its own, its output in `folder`/cli.log."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cli.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "fedadapt", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _crash_and_check_nothing_is_left(cli: subprocess.Popen, folder: Path) -> None:
    """`kill -9` the CLI's group; within 10 s no process it started, nor any of the run's
    (found by its folder), may live."""
    tree = [psutil.Process(cli.pid), *psutil.Process(cli.pid).children(recursive=True)]
    killed = _crash(cli)
    _until(lambda: not _alive(tree) and not _of_run(folder), 10, "the run's processes to end")
    assert time.monotonic() - killed <= 10


def _latest_round(run: Path) -> int:
    latest = run / "checkpoints" / "latest"
    return int(latest.read_text().split("-")[1].split(".")[0]) if latest.exists() else 0


@pytest.mark.slow
@pytest.mark.integration
def test_a_crashed_simulate_leaves_no_process_and_resumes_to_the_uninterrupted_run(
    tmp_path, uninterrupted_ci_run
):
    run = tmp_path / "run"
    ci = ["--config", "simulations/ci.toml", "--no-baselines", "--rounds", "3"]
    cli = _cli(tmp_path, "simulate", *ci, "--out", str(run))
    try:
        _until(lambda: _latest_round(run) >= 1 or cli.poll() is not None, 900, "round 1")
        assert cli.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
        started = _programs(_of_run(run))
        for program in ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet"):
            assert program in started  # the scan sees what it must see gone
        _crash_and_check_nothing_is_left(cli, run)
    finally:
        if cli.poll() is None:
            _crash(cli)
    crashed_after = _latest_round(run)
    checkpoints = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    time.sleep(3)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == checkpoints
    assert 1 <= crashed_after < 3 and not (run / "report.json").exists()

    resumed = _simulate("--resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming after round {crashed_after}" in resumed.stdout
    a = load_file(uninterrupted_ci_run / "adapter" / "adapter_model.safetensors")
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
@pytest.mark.integration
def test_a_crashed_deploy_demo_leaves_no_superlink_or_supernode(tmp_path):
    out = tmp_path / "deploy"
    cli = _cli(tmp_path, "deploy-demo", "--out", str(out), "--nodes", "3")
    try:
        submitted = out / "run" / "run_config.toml"  # written once the SuperNodes are up
        _until(lambda: submitted.exists() or cli.poll() is not None, 300, "the run's submission")
        assert cli.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
        up = ("flower-superlink", 1), ("flower-supernode", 3)
        _until(lambda: all(_programs(_of_run(out)).count(p) == n for p, n in up), 60, "nodes")
        _crash_and_check_nothing_is_left(cli, out)
    finally:
        if cli.poll() is None:
            _crash(cli)
