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


def test_a_deep_device_folder_gets_an_unguessable_folder_of_its_own(tmp_path):
    deep = tmp_path / ("d" * 100) / "dev"
    assert warm_link.socket_path(deep) is None  # no worker has recorded one yet
    path = warm_link.listen_path(deep)
    try:
        assert len(os.fsencode(path)) <= warm_link.MAX_PATH
        assert path.parent.parent == Path(tempfile.gettempdir())
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        # the ClientApp finds it through the device folder, by any spelling of it
        assert warm_link.socket_path(deep) == path == warm_link.socket_path(deep / ".." / "dev")
        pointer = deep / warm_link.FOLDER / warm_link.FALLBACK
        assert stat.S_IMODE(pointer.stat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))  # Linux takes it
        # a second worker gets another name: nobody can create it first
        again = warm_link.listen_path(deep)
        assert again.parent != path.parent
        warm_link.forget(deep, again)
        assert warm_link.socket_path(deep) is None and not again.parent.exists()
    finally:
        warm_link.forget(deep, path)
    assert not path.parent.exists()


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


def test_a_header_allocates_nothing_before_its_body_arrives():
    """A peer announcing a frame just under the cap and sending 10 bytes costs 10 bytes."""
    import tracemalloc

    a, b = socket.socketpair()
    with a, b:
        a.sendall(warm_link.HEADER.pack(warm_link.MESSAGE, warm_link.MAX_FRAME - 1) + b"x" * 10)
        a.shutdown(socket.SHUT_WR)
        tracemalloc.start()
        try:
            with pytest.raises(ConnectionError, match="after 10 of"):
                warm_link.recv_frame(b)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 16 << 20  # it was bytearray(MAX_FRAME - 1): a whole GiB at once


def test_a_call_without_a_reply_ends_at_its_deadline(tmp_path):
    path = warm_link.listen_path(tmp_path / "dev")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(path))
        silent.listen(1)
        msg = Message(RecordDict({"config": ConfigRecord({"a": 1})}), 7, "query")
        ctx = Context(1, 7, {}, RecordDict(), {})
        with pytest.raises(TimeoutError):
            warm_link.call(path, msg, ctx, timeout=0.5)


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another user needs root")
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="a Python nobody may run")
def test_a_peer_of_another_user_is_refused():
    """A real process running as `nobody` connects; the listener refuses it by its uid."""
    import subprocess

    # the pytest folders are root's alone: an open folder directly under the temp directory
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o777)  # reachable by anybody: only the credential check protects it
    path = folder / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen(1)
        code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(path)!r})"
        # the OS's Python: the project's venv may sit where `nobody` may not enter
        peer = subprocess.Popen(["/usr/bin/python3", "-c", code + "; s.recv(1)"], user=65534)
        try:
            server.settimeout(60)
            conn, _ = server.accept()
            with conn, pytest.raises(warm_link.LinkError, match="runs as user 65534"):
                warm_link.check_peer(conn)
        finally:
            peer.kill()
            peer.wait()
            path.unlink(missing_ok=True)
            folder.rmdir()
    a, b = socket.socketpair()
    with a, b:
        warm_link.check_peer(a)  # this user's own peer passes
