"""Who may read the console and who may act on a rollout.

The console shows the fleet's state and, with actions on, signs channel changes: on
loopback only this machine's users reach it, anywhere else it needs the operator token.
The token arrives as `Authorization: Bearer TOKEN`, or once as `?token=TOKEN`, which
trades it for an HttpOnly, SameSite=Strict cookie so it leaves the address bar. Every
comparison is constant-time (`hmac.compare_digest`).

A POST (promote, halt) must also carry the `X-Fedadapt-Console` header and, where the
browser sends one, an `Origin` of this very console: a page elsewhere cannot set a custom
header on a cross-site request without a CORS preflight, which this server never grants,
so it cannot make an operator's browser act (CSRF).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

from fedadapt.errors import FedAdaptError

COOKIE = "fedadapt_console"
ACTION_HEADER = "X-Fedadapt-Console"
MIN_TOKEN_CHARS = 16
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]+$")  # a header, a cookie and a query hold it as is


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the console on this machine."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse a bind beyond loopback without a token, and a token too short to guess-proof."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise FedAdaptError(f"the operator token must be at least {MIN_TOKEN_CHARS} characters")
    if token is not None and not _TOKEN_RE.match(token):
        raise FedAdaptError("the operator token may hold only letters, digits and ._~-")
    if token is None and not is_loopback(host):
        raise FedAdaptError(
            f"binding {host} (beyond loopback) needs an operator token: set one in an "
            "environment variable and name it with --token-env VAR"
        )


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def presented(headers, path: str, token: str | None) -> tuple[bool, bool]:
    """Whether a request may read, and whether it came with the token in its query (the
    server then sets the cookie and sends the browser on to the same page without it)."""
    if token is None:
        return loopback_host_header(headers), False
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer ") and _same(auth[7:].strip(), token):
        return True, False
    cookie = SimpleCookie()
    with contextlib.suppress(CookieError):
        cookie.load(headers.get("Cookie", ""))
    if COOKIE in cookie and _same(cookie[COOKIE].value, token):
        return True, False
    query = parse_qs(urlsplit(path).query).get("token", [])
    if query and _same(query[0], token):
        return True, True
    return False, False


def loopback_host_header(headers) -> bool:
    """Whether the request names a loopback host: without a token, a page elsewhere could
    otherwise point its own domain at 127.0.0.1 (DNS rebinding) and read the console."""
    try:
        name = urlsplit("//" + headers.get("Host", "")).hostname
    except ValueError:
        return False
    return name is not None and is_loopback(name)


def cookie_header(token: str) -> str:
    """The `Set-Cookie` value that carries the token from then on."""
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"


def same_origin(headers) -> bool:
    """A POST's CSRF check: the console's own header, and an `Origin` of this host if any."""
    if headers.get(ACTION_HEADER) != "1":
        return False
    origin = headers.get("Origin")
    if origin is None:
        return True
    host = headers.get("Host", "")
    parts = urlsplit(origin)
    return parts.scheme == "http" and parts.netloc == host
