"""When `device run` stops restarting a process it supervises, and what it then says.

A SuperNode or warm worker that dies after a healthy start is restarted with a growing delay:
a lost connection or a killed process heals that way. One that cannot come up at all (a bad
address, a key it cannot read, a socket folder it may not use) fails the same way on every
try; restarting it forever only hid the reason in its log. So a process that exits during
start-up (the SuperNode at once, the worker after three tries in a row, since messages run in
the ClientApp meanwhile), or one that exits `CRASH_LIMIT` times within `CRASH_WINDOW_S`, ends
`device run` with one line quoting the telling line of its log.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from fedadapt.errors import FedAdaptError

STARTUP_S = 20.0  # an exit this soon after the start is a process that did not come up
CRASH_LIMIT, CRASH_WINDOW_S = 5, 600.0  # this many exits this close together: give up


def last_error(log: Path, lines: int = 200) -> str:
    """The most telling line of a process's log: its last error, else its last line."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {log})"
    tail = [line.strip() for line in tail if line.strip()]
    errors = [line for line in tail if "ERROR" in line or "Error" in line]
    return (errors or tail or [f"(nothing in {log})"])[-1]


@dataclass
class Exits:
    """The exits of one supervised process (`what`, logging to `log`).

    `startup_limit` start-up exits in a row end `device run`: 1 for the SuperNode, without
    which the device does nothing, more for the worker, which is only a speed-up.
    """

    what: str
    log: Path
    startup_limit: int = 1
    started: float = 0.0
    in_a_row: int = 0
    recent: deque[float] = field(default_factory=deque)

    def start(self) -> None:
        """The process was (re)started now."""
        self.started = time.monotonic()

    def exited(self, code: int | None) -> None:
        """Record an exit; raises `FedAdaptError` when restarting would not help."""
        now = time.monotonic()
        if now - self.started < STARTUP_S:
            self.in_a_row += 1
            if self.in_a_row >= self.startup_limit:
                times = "" if self.startup_limit == 1 else f" {self.in_a_row} times in a row"
                raise FedAdaptError(
                    f"the {self.what} exited during start-up{times} (code {code}): "
                    f"{last_error(self.log)}"
                )
        else:
            self.in_a_row = 0
        self.recent.append(now)
        while now - self.recent[0] > CRASH_WINDOW_S:
            self.recent.popleft()
        if len(self.recent) >= CRASH_LIMIT:
            raise FedAdaptError(
                f"the {self.what} exited {len(self.recent)} times within "
                f"{CRASH_WINDOW_S / 60:g} minutes (last code {code}): {last_error(self.log)}"
            )
