"""Atomic writes keep a private file private and respect the umask for a new one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedadapt.atomic import PRIVATE, atomic_write_bytes, private_folder, umask


@pytest.fixture
def with_umask():
    saved = os.umask(0o022)
    os.umask(saved)

    def set_(value: int) -> None:
        os.umask(value)

    yield set_
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_what_the_umask_allows(tmp_path, with_umask):
    with_umask(0o077)
    atomic_write_bytes(tmp_path / "a", b"x")
    assert _mode(tmp_path / "a") == 0o600  # was forced to 0644, readable by every user
    with_umask(0o022)
    atomic_write_bytes(tmp_path / "b", b"x")
    assert _mode(tmp_path / "b") == 0o644


def test_a_rewrite_keeps_the_old_files_mode(tmp_path, with_umask):
    with_umask(0o022)
    atomic_write_bytes(tmp_path / "a", b"x", PRIVATE)
    atomic_write_bytes(tmp_path / "a", b"y")
    assert _mode(tmp_path / "a") == 0o600 and (tmp_path / "a").read_bytes() == b"y"


def test_the_umask_is_read_without_being_changed(with_umask):
    with_umask(0o027)
    assert umask() == 0o027
    assert umask() == 0o027


def test_a_private_folder_is_made_and_tightened(tmp_path):
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    assert _mode(private_folder(tmp_path / "open")) == 0o700
    assert _mode(private_folder(tmp_path / "new" / "deeper")) == 0o700
