"""The warm worker, a real process on a real Unix socket: the same replies as the in-process
handlers, a dead worker's messages run in the ClientApp, and bad frames never stop it."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedadapt.base.cache import BASE_CACHE_ENV
from fedadapt.clients import warm_link
from fedadapt.clients.app import app
from fedadapt.codecs import decode
from fedadapt.model_setup import build_fresh_global
from fedadapt.records import delta_blob, record_to_state, state_to_record
from fedadapt.simconfig import SimConfig
from tests.clients import SMALL

# a seed no other test uses: this process's cached model is as fresh as the worker's
CFG = SimConfig(**{**SMALL.to_dict(), "codec": "int8", "personalization": "fedrep", "seed": 11})


def _start_worker(device: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, BASE_CACHE_ENV: str(cache)}
    cmd = [sys.executable, "-m", "fedadapt.clients.warm_worker", str(device)]
    log = cache.parent / "worker.log"
    with log.open("ab") as f:
        proc = subprocess.Popen(cmd, env=env, stderr=f)
    path = warm_link.socket_path(device)
    deadline = time.monotonic() + 180  # torch's import, on a busy 2-core machine
    while not path.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the worker never listened"
        time.sleep(0.2)
    return proc


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    device = root / "dev"
    proc = _start_worker(device, root / "cache")
    yield device, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _context(device: Path) -> Context:
    node_config = {"partition-id": 2, "device-dir": str(device)}
    return Context(1, 7, node_config, RecordDict(), CFG.to_dict())


def _message(kind: str) -> Message:
    content = RecordDict(
        {
            "arrays": state_to_record(build_fresh_global(CFG)),
            "config": ConfigRecord({"server-round": 1, "phase": "adapter", "baselines": False}),
        }
    )
    return Message(content, dst_node_id=7, message_type=kind)


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_worker_replies_as_the_in_process_handler(worker, tmp_path):
    device, _ = worker
    msg = _message("train")
    here, there = _context(tmp_path / "no-worker"), _context(device)
    local, forwarded = app(msg, here), app(msg, there)
    assert not local.has_error() and not forwarded.has_error()
    assert forwarded.metadata.reply_to_message_id == msg.metadata.message_id
    assert _equal_states(
        decode(delta_blob(local.content["arrays"])), decode(delta_blob(forwarded.content["arrays"]))
    )
    assert dict(local.content["metrics"]) == dict(forwarded.content["metrics"])
    # the personal adapter and the int8 residual came back into Flower's own context object
    assert set(there.state.keys()) == set(here.state.keys()) == {"personal", "ef-residual"}
    for key in ("personal", "ef-residual"):
        assert _equal_states(record_to_state(here.state[key]), record_to_state(there.state[key]))
    assert (device / "personal.safetensors").exists()  # kept in the device folder by the worker


def test_a_handler_error_is_a_flower_error_reply_and_the_worker_goes_on(worker, tmp_path):
    from flwr.common.constant import ErrorCode

    device, proc = worker
    ctx = Context(1, 7, {"device-dir": str(device)}, RecordDict(), {})
    reply = app(_message("query"), ctx)  # no partition-id: the handler's own error reply
    assert reply.error.reason == "client-error"  # a code: no text crosses the wire
    # no config record: a KeyError, the same error reply here and on the worker
    bare = Message(RecordDict({"arrays": _message("train").content["arrays"]}), 7, "train")
    here = app(bare, _context(tmp_path / "no-worker"))
    reply = app(bare, _context(device))
    assert reply.error.code == here.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == here.error.reason == "client-crash"
    assert proc.poll() is None
    assert app(_message("query"), _context(device)).content["metrics"]["partition-id"] == 2


def _raw(device: Path, *chunks: bytes) -> tuple[bytes, bytes] | None:
    """Send raw bytes to the worker; its answer frame, or None when it just closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(warm_link.socket_path(device)))
        for c in chunks:
            sock.sendall(c)
        sock.shutdown(socket.SHUT_WR)
        try:
            return warm_link.recv_frame(sock)
        except ConnectionError:
            return None


def test_oversize_garbled_and_cut_frames_are_refused_and_the_worker_serves_on(worker):
    device, proc = worker
    head = warm_link.HEADER.pack
    kind, text = _raw(device, head(b"M", warm_link.MAX_FRAME + 1))
    assert kind == warm_link.ERROR and b"over the 1073741824-byte limit" in text
    kind, text = _raw(device, head(b"M", 10), b"\xff" * 10)
    assert kind == warm_link.ERROR and b"not a Flower Message" in text
    kind, text = _raw(device, head(b"Z", 0))
    assert kind == warm_link.ERROR and b"unknown frame kind" in text
    assert _raw(device, head(b"M", 100), b"x" * 10) is None  # gone mid-frame: nothing to say
    assert proc.poll() is None
    assert app(_message("query"), _context(device)).content["metrics"]["partition-id"] == 2


def test_the_socket_is_private(worker):
    device, _ = worker
    path = warm_link.socket_path(device)
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_no_worker_is_no_message_lost_and_nothing_logged(tmp_path, caplog):
    """A device without a worker (not started yet, or a plain SuperNode): run here, silently."""
    with caplog.at_level("WARNING", logger="fedadapt.clients"):
        reply = app(_message("query"), _context(tmp_path / "dev"))
    assert reply.content["metrics"]["partition-id"] == 2
    assert not [r for r in caplog.records if r.name == "fedadapt.clients"]


def test_a_hung_worker_costs_the_rounds_deadline_then_the_message_runs_here(tmp_path, caplog):
    """A worker that accepts and never answers: the call gives up at the round's timeout."""
    device = tmp_path / "dev"
    path = warm_link.listen_path(device)
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(path))
    hung.listen(1)
    ctx = Context(1, 7, {"partition-id": 2, "device-dir": str(device)}, RecordDict(), {})
    ctx.run_config = {**CFG.to_dict(), "round_timeout": 1.0}
    try:
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="fedadapt.clients"):
            reply = app(_message("query"), ctx)
        waited = time.monotonic() - t0
    finally:
        hung.close()
    assert reply.content["metrics"]["partition-id"] == 2
    assert 1.0 <= waited < 30
    assert "did not answer" in caplog.text


def test_a_dead_worker_loses_no_message(tmp_path, caplog):
    """A worker killed outright leaves its socket file; the ClientApp runs the message."""
    device = tmp_path / "dev"
    proc = _start_worker(device, tmp_path / "cache")
    proc.kill()
    proc.wait()
    assert warm_link.socket_path(device).exists()
    with caplog.at_level("WARNING", logger="fedadapt.clients"):
        reply = app(_message("query"), _context(device))
    assert reply.content["metrics"]["partition-id"] == 2
    lines = [r for r in caplog.records if r.name == "fedadapt.clients"]
    assert len(lines) == 1 and "did not answer" in lines[0].getMessage()
