"""Which node holds which data partition, and the grid's nodes listed in partition order."""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedadapt.simconfig import SimConfig

log = logging.getLogger("fedadapt.server")


class PartitionOrderedGrid:
    """The grid, with live nodes listed in partition order.

    Node ids differ between runs; listing nodes by the partition they hold makes the
    seeded sampling pick the same clients in a fresh run and in a resumed one.
    """

    def __init__(self, grid: Grid, order: list[int]) -> None:
        self._grid, self._order = grid, order

    def get_node_ids(self) -> list[int]:
        live = set(self._grid.get_node_ids())
        return [n for n in self._order if n in live]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def ask_partitions(grid: Grid, cfg: SimConfig) -> dict[int, int]:
    """node id → partition id, from every node (waits until all have connected)."""
    while len(nodes := list(grid.get_node_ids())) < cfg.num_clients:
        log.info("waiting for nodes: %d of %d connected", len(nodes), cfg.num_clients)
        time.sleep(1)
    msgs = [
        Message(
            RecordDict({"config": ConfigRecord({"server-round": 0})}),
            dst_node_id=n,
            message_type=MessageType.QUERY,
        )
        for n in nodes
    ]
    replies = grid.send_and_receive(msgs, timeout=cfg.round_timeout)
    return {
        m.metadata.src_node_id: int(m.content["metrics"]["partition-id"])
        for m in replies
        if not m.has_error()
    }
