"""Which node holds which data partition, and the grid's nodes listed in partition order."""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedadapt.errors import FedAdaptError
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
        """The live nodes in partition order; a node that was not there when the order was taken is
        left out.
        """
        live = set(self._grid.get_node_ids())
        return [n for n in self._order if n in live]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _partition(reply: Message, num_clients: int) -> int | None:
    """The partition id a node reports, or None for an error or a malformed answer."""
    if reply.has_error() or not reply.has_content():
        return None
    metrics = reply.content.get("metrics")
    pid = metrics.get("partition-id") if isinstance(metrics, MetricRecord) else None
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < num_clients:
        log.warning("node %s reported partition %r", reply.metadata.src_node_id, pid)
        return None
    return pid


def ask_partitions(grid: Grid, cfg: SimConfig, wait_s: float | None = None) -> dict[int, int]:
    """node id → partition id, from every node.

    Waits up to `wait_s` seconds (default: `round_timeout`) for `num_clients` nodes to
    connect, and as long again for their answers; then a `FedAdaptError` says how many nodes
    connected or answered of how many expected, instead of waiting forever.
    """
    wait_s = cfg.round_timeout if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while len(nodes := list(grid.get_node_ids())) < cfg.num_clients:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FedAdaptError(
                f"only {len(nodes)} of {cfg.num_clients} nodes (num_clients) connected within "
                f"{wait_s:g} s (round_timeout); start the missing SuperNodes or lower num_clients"
            )
        log.info("waiting for nodes: %d of %d connected", len(nodes), cfg.num_clients)
        time.sleep(min(1.0, left))
    msgs = [
        Message(
            RecordDict({"config": ConfigRecord({"server-round": 0})}),
            dst_node_id=n,
            message_type=MessageType.QUERY,
        )
        for n in nodes
    ]
    out = {}
    for reply in grid.send_and_receive(msgs, timeout=wait_s):
        pid = _partition(reply, cfg.num_clients)
        if pid is not None:
            out[reply.metadata.src_node_id] = pid
    if len(out) < cfg.num_clients:
        raise FedAdaptError(
            f"only {len(out)} of {len(nodes)} connected nodes answered the partition query "
            f"with a partition id in [0, {cfg.num_clients}) within {wait_s:g} s (round_timeout); "
            f"{cfg.num_clients} (num_clients) are needed"
        )
    return out
