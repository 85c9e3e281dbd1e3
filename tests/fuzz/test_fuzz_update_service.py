"""Fuzzing the update service's request parsing on a real server and raw sockets (issue 23).

Each input is one request: a method, a request target (registry paths, percent escapes,
NUL and control characters, non-UTF-8, absolute forms, queries), a `Range` and a
`Content-Length` of any text, and a body. Whatever it is, the service answers it: a status
line (never a connection dropped without one), never a 5xx, and a 4xx only with one WARNING
line in the log; and it goes on serving the next client.
"""

from __future__ import annotations

import logging
import re
import socket

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedadapt.server.updates.publish import publish
from fedadapt.server.updates.reports import ReportSink
from fedadapt.server.updates.rollout import Rollouts
from fedadapt.server.updates.service import UpdateServer
from tests.fuzz.support import count, fuzz
from tests.registry_helpers import make_keys, serving, tiny_adapter


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-svc")
    publish(tiny_adapter(tmp / "a1", 1), tmp / "reg", make_keys(tmp / "keys").key)
    sink = ReportSink(Rollouts(tmp / "reg", tmp / "state"), {}, None)
    records = _Records()
    logger = logging.getLogger("fedadapt.updates")
    logger.addHandler(records)
    level, logger.level = logger.level, logging.DEBUG
    try:
        with serving(UpdateServer(tmp / "reg", timeout=1.0, reports=sink)) as url:
            host, port = url.removeprefix("http://").split(":")
            yield (host, int(port)), records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


def _no_newline(text: str) -> bool:
    return "\r" not in text and "\n" not in text


paths = st.one_of(
    st.sampled_from(
        ["/index.json", "/timestamp.json", "/v0001/full.payload", "/rollout/main/report"]
    ),
    st.sampled_from(["/%00", "/%ff%fe", "/.lock", "/../etc/passwd", "/v0001/%2e%2e/%2e%2e/x"]),
    st.sampled_from(["http://[x/", "*", "", "//index.json", "/index.json?x=%00&y"]),
    st.text(max_size=40).filter(lambda t: " " not in t and _no_newline(t)),
    st.builds(lambda a, b: "/" + a + "%" + b, st.text(max_size=8), st.text(max_size=3)).filter(
        lambda t: " " not in t and _no_newline(t)
    ),
)
header_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["²", "1_0", "-1", " 3", "0x10", "9" * 5000, "", "bytes=0-1,3-4"]),
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(-5, 10**30), st.integers(-5, 10**30)),
).filter(_no_newline)


@fuzz(0.5)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    path=paths,
    range_=st.none() | header_text,
    length=st.one_of(st.none(), st.just("exact"), header_text),
    body=st.binary(max_size=64),
)
@example(method="GET", path="/%00", range_=None, length=None, body=b"")
@example(method="POST", path="/rollout/main/report", range_=None, length="²", body=b"{}")
def test_every_request_is_answered_and_a_refusal_logged(
    service, method, path, range_, length, body
):
    count("update service requests")
    address, records = service
    del records.records[:]
    headers = [("Host", "x"), ("Connection", "close")]
    if range_ is not None:
        headers.append(("Range", range_))
    if length == "exact":
        length = str(len(body))
    elif (
        length is not None
        and re.fullmatch(r"[0-9]{1,6}", length.strip())
        and int(length) > len(body)
    ):
        length = None  # a body that never comes is a stall (the timeout's case), not a parse
    if length is not None:
        headers.append(("Content-Length", length))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(head.encode("utf-8", "surrogatepass") + b"\r\n" + body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:  # closed with part of our body unread: the answer came
            pass
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    if status_line.startswith("HTTP/1.1 "):
        code = int(status_line.split(" ")[1])
    else:  # a target with no version word is read as HTTP/0.9: the answer has no status line
        assert data.startswith(b"400 Bad Request") or b"Error code: 400" in data, data[:200]
        code = 400
    assert code < 500, status_line
    warnings = [r for r in records.records if r.levelno >= logging.WARNING]
    if code >= 400:
        assert len(warnings) >= 1, status_line
        assert all("\n" not in r.getMessage() for r in warnings)
    else:
        assert not warnings, [r.getMessage() for r in warnings]
