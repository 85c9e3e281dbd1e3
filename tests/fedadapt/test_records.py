"""Adapter tensors in Flower records, and their real size on the wire."""

import numpy as np
import pytest
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


VALUES = [
    0,
    1,
    -1,
    63,
    64,
    -65,
    2**31,
    -(2**40),
    2**63 - 1,
    -(2**63),
    2**63,  # sent as uint64
    2**64 - 1,
    0.0,
    -1.5,
    float("nan"),
    float("inf"),
    True,
    False,
]
CONFIG_ONLY = ["", "a", "é" * 70, "x" * 200, b"", b"\x00" * 130, [1, 2, -3], ["a", "bc"], [0.5]]


@pytest.mark.parametrize("shape", [(0,), (1,), (7, 3), (200, 300), (2, 0, 5), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8, np.int64])
def test_wire_bytes_of_arrays_of_any_shape_is_the_serialized_size(shape, dtype):
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.ones(shape, dtype=dtype)), "": Array(np.ones(3))}),
            "": ArrayRecord(),  # an empty record and an empty key are framed all the same
        }
    )
    assert wire_bytes(content) == recorddict_to_proto(content).ByteSize()


@pytest.mark.parametrize("value", VALUES + CONFIG_ONLY)
def test_wire_bytes_of_every_value_type_is_the_serialized_size(value):
    records = {"config": ConfigRecord({"k": value, "ключ": value})}
    if not isinstance(value, str | bytes | list | bool):  # no MetricRecord value
        records["metrics"] = MetricRecord({"k": value, "long-" * 30: value})
    content = RecordDict(records | {"empty": MetricRecord()})
    assert wire_bytes(content) == recorddict_to_proto(content).ByteSize()


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_wire_bytes_raises_like_serialization_beyond_64_bits(value):
    content = RecordDict({"metrics": MetricRecord({"n": value})})
    with pytest.raises(ValueError):
        recorddict_to_proto(content)
    with pytest.raises(ValueError, match="out of range"):
        wire_bytes(content)


def test_state_round_trips_through_a_record():
    state = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    back = record_to_state(state_to_record(state))
    assert torch.equal(back["x"], state["x"])
    back["x"][0, 0] = 99  # a copy, not a view of the record's buffer
    assert state["x"][0, 0] == 0
