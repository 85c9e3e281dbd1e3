"""Screening delta replies: drop the bad ones with a reason, rebuild the good ones.

A reply is untrusted input: every field a client sends is checked before the server believes
it, and no reply of any shape may raise inside the ServerApp. Each reply is checked, in
order, for:

- `client-error`: the client replied with an error;
- `malformed`: no content, or records missing or of the wrong kind, or a payload that is not
  one safetensors blob of a known codec;
- `metrics`, `num-examples`, `num-examples-cap`, `train-loss`, `dp-weight`: the metrics are
  screened as strictly as the delta (`server.claims`): a positive integer number of
  examples no larger than the configured cap, a finite loss, `dp-weight == 1` under DP;
- `base-model`, `oversize`: trained on another base, or bigger than `max_bytes`;
- `dtype`, `unknown-names`, `missing-names`, `shape`, `non-finite`: the delta itself;
- `unreadable`: anything else that failed (a last resort, logged with its exception).

A rejected reply is logged and counted by reason, and the round goes on with the rest. An
accepted delta is optionally clipped to an L2 norm, then turned into `global + delta` with
only its checked metrics, so that Flower's stock strategies aggregate it (`server.strategy`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedadapt.codecs import decode
from fedadapt.deltas import State, check_delta, clip
from fedadapt.errors import DeltaError
from fedadapt.records import DELTA_KEY, state_to_record, wire_bytes
from fedadapt.server.claims import Claims, read_claims

log = logging.getLogger("fedadapt.server")
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class Screened:
    accepted: list[Message] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    upload_bytes: int = 0
    clients: int = 0  # accepted deltas (with folding, `accepted` holds their one mean)


@dataclass(frozen=True)
class Rules:
    """What a reply must satisfy; `max_examples = 0` leaves num-examples uncapped."""

    base_sha256: str
    max_bytes: int
    max_examples: int = 0
    dp: bool = False  # accounted central DP: every client's dp-weight must be 1


def _payload(content: RecordDict) -> memoryview:
    """The codec bytes inside the reply's one `uint8` Array, without copying them.

    An Array holds `np.save` bytes: a header, then the raw data, nothing after it. The last
    `shape[0]` bytes are therefore the payload; whatever they hold, the decoder checks them.
    """
    arrays = content.get("arrays")
    if not isinstance(arrays, ArrayRecord) or list(arrays.keys()) != [DELTA_KEY]:
        raise DeltaError(f"'arrays' must be an ArrayRecord holding only {DELTA_KEY!r}")
    a = arrays[DELTA_KEY]
    if a.stype != "numpy.ndarray" or a.dtype != "uint8" or len(a.shape) != 1:
        raise DeltaError(f"the delta must be 1-D uint8 numpy bytes, got {a.dtype} {a.shape}")
    n, data = a.shape[0], a.data
    if not isinstance(data, bytes) or not data.startswith(_NPY_MAGIC) or len(data) < n:
        raise DeltaError("the delta array's bytes are not a numpy array")
    return memoryview(data)[len(data) - n :]


def _delta_of(content: RecordDict, rules: Rules, size: int) -> State:
    meta = content.get("delta-meta")
    if not isinstance(meta, ConfigRecord):
        raise DeltaError("reply holds no 'delta-meta' ConfigRecord", reason="malformed")
    sha = meta.get("base-sha256")
    if sha != rules.base_sha256:
        raise DeltaError(
            f"trained on base {str(sha)[:12]}…, not {rules.base_sha256[:12]}…",
            reason="base-model",
        )
    if size > rules.max_bytes:
        raise DeltaError(f"{size} bytes exceeds the {rules.max_bytes}-byte cap", reason="oversize")
    return decode(bytes(_payload(content)))


def _wire_size(msg: Message) -> int | None:
    """What the reply cost on the network; None if it could not be a wire message at all
    (e.g. an int beyond int64), which `_check` then refuses after naming any bad metric."""
    if not msg.has_content():
        return None
    try:
        return wire_bytes(msg.content)
    except (ValueError, TypeError):
        return None


def _check(
    msg: Message, rules: Rules, size: int | None, trainable: set[str], global_state: State
) -> tuple[State, Claims]:
    """`(delta, claims)` of one reply, or `DeltaError` naming why it is refused."""
    if not msg.has_content():
        raise DeltaError("reply has neither content nor an error", reason="malformed")
    claims = read_claims(msg.content, rules.max_examples, rules.dp)
    if size is None:
        raise DeltaError("reply is not serializable as a Flower message", reason="malformed")
    delta = _delta_of(msg.content, rules, size)
    check_delta(delta, global_state, required=trainable)
    return delta, claims


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


def _rebuilt(msg: Message, global_state: State, delta: State, claims: Claims, dp: bool) -> Message:
    """The reply as `global + delta` with only its checked metrics: nothing else it sent
    (an extra record, a metric list) reaches the strategy, which would choke on it."""
    rebuilt = {k: v + delta[k] if k in delta else v for k, v in global_state.items()}
    msg.content = RecordDict(
        {"arrays": state_to_record(rebuilt), "metrics": MetricRecord(claims.metrics(dp))}
    )
    return msg


def _check_full(content: RecordDict, global_state: State) -> None:
    """A full-model reply's weights: exactly the model's tensors, float, shaped, finite.

    Each array is deserialized, checked and dropped in turn (one tensor of working memory);
    the checked record is what the strategy then reads.
    """
    arrays = content.get("arrays")
    if not isinstance(arrays, ArrayRecord):
        raise DeltaError("'arrays' must be an ArrayRecord", reason="malformed")
    missing = sorted(set(global_state) - set(arrays.keys()))
    if missing:
        raise DeltaError(f"missing tensors {missing[:5]}", reason="missing-names")
    for k, a in arrays.items():
        try:
            v = torch.from_numpy(a.numpy())
        except (TypeError, ValueError, OSError, EOFError) as e:
            raise DeltaError(f"{k}: not a numpy array: {e}", reason="malformed") from e
        check_delta({k: v}, global_state)


def screen_full(replies: list[Message], global_state: State, max_examples: int = 0) -> Screened:
    """The full-model baseline's replies (whole weights, for stock FedAvg), checked as
    strictly as a delta reply: one bad reply is dropped, never the round or the run."""
    out = Screened()
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            out.rejected["client-error"] += 1
            log.warning("node %s failed: %s", node, msg.error.reason)
            continue
        try:
            size = _wire_size(msg)
            out.upload_bytes += size or 0
            if size is None:
                raise DeltaError("reply is not a Flower wire message", reason="malformed")
            claims = read_claims(msg.content, max_examples, dp=False)
            _check_full(msg.content, global_state)
        except DeltaError as e:
            out.rejected[e.reason] += 1
            log.warning("rejected full-model reply from node %s (%s): %s", node, e.reason, e)
            continue
        except Exception as e:  # a last resort: one odd reply must not end the run
            out.rejected["unreadable"] += 1
            log.warning("rejected full-model reply from node %s (unreadable): %r", node, e)
            continue
        arrays = msg.content["arrays"]
        msg.content = RecordDict({"arrays": arrays, "metrics": MetricRecord(claims.metrics(False))})
        out.accepted.append(msg)
        out.clients += 1
    return out


def screen(
    replies: list[Message],
    global_state: State,
    trainable: set[str],
    base_sha256: str,
    max_bytes: int,
    clip_norm: float = 0.0,
    fold_by: str | None = None,
    max_examples: int = 0,
    dp: bool = False,
) -> Screened:
    """Check each reply; accepted ones become `global + delta` replies for the strategy.

    With `fold_by` (the strategy's weight key), accepted deltas are folded into their
    weighted mean as they are checked, and `accepted` is that one mean reply. For a strategy
    whose aggregate is linear in the replies (FedAvg, and FedAdam/FedYogi/FedAvgM over it)
    the result is the same, without rebuilding a model-sized record per reply.
    """
    rules = Rules(base_sha256, max_bytes, max_examples, dp)
    out, fold = Screened(), WeightedMean()
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            out.rejected["client-error"] += 1
            log.warning("node %s failed: %s", node, msg.error.reason)
            continue
        try:
            size = _wire_size(msg)
            out.upload_bytes += size or 0
            delta, claims = _check(msg, rules, size, trainable, global_state)
        except DeltaError as e:
            out.rejected[e.reason] += 1
            log.warning("rejected reply from node %s (%s): %s", node, e.reason, e)
            continue
        except Exception as e:  # a last resort: one odd reply must not end the run
            out.rejected["unreadable"] += 1
            log.warning("rejected reply from node %s (unreadable): %r", node, e)
            continue
        if clip_norm > 0:
            delta = clip(delta, clip_norm)
        out.clients += 1
        if fold_by is not None:
            fold.add(delta, claims.weight(fold_by), claims.train_loss)
        else:
            out.accepted.append(_rebuilt(msg, global_state, delta, claims, dp))
    if fold.weight > 0:
        out.accepted = [mean_reply(global_state, fold.mean(), fold.weight, fold.loss / fold.weight)]
    return out
