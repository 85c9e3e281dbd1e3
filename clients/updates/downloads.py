"""HTTP downloads for a device under one overall deadline, with hard byte caps.

A per-read timeout does not bound a fetch: a server that trickles a byte a second answers
every read in time and never finishes (headers included, so the caller never even sees a
response to give up on). Here every socket operation (connect, TLS, each read and write) is
given only the time left before the deadline, so a whole fetch ends by it, whatever the
server does. httpcore's network-backend hook is where that applies; httpx would capture the
read timeout once per request.

Every failure is a one-line `FedAdaptError`: `timeout`, an unreachable host, a bad URL, an
HTTP error status, or more bytes than the caller allowed (`oversize`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpcore

from fedadapt.errors import FedAdaptError
from fedadapt.updates.bundles import BundleError


class Deadline:
    """One overall time limit, counted from when it is made (not from the first read): share one
    between every request of a fetch so the whole fetch ends by it. Raises `FedAdaptError` for
    a limit that is not positive.
    """

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise FedAdaptError(f"the fetch timeout must be positive, got {seconds}")
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, timeout: float | None = None) -> float:
        """The time left, capped by `timeout`; past the deadline, a timeout error."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout(f"past the {self.seconds:g} s deadline")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.left(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> _DeadlineStream:
        tls = self.inner.start_tls(ssl_context, server_hostname, self.deadline.left(timeout))
        return _DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = super().connect_tcp(
            host, port, self.deadline.left(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self.deadline)


def check_url(url: str) -> str:
    """`url` without a trailing slash, or a one-line error saying what a URL must look like."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port out of range)
        url.encode("ascii")  # an international host name goes in as punycode
        (parts.hostname or "").encode("idna")  # empty or over-long labels
    except ValueError as e:  # UnicodeError included
        raise FedAdaptError(f"bad registry URL {url!r}: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FedAdaptError(f"bad registry URL {url!r}: expected http(s)://HOST[:PORT][/PATH]")
    return url.rstrip("/")


class Downloader:
    """One connection pool for one fetch, all of it under `deadline`."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.pool = httpcore.ConnectionPool(network_backend=_DeadlineBackend(deadline))

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.close()

    @contextmanager
    def _stream(self, url: str, headers: dict[str, str]) -> Iterator[httpcore.Response]:
        t = self.deadline.seconds
        extensions = {"timeout": {"connect": t, "read": t, "write": t, "pool": t}}
        try:
            with self.pool.stream(
                "GET", url, headers=list(headers.items()), extensions=extensions
            ) as r:
                yield r
        except httpcore.TimeoutException as e:
            raise BundleError(
                f"{url} did not finish within the {t:g} s deadline of this fetch", "timeout"
            ) from e
        except httpcore.UnsupportedProtocol as e:
            raise FedAdaptError(f"bad URL {url}: {e}") from e
        except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as e:
            raise FedAdaptError(f"cannot fetch {url}: {e or type(e).__name__}") from e

    def _chunks(self, r: httpcore.Response, url: str, ok: Iterable[int]) -> Iterator[bytes]:
        if r.status not in ok:
            raise FedAdaptError(f"GET {url}: HTTP {r.status}")
        yield from r.iter_stream()

    def get(self, url: str, cap: int) -> bytes:
        """The whole body, refused (`oversize`) past `cap` bytes."""
        data = bytearray()
        with self._stream(url, {}) as r:
            for chunk in self._chunks(r, url, (200,)):
                data += chunk
                if len(data) > cap:
                    raise BundleError(f"{url} is larger than {cap} bytes", "oversize")
        return bytes(data)

    def download(self, url: str, part: Path, size: int) -> bytes:
        """Download into `part`, resuming what a killed fetch left there; never more than
        `size` (the signed cap). A refused download deletes `part`: what a hostile server
        sent must not be resumed by the next fetch."""
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return part.read_bytes()
        try:
            self._download(url, part, have, size)
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):  # a killed fetch resumes; a refused one not
                part.unlink(missing_ok=True)
            raise
        return part.read_bytes()

    def _download(self, url: str, part: Path, have: int, size: int) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._stream(url, headers) as r:
            resumed = r.status == 206
            if resumed and not _range_starts_at(r, have):
                raise BundleError(f"{url} answered a range that starts elsewhere", "malformed")
            written = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as f:
                for chunk in self._chunks(r, url, (200, 206)):
                    written += len(chunk)
                    if written > size:
                        raise BundleError(
                            f"{url} sends more than the {size} signed bytes", "oversize"
                        )
                    f.write(chunk)


def _range_starts_at(r: httpcore.Response, start: int) -> bool:
    for name, value in r.headers:
        if name.lower() == b"content-range":
            return value.decode("latin-1").startswith(f"bytes {start}-")
    return False
