"""The update service's connection slots: who holds one, and who gives one up first.

A slot per open connection, up to `max_connections`, and up to `max_per_client` per client
address. A connection that finished a request and waits for its next one (keep-alive) is
idle: when a cap is reached, the connection idle longest gives its slot to the newcomer
(its socket is shut down, so its handler's wait ends at once). A connection that has not
sent its first request yet, or has one under way, is never taken: the request-head deadline
bounds the first, and the second is what the service is for. Counting connections this way
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
    """One open connection: its client's address, and since when it waits idle (None while
    it has a request under way, or has not sent its first one yet)."""

    ip: str
    idle_since: float | None = None


class Slots:
    """The slots taken, under one lock (the accept loop and every handler thread use it)."""

    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections, self.max_per_client = max_connections, max_per_client
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
                idle = [s for s in full if self.conns[s].idle_since is not None]
                if not idle:
                    return False
                victim = min(idle, key=lambda s: self.conns[s].idle_since or 0.0)
                del self.conns[victim]
                with contextlib.suppress(OSError):  # its handler's wait ends; it closes
                    victim.shutdown(socket.SHUT_RDWR)
            self.conns[request] = _Conn(ip)
            return True

    def release(self, request: socket.socket) -> None:
        """The connection closed: its slot is free (a no-op if it was taken from it)."""
        with self.lock:
            self.conns.pop(request, None)

    def mark(self, request: socket.socket, idle: bool) -> None:
        """The connection waits for its next request (`idle`), or one is arriving."""
        with self.lock:
            if request in self.conns:
                self.conns[request].idle_since = time.monotonic() if idle else None

    def __len__(self) -> int:
        with self.lock:
            return len(self.conns)
