"""Pull replies more often than Flower's deployed grid does.

Flower 1.42's gRPC/HTTP grid (Deployment Engine) `send_and_receive` sleeps 3 s between
pulls, so each message exchange waits up to 3 s after the last reply arrived; a SecAgg+
round has four exchanges. Through the grid's public `push_messages`/`pull_messages` this
waits `interval` (config `grid_poll_s`) instead. The SuperNode's own 3 s sleep while idle
is not configurable. The Simulation Engine's in-memory grid already pulls every 0.1 s.

The timeout counts from the last reply, not from the send. Evaluating all 338 clients of
rt-full.toml with their baselines queues them on two simulation workers for longer than
any sensible per-round limit, and a fixed deadline cut that evaluation to the 63 clients
that had answered by then. Waiting while replies keep coming, and giving up on the rest
after `timeout` seconds of silence, still drops a dead client without stalling the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message


class QuickPollGrid:
    """The grid, pulling replies every `interval` seconds, with a timeout that counts from the last
    reply (see the module docstring). Everything else goes to the wrapped grid.
    """

    def __init__(self, grid: Any, interval: float) -> None:
        self._grid, self.interval = grid, interval

    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Message]:
        """Every reply that came before `timeout` seconds passed without one; `progress(done,
        total)` hears of each batch of replies, so that a long wait (the final evaluation of
        every client) is not silent."""
        pending = set(self._grid.push_messages(messages))
        total = len(pending)
        patience = timeout if timeout is not None else float("inf")
        end = time.monotonic() + patience
        replies: list[Message] = []
        while pending and time.monotonic() < end:
            got = list(self._grid.pull_messages(pending))
            if got:
                end = time.monotonic() + patience
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if got and progress is not None:
                progress(total - len(pending), total)
            if pending:
                time.sleep(self.interval)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
