"""Asking nodes for their partitions: a deadline, then an error counting who answered.

The grid stands in for Flower's (a real one needs a SuperLink and SuperNodes); the messages
it carries are real Flower Messages.
"""

import time

import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedadapt.errors import FedAdaptError
from fedadapt.server.nodes import ask_partitions
from fedadapt.simconfig import SimConfig

TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1


class Nodes:
    """`connected` nodes; each answers the query with `answers[node]` (None: silent)."""

    def __init__(self, connected: list[int], answers: dict[int, object]) -> None:
        self.connected, self.answers = connected, answers

    def get_node_ids(self) -> list[int]:
        return list(self.connected)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        out = []
        for m in messages:
            a = self.answers.get(m.metadata.dst_node_id)
            if isinstance(a, Error):
                out.append(Message(a, reply_to=m))
            elif a is not None:
                out.append(Message(RecordDict({"metrics": MetricRecord(a)}), reply_to=m))
        return out


CFG = SimConfig(num_clients=3, clients_per_round=2, round_timeout=30.0)


def test_every_node_answering_maps_node_to_partition():
    grid = Nodes(
        [11, 12, 13], {11: {"partition-id": 2}, 12: {"partition-id": 0}, 13: {"partition-id": 1}}
    )
    assert ask_partitions(grid, CFG) == {11: 2, 12: 0, 13: 1}


def test_too_few_nodes_connecting_ends_in_an_error_after_the_deadline():
    grid = Nodes([11, 12], {11: {"partition-id": 0}, 12: {"partition-id": 1}})
    t0 = time.monotonic()
    with pytest.raises(
        FedAdaptError, match=r"only 2 of 3 nodes \(num_clients\) connected within 0.3 s"
    ):
        ask_partitions(grid, CFG, wait_s=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2.0


@pytest.mark.parametrize(
    "bad",
    [
        None,
        Error(code=0, reason="crashed"),
        {"partition-id": 7},
        {"partition-id": -1},
        {"other": 1},
    ],
    ids=["silent", "error", "out-of-range", "negative", "no-partition"],
)
def test_a_node_that_does_not_answer_properly_is_counted_in_the_error(bad):
    grid = Nodes([11, 12, 13], {11: {"partition-id": 0}, 12: {"partition-id": 1}, 13: bad})
    with pytest.raises(FedAdaptError, match=r"only 2 of 3 connected nodes answered"):
        ask_partitions(grid, CFG, wait_s=0.1)
