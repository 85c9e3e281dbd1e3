"""The warm worker's socket path and folder: short enough for AF_UNIX, and private."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedadapt.clients import warm_link


def test_the_socket_is_in_the_device_folder(tmp_path):
    assert warm_link.socket_path(tmp_path / "dev") == tmp_path / "dev" / "warm" / "worker.sock"


def test_a_deep_device_folder_gets_a_short_path_of_its_own(tmp_path):
    deep, other = tmp_path / ("d" * 100) / "dev", tmp_path / ("d" * 100) / "dev2"
    path = warm_link.socket_path(deep)
    assert len(os.fsencode(path)) <= warm_link.MAX_PATH
    assert path.parent.parent == Path(tempfile.gettempdir())
    assert path == warm_link.socket_path(deep / ".." / "dev")  # the same folder, the same path
    assert path != warm_link.socket_path(other)
    warm_link.make_private(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))  # Linux takes it
    finally:
        path.unlink(missing_ok=True)
        path.parent.rmdir()


def test_an_open_or_linked_folder_is_refused(tmp_path):
    folder = tmp_path / "warm"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    with pytest.raises(warm_link.LinkError, match="not a private folder"):
        warm_link.check_private(folder)
    warm_link.make_private(folder)  # our own: tightened
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(warm_link.LinkError):
        warm_link.check_private(link)


def test_a_message_and_context_cross_a_socket_pair_intact():
    msg = Message(
        RecordDict({"config": ConfigRecord({"a": 1})}), dst_node_id=7, message_type="query"
    )
    ctx = Context(1, 7, {"device-dir": "/x"}, RecordDict({"s": ConfigRecord({"b": "c"})}), {})
    a, b = socket.socketpair()
    with a, b:
        warm_link.send_pair(a, msg, ctx)
        got, got_ctx = warm_link.recv_pair(b)
    assert got.content["config"]["a"] == 1 and got.metadata == msg.metadata
    assert got_ctx.state["s"]["b"] == "c" and got_ctx.node_config == {"device-dir": "/x"}


def test_a_frame_over_the_limit_is_refused_before_its_body():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(warm_link.HEADER.pack(warm_link.MESSAGE, 1 << 40))  # no body follows
        with pytest.raises(warm_link.LinkError, match="over the"):
            warm_link.recv_frame(b)
