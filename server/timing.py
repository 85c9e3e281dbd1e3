"""Where a round's wall time goes: sampling, client work, aggregation and evaluation.

Laps of one monotonic clock, in seconds, kept in the round's row (and so in report.json's
rounds and metrics.csv): how each part grows from 100 to 1000 clients is what `bench scale`
reads from them.
"""

from __future__ import annotations

import time

# sampling (configure_train), client work (send until the last reply), aggregation
# (screening and the strategy), evaluation (the per-round one, where the round has it)
PARTS = ("sample_s", "train_s", "aggregate_s", "evaluate_s")


class RoundClock:
    """`lap(part)` books the time since the previous lap (or the start) under `part`."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, part: str) -> None:
        """Book the seconds since the previous lap under `part` (rounded to 0.1 ms); lapping a part
        again replaces its time, it does not add to it.
        """
        now = time.perf_counter()
        self.laps[part] = round(now - self._t, 4)
        self._t = now
