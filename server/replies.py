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

from flwr.app import Message

from fedadapt.deltas import State, check_delta, clip
from fedadapt.errors import DeltaError
from fedadapt.records import state_to_record, unpack_delta, wire_bytes

log = logging.getLogger("fedadapt.server")


@dataclass
class Screened:
    accepted: list[Message] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    upload_bytes: int = 0


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


def screen(
    replies: list[Message],
    global_state: State,
    trainable: set[str],
    base_sha256: str,
    max_bytes: int,
    clip_norm: float = 0.0,
) -> Screened:
    out = Screened()
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
        rebuilt = {k: v + delta[k] if k in delta else v for k, v in global_state.items()}
        msg.content["arrays"] = state_to_record(rebuilt)
        del msg.content["delta-meta"]
        out.accepted.append(msg)
    return out
