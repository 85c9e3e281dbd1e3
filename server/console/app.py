"""`fedadapt console`: the HTTP server of the operator's page.

Python's `http.server`, as the update service uses: the page is three static files and
one JSON document (`/api/state`) that the page polls every two seconds, so a round that
lands in a run's files shows up with no reload, and a framework would add nothing. Every
asset is served from here, the chart library from its own PyPI wheel (plotly), so the
console works on a machine with no network.

Whatever a file holds, `/api/state` answers 200 with a one-line notice in place of what
could not be read; a request that fails in some other way is logged and answered in one
line, and the server goes on serving.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedadapt.errors import FedAdaptError
from fedadapt.server.console import access
from fedadapt.server.console.fleet import QUIET_AFTER_S, Fleet
from fedadapt.server.console.readers import FileCache
from fedadapt.server.console.runs import find_runs, read_run, run_file
from fedadapt.server.serving import InterruptibleServer

log = logging.getLogger("fedadapt.console")
STATIC = Path(__file__).parent / "static"
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
}
_ACTION = re.compile(r"^/api/rollouts/([a-z0-9][a-z0-9_-]{0,31})/(promote|halt)$")
_SECURITY = {
    # plotly sets inline styles on the elements it draws; no script but our own runs
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MAX_ACTION_BYTES = 4096


def plotly_js() -> Path:
    """plotly.js as its PyPI wheel ships it (`plotly/package_data/plotly.min.js`), found
    without importing the Python package, which the console never uses."""
    spec = importlib.util.find_spec("plotly")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    raise FedAdaptError("the console's charts need plotly.js: `pip install plotly`")


class ConsoleServer(InterruptibleServer):
    """The console's server: the runs folder, an optional registry, and who may do what.

    Parameters
    ----------
    runs : Path
        A run folder, or a folder of them (`fedadapt simulate --out` writes one).
    registry : Path or None (default: None)
        The update registry whose devices and rollouts the page shows.
    state : Path or None (default: None)
        The rollout state folder (default: REGISTRY.rollout).
    host, port : str, int (default: "127.0.0.1", 0)
        Where to listen; 0 picks a free port (read it back from `url`).
    token : str or None (default: None)
        The operator token; required beyond loopback, checked on every request when set.
    rollout_key : Ed25519PrivateKey or None (default: None)
        With it, the page offers promote and halt, and signs them; without it, read-only.
    quiet_after : float (default: 900)
        Seconds without a report before a device is flagged as gone quiet.
    """

    daemon_threads = True

    def __init__(
        self,
        runs: Path,
        registry: Path | None = None,
        state: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        rollout_key: Ed25519PrivateKey | None = None,
        quiet_after: float = QUIET_AFTER_S,
    ) -> None:
        access.check_binding(host, token)
        self.runs_root = Path(runs)
        if not self.runs_root.is_dir():
            raise FedAdaptError(f"the runs folder {runs} is not a folder")
        if registry is not None and not Path(registry).is_dir():
            raise FedAdaptError(f"the registry {registry} is not a folder")
        if rollout_key is not None and registry is None:
            raise FedAdaptError("rollout actions need the registry they act on (--registry)")
        self.fleet = Fleet(Path(registry), state, quiet_after) if registry else None
        self.token, self.rollout_key = token, rollout_key
        self.cache = FileCache()
        self.plotly = plotly_js()
        try:
            super().__init__((host, port), ConsoleHandler)
        except OSError as e:
            raise FedAdaptError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e

    @property
    def url(self) -> str:
        """The page's address: the bound host and port (a port 0 resolved)."""
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def state(self) -> dict[str, Any]:
        """Everything the page shows, as one JSON document; each view that fails for a reason
        no reader foresaw becomes a notice of its own, and the others still show."""
        now = time.time()
        out: dict[str, Any] = {
            "generated_at": now,
            "actions": self.rollout_key is not None,
            "registry": self.fleet is not None,
            "notices": [],
        }
        runs: list[dict] = []
        try:
            found = find_runs(self.runs_root)
            runs = [read_run(rid, folder, self.cache, now) for rid, folder in found.items()]
        except Exception as e:  # the page must still load: one line, the traceback in the log
            log.warning("the runs view failed", exc_info=True)
            out["notices"].append(f"the runs view failed: {type(e).__name__}")
        out["runs"] = runs
        for view, build in (("devices", "device_view"), ("rollouts", "rollout_view")):
            if self.fleet is None:
                out[view] = None
                continue
            try:
                out[view] = getattr(self.fleet, build)(now)
            except Exception as e:
                log.warning("the %s view failed", view, exc_info=True)
                out[view] = None
                out["notices"].append(f"the {view} view failed: {type(e).__name__}")
        return out

    def act(self, channel: str, action: str, body: dict[str, Any]) -> str:
        """Promote or halt `channel`, signed with the rollout key; a refusal raises
        `FedAdaptError` with the reason the operator sees."""
        if self.rollout_key is None or self.fleet is None:
            raise FedAdaptError("this console is read-only (start it with --allow-actions)")
        rollouts = self.fleet.rollouts
        if action == "halt":
            ch = rollouts.halt(channel, self.rollout_key, "halted by operator (console)")
            return f"channel {channel}: halted, back to stable v{ch.stable}"
        fraction = body.get("fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise FedAdaptError("promote needs a fraction in (0, 1]")
        ch = rollouts.promote(channel, float(fraction), self.rollout_key)
        return f"channel {channel}: v{ch.candidate} to {ch.fraction:.0%}"

    def handle_error(self, request, client_address) -> None:
        """A failed connection goes to the log at debug, not to stderr as a traceback."""
        log.debug("connection from %s failed", client_address, exc_info=True)


class ConsoleHandler(BaseHTTPRequestHandler):
    """One request: the page and its assets, `/api/state`, a run's file, or an action."""

    server: ConsoleServer
    timeout = 30  # a stalled client loses its own connection, never a serving thread for long

    def log_message(self, fmt: str, *args) -> None:
        """Per-request lines go to the `fedadapt.console` logger at debug, not to stderr."""
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None):
        self.send_response(status)
        for k, v in {**_SECURITY, **(extra or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _line(self, status: HTTPStatus, text: str) -> None:
        self._send(status, f"{status.value} {text}\n".encode(), "text/plain; charset=utf-8")

    def _json(self, status: int, value: Any) -> None:
        body = json.dumps(value, allow_nan=False, default=str).encode()
        self._send(status, body, "application/json", {"Cache-Control": "no-store"})

    def _allowed(self) -> bool:
        ok, via_query = access.presented(self.headers, self.path, self.server.token)
        if not ok and self.server.token is None:  # loopback, reached by another host name
            self._line(HTTPStatus.FORBIDDEN, "this console answers to a loopback host name only")
            return False
        if not ok:
            self._line(HTTPStatus.UNAUTHORIZED, "this console needs its operator token")
            return False
        if via_query and self.command == "GET":  # trade the query for a cookie, then reload
            self._send(
                HTTPStatus.SEE_OTHER,
                b"",
                "text/plain",
                {
                    "Location": urlsplit(self.path).path or "/",
                    "Set-Cookie": access.cookie_header(self.server.token or ""),
                },
            )
            return False
        return True

    def do_GET(self) -> None:
        """The page, its assets, the state document, or one of a run's files."""
        try:
            if not self._allowed():
                return
            path = urlsplit(self.path).path
            if path in _ASSETS:
                name, ctype = _ASSETS[path]
                self._send(200, (STATIC / name).read_bytes(), ctype, {"Cache-Control": "no-cache"})
            elif path == "/static/plotly.min.js":
                body = self.server.plotly.read_bytes()
                cache = {"Cache-Control": "max-age=86400"}
                self._send(200, body, "text/javascript; charset=utf-8", cache)
            elif path == "/api/state":
                state = self.server.state()
                self._json(200, _finite(state))
            elif path == "/files":
                self._file()
            else:
                self._line(HTTPStatus.NOT_FOUND, "not found")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:  # one line to the client, the traceback to the log, keep serving
            log.warning("GET %s failed", self.path, exc_info=True)
            self._line(HTTPStatus.INTERNAL_SERVER_ERROR, "the console could not answer this")

    def _file(self) -> None:
        q = parse_qs(urlsplit(self.path).query)
        run_id, name = q.get("run", [""])[0], q.get("name", [""])[0]
        path = run_file(find_runs(self.server.runs_root), run_id, name)
        if path is None:
            self._line(HTTPStatus.NOT_FOUND, "no such file of a run")
            return
        types = {".json": "application/json", ".csv": "text/csv", ".png": "image/png"}
        ctype = types.get(path.suffix, "application/octet-stream")
        size = path.stat().st_size
        self.send_response(200)
        for k, v in _SECURITY.items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as f:
            left = size
            while left > 0 and (chunk := f.read(min(65536, left))):
                self.wfile.write(chunk)
                left -= len(chunk)

    def do_POST(self) -> None:
        """Promote or halt a channel: with actions on, the token (if any), and a same-origin
        request only; answered in JSON."""
        try:
            if not self._allowed():
                return
            m = _ACTION.match(urlsplit(self.path).path)
            if m is None:
                self._json(404, {"error": "no such action"})
                return
            if not access.same_origin(self.headers):
                self._json(403, {"error": "an action must come from the console's own page"})
                return
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit() or int(length) > MAX_ACTION_BYTES:
                self._json(413, {"error": f"an action's body is at most {MAX_ACTION_BYTES} B"})
                return
            raw = self.rfile.read(int(length)) if int(length) else b"{}"
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._json(400, {"error": "an action's body is a JSON object"})
                return
            try:
                message = self.server.act(m.group(1), m.group(2), body)
            except FedAdaptError as e:
                status = 403 if self.server.rollout_key is None else 400
                self._json(status, {"error": " ".join(str(e).split())})
                return
            self._json(200, {"message": message})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.warning("POST %s failed", self.path, exc_info=True)
            self._json(500, {"error": "the action failed; see the console's log"})


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a figure that is one (a torn or odd file) becomes null."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
