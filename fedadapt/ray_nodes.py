"""Which Ray node ran a ClientApp: the address a run joins, and the node ids it reports.

`fedadapt simulate --ray-address ADDR` runs the ClientApps on an existing Ray cluster. Flower
1.42's federation config has no key for the address (its `SimulationConfig` carries only
`init-args-num-cpus`, `-num-gpus`, `-logging-level` and `-log-to-driver`), and its Ray
backend calls `ray.init(**init_args)` without one, so `ray.init` reads `RAY_ADDRESS` from the
environment, which the SuperLink passes down to `flwr-simulation`. Each ClientApp names its
Ray node and its process's peak RSS in the reply's `worker` record; the server lists the
nodes that trained in each round and the largest actor RSS (`report.json`
`rounds[].ray_nodes`, `rounds[].actor_peak_rss_mb`).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fedadapt.errors import FedAdaptError

if TYPE_CHECKING:
    from flwr.app import ConfigRecord, Message

WORKER_RECORD = "worker"
NODE_KEY = "ray-node-id"
RSS_KEY = "peak-rss-mb"


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a `HOST:PORT` where no Ray cluster listens, before any process
    starts (`ray.init` would otherwise fail deep inside the simulation's subprocess).
    `auto` and `ray://` (Ray Client) addresses are left to Ray."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedAdaptError(
            f"ray_address {address!r} is not HOST:PORT (the address `ray start --head` prints)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise FedAdaptError(
            f"ray_address {address!r}: no Ray cluster answers there ({e.strerror or e}); "
            "start one with `ray start --head` or fix the address"
        ) from None


def this_node() -> str | None:
    """This process's Ray node id when it runs as a Ray worker (a simulated ClientApp),
    else None. Ray is never imported here: a deployed SuperNode does not have it loaded."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return str(ray.get_runtime_context().get_node_id())


def worker_record() -> dict[str, ConfigRecord]:
    """The reply content naming this Ray node and the actor's peak RSS, or nothing outside
    Ray."""
    from flwr.app import ConfigRecord

    node = this_node()
    return {WORKER_RECORD: ConfigRecord({NODE_KEY: node, RSS_KEY: peak_rss_mb()})} if node else {}


def workers_of(replies: Iterable[Message]) -> dict[str, list[str] | float]:
    """What the (raw, unscreened) replies say of their workers: the distinct Ray node ids,
    sorted, and the largest actor peak RSS; empty outside Ray. Only reported, never trusted:
    a malformed record is skipped."""
    from flwr.app import ConfigRecord

    nodes, rss = set(), []
    for m in replies:
        record = None if m.has_error() else m.content.get(WORKER_RECORD)
        if not isinstance(record, ConfigRecord):
            continue
        node, mb = record.get(NODE_KEY), record.get(RSS_KEY)
        if isinstance(node, str) and node:
            nodes.add(node)
        if isinstance(mb, float):
            rss.append(mb)
    out: dict[str, list[str] | float] = {"ray_nodes": sorted(nodes)} if nodes else {}
    return out | ({"actor_peak_rss_mb": max(rss)} if rss else {})
