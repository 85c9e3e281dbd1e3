"""`serve-updates` under hostile clients, on a real server and raw sockets: the cap counts
connections (not requests) and says so with a 503, idle connections are closed after the
timeout, and the server refuses to start on a bad registry, cap or port with one line."""

from __future__ import annotations

import socket
import time

import pytest

from fedadapt.cli.app import main
from fedadapt.errors import FedAdaptError
from fedadapt.server.updates.publish import publish
from fedadapt.server.updates.service import UpdateServer
from tests.registry_helpers import make_keys, serving, tiny_adapter

IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    publish(tiny_adapter(tmp / "a1", 1), tmp / "reg", make_keys(tmp / "keys").key)
    return tmp / "reg"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _get(s: socket.socket, path: str = "/index.json") -> tuple[str, dict[str, str], bytes]:
    """One keep-alive GET on `s`: status line, headers and the whole body."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    f = s.makefile("rb")
    status = f.readline().decode().strip()
    headers = {}
    while (line := f.readline().decode().strip()) != "":
        k, v = line.split(":", 1)
        headers[k.lower()] = v.strip()
    body = f.read(int(headers.get("content-length", 0)))
    return status, headers, body


def test_connection_past_the_cap_gets_an_explicit_503(registry):
    """N idle connections (no request sent) hold all N slots: connection N+1 is told 503
    with Retry-After, not left hanging and not served."""
    n = 3
    with serving(UpdateServer(registry, max_connections=n, timeout=10)) as url:
        idle = [_connect(url) for _ in range(n)]
        try:
            extra = _connect(url)
            status, headers, body = _get(extra)
            assert status == "HTTP/1.1 503 Service Unavailable"
            assert headers["retry-after"] == "1"
            assert body == b"503 Service Unavailable\n"
            assert extra.recv(1) == b""  # and it is closed
            extra.close()
        finally:
            for s in idle:
                s.close()


def test_the_cap_counts_connections_not_requests(registry):
    """A keep-alive connection that finished its request still holds its slot."""
    server = UpdateServer(registry, max_connections=1, timeout=10)
    with serving(server) as url, _connect(url) as first:
        assert _get(first)[0] == "HTTP/1.1 200 OK"
        with _connect(url) as second:
            assert _get(second)[0] == "HTTP/1.1 503 Service Unavailable"
        assert _get(first)[0] == "HTTP/1.1 200 OK"  # the same connection goes on


def test_an_idle_connection_is_closed_after_the_timeout_and_frees_its_slot(registry):
    with serving(UpdateServer(registry, max_connections=1, timeout=IDLE_TIMEOUT_S)) as url:
        idle = _connect(url)
        t = time.monotonic()
        assert idle.recv(1) == b""  # the server closed it (the client's own timeout is 5 s)
        waited = time.monotonic() - t
        idle.close()
        assert IDLE_TIMEOUT_S * 0.8 < waited < IDLE_TIMEOUT_S + 2.0
        time.sleep(0.1)  # the handler thread releases the slot as it ends
        with _connect(url) as s:
            assert _get(s)[0] == "HTTP/1.1 200 OK"


def test_a_request_head_trickled_a_byte_at_a_time_is_cut_at_the_timeout(registry):
    """Slowloris: each byte arrives well within the per-read timeout, so only a deadline
    on the whole head closes the connection and frees its slot."""
    head = b"GET /index.json HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 20 + b"\r\n"
    with serving(UpdateServer(registry, max_connections=1, timeout=IDLE_TIMEOUT_S)) as url:
        s = _connect(url)
        t = time.monotonic()
        try:
            for i in range(len(head)):
                s.sendall(head[i : i + 1])
                time.sleep(IDLE_TIMEOUT_S / 4)
        except OSError:  # reset: the server closed it while we still sent
            pass
        closed_after = time.monotonic() - t
        s.close()
        assert closed_after < IDLE_TIMEOUT_S + 2.0  # the head alone would take 20 s
        time.sleep(0.1)
        with _connect(url) as fresh:  # its slot is free again
            assert _get(fresh)[0] == "HTTP/1.1 200 OK"


def test_it_refuses_a_folder_that_is_not_a_registry(tmp_path):
    with pytest.raises(FedAdaptError, match=r"is not a registry \(no index\.json\)"):
        UpdateServer(tmp_path / "missing")
    with pytest.raises(FedAdaptError, match=r"is not a registry"):
        UpdateServer(tmp_path)  # exists, but serving it would expose whatever is in it


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_connections": 0}, "max_connections must be at least 1, got 0"),
        ({"port": 99999}, "port must be 0..65535, got 99999"),
        ({"timeout": 0}, "the connection timeout must be positive, got 0"),
    ],
)
def test_it_refuses_bad_settings(registry, kw, message):
    with pytest.raises(FedAdaptError, match=message):
        UpdateServer(registry, **kw)


def test_a_port_in_use_is_one_line_from_the_command_line(registry, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(FedAdaptError, match=f"cannot listen on 127.0.0.1:{port}: "):
            UpdateServer(registry, port=port)
        assert main(["serve-updates", "--registry", str(registry), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "Address already in use" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
