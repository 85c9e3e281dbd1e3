"""Asking every client to evaluate a model: the report's per-client accuracies come from here."""

from __future__ import annotations

import logging
import random

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedadapt.errors import DeltaError, loggable_reason
from fedadapt.model_setup import mix_seed
from fedadapt.records import wire_bytes
from fedadapt.server.claims import read_evaluation
from fedadapt.simconfig import SimConfig

log = logging.getLogger("fedadapt.server")
EVAL_INFLIGHT_BYTES = 2 << 30


def round_sample(nodes: list[int], cfg: SimConfig, server_round: int) -> list[int]:
    """The nodes evaluated after a round that is not the last: all of them, or a seeded sample
    of `evaluate_sample` (asking 1000 clients every round would cost more than training)."""
    k = cfg.evaluate_sample
    if k == 0 or k >= len(nodes):
        return list(nodes)
    rng = random.Random(mix_seed(cfg.seed, server_round, "evaluate"))
    return sorted(rng.sample(sorted(nodes), k))


def evaluate_all(
    grid: Grid,
    nodes: list[int],
    arrays: ArrayRecord,
    cfg: SimConfig,
    server_round: int,
    phase: str,
    baselines: bool = False,
) -> dict[int, dict[str, float]]:
    """Every node's metrics, by partition id.

    The SuperLink holds each queued message in memory, so nodes are asked in batches of at
    most `EVAL_INFLIGHT_BYTES`: all 338 rt-full clients at once for a 240 kB adapter, ~22 at a
    time for the 90 MB full model (338 at once would queue 30 GB).
    """
    conf = ConfigRecord({"server-round": server_round, "phase": phase, "baselines": baselines})
    content = RecordDict({"arrays": arrays, "config": conf})
    batch = max(1, EVAL_INFLIGHT_BYTES // wire_bytes(content))
    out = {}
    for i in range(0, len(nodes), batch):
        msgs = [
            Message(content, dst_node_id=n, message_type=MessageType.EVALUATE)
            for n in nodes[i : i + batch]
        ]
        for m in grid.send_and_receive(msgs, timeout=cfg.round_timeout):
            if m.has_error():
                reason = loggable_reason(m.error.reason)
                log.warning("evaluation failed on node %s: %s", m.metadata.src_node_id, reason)
                continue
            try:
                metrics = read_evaluation(m.content.get("metrics"), cfg.max_num_examples)
            except DeltaError as e:
                log.warning("evaluation of node %s refused (%s)", m.metadata.src_node_id, e.reason)
                continue
            out[int(metrics.pop("partition-id"))] = metrics
    return out
