"""Crash-safe file writes: a reader sees the old file or the new one, never a torn mix.

The new file gets the mode the old one had, so a private file stays private however often
it is rewritten; a new file gets what `open()` would give it under the process's umask, or
`PRIVATE` where the caller says the file is the user's own (a device's personal state).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE = 0o600  # a device's personal files: readable by their owner only
PRIVATE_DIR = 0o700


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable: the folder's entry, not only the file, is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it (`os.umask` can only set it, which
    races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def mode_for(path: Path, mode: int | None) -> int:
    """The mode a rewrite of `path` gets: `mode` if given, else the old file's, else the
    umask's default for a new file."""
    if mode is not None:
        return mode
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~umask()


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temp file in the same folder, fsync, rename over `path`, fsync the folder.

    Parameters
    ----------
    path : str | Path
        The file to replace (its folder is created if missing).
    data : bytes
        The whole new content.
    mode : int | None (default: None)
        The file's permission bits. None keeps the mode of the file being replaced, or for a
        new file gives what `open()` would under the umask; `PRIVATE` (0600) for a file that
        is the user's alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = mode_for(path, mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """`atomic_write_bytes` of `text` as UTF-8."""
    atomic_write_bytes(path, text.encode(), mode)


def private_folder(path: str | Path) -> Path:
    """`path` as a folder of this user's alone (0700), created if missing; an existing one of
    ours is tightened, since a device folder holds the user's data and personal state."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_DIR)
    return path


def create_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 from its first byte (never chmod-ed afterwards); an
    existing file raises FileExistsError: a key is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
