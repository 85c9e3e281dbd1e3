"""Adapter tensors in Flower records, and what they cost on the wire.

A delta reply travels as the delta codec's safetensors bytes inside one `uint8` Array, so the
codec (fp32, fp16 or int8 with its scales) is the single definition of the format, and the
server can reject a malformed or oversized reply before decoding anything.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde_utils import record_value_dict_to_proto
from flwr.proto.recorddict_pb2 import Array as ProtoArray
from flwr.proto.recorddict_pb2 import ConfigRecordValue as ConfigValue
from flwr.proto.recorddict_pb2 import MetricRecordValue as MetricValue

from fedadapt.codecs import decode
from fedadapt.deltas import State

DELTA_KEY = "delta"


def state_to_record(state: State) -> ArrayRecord:
    """Named tensors as a Flower `ArrayRecord`, copied to CPU and detached from autograd."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def record_to_state(record: ArrayRecord) -> State:
    """Named tensors back from an `ArrayRecord`: writable copies, not views of the message."""
    # Array.numpy() deserializes one array; ArrayRecord.to_numpy_ndarrays() would also run
    # gc.collect() on every call.
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def pack_delta(blob: bytes) -> ArrayRecord:
    """A delta codec's bytes (`fedadapt.codecs.encode`) as one `uint8` Array under `delta`."""
    return ArrayRecord({DELTA_KEY: Array(np.frombuffer(blob, dtype=np.uint8))})


def delta_blob(record: ArrayRecord) -> bytes:
    """The raw codec bytes of a delta reply (KeyError if the record holds none)."""
    return record[DELTA_KEY].numpy().tobytes()


def unpack_delta(record: ArrayRecord) -> State:
    """The fp32 delta in a reply: `DeltaError` if it is malformed, `KeyError` if missing."""
    return decode(delta_blob(record))


def wire_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content: what crosses the network in deployment.

    Building the protobuf copies every array (1.2 s for the 90 MB full-model message, 20 of
    them per baseline round, and most of the server's time per delta reply), yet the size
    follows from protobuf's encoding rules: each array's bytes plus a header that depends
    only on its dtype, shape and stype (measured once per such signature on an empty-data
    proto), each scalar metric by its wire type, and every message framed by a tag and a
    varint length. Still the exact `recorddict_to_proto(content).ByteSize()`, and it raises
    `ValueError`/`TypeError` where that would (an int beyond 64 bits, a value of no record
    type); a list value is sized by Flower's own serializer.
    """
    total = 0
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            size = sum(_framed(_key(k) + _framed(_array(a))) for k, a in record.items())
        elif isinstance(record, MetricRecord):
            size = sum(_framed(_key(k) + _framed(_value(v, False))) for k, v in record.items())
        elif isinstance(record, ConfigRecord):
            size = sum(_framed(_key(k) + _framed(_value(v, True))) for k, v in record.items())
        else:
            raise ValueError(f"Unsupported record type: {type(record)}")
        total += _framed(_key(name) + _framed(size))
    return total


_INT64 = 1 << 63
_UINT64 = 1 << 64
_CONFIG_TYPES = [bool, int, float, str, bytes]  # Flower's order (bool before int)
_METRIC_TYPES = [float, int]


def _varint(n: int) -> int:
    """Bytes of `n >= 0` as a protobuf varint."""
    return 1 if n < 0x80 else (n.bit_length() + 6) // 7


def _framed(n: int) -> int:
    """A length-delimited field of `n` bytes under a one-byte tag (every field number the
    record protos use for one is below 16)."""
    return 1 + _varint(n) + n


@lru_cache(maxsize=4096)
def _key(key: str) -> int:
    """A string key's field; proto3 leaves an empty string out."""
    n = len(key.encode())
    return _framed(n) if n else 0


@lru_cache(maxsize=1024)
def _array_head(dtype: str, shape: tuple, stype: str) -> int:
    return ProtoArray(dtype=dtype, shape=shape, stype=stype).ByteSize()


def _array(a: Array) -> int:
    n = len(a.data)
    return _array_head(a.dtype, tuple(a.shape), a.stype) + (_framed(n) if n else 0)


def _value(v: object, config: bool) -> int:
    """A record value's `*RecordValue` message (a oneof: present even when zero or empty)."""
    t = type(v)
    if t is float:
        return 9  # tag + 8-byte double
    if t is int:
        if -_INT64 <= v < _INT64:
            return 1 + _varint(2 * v if v >= 0 else -2 * v - 1)  # zigzag sint64
        if _INT64 <= v < _UINT64:
            return 1 + _varint(v)  # Flower sends it as uint64
        raise ValueError(f"Value out of range: {v}")
    if t is bool:
        return 2
    if config and t is str:
        return _framed(len(v.encode()))
    if config and t is bytes:
        return _framed(len(v))
    if config:
        return record_value_dict_to_proto({"v": v}, _CONFIG_TYPES, ConfigValue)["v"].ByteSize()
    return record_value_dict_to_proto({"v": v}, _METRIC_TYPES, MetricValue)["v"].ByteSize()
