"""Adapter tensors in Flower records, and their real size on the wire."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedadapt.records import record_to_state, state_to_record, wire_bytes


def _content(seed: int, rows: int, loss: float, examples: int) -> RecordDict:
    g = torch.Generator().manual_seed(seed)
    state = {"a.weight": torch.randn(rows, 8, generator=g), "a.bias": torch.randn(8, generator=g)}
    metrics = MetricRecord({"train_loss": loss, "num-examples": examples})
    return RecordDict({"arrays": state_to_record(state), "metrics": metrics})


def test_wire_bytes_is_the_serialized_size_whatever_is_cached():
    contents = [
        _content(0, 4, 0.5, 10),
        _content(1, 4, 0.25, 10),  # same shapes, other data: a cache hit
        _content(2, 4, 0.25, 100_000),  # a longer varint in the metrics
        _content(3, 5, 0.25, 10),  # another shape
        RecordDict({"config": ConfigRecord({"phase": "full", "server-round": 3})}),
        RecordDict({"arrays": ArrayRecord({"delta": Array(np.zeros(300, dtype=np.uint8))})}),
    ]
    for content in contents + contents:
        assert wire_bytes(content) == recorddict_to_proto(content).ByteSize()
    assert len({wire_bytes(c) for c in contents}) == 5  # only the first two are the same size


def test_state_round_trips_through_a_record():
    state = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    back = record_to_state(state_to_record(state))
    assert torch.equal(back["x"], state["x"])
    back["x"][0, 0] = 99  # a copy, not a view of the record's buffer
    assert state["x"][0, 0] == 0
