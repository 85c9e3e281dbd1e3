"""Asking every client to evaluate a model: the report's per-client accuracies come from here."""

from __future__ import annotations

import logging
import random
import time

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
    out: dict[int, dict[str, float]] = {}
    tally = Tally(f"evaluation of round {server_round} ({phase})", len(nodes))
    for i in range(0, len(nodes), batch):
        msgs = [
            Message(content, dst_node_id=n, message_type=MessageType.EVALUATE)
            for n in nodes[i : i + batch]
        ]
        before = tally.answered
        replies = grid.send_and_receive(
            msgs,
            timeout=cfg.round_timeout,
            progress=lambda done, _, b=before: tally.heard(b + done),
        )
        tally.answered = before + len(replies)
        for m in replies:
            if m.has_error():
                reason = loggable_reason(m.error.reason)
                log.warning("evaluation failed on node %s: %s", m.metadata.src_node_id, reason)
                tally.failed += 1
                continue
            try:
                metrics = read_evaluation(m.content.get("metrics"), cfg.max_num_examples)
            except DeltaError as e:
                log.warning("evaluation of node %s refused (%s)", m.metadata.src_node_id, e.reason)
                tally.failed += 1
                continue
            out[int(metrics.pop("partition-id"))] = metrics
    tally.done(cfg.round_timeout)
    return out


class Tally:
    """How an evaluation of many clients goes, said on the console: every `every_s` seconds
    while it lasts (the final evaluation of every client once ran 207 s in silence), and at
    the end when it was long or when some clients gave no figures, with why (timed out,
    failed), since those clients are then missing from the means."""

    def __init__(self, label: str, total: int, every_s: float = 10.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.answered = self.failed = 0
        self.t0 = self.said = time.monotonic()
        self.talked = False

    def heard(self, answered: int) -> None:
        """`answered` of `total` clients have replied so far."""
        now = time.monotonic()
        if now - self.said >= self.every_s and answered < self.total:
            print(f"{self.label}: {answered}/{self.total} clients answered", flush=True)
            self.said, self.talked = now, True

    def done(self, timeout: float) -> None:
        """The closing line, when there is something to say."""
        missing = self.total - self.answered
        if not (self.talked or missing or self.failed):
            return
        why = []
        if missing:
            why.append(f"{missing} gave no answer within {timeout:g} s (round_timeout)")
        if self.failed:
            why.append(f"{self.failed} failed or were refused (see the warnings)")
        gave = self.answered - self.failed
        tail = f"; {', '.join(why)}" if why else ""
        print(
            f"{self.label}: figures from {gave} of {self.total} clients in "
            f"{time.monotonic() - self.t0:.0f} s{tail}",
            flush=True,
        )
