"""The update service's connection slots: who holds one, and who gives one up first.

A slot per open connection, up to `max_connections`, and up to `max_per_client` per client
address. A connection that finished a request and waits for its next one (keep-alive) is
idle: when a cap is reached, the connection idle longest gives its slot to the newcomer
(its socket is shut down, so its handler's wait ends at once). A connection that has not
sent its first request yet counts as idle once it has waited `grace` seconds (the idle
timeout) without a byte, so connecting and sending nothing holds a slot only that long
when others wait; one with a request under way is never taken. Counting connections this way
keeps a cap that clients cannot hold with a keep-alive request now and then (issue 23: two
clients each sending a HEAD every 2 s kept both slots of a cap of 2).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class _Conn:
    """One open connection: its client's address, since when it waits idle (None while it
    has a request under way, or has not sent its first one yet), and since when it waits
    for its first byte (None once one came)."""

    ip: str
    idle_since: float | None = None
    fresh_since: float | None = None


class Slots:
    """The slots taken, under one lock (the accept loop and every handler thread use it)."""

    def __init__(self, max_connections: int, max_per_client: int, grace: float) -> None:
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.grace = grace
        self.conns: dict[socket.socket, _Conn] = {}
        self.lock = threading.Lock()

    def admit(self, request: socket.socket, ip: str) -> bool:
        """Take a slot for a new connection from `ip`, freeing the longest-idle connection
        (of `ip` when it is at its own cap) if a cap is reached; False when none is idle."""
        with self.lock:
            mine = [s for s, c in self.conns.items() if c.ip == ip]
            if len(mine) >= self.max_per_client:
                full = mine
            elif len(self.conns) >= self.max_connections:
                full = list(self.conns)
            else:
                full = []
            if full:
                now = time.monotonic()
                waits = {s: w for s in full if (w := self._idle_since(self.conns[s], now))}
                if not waits:
                    return False
                victim = min(waits, key=waits.__getitem__)
                del self.conns[victim]
                with contextlib.suppress(OSError):  # its handler's wait ends; it closes
                    victim.shutdown(socket.SHUT_RDWR)
            self.conns[request] = _Conn(ip, fresh_since=time.monotonic())
            return True

    def _idle_since(self, conn: _Conn, now: float) -> float | None:
        """Since when `conn` counts as idle, or None while it may not be taken."""
        if conn.idle_since is not None:
            return conn.idle_since
        if conn.fresh_since is not None and now - conn.fresh_since > self.grace:
            return conn.fresh_since
        return None

    def release(self, request: socket.socket) -> None:
        """The connection closed: its slot is free (a no-op if it was taken from it)."""
        with self.lock:
            self.conns.pop(request, None)

    def mark(self, request: socket.socket, idle: bool) -> None:
        """The connection waits for its next request (`idle`), or one is arriving."""
        with self.lock:
            if request in self.conns:
                self.conns[request].idle_since = time.monotonic() if idle else None
                self.conns[request].fresh_since = None

    def __len__(self) -> int:
        with self.lock:
            return len(self.conns)
