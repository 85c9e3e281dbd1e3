"""Combining screened flat deltas into the one reply a strategy then aggregates.

FedAvg and the server optimizers over it are linear in the replies: each delta is folded into
a running weighted sum as it is screened (one vector of working memory, one scaled add per
reply). Trimmed mean and median need every reply: theirs are stacked into one matrix and cut
with one vectorized partition over all coordinates, instead of Flower's loop over tensors.
Either way the strategy gets one reply `global + combined delta` and, on it, its own math is
the identity (the mean, trimmed mean or median of one reply is that reply); FedAdam, FedYogi
and FedAvgM apply their optimizer step to it as to any mean.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message, MessageType, MetricRecord, RecordDict

from fedadapt.deltas import State
from fedadapt.records import state_to_record
from fedadapt.server.flat import Layout

ROBUST_RULES = ("trimmed-mean", "median")


class FlatMean:
    """The weighted mean of flat deltas, folded in one at a time.

    Each delta is multiplied by its weight's share of `total` (the round's weights, known
    before the first fold), never by the raw weight: no partial sum grows past the largest
    delta, so a finite round stays finite (`server.bounds`).
    """

    def __init__(self, size: int, total: float) -> None:
        self.sum = np.zeros(size, dtype=np.float32)
        self._scaled = np.empty(size, dtype=np.float32)
        self.total = total
        self.weight = 0.0
        self.loss = 0.0

    def add(self, flat: np.ndarray, weight: float, loss: float) -> None:
        """Fold in one checked delta with its weight (`num-examples`) and its train loss. `flat` is
        not kept, so it may be a view over the reply's bytes.
        """
        np.multiply(flat, np.float32(weight / self.total), out=self._scaled)
        self.sum += self._scaled
        self.weight += weight
        self.loss += weight / self.total * loss

    def mean(self) -> np.ndarray:
        """The weighted mean delta: the folded shares sum to 1 once every weight is in."""
        return self.sum * np.float32(self.total / self.weight)

    def mean_loss(self) -> float:
        """The weighted mean train loss of the deltas folded in."""
        return self.loss * self.total / self.weight


class FlatStack:
    """Every accepted flat delta, for a coordinate-wise robust rule."""

    def __init__(self, rule: str, trim: float) -> None:
        if rule not in ROBUST_RULES:
            raise ValueError(f"unknown robust rule {rule!r}; choose from {ROBUST_RULES}")
        self.rule, self.trim = rule, trim
        self.rows: list[np.ndarray] = []
        self.weight = 0.0
        self.loss = 0.0

    def add(self, flat: np.ndarray, weight: float, loss: float) -> None:
        """Keep one checked delta (a reference, not a copy). The robust rules ignore the weight; it
        only adds up to the combined reply's `num-examples` and weights the train loss.
        """
        self.rows.append(flat)
        self.weight += weight
        self.loss += weight * loss

    def mean_loss(self) -> float:
        """The weighted mean train loss of the deltas kept."""
        return self.loss / self.weight

    def combine(self) -> np.ndarray:
        """Flower's `trim_mean` (cut `int(trim * n)` at each end) or median, per coordinate.

        One coordinate's values are one contiguous row of the (coordinates x replies) stack,
        so the partition runs over contiguous memory, in place.
        """
        m = np.stack(self.rows, axis=1)
        if self.rule == "median":
            return np.median(m, axis=1, overwrite_input=True).astype(np.float32)
        n = len(self.rows)
        low = int(self.trim * n)
        m.partition((low, n - low - 1), axis=1)
        return m[:, low : n - low].mean(axis=1, dtype=np.float32)


def mean_reply(global_state: State, mean_delta: State, weight: float, train_loss: float) -> Message:
    """A round's combined delta as the one reply a modern strategy's `aggregate_train` takes."""
    rebuilt = {k: v + mean_delta[k] if k in mean_delta else v for k, v in global_state.items()}
    metrics = {"num-examples": weight, "dp-weight": weight, "train_loss": train_loss}
    content = RecordDict({"arrays": state_to_record(rebuilt), "metrics": MetricRecord(metrics)})
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)


def combined_reply(global_state: State, layout: Layout, acc: FlatMean | FlatStack) -> Message:
    """The one reply for the strategy: `global + combined delta`, weighted by the sum of the
    clients' weights, with their weighted mean train loss. Needs at least one delta added.
    """
    delta = acc.mean() if isinstance(acc, FlatMean) else acc.combine()
    return mean_reply(global_state, layout.unflatten(delta), acc.weight, acc.mean_loss())
