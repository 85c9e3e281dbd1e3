"""How the update service refuses a request: a 4xx status with a reason, logged in one
WARNING line on the `fedadapt.updates` logger, and the checks every handler shares.

Its own module so that the file handler (`service`) and the report endpoint (`reports`)
share them without importing each other.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

log = logging.getLogger("fedadapt.updates")
_LENGTH = re.compile(r"^[0-9]{1,12}$")


class Refused(Exception):
    """A request the service answers with `status` (a 4xx) and logs with `reason`."""

    def __init__(self, status: HTTPStatus, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def content_length(handler: BaseHTTPRequestHandler) -> int | None:
    """The request's body length: None without one; `Refused` (400) for anything but one
    plain decimal number (`isdigit` takes "²", which `int` refuses), or a chunked body."""
    values = handler.headers.get_all("Content-Length") or []
    if handler.headers.get("Transfer-Encoding") is not None:
        raise Refused(HTTPStatus.BAD_REQUEST, "Transfer-Encoding is not accepted")
    if not values:
        return None
    if len(values) > 1 or not _LENGTH.match(values[0].strip()):
        raise Refused(HTTPStatus.BAD_REQUEST, f"bad Content-Length {values!r:.80}")
    return int(values[0])
