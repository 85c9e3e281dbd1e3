"""`serve-updates` under hostile clients, on a real server and raw sockets: the cap counts
connections (not requests) and says so with a 503, idle connections are closed after the
timeout, and the server refuses to start on a bad registry, cap or port with one line."""

from __future__ import annotations

import logging
import socket
import threading
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


def test_an_idle_keep_alive_connection_gives_its_slot_to_a_new_one(registry):
    """Issue 23: the cap counted connections, so a keep-alive connection that finished its
    request held its slot and a new client got 503. Now the idle one is closed for it."""
    server = UpdateServer(registry, max_connections=1, timeout=10)
    with serving(server) as url, _connect(url) as first:
        assert _get(first)[0] == "HTTP/1.1 200 OK"
        time.sleep(0.1)  # its handler goes back to waiting (idle) just after the answer
        with _connect(url) as second:
            assert _get(second)[0] == "HTTP/1.1 200 OK"
        assert first.recv(1) == b""  # the idle one was closed to make room


def test_two_keep_alive_clients_cannot_starve_an_honest_get(registry):
    """Issue 23: two clients sending a keep-alive HEAD every 2 s held both slots at
    max_connections=2, and honest GETs got 503 for as long as they did. Here they send one
    every 0.5 s (and reconnect when closed): every honest GET is served."""
    stop = threading.Event()
    with serving(UpdateServer(registry, max_connections=2, timeout=10)) as url:

        def hog() -> None:
            s = None
            while not stop.is_set():
                try:
                    s = s or _connect(url)
                    s.sendall(b"HEAD /index.json HTTP/1.1\r\nHost: x\r\n\r\n")
                    if not s.recv(4096):
                        raise ConnectionResetError
                except OSError:  # closed for a newcomer: reconnect and send at once
                    if s is not None:
                        s.close()
                    s = None
                    continue
                stop.wait(0.5)
            if s is not None:
                s.close()

        hogs = [threading.Thread(target=hog) for _ in range(2)]
        for t in hogs:
            t.start()
        try:
            time.sleep(0.3)  # both hold their slot
            statuses = []
            for _ in range(6):
                with _connect(url) as s:
                    statuses.append(_get(s)[0])
                time.sleep(0.25)
        finally:
            stop.set()
            for t in hogs:
                t.join(5)
    assert statuses == ["HTTP/1.1 200 OK"] * 6


def _from(url: str, source: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))


def test_one_client_address_holds_at_most_its_share(registry):
    """Connections that never sent a request are not up for grabs (they end at the head
    timeout); one address may hold `max_per_client` of them, others are still served."""
    server = UpdateServer(registry, max_connections=4, max_per_client=2, timeout=10)
    with serving(server) as url:
        held = [_from(url, "127.0.0.2") for _ in range(2)]
        try:
            time.sleep(0.1)
            with _from(url, "127.0.0.2") as third:
                assert _get(third)[0] == "HTTP/1.1 503 Service Unavailable"
            with _from(url, "127.0.0.3") as other:
                assert _get(other)[0] == "HTTP/1.1 200 OK"
        finally:
            for s in held:
                s.close()


def test_a_connection_that_sends_nothing_gives_its_slot_up_after_the_idle_timeout(registry):
    """Connecting and sending nothing holds a slot against newcomers only for the idle
    timeout (the head timeout still closes it later); before that, a newcomer gets 503."""
    server = UpdateServer(registry, max_connections=1, timeout=10, idle_timeout=IDLE_TIMEOUT_S)
    with serving(server) as url, _connect(url) as silent:
        with _connect(url) as early:
            assert _get(early)[0] == "HTTP/1.1 503 Service Unavailable"
        time.sleep(IDLE_TIMEOUT_S + 0.2)
        with _connect(url) as late:
            assert _get(late)[0] == "HTTP/1.1 200 OK"
        assert silent.recv(1) == b""


def test_a_connection_serves_at_most_max_requests_then_closes(registry):
    with serving(UpdateServer(registry, max_requests=3, timeout=10)) as url, _connect(url) as s:
        answers = [_get(s) for _ in range(3)]
        assert [a[0] for a in answers] == ["HTTP/1.1 200 OK"] * 3
        assert [a[1].get("connection") for a in answers] == [None, None, "close"]
        assert s.recv(1) == b""


def test_a_keep_alive_connection_idle_past_the_idle_timeout_is_closed(registry):
    """The first request may take `timeout`; the wait for each later one only `idle_timeout`."""
    server = UpdateServer(registry, timeout=10, idle_timeout=IDLE_TIMEOUT_S / 2)
    with serving(server) as url, _connect(url) as s:
        time.sleep(IDLE_TIMEOUT_S)  # longer than the idle timeout, before the first request
        assert _get(s)[0] == "HTTP/1.1 200 OK"
        t = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - t < IDLE_TIMEOUT_S / 2 + 1.0


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


def _raw(url: str, request: bytes) -> tuple[str, bytes]:
    """Send `request` as it is; the status line and whatever followed, until closed."""
    with _connect(url) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status, _, rest = data.partition(b"\r\n")
    return status.decode("latin-1"), rest


def _report_server(registry, tmp_path) -> UpdateServer:
    from fedadapt.server.updates.reports import ReportSink
    from fedadapt.server.updates.rollout import Rollouts

    sink = ReportSink(Rollouts(registry, tmp_path / "state"), {}, None)
    return UpdateServer(registry, timeout=2, reports=sink)


CLOSE = b"Connection: close\r\n"
MALFORMED = {
    # issue 23: these two ended the handler with no answer, logged at DEBUG only
    "NUL in the path": (b"GET /%00 HTTP/1.1\r\n" + CLOSE + b"\r\n", 400),
    "Content-Length isdigit but not int": (
        "POST /rollout/main/report HTTP/1.1\r\nContent-Length: ²\r\n\r\n".encode(),
        400,
    ),
    "not UTF-8 in the path": (b"GET /%ff%fe HTTP/1.1\r\n" + CLOSE + b"\r\n", 400),
    "absolute-form target": (b"GET http://[x/ HTTP/1.1\r\n" + CLOSE + b"\r\n", 400),
    "control character": (b"GET /index.json%0d%0aX: y HTTP/1.1\r\n\r\n", 400),
    "a Range of 5000 digits": (
        b"GET /index.json HTTP/1.1\r\nRange: bytes=" + b"9" * 5000 + b"-\r\n\r\n",
        416,
    ),
    "two ranges": (b"GET /index.json HTTP/1.1\r\nRange: bytes=0-1,3-4\r\n\r\n", 416),
    "a GET with a body": (b"GET /index.json HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400),
    "chunked GET": (
        b"GET /index.json HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two Content-Lengths": (
        b"POST /rollout/main/report HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
    ),
    "Content-Length 1_0": (
        b"POST /rollout/main/report HTTP/1.1\r\nContent-Length: 1_0\r\n\r\n",
        400,
    ),
    "no Content-Length": (b"POST /rollout/main/report HTTP/1.1\r\n" + CLOSE + b"\r\n", 411),
    "body shorter than said": (
        b"POST /rollout/main/report HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}",
        None,  # the body never completes: the timeout closes it, logged, nothing answered
    ),
    "report not JSON": (
        b"POST /rollout/main/report HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe",
        400,
    ),
    "the registry's lock": (b"GET /.lock HTTP/1.1\r\n" + CLOSE + b"\r\n", 404),
    "out of the root": (b"GET /v0001/../../x HTTP/1.1\r\n" + CLOSE + b"\r\n", 404),
    "bad version": (b"GET /index.json HTTP/9\r\n\r\n", 400),
    "header line too long": (b"GET /index.json HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_request_gets_a_4xx_and_one_warning_line(registry, tmp_path, caplog, case):
    """Issue 23: every part of a request is checked before use; a malformed one is answered
    with a 4xx (never a dropped handler) and logged in one WARNING line, and the service
    goes on serving."""
    request, want = MALFORMED[case]
    caplog.set_level(logging.WARNING, "fedadapt.updates")
    with serving(_report_server(registry, tmp_path)) as url:
        status, body = _raw(url, request)
        if want is None:
            assert status == ""
        elif case == "bad version":  # http.server answers it the HTTP/0.9 way: no status line
            assert "Error code: 400" in status + body.decode("latin-1")
        else:
            assert status.split(" ")[1] == str(want), status
        time.sleep(0.05)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
        with _connect(url) as s:
            assert _get(s)[0] == "HTTP/1.1 200 OK"
