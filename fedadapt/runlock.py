"""One live run per output folder: an exclusive `flock` on `DIR/run.lock`.

The kernel drops an `flock` when the last descriptor of its open file goes, however its
holders end (SIGKILL included), so a crash leaves no stale lock to clean up, unlike a PID
file: the next run takes a dead holder's lock over by locking it. The lock file keeps the
holder's PID and command line, only to name it in the refusal. The file itself is never
removed: unlinking a lock file lets two processes lock two different files.

The CLI holds the lock for the run's life and hands a copy of the descriptor to the
supervisors of the processes it starts (`fedadapt.supervise`), so after a crash the folder
stays locked until the last process of the old run is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from fedadapt.errors import FedAdaptError

LOCK_NAME = "run.lock"


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file."""
    pid, _, cmd = os.pread(fd, 4096, 0).decode("utf-8", "replace").partition("\n")
    cmd = cmd.strip() or "command unknown"
    if not pid.strip().isdigit():
        return "another process (it is still starting)"
    if psutil.pid_exists(int(pid)):
        return f"the live run of PID {pid.strip()} ({cmd}); wait for it to end or stop it"
    return (
        f"the processes of the crashed run of PID {pid.strip()} ({cmd}), which are "
        "stopping; try again in a few seconds"
    )


def acquire(folder: Path) -> int:
    """Lock `folder` for this process; returns the descriptor that holds the lock (close it
    to release). A folder locked by a live run is refused, naming that run."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise FedAdaptError(f"cannot lock the run folder {folder}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = _holder(fd)
        os.close(fd)
        raise FedAdaptError(f"{folder} is in use by {who}") from None
    me = psutil.Process()
    line = shlex.join(me.cmdline()).replace("\n", " ")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{me.pid}\n{line}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def hold(folder: Path) -> Iterator[int]:
    """`acquire` for the block; yields the descriptor (to pass on to supervisors)."""
    fd = acquire(folder)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def waiting(path: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the block, waiting up to `timeout` seconds
    for another holder to finish. `path` is a lock file (made if missing) or an existing
    folder, which is locked itself (no file is written into it).

    For short critical sections that must take turns rather than refuse each other (a
    registry's publish and re-sign, a device folder's fetch, apply and rollback), unlike
    `acquire`, which refuses a second run at once. Each call opens the file anew, so two
    threads of one process exclude each other as two processes do; it is not reentrant.
    Past the timeout, one `FedAdaptError` line names `what` is busy.
    """
    path = Path(path)
    try:
        if path.is_dir():
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise FedAdaptError(f"cannot lock {what} ({path}): {e.strerror}") from None
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    raise FedAdaptError(
                        f"{what} is busy: another process held {path} for {timeout:g} s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing drops the lock
