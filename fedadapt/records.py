"""Adapter tensors in Flower records, and what they cost on the wire.

A delta reply travels as the delta codec's safetensors bytes inside one `uint8` Array, so the
codec (fp32, fp16 or int8 with its scales) is the single definition of the format, and the
server can reject a malformed or oversized reply before decoding anything.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedadapt.codecs import decode
from fedadapt.deltas import State

DELTA_KEY = "delta"


def state_to_record(state: State) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in state.items()})


def record_to_state(record: ArrayRecord) -> State:
    # Array.numpy() deserializes one array; ArrayRecord.to_numpy_ndarrays() would also run
    # gc.collect() on every call.
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def pack_delta(blob: bytes) -> ArrayRecord:
    return ArrayRecord({DELTA_KEY: Array(np.frombuffer(blob, dtype=np.uint8))})


def delta_blob(record: ArrayRecord) -> bytes:
    """The raw codec bytes of a delta reply (KeyError if the record holds none)."""
    return record[DELTA_KEY].numpy().tobytes()


def unpack_delta(record: ArrayRecord) -> State:
    return decode(delta_blob(record))


def wire_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content: what crosses the network in deployment.

    Building the protobuf copies every array (1.2 s for the 90 MB full-model message, 20 of
    them per baseline round), yet the size depends only on each array's name, dtype, shape
    and byte length plus the small records' own bytes. So it is computed once per such
    signature and looked up after that: still the exact serialized size.
    """
    sig = _signature(content)
    size = _SIZES.get(sig)
    if size is None:
        if len(_SIZES) >= 256:
            _SIZES.clear()
        size = _SIZES[sig] = recorddict_to_proto(content).ByteSize()
    return size


_SIZES: dict[tuple, int] = {}


def _signature(content: RecordDict) -> tuple:
    parts = []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = tuple(
                (k, a.dtype, tuple(a.shape), a.stype, len(a.data)) for k, a in record.items()
            )
            parts.append((name, arrays))
        else:
            small = RecordDict({name: record})
            parts.append((name, recorddict_to_proto(small).SerializeToString()))
    return tuple(parts)
