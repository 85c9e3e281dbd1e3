"""Screening delta replies: drop the bad ones with a reason, rebuild the good ones.

Each reply is checked, in order, for: a client-side error, a different base model, its size,
a decodable payload, tensor names, dtypes, shapes and finite values. A rejected reply is
logged and counted by reason, and the round goes on with the rest. An accepted delta is
optionally clipped to an L2 norm, then turned into `global + delta` so that Flower's stock
strategies aggregate it (see `server.strategy`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, MetricRecord, RecordDict

from fedadapt.deltas import State, check_delta, clip
from fedadapt.errors import DeltaError
from fedadapt.records import state_to_record, unpack_delta, wire_bytes

log = logging.getLogger("fedadapt.server")


@dataclass
class Screened:
    accepted: list[Message] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    upload_bytes: int = 0
    clients: int = 0  # accepted deltas (with folding, `accepted` holds their one mean)


def _delta_of(msg: Message, base_sha256: str, max_bytes: int, size: int) -> State:
    content = msg.content
    meta = content.get("delta-meta")
    if meta is None or "arrays" not in content:
        raise DeltaError("reply holds no delta", reason="malformed")
    if meta.get("base-sha256") != base_sha256:
        raise DeltaError(
            f"trained on base {str(meta.get('base-sha256'))[:12]}…, not {base_sha256[:12]}…",
            reason="base-model",
        )
    if size > max_bytes:
        raise DeltaError(f"{size} bytes exceeds the {max_bytes}-byte cap", reason="oversize")
    try:
        return unpack_delta(content["arrays"])
    except (KeyError, ValueError) as e:
        raise DeltaError(f"no decodable delta: {e}", reason="malformed") from e


class WeightedMean:
    """The weighted mean of deltas, folded in one at a time: one adapter of working memory."""

    def __init__(self) -> None:
        self.sum: State = {}
        self.weight = 0.0
        self.loss = 0.0

    def add(self, delta: State, weight: float, loss: float) -> None:
        for k, v in delta.items():
            if k in self.sum:
                self.sum[k].add_(v, alpha=weight)
            else:
                self.sum[k] = v.float() * weight
        self.weight += weight
        self.loss += weight * loss

    def mean(self) -> State:
        return {k: v / self.weight for k, v in self.sum.items()}


def mean_reply(global_state: State, mean_delta: State, weight: float, train_loss: float) -> Message:
    """A round's mean as the one reply a modern strategy's `aggregate_train` averages."""
    rebuilt = {k: v + mean_delta[k] if k in mean_delta else v for k, v in global_state.items()}
    metrics = {"num-examples": weight, "dp-weight": weight, "train_loss": train_loss}
    content = RecordDict({"arrays": state_to_record(rebuilt), "metrics": MetricRecord(metrics)})
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)


def screen(
    replies: list[Message],
    global_state: State,
    trainable: set[str],
    base_sha256: str,
    max_bytes: int,
    clip_norm: float = 0.0,
    fold_by: str | None = None,
) -> Screened:
    """Check each reply; accepted ones become `global + delta` replies for the strategy.

    With `fold_by` (the strategy's weight key), accepted deltas are folded into their
    weighted mean as they are checked, and `accepted` is that one mean reply. For a strategy
    whose aggregate is linear in the replies (FedAvg, and FedAdam/FedYogi/FedAvgM over it)
    the result is the same, without rebuilding a model-sized record per reply.
    """
    out, fold = Screened(), WeightedMean()
    for msg in replies:
        if msg.has_error():
            out.rejected["client-error"] += 1
            log.warning("node %s failed: %s", msg.metadata.src_node_id, msg.error.reason)
            continue
        size = wire_bytes(msg.content)
        out.upload_bytes += size
        try:
            delta = _delta_of(msg, base_sha256, max_bytes, size)
            check_delta(delta, global_state, required=trainable)
        except DeltaError as e:
            out.rejected[e.reason] += 1
            log.warning(
                "rejected reply from node %s (%s): %s", msg.metadata.src_node_id, e.reason, e
            )
            continue
        if clip_norm > 0:
            delta = clip(delta, clip_norm)
        out.clients += 1
        if fold_by is not None:
            metrics = msg.content["metrics"]
            fold.add(delta, float(metrics[fold_by]), float(metrics.get("train_loss", 0.0)))
            continue
        rebuilt = {k: v + delta[k] if k in delta else v for k, v in global_state.items()}
        msg.content["arrays"] = state_to_record(rebuilt)
        del msg.content["delta-meta"]
        out.accepted.append(msg)
    if fold.weight > 0:
        out.accepted = [mean_reply(global_state, fold.mean(), fold.weight, fold.loss / fold.weight)]
    return out
