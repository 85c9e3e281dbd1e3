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
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedadapt.codecs import decode
from fedadapt.deltas import State, check_delta, clip  # noqa: F401 - `clip` is re-exported
from fedadapt.errors import DeltaError, loggable_reason
from fedadapt.records import DELTA_KEY, state_to_record, wire_bytes
from fedadapt.server.bounds import norm_bound, weight_cap
from fedadapt.server.claims import Claims, read_claims
from fedadapt.server.combine import FlatMean, FlatStack, combined_reply, mean_reply  # noqa: F401
from fedadapt.server.flat import FlatReader, Layout, NotFlat, check_finite, flatten, l2

log = logging.getLogger("fedadapt.server")
T = TypeVar("T")
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class Screened:
    """One round's replies after screening, for the strategy and the round's row.

    Parameters
    ----------
    accepted : list of Message
        The replies to aggregate, rebuilt as `global + delta`; when replies were folded as they
        came (a linear or robust rule), the one combined reply.
    rejected : Counter
        Replies refused, by reason (an error reply counts as "client-error").
    upload_bytes : int
        Wire bytes of every reply with content, rejected ones included: the network paid them.
    clients : int
        Accepted deltas, also when `accepted` holds their one combined reply.
    """

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


def _delta_meta(content: RecordDict, rules: Rules, size: int) -> None:
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


def _flat_of(
    payload: memoryview, reader: FlatReader, global_state: State, check: bool = True
) -> np.ndarray:
    """The delta as a flat vector: in place for the canonical layout, else decoded the
    general way (which also names exactly what is wrong with a bad payload). Checked finite
    unless `check=False` and it is a view of the payload (`FlatReader.read`)."""
    layout = reader.layout
    try:
        return reader.read(payload, check)
    except NotFlat:
        pass
    delta = decode(bytes(payload))
    check_delta(delta, global_state, required=set(layout.names))
    frozen = sorted(set(delta) - set(layout.names))
    if frozen:
        raise DeltaError(f"tensors that are not trainable {frozen[:5]}", reason="unknown-names")
    return flatten(delta, layout)


def _wire_size(msg: Message) -> int | None:
    """What the reply cost on the network; None if it could not be a wire message at all
    (e.g. an int beyond int64), which the checks then refuse after naming any bad metric."""
    if not msg.has_content():
        return None
    try:
        return wire_bytes(msg.content)
    except (ValueError, TypeError):
        return None


def _node(msg: Message) -> object:
    """The sender, looked up only to name it in a log line."""
    return msg.metadata.src_node_id


def _passing(
    replies: list[Message], out: Screened, check: Callable[[Message, int | None], T], what: str
) -> Iterator[tuple[Message, T]]:
    """`(reply, check's result)` for each reply that passes `check`; every other one is
    counted in `out.rejected` by reason and logged. Nothing a reply holds escapes as an
    exception: the run goes on."""
    for msg in replies:
        if msg.has_error():
            out.rejected["client-error"] += 1
            log.warning("node %s failed: %s", _node(msg), loggable_reason(msg.error.reason))
            continue
        try:
            size = _wire_size(msg)
            out.upload_bytes += size or 0
            if not msg.has_content():
                raise DeltaError("reply has neither content nor an error", reason="malformed")
            result = check(msg, size)
        except DeltaError as e:
            out.rejected[e.reason] += 1
            log.warning("rejected %s from node %s (%s): %s", what, _node(msg), e.reason, e)
            continue
        except Exception as e:  # a last resort: one odd reply must not end the run
            out.rejected["unreadable"] += 1
            log.warning("rejected %s from node %s (unreadable): %r", what, _node(msg), e)
            continue
        yield msg, result


def _serializable(size: int | None) -> int:
    if size is None:
        raise DeltaError("reply is not serializable as a Flower message", reason="malformed")
    return size


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

    def check(msg: Message, size: int | None) -> Claims:
        _serializable(size)
        claims = read_claims(msg.content, max_examples, dp=False)
        _check_full(msg.content, global_state)
        return claims

    out = Screened()
    for msg, claims in _passing(replies, out, check, "full-model reply"):
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
    robust: tuple[str, float] | None = None,
    weight_ratio: float = 0.0,
    norm_ratio: float = 0.0,
) -> Screened:
    """Check each reply; accepted ones become `global + delta` replies for the strategy.

    Two passes. The first checks every reply and measures its delta's norm (the same pass
    proves it finite). The second bounds each claim by the round (`server.bounds`): weights
    at `weight_ratio` x the median claimed examples, norms at `norm_ratio` x the median norm
    and at `clip_norm`, then combines.

    With `fold_by` (the strategy's weight key), accepted deltas are folded into their
    weighted mean, and `accepted` is that one mean reply. For a strategy whose aggregate is
    linear in the replies (FedAvg, and FedAdam/FedYogi/FedAvgM over it) the result is the
    same, without rebuilding a model-sized record per reply. With `robust`
    (`("trimmed-mean", trim)` or `("median", 0)`), accepted deltas are stacked and combined
    by that rule, and `accepted` is again the one combined reply (`server.combine`). Else
    each accepted reply is rebuilt as `global + delta` with its bounded claims (DP, Krum).

    Parameters
    ----------
    weight_ratio : float (default: 0.0)
        A reply's weight is at most this times the round's median claimed examples; 0: off.
    norm_ratio : float (default: 0.0)
        A delta's L2 norm is scaled down to this times the round's median norm; 0: off.
    """
    rules = Rules(base_sha256, max_bytes, max_examples, dp)
    layout = Layout.of(global_state, trainable)
    reader = FlatReader(layout)

    def check(msg: Message, size: int | None) -> tuple[np.ndarray, Claims, float]:
        content = msg.content
        claims = read_claims(content, rules.max_examples, rules.dp)
        _delta_meta(content, rules, _serializable(size))
        flat = _flat_of(_payload(content), reader, global_state, check=False)
        return flat, claims, finite_norm(flat, layout)

    out = Screened()
    passed = list(_passing(replies, out, check, "reply"))
    out.clients = len(passed)
    if not passed:
        return out
    cap = weight_cap([c.num_examples for _, (_, c, _) in passed], weight_ratio)
    bound = norm_bound([n for _, (_, _, n) in passed], norm_ratio, clip_norm)
    bounded = []
    for msg, (flat, claims, norm) in passed:
        if cap is not None and claims.num_examples > cap:
            claims = Claims(max(1, int(cap)), claims.train_loss)
        if bound is not None and norm > bound:
            flat = flat * np.float32(bound / norm)
        bounded.append((msg, flat, claims))
    if fold_by is not None:
        weights = [claims.weight(fold_by) for _, _, claims in bounded]
        acc: FlatMean | FlatStack = FlatMean(layout.size, math.fsum(weights))
        for (_, flat, claims), w in zip(bounded, weights, strict=True):
            acc.add(flat, w, claims.train_loss)
    elif robust is not None:
        acc = FlatStack(*robust)
        for _, flat, claims in bounded:
            acc.add(flat, claims.weight("num-examples"), claims.train_loss)
    else:
        out.accepted = [
            _rebuilt(msg, global_state, layout.unflatten(flat), claims, dp)
            for msg, flat, claims in bounded
        ]
        return out
    out.accepted = [combined_reply(global_state, layout, acc)]
    return out


def finite_norm(flat: np.ndarray, layout: Layout) -> float:
    """The delta's L2 norm, or `DeltaError` (`non-finite`) naming the tensor with a NaN or
    Inf: a norm is finite exactly when every value is, short of an overflow that float64
    accumulation (`l2`) does not reach, so one pass does both."""
    norm = l2(flat)
    if not math.isfinite(norm):
        check_finite(flat, layout)  # names the first tensor that holds one
        raise DeltaError("the delta's norm is not finite", reason="non-finite")
    return norm
