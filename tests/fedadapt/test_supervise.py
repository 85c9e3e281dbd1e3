"""What fedadapt starts dies with it, and one live run holds an output folder.

The first tests use a stand-in CLI (a Python process that starts a supervised command whose
daemon escapes into a session of its own, as Ray's do) and take seconds. The last two crash
the real `simulate` and `deploy-demo` with `kill -9` of their process group, as an OOM kill
or a closed terminal would, and look for any process of the run left behind.
"""

from __future__ import annotations

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

from fedadapt import runlock
from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig
from tests.fedadapt.test_simulate import ROOT

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
