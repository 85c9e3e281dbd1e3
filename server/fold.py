"""FedAvg's running weighted sum, with the finite check paid once per block of replies.

Checking each reply for NaN/Inf is a full pass over its bytes, as costly as folding it in.
But a sum of finite values is finite (short of overflowing 3e38), and one NaN or Inf makes
it non-finite. So fp32 replies read in place are folded unchecked into a block sum, and only
the block sum is checked, once per `BLOCK` replies. When it is not finite, the block is
folded again reply by reply and every bad reply is named and refused, exactly as a
per-reply check would: the accepted set and the mean are the same. Working memory stays two
adapter-sized sums; the pending replies are views of bytes the server holds anyway.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np

from fedadapt.errors import DeltaError
from fedadapt.server.combine import FlatMean
from fedadapt.server.flat import Layout, check_finite

BLOCK = 32
Tag = TypeVar("Tag")  # what names a reply to its caller (the server passes the Message)


class BlockFold(Generic[Tag]):
    """`total` is the weighted sum of every accepted reply once `flush()` has run."""

    def __init__(self, layout: Layout, block: int = BLOCK) -> None:
        self.layout, self.block = layout, block
        self.total = FlatMean(layout.size)
        self._sum = FlatMean(layout.size)
        self._pending: list[tuple[Tag, np.ndarray, float, float]] = []

    def add(
        self, tag: Tag, flat: np.ndarray, weight: float, loss: float, checked: bool
    ) -> list[tuple[Tag, DeltaError]]:
        """Fold one reply in; returns `(tag, why)` for each earlier-pending reply found bad."""
        if checked:
            self.total.add(flat, weight, loss)
            return []
        self._sum.add(flat, weight, loss)
        self._pending.append((tag, flat, weight, loss))
        return self.flush() if len(self._pending) >= self.block else []

    def flush(self) -> list[tuple[Tag, DeltaError]]:
        """Check the pending block and move it into `total`; `(tag, why)` per bad reply."""
        bad: list[tuple[Tag, DeltaError]] = []
        block = self._sum
        if not self._pending:
            return bad
        if not np.isfinite(block.sum.sum()):
            block.sum.fill(0)
            block.weight = block.loss = 0.0
            for tag, flat, weight, loss in self._pending:
                try:
                    check_finite(flat, self.layout)
                except DeltaError as e:
                    bad.append((tag, e))
                    continue
                block.add(flat, weight, loss)
        self.total.sum += block.sum
        self.total.weight += block.weight
        self.total.loss += block.loss
        block.sum.fill(0)
        block.weight = block.loss = 0.0
        self._pending.clear()
        return bad
