"""`fetch` against hostile servers on 127.0.0.1: one that trickles a byte a second, one that
sends more than the signed size, a refused connection and bad URLs. Each ends in one
`FedAdaptError` line, on time, and leaves nothing that a later fetch from an honest
server would trust."""

from __future__ import annotations

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedadapt.clients.updates.updater import DeviceStore, fetch
from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.publish import publish
from fedadapt.updates.bundles import BundleError
from tests.registry_helpers import BASE, make_keys, serving, tiny_adapter, update_server

SLACK_S = 1.5  # a byte a second, plus scheduling on a busy machine


class Hostile(ThreadingHTTPServer):
    """Serves a real, validly signed registry, misbehaving as `mode` says."""

    daemon_threads = True

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode, self.stop = root, mode, threading.Event()
        super().__init__(("127.0.0.1", 0), _HostileHandler)

    def server_close(self) -> None:
        self.stop.set()  # ends the trickles
        super().server_close()


class _HostileHandler(BaseHTTPRequestHandler):
    server: Hostile
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _trickle(self, data: bytes) -> None:
        for i in range(len(data)):
            if self.server.stop.wait(1.0):
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()

    def do_GET(self) -> None:
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body, mode = path.read_bytes(), self.server.mode
        payload = path.suffix == ".payload"
        if mode == "trickle-head":
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            self._trickle(head + body)
            return
        if payload and mode == "oversize":
            body = os.urandom(len(body) + 4096)  # garbage, and more of it than signed
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if payload and mode == "trickle-payload":
            self._trickle(body)
        else:
            self.wfile.write(body)


@pytest.fixture
def world(tmp_path):
    keys = make_keys(tmp_path / "keys")
    reg = tmp_path / "reg"
    publish(tiny_adapter(tmp_path / "a1", 1, size=4096), reg, keys.key, name="sent")
    return {"reg": reg, "keys": keys, "device": tmp_path / "device"}


def _fetch(w, url: str, timeout: float = 10.0):
    return fetch(url, w["device"], [w["keys"].pub], BASE, timeout=timeout)


def _downloads(w) -> list[Path]:
    folder = w["device"] / "downloads"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("mode", ["trickle-head", "trickle-payload"])
def test_the_timeout_bounds_the_whole_fetch(world, mode):
    """A server answering each read within the per-read timeout, a byte a second, must
    not hold a fetch past its deadline: the bug was 45 s and counting for `--timeout 3`."""
    with serving(Hostile(world["reg"], mode)) as url:
        t = time.monotonic()
        with pytest.raises(BundleError) as e:
            _fetch(world, url, timeout=2.0)
        elapsed = time.monotonic() - t
    assert e.value.reason == "timeout"
    assert "did not finish within the 2 s deadline" in str(e.value)
    assert "\n" not in str(e.value)
    assert elapsed < 2.0 + SLACK_S, f"fetch ran {elapsed:.1f} s on a 2 s deadline"
    assert _downloads(world) == []  # a refused download is not kept for resuming


def test_an_oversize_refusal_leaves_nothing_for_the_honest_fetch(world):
    """The bug: the hostile server's partial file stayed, and the next fetch from an
    honest server resumed it and failed with hash-mismatch."""
    with serving(Hostile(world["reg"], "oversize")) as url, pytest.raises(BundleError) as e:
        _fetch(world, url)
    assert e.value.reason == "oversize"
    assert _downloads(world) == []
    assert DeviceStore(world["device"]).state().version is None
    with update_server(world["reg"]) as url:
        assert _fetch(world, url).version == 1
    want = (world["reg"] / "v0001" / "full.payload").read_bytes()
    assert DeviceStore(world["device"]).current_bytes() == want


def test_a_refused_connection_is_one_line(world):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FedAdaptError) as e:
        _fetch(world, f"http://127.0.0.1:{port}")
    assert str(e.value).startswith(f"cannot fetch http://127.0.0.1:{port}/timestamp.json: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1/reg", "expected http(s)://HOST[:PORT][/PATH]"),
        ("registry/", "expected http(s)://HOST[:PORT][/PATH]"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://", "expected http(s)://HOST[:PORT][/PATH]"),
        ("http://a..b/reg", "label empty or too long"),
        ("http://\u00e9t\u00e9.example", "'ascii' codec can't encode"),
    ],
)
def test_a_bad_url_is_one_line(world, url, why):
    with pytest.raises(FedAdaptError) as e:
        _fetch(world, url)
    assert str(e.value).startswith(f"bad registry URL {url!r}")
    assert why in str(e.value)
    assert not world["device"].exists()  # nothing written


def test_a_non_positive_timeout_is_refused(world):
    with pytest.raises(FedAdaptError, match="timeout must be positive, got 0"):
        _fetch(world, "http://127.0.0.1:1", timeout=0)
