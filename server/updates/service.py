"""`fedadapt serve-updates`: an HTTP server for a registry of signed update bundles.

The registry is plain static files, so this only has to serve files well: exact
`Content-Length`, single `Range` requests (for resumed downloads), and never a byte from
outside the registry. Python's `http.server` does the HTTP; a heavier framework would add
nothing a CDN in front would not.

Under hostile clients: the cap counts connections, not requests (an idle keep-alive
connection holds its slot; connection N+1 gets an explicit 503 and is closed), and every
socket operation has a timeout, so an idle or stalled connection is closed and frees its
slot. The timeout also bounds the wait for a whole request head, not each read of it, so a
client trickling a header byte at a time (slowloris) cannot hold a slot either. It
refuses to start on a folder that is not a registry, a cap below 1, or a port it cannot
bind, with one line saying which.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from fedadapt.errors import FedAdaptError
from fedadapt.updates.index import INDEX_FILE

if TYPE_CHECKING:
    from fedadapt.server.updates.reports import ReportSink

log = logging.getLogger("fedadapt.updates")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


class RegistryHandler(BaseHTTPRequestHandler):
    """Serves one connection: GET/HEAD of registry files (with single ranges), POST of reports.

    Paths resolve inside the server's root or get a 404; a client that goes away or stalls
    only loses its own connection.
    """

    server: UpdateServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        """Apply the server's timeout and swap in a reader bounded by the request-head deadline."""
        self.timeout = self.server.timeout_s  # StreamRequestHandler sets it on the socket
        self.head_deadline: float | None = None
        super().setup()
        self.rfile.close()  # the socket's own reader; an open one would keep the fd alive
        self.rfile = io.BufferedReader(_HeadDeadlineReader(self))

    def handle_one_request(self) -> None:
        """The wait for a request and its whole head share one deadline."""
        self.head_deadline = time.monotonic() + self.timeout
        super().handle_one_request()

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

    def _resolve(self) -> Path | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        root = self.server.root
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
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

    def _serve(self) -> None:
        try:
            path = self._resolve()
            if path is None:
                self._send_error(HTTPStatus.NOT_FOUND)
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            status = HTTPStatus.OK
            header = self.headers.get("Range")
            if header:
                m = _RANGE.match(header.strip())
                if not m or (not m.group(1) and not m.group(2)):
                    self._send_error(
                        HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                        {"Content-Range": f"bytes */{size}"},
                    )
                    return
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(0, size - int(m.group(2)))
                if start >= size or start > end:
                    self._send_error(
                        HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                        {"Content-Range": f"bytes */{size}"},
                    )
                    return
                status = HTTPStatus.PARTIAL_CONTENT
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
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # gone or stalled: drop it, free its slot

    do_GET = do_HEAD = _serve

    def do_POST(self) -> None:
        """A device's rollout report (`fedadapt.server.updates.reports`); 404 without a sink."""
        from fedadapt.server.updates.reports import handle_post

        handle_post(self, self.server.reports)


class _HeadDeadlineReader(io.RawIOBase):
    """The connection's reads, each given only the time left for the request head."""

    def __init__(self, handler: RegistryHandler) -> None:
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        self.handler.connection.settimeout(self.handler.read_timeout())
        return self.handler.connection.recv_into(buffer)


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 24\r\n\r\n503 Service Unavailable\n"
)


class UpdateServer(ThreadingHTTPServer):
    """The HTTP server for a registry folder, with a cap on open connections.

    Every check (registry folder, cap, timeout, port, bind) runs here, so a bad setting fails
    before anything is served, with one `FedAdaptError` line.

    Parameters
    ----------
    root : Path
        The registry folder; must hold the index that `fedadapt publish` writes.
    host : str (default: "127.0.0.1")
        The address to bind.
    port : int (default: 0)
        The port to bind; 0 picks a free one (read it back from `url`).
    max_connections : int (default: 64)
        Connections served at once. Up to as many more at a time get an explicit 503; past
        that they are closed without a reply.
    timeout : float (default: 30.0)
        Seconds allowed for each socket operation, and for a whole request head.
    reports : ReportSink or None (default: None)
        Where POSTed rollout reports go; without one a POST gets a 404.
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
    ) -> None:
        self.root = Path(root).resolve()
        self.reports = reports  # takes rollout reports by POST when set
        if not (self.root / INDEX_FILE).is_file():
            raise FedAdaptError(
                f"{root} is not a registry (no {INDEX_FILE}); `fedadapt publish` creates one"
            )
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise FedAdaptError(f"max_connections must be at least 1, got {max_connections!r}")
        if not timeout > 0:
            raise FedAdaptError(f"the connection timeout must be positive, got {timeout!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise FedAdaptError(f"port must be 0..65535, got {port!r}")
        self.timeout_s = timeout
        self.slots = threading.BoundedSemaphore(max_connections)
        self.refusals = threading.BoundedSemaphore(max_connections)
        try:
            super().__init__((host, port), RegistryHandler)
        except OSError as e:  # in use, no such address, not permitted
            raise FedAdaptError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """A slot per connection, held until it closes; past the cap, an explicit 503."""
        if self.slots.acquire(blocking=False):
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
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
            self.slots.release()

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
        """A failed connection is logged at debug, not printed as a traceback to stderr."""
        log.debug("connection from %s failed", client_address, exc_info=True)

    @property
    def url(self) -> str:
        """The base URL clients fetch from: the bound address, with a port 0 resolved."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_until_interrupted(self) -> None:
        """Serve until Ctrl-C or SIGTERM (the CLI turns both into KeyboardInterrupt), then
        close the listening socket, so a restart can bind the port at once."""
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.server_close()
