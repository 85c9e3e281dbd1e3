"""`fedadapt serve-updates`: an HTTP server for a registry of signed update bundles.

The registry is plain static files, so this only has to serve files well: exact
`Content-Length`, single `Range` requests (for resumed downloads), a cap on concurrent
connections, and never a byte from outside the registry. Python's `http.server` does the
HTTP; a heavier framework would add nothing a CDN in front would not.
"""

from __future__ import annotations

import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger("fedadapt.updates")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


class RegistryHandler(BaseHTTPRequestHandler):
    server: UpdateServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # route to logging, not stderr
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
        if not self.server.slots.acquire(blocking=False):
            self._send_error(HTTPStatus.SERVICE_UNAVAILABLE, {"Retry-After": "1"})
            return
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
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to clean up
        finally:
            self.server.slots.release()

    do_GET = do_HEAD = _serve


class UpdateServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 0, max_connections: int = 64
    ) -> None:
        self.root = Path(root).resolve()
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), RegistryHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"
