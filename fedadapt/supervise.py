"""A supervisor per started component, so that what fedadapt starts dies with it.

`popen(cmd)` starts `python -m fedadapt.supervise PARENT -- cmd` in a session of its own.
The supervisor starts `cmd` as its child (in the supervisor's process group, so `killpg`
of the returned process reaches both) and then:

- **dies with the CLI**: `prctl(PR_SET_PDEATHSIG, SIGTERM)` asks the kernel to send it
  SIGTERM when the thread that started it exits, however it exits (SIGKILL, the OOM
  killer). A check of `getppid()` covers a parent that died before the `prctl` and, in the
  loop, one whose death signal was missed. The supervisor is in a session of its own, so a
  `kill -9` of the CLI's process group does not reach it: it lives to clean up.
- **knows every descendant**: `prctl(PR_SET_CHILD_SUBREAPER)` makes the kernel reparent to
  the supervisor, instead of to init, any process below it whose parent dies. Ray's daemons
  and actors, the SuperExec and `flwr-simulation` leave the process group and session (some
  start sessions of their own), and they outlive the process that started them; as a
  subreaper the supervisor still finds all of them with `psutil.children(recursive=True)`,
  with no periodic bookkeeping that could miss a process started between two scans.
- **takes them all down**: on SIGTERM/SIGINT/SIGHUP, on its parent's death, or when `cmd`
  ends, it sends SIGTERM to every descendant, rescans (orphans keep arriving while their
  parents exit), and after `GRACE` seconds sends SIGKILL to what is left. Each process gets
  one SIGTERM, never a second: Flower's components put the default handler back on the
  first, so a second TERM kills them mid-way through their graceful exit (a SuperNode killed
  so never deactivates itself at the SuperLink, which then refuses the restarted node until
  its heartbeat patience runs out). It reaps the orphans it adopts, and exits with `cmd`'s
  exit code. `stop(proc)` therefore signals the supervisor alone, not its process group.

Flower's own `--parent-pid` watch exists only on `flower-superexec` in flwr 1.42 (the
SuperLink passes it); `flower-superlink` and `flower-supernode` have none, and no component
would take Ray down with it, hence this process. `popen(..., hold_fds=...)` hands the
supervisor file descriptors to keep open until its whole tree is gone: the run's folder lock
(`fedadapt.runlock`), so a `--resume` cannot start while a crashed run is still stopping.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE = 5.0  # seconds between SIGTERM and SIGKILL; a crashed run is gone within ~6 s
POLL = 0.2


def popen(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdout: IO | int | None = None,
    hold_fds: Sequence[int] = (),
) -> subprocess.Popen:
    """Start `cmd` under a supervisor (own session, stderr joined to `stdout`). `stop` it,
    or `killpg` its pid: the group holds the supervisor and `cmd`."""
    supervisor = [sys.executable, "-m", "fedadapt.supervise", str(os.getpid()), "--", *cmd]
    return subprocess.Popen(
        supervisor,
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=tuple(hold_fds),
    )


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _reap(ended: dict[int, int]) -> None:
    """Collect every exited child (ours or adopted) into `ended`: {pid: exit code}."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        ended[pid] = os.waitstatus_to_exitcode(status)


def _living() -> list:
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def end_descendants(ended: dict[int, int], grace: float = GRACE) -> None:
    """SIGTERM every descendant, SIGKILL what is left after `grace`; reap them into `ended`."""
    import psutil

    deadline = time.monotonic() + grace
    give_up = deadline + 10 * grace  # a process stuck in the kernel (state D) ignores SIGKILL
    termed: set[int] = set()  # one TERM each (see the module's docstring)
    while (procs := _living()) and time.monotonic() < give_up:
        killing = time.monotonic() >= deadline
        for p in procs:
            if killing or p.pid not in termed:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGKILL if killing else signal.SIGTERM)
                termed.add(p.pid)
        time.sleep(POLL)
        _reap(ended)
    _reap(ended)


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a process that ends its own tree on SIGTERM (a supervisor `popen` started, or
    `fedadapt device run`): SIGTERM to it alone, as the tree must get one TERM each; then,
    if it has not ended within `timeout`, SIGKILL to its group and to the descendants seen
    before (subreaped ones left the group)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for p in family:  # psutil refuses a pid reused since: it checks the creation time
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def supervise(parent: int, cmd: Sequence[str]) -> int:
    """Run `cmd` until it ends, a stop signal comes or `parent` dies; then end its tree."""
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the death signal was armed
        return 128 + signal.SIGTERM
    try:
        child = subprocess.Popen(list(cmd))
    except OSError as e:
        print(f"fedadapt supervise: cannot start {cmd[0]}: {e}", file=sys.stderr)
        return 127
    ended: dict[int, int] = {}
    while child.pid not in ended and not stopping and os.getppid() == parent:
        time.sleep(POLL)
        _reap(ended)
    end_descendants(ended)
    code = ended.get(child.pid, -signal.SIGTERM)
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str]) -> int:
    """`python -m fedadapt.supervise PARENT_PID -- CMD...`: supervise CMD; returns its exit code
    (2 on a bad usage).
    """
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m fedadapt.supervise PARENT_PID -- CMD...", file=sys.stderr)
        return 2
    return supervise(int(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
