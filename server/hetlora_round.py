"""A HetLoRA round on the server: each tier gets its slice, each reply is padded back.

The global adapter stays at the largest rank R (`fedadapt.hetlora`). Before sending, each
train message's global state is cut to its client's rank (the tier drawn from the seed and
the client's partition), so a rank-2 device downloads a quarter of a rank-8 one. A reply
names the rank it trained (`lora-rank` in its delta-meta); replies are grouped by it, each
group is screened against the global state cut to that rank (every check of
`server.replies` applies unchanged), and each group's mean reply is padded back to rank R.
The strategy then averages the groups' replies weighted by their total examples, which is
the weighted mean of all the padded deltas: the same as one homogeneous fold.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from fedadapt import hetlora
from fedadapt.deltas import State
from fedadapt.records import record_to_state, state_to_record
from fedadapt.server.replies import Screened, screen

log = logging.getLogger("fedadapt.server")
RANK_KEY = hetlora.RANK_KEY


def slice_messages(msgs: list[Message], global_state: State, rank_of: Callable[[int], int]) -> None:
    """Cut each train message's arrays to the rank of its destination node."""
    slices: dict[int, Any] = {}
    for msg in msgs:
        r = rank_of(msg.metadata.dst_node_id)
        if r not in slices:
            slices[r] = state_to_record(hetlora.truncate(global_state, r))
        # a strategy's messages may share one RecordDict: give each its own
        msg.content = RecordDict({**_others(msg.content), "arrays": slices[r]})


def reply_rank(msg: Message, ranks: tuple[int, ...]) -> int | None:
    """The rank a reply says it trained, if it is one of the tiers; else None."""
    if msg.has_error() or not msg.has_content():
        return None
    meta = msg.content.get("delta-meta")
    rank = meta.get(RANK_KEY) if isinstance(meta, ConfigRecord) else None
    is_int = isinstance(rank, int) and not isinstance(rank, bool)
    return rank if is_int and rank in ranks else None


def _padded(reply: Message, cut: State, global_state: State) -> Message:
    """A tier's mean reply (`cut + mean delta`) as `global + padded mean delta`."""
    state = record_to_state(reply.content["arrays"])
    delta = hetlora.pad({k: state[k] - cut[k] for k in state}, global_state)
    rebuilt = {k: v + delta[k] for k, v in global_state.items()}
    reply.content = RecordDict({"arrays": state_to_record(rebuilt), **_others(reply.content)})
    return reply


def _others(content: RecordDict) -> dict[str, Any]:
    return {k: v for k, v in content.items() if k != "arrays"}


def screen_tiers(
    replies: list[Message],
    global_state: State,
    trainable: set[str],
    ranks: tuple[int, ...],
    **rules: Any,
) -> Screened:
    """`server.replies.screen` per tier, each tier's mean padded to the global rank.

    `rules` are `screen`'s keyword arguments and must fold (`fold_by` set): a tier's replies
    become one mean reply. A reply without a tier's rank is rejected as `lora-rank`.
    """
    if rules.get("fold_by") is None:
        raise ValueError("HetLoRA rounds fold each tier into its mean: fold_by must be set")
    groups: dict[int, list[Message]] = defaultdict(list)
    out = Screened()
    for msg in replies:
        r = reply_rank(msg, ranks)
        if r is None and msg.has_content() and not msg.has_error():
            out.rejected[RANK_KEY] += 1
            log.warning("rejected reply from node %s: no tier rank", msg.metadata.src_node_id)
            continue
        # an error or an empty reply is counted by `screen` with its own reason
        groups[r if r is not None else ranks[0]].append(msg)
    for r in sorted(groups):
        cut = hetlora.truncate(global_state, r)
        part = screen(groups[r], cut, trainable, **rules)
        out.rejected.update(part.rejected)
        out.upload_bytes += part.upload_bytes
        out.clients += part.clients
        out.accepted.extend(_padded(m, cut, global_state) for m in part.accepted)
    return out
