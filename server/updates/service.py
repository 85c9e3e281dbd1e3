"""`fedadapt serve-updates`: an HTTP server for a registry of signed update bundles.

The registry is plain static files, so this only has to serve files well: exact
`Content-Length`, single `Range` requests (for resumed downloads), and never a byte from
outside the registry (nor a dot file: the registry's lock is one). Python's `http.server`
does the HTTP; a heavier framework would add nothing a CDN in front would not.

Under hostile clients:
- Every part of a request it reads (the request line and path, the headers, `Range`,
  `Content-Length`, a report's body) is checked before use: a malformed request gets a 4xx
  and one WARNING line in the log, and the connection is closed; nothing a client sends
  ends the handler without an answer (an unexpected failure is a 500, logged the same way).
- `max_connections` bounds the connections open at once; a connection that finished a
  request and waits idle for the next one (keep-alive) is the first to give its slot up to
  a new connection when all are taken, so clients that keep connections open with a request
  now and then cannot starve the others. Each connection serves at most `max_requests`
  requests, waits at most `idle_timeout` for the next one, and one client address holds at
  most `max_per_client` connections. Past all that, a new connection gets an explicit 503.
- Every socket operation has a timeout, which also bounds the wait for a whole request
  head, not each read of it, so a client trickling a header byte at a time (slowloris)
  cannot hold a slot either.

It refuses to start on a folder that is not a registry, a cap below 1, or a port it cannot
bind, with one line saying which.
"""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from fedadapt.errors import FedAdaptError
from fedadapt.server.serving import InterruptibleServer
from fedadapt.server.updates.refusals import Refused, content_length, log
from fedadapt.server.updates.slots import Slots
from fedadapt.updates.index import INDEX_FILE

if TYPE_CHECKING:
    from fedadapt.server.updates.reports import ReportSink

_RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")
MAX_PATH = 1024
CHUNK = 64 * 1024


class RegistryHandler(BaseHTTPRequestHandler):
    """Serves one connection: GET/HEAD of registry files (with single ranges), POST of reports.

    Paths resolve inside the server's root or get a 404; a client that goes away or stalls
    only loses its own connection; a malformed request gets a 4xx (see the module).
    """

    server: UpdateServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        """Apply the server's timeout and swap in a reader bounded by the request-head deadline."""
        self.timeout = self.server.timeout_s  # StreamRequestHandler sets it on the socket
        self.head_deadline: float | None = None
        self.served = 0  # requests answered on this connection
        self.answered = False  # a status line went out for the current request
        self.started = False
        super().setup()
        self.rfile.close()  # the socket's own reader; an open one would keep the fd alive
        self.rfile = io.BufferedReader(_HeadDeadlineReader(self))

    def handle_one_request(self) -> None:
        """The wait for a request and its whole head share one deadline: the timeout for the
        first request, the idle timeout for each later one (a keep-alive connection waiting
        for it is idle, and gives its slot up first when the service is full)."""
        wait = self.timeout if self.served == 0 else self.server.idle_timeout
        self.head_deadline = time.monotonic() + wait
        self.answered = False
        self.started = False  # a byte of this request arrived
        if self.served:
            self.server.mark_idle(self.connection)
        super().handle_one_request()
        self.served += 1

    def parse_request(self) -> bool:
        """The head is in: drop its deadline, so the body and the reply get the plain timeout."""
        self.head_deadline = None  # the head is in; reads and writes get the plain timeout
        self.connection.settimeout(self.timeout)
        return super().parse_request()

    def read_timeout(self) -> float:
        """The timeout for the next socket read.

        While a request head is arriving this is the time left until its deadline, so a slowloris
        client cannot stretch the wait read by read; otherwise the plain per-operation timeout.

        Returns
        -------
        float
            Seconds, positive.

        Raises
        ------
        TimeoutError
            The head deadline has passed; the connection is dropped.
        """
        if self.head_deadline is None:
            return self.timeout
        left = self.head_deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request head took longer than the timeout")
        return min(left, self.timeout)

    def log_message(self, fmt: str, *args) -> None:  # route to logging, not stderr
        """Per-request lines go to the `fedadapt.updates` logger at debug, not to stderr."""
        log.debug("%s " + fmt, self.address_string(), *args)

    def log_error(self, fmt: str, *args) -> None:
        """What `http.server` itself refuses (a bad request line or header, an unknown
        method) is a WARNING, in one line, like every refusal of this service; a connection
        that sent nothing and timed out only idled (debug)."""
        idle = not self.started and fmt.startswith("Request timed out")
        (log.debug if idle else log.warning)(
            "%s %s", self.address_string(), (fmt % args).replace("\n", " ")
        )

    def send_response(self, code: int, message: str | None = None) -> None:
        """The status line; the last request a connection may make says `Connection: close`."""
        self.answered = True
        super().send_response(code, message)
        if self.served + 1 >= self.server.max_requests:
            self.send_header("Connection", "close")  # also sets close_connection

    def _resolve(self) -> Path:
        if not self.path.startswith("/") or len(self.path) > MAX_PATH:
            raise Refused(HTTPStatus.BAD_REQUEST, f"bad request target {self.path[:80]!r}")
        try:
            rel = unquote(urlsplit(self.path).path, errors="strict").lstrip("/")
        except ValueError as e:  # UnicodeDecodeError included: %ff is no UTF-8
            raise Refused(HTTPStatus.BAD_REQUEST, f"bad path: {e}") from None
        if any(ord(c) < 32 or ord(c) == 127 for c in rel):
            raise Refused(HTTPStatus.BAD_REQUEST, f"control character in path {rel[:80]!r}")
        if any(part.startswith(".") for part in rel.split("/")):
            raise Refused(HTTPStatus.NOT_FOUND, f"no file {rel[:80]!r}")  # `..`, the lock
        root = self.server.root
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, f"no file {rel[:80]!r}")
        return target

    def _send_error(self, status: HTTPStatus, extra: dict[str, str] | None = None) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _range(self, size: int) -> tuple[int, int] | None:
        """The single byte range asked for, as (start, end) inclusive; None for the whole."""
        header = self.headers.get("Range")
        if header is None:
            return None
        unsatisfiable = {"Content-Range": f"bytes */{size}"}
        m = _RANGE.match(header.strip())
        if not m or (not m.group(1) and not m.group(2)):
            raise Refused(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "bad Range", unsatisfiable)
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or start > end:
            raise Refused(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range outside the file", unsatisfiable
            )
        return start, end

    def _serve(self) -> None:
        if content_length(self) not in (None, 0):
            raise Refused(HTTPStatus.BAD_REQUEST, f"a {self.command} with a body")
        path = self._resolve()
        size = path.stat().st_size
        wanted = self._range(size)
        start, end = wanted or (0, size - 1)
        status = HTTPStatus.OK if wanted is None else HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _post(self) -> None:
        from fedadapt.server.updates.reports import handle_post

        handle_post(self, self.server.reports)

    def _answer(self, method: Callable[[], None]) -> None:
        """Run `method`; a refusal is a 4xx, any other failure a 500, each one WARNING line;
        a client gone or stalled only loses its connection."""
        try:
            method()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # gone: drop it, free its slot
        except TimeoutError:
            self.close_connection = True  # stalled mid-request: drop it, free its slot
            self._warn("-", "stalled past the timeout")
        except Refused as e:
            self.close_connection = True  # an unread body must not be taken for a request
            self._warn(str(e.status.value), e.reason)
            if not self.answered:
                self._send_error(e.status, e.headers)
        except Exception as e:  # a bug must not end the connection without an answer
            self.close_connection = True
            self._warn("500", f"{type(e).__name__}: {e}")
            if not self.answered:
                self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR)

    def _warn(self, status: str, reason: str) -> None:
        """One WARNING line: client, status, request, reason (newlines flattened)."""
        log.warning(
            "%s %s %s %.80r: %s",
            self.address_string(), status, self.command, self.path, reason.replace("\n", " "),
        )  # fmt: skip

    def do_GET(self) -> None:
        """A registry file, or a single range of it."""
        self._answer(self._serve)

    def do_HEAD(self) -> None:
        """A registry file's headers."""
        self._answer(self._serve)

    def do_POST(self) -> None:
        """A device's rollout report (`fedadapt.server.updates.reports`); 404 without a sink."""
        self._answer(self._post)


class _HeadDeadlineReader(io.RawIOBase):
    """The connection's reads, each given only the time left for the request head."""

    def __init__(self, handler: RegistryHandler) -> None:
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        self.handler.connection.settimeout(self.handler.read_timeout())
        n = self.handler.connection.recv_into(buffer)
        if n and not self.handler.started:
            self.handler.started = True
            self.handler.server.mark_busy(self.handler.connection)
        return n


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 24\r\n\r\n503 Service Unavailable\n"
)


class UpdateServer(InterruptibleServer):
    """The HTTP server for a registry folder, with bounds on its connections (see the module).

    Every check (registry folder, caps, timeouts, port, bind) runs here, so a bad setting
    fails before anything is served, with one `FedAdaptError` line.

    Parameters
    ----------
    root : Path
        The registry folder; must hold the index that `fedadapt publish` writes.
    host : str (default: "127.0.0.1")
        The address to bind.
    port : int (default: 0)
        The port to bind; 0 picks a free one (read it back from `url`).
    max_connections : int (default: 64)
        Connections open at once. When all are taken, a new one takes the slot of the
        connection idle longest between two requests; with none idle, it gets an explicit
        503 (up to as many more at a time; past that they are closed without a reply).
    timeout : float (default: 30.0)
        Seconds allowed for each socket operation, and for a whole first request head.
    reports : ReportSink or None (default: None)
        Where POSTed rollout reports go; without one a POST gets a 404.
    max_per_client : int or None (default: None)
        Connections one client address may hold; None: `max_connections` (devices behind
        one NAT share an address, so the command line sets half the cap).
    max_requests : int (default: 100)
        Requests one connection may make; the last answer says `Connection: close`.
    idle_timeout : float or None (default: None)
        Seconds a keep-alive connection may wait for its next request and its head; None:
        the smaller of `timeout` and 5 s.
    """

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a fleet polling at once got resets at the default 5

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 64,
        timeout: float = 30.0,
        reports: ReportSink | None = None,
        max_per_client: int | None = None,
        max_requests: int = 100,
        idle_timeout: float | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.reports = reports  # takes rollout reports by POST when set
        if not (self.root / INDEX_FILE).is_file():
            raise FedAdaptError(
                f"{root} is not a registry (no {INDEX_FILE}); `fedadapt publish` creates one"
            )
        max_per_client = max_connections if max_per_client is None else max_per_client
        for what, n in (
            ("max_connections", max_connections),
            ("max_per_client", max_per_client),
            ("max_requests", max_requests),
        ):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise FedAdaptError(f"{what} must be at least 1, got {n!r}")
        if not timeout > 0:
            raise FedAdaptError(f"the connection timeout must be positive, got {timeout!r}")
        idle_timeout = min(timeout, 5.0) if idle_timeout is None else idle_timeout
        if not idle_timeout > 0:
            raise FedAdaptError(f"the idle timeout must be positive, got {idle_timeout!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise FedAdaptError(f"port must be 0..65535, got {port!r}")
        self.timeout_s, self.idle_timeout = timeout, idle_timeout
        self.max_requests = max_requests
        self.slots = Slots(max_connections, max_per_client, idle_timeout)
        self.refusals = threading.BoundedSemaphore(max_connections)
        try:
            super().__init__((host, port), RegistryHandler)
        except OSError as e:  # in use, no such address, not permitted
            raise FedAdaptError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e

    def mark_idle(self, request: socket.socket) -> None:
        """The connection waits for its next request: its slot may go to a new connection."""
        self.slots.mark(request, idle=True)

    def mark_busy(self, request: socket.socket) -> None:
        """A request is arriving on the connection: its slot is no longer up for grabs."""
        self.slots.mark(request, idle=False)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """A slot per connection, held until it closes or goes idle and is taken; past the
        caps, an explicit 503."""
        if self.slots.admit(request, str(client_address[0])):
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release(request)
                raise
        elif self.refusals.acquire(blocking=False):
            threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
        else:  # a flood: not even a 503 for it
            self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        """Handle the connection, then give back the slot `process_request` took for it."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release(request)

    def _refuse(self, request: socket.socket) -> None:
        """Read the request head (so closing does not reset the reply away), answer 503."""
        try:
            request.settimeout(min(self.timeout_s, 2.0))
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = request.recv(4096)
                if not chunk:
                    break
                head += chunk
            request.sendall(_BUSY)
        except OSError:
            pass  # the client went away or stalled; it gets nothing
        finally:
            self.shutdown_request(request)
            self.refusals.release()

    def handle_error(self, request: socket.socket, client_address: tuple) -> None:
        """A connection that failed outside a request's handling (the handler answers every
        request itself) is one WARNING line, not a traceback on stderr."""
        import sys

        e = sys.exc_info()[1]
        log.warning("%s connection failed: %s: %s", client_address[0], type(e).__name__, e)

    @property
    def url(self) -> str:
        """The base URL clients fetch from: the bound address, with a port 0 resolved."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"
