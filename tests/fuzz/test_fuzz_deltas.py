"""Fuzzing the delta decoder and the server's reply screen.

`decode` sees the bytes a client uploads: it returns fp32 tensors or raises `DeltaError`.
`screen` sees whole Flower replies: it never raises, and every reply is either accepted or
rejected with a named reason; `unreadable` (its last-resort catch-all) would mean some check
let a non-`FedAdaptError` exception out, so it counts as a bug here.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save

from fedadapt.codecs import CODECS, decode, encode
from fedadapt.errors import DeltaError, FedAdaptError
from fedadapt.records import pack_delta
from fedadapt.server.replies import screen
from tests.fuzz.support import (
    canonical_safetensors,
    count,
    fuzz,
    huge_ints,
    json_values,
    mutated_bytes,
    safetensors_blob,
)

SHA = "a" * 64
GLOBAL = {"x.adapter_up.weight": torch.zeros(4, 2), "head.bias": torch.ones(2)}
VALID = {c: encode({k: torch.full_like(v, 0.5) for k, v in GLOBAL.items()}, c) for c in CODECS}
WIRE = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
odd_values = st.sampled_from([0.0, 1.0, -3.5, 1e30, float("nan"), float("inf"), float("-inf")])
codec_metadata = st.one_of(
    st.fixed_dictionaries(
        {"codec": st.sampled_from([*CODECS, "zstd", ""])},
        optional={"scales": st.one_of(st.text(max_size=20), st.builds(json.dumps, json_values))},
    ),
    json_values,
)


@st.composite
def delta_blobs(draw: st.DrawFn) -> bytes:
    """A valid codec payload with up to two defects a client could send: a wrong, extra or
    missing name, a wrong shape or dtype, NaN/Inf/huge values, a broken scale table."""
    codec = draw(st.sampled_from(CODECS))
    tensors = {k: torch.full_like(v, 0.25) for k, v in GLOBAL.items()}
    scales: dict = dict.fromkeys(tensors, 0.01)
    for defect in draw(st.lists(st.sampled_from(DEFECTS), max_size=2)):
        k = draw(st.sampled_from(sorted(GLOBAL)))
        if defect == "extra":
            tensors["encoder.other"] = torch.zeros(3)
        elif defect == "missing":
            tensors.pop(k, None)
        elif defect == "shape" and k in tensors:
            tensors[k] = torch.zeros(draw(st.lists(st.integers(0, 5), max_size=3)))
        elif defect == "value" and k in tensors:
            tensors[k] = torch.full(tensors[k].shape, draw(odd_values))
        elif defect == "dtype" and k in tensors:
            tensors[k] = tensors[k].to(draw(st.sampled_from([*list(WIRE.values()), torch.int32])))
        elif defect == "scale":
            scales[k] = draw(st.one_of(odd_values, huge_ints, json_values))
    wire = {
        k: v.to(WIRE[codec]) if v.dtype.is_floating_point and v.dtype != WIRE[codec] else v
        for k, v in tensors.items()
    }
    meta = {"codec": codec} | ({"scales": json.dumps(scales)} if codec == "int8" else {})
    return canonical_safetensors(save({k: v.contiguous() for k, v in wire.items()}, metadata=meta))


DEFECTS = ["extra", "missing", "shape", "value", "dtype", "scale"]
rarely = st.sampled_from([False] * 9 + [True])
payloads = st.one_of(
    delta_blobs(),
    st.sampled_from(sorted(VALID.values())).flatmap(mutated_bytes),
    safetensors_blob(names=[*GLOBAL, "z"], metadata=codec_metadata),
    st.binary(max_size=64),
)


@fuzz(2)
@given(payloads)
def test_decode_returns_fp32_or_raises_delta_error(data: bytes) -> None:
    count("codec:decode")
    try:
        out = decode(data)
    except DeltaError:
        return
    assert all(v.dtype == torch.float32 for v in out.values())


# -- replies ------------------------------------------------------------------------------------
metric_values = st.one_of(
    st.integers(-3, 10**6), huge_ints, st.floats(), st.lists(st.integers(-2, 5), max_size=2)
)
GOOD_METRICS = {"num-examples": 10, "train_loss": 0.5, "dp-weight": 1.0}
metrics = st.one_of(
    st.just(GOOD_METRICS),
    st.just(GOOD_METRICS),
    st.just(GOOD_METRICS),
    st.builds(
        lambda good, bad: {**good, **bad},
        st.just(GOOD_METRICS),
        st.dictionaries(st.sampled_from([*GOOD_METRICS, "other"]), metric_values, max_size=2),
    ),
    st.dictionaries(st.sampled_from([*GOOD_METRICS, "other"]), metric_values),
)
config_values = st.one_of(st.just(SHA), st.sampled_from(["b" * 64, ""]), st.integers(), st.binary())


@st.composite
def arrays_records(draw: st.DrawFn) -> ArrayRecord:
    kind = draw(st.sampled_from(["delta"] * 6 + ["float", "2d", "extra"]))
    blob = draw(st.one_of(delta_blobs(), delta_blobs(), delta_blobs(), payloads))
    if kind == "delta":
        return pack_delta(blob)
    if kind == "float":  # the delta bytes reinterpreted as another dtype
        return ArrayRecord({"delta": Array(np.frombuffer(blob[: len(blob) // 4 * 4], np.float32))})
    if kind == "2d":
        return ArrayRecord({"delta": Array(np.frombuffer(blob, np.uint8).reshape(1, -1))})
    return ArrayRecord({"delta": Array(np.frombuffer(blob, np.uint8)), "x": Array(np.zeros(2))})


@st.composite
def replies(draw: st.DrawFn) -> Message:
    records = {
        "arrays": arrays_records(),
        "metrics": st.builds(MetricRecord, metrics),
        "delta-meta": st.one_of(
            st.just(ConfigRecord({"base-sha256": SHA, "codec": "fp32"})),
            st.just(ConfigRecord({"base-sha256": SHA, "codec": "fp32"})),
            st.builds(ConfigRecord, st.dictionaries(st.just("base-sha256"), config_values)),
        ),
    }
    content = {}
    for name, strategy in records.items():
        if draw(rarely) is False:  # mostly present
            content[name] = draw(strategy)
    if draw(rarely):  # a record of the wrong kind under a known name
        wrong = draw(st.sampled_from(sorted(records)))
        content[draw(st.sampled_from(sorted(records)))] = draw(records[wrong])
    msg = Message(RecordDict(content), dst_node_id=1, message_type="train")
    if draw(rarely):
        return Message(Error(code=0, reason="ClientApp crashed"), reply_to=msg)
    return msg


@fuzz(0.5)
@given(
    st.lists(replies(), min_size=1, max_size=3),
    st.sampled_from([None, "num-examples"]),
    st.sampled_from([0, 1000]),
    st.booleans(),
)
def test_screen_never_raises_and_names_every_rejection(
    msgs: list[Message], fold_by: str | None, cap: int, dp: bool
) -> None:
    count("replies:screen")
    log = logging.getLogger("fedadapt.server")
    log.disabled = True  # 100,000 warnings would only slow the fuzzing down
    try:
        s = screen(msgs, GLOBAL, set(GLOBAL), SHA, 50_000, 1.0, fold_by, cap, dp)
    finally:
        log.disabled = False
    assert "unreadable" not in s.rejected, "a check raised something other than DeltaError"
    assert s.clients + sum(s.rejected.values()) == len(msgs)
    for reply in s.accepted:
        for a in reply.content["arrays"].values():
            assert np.isfinite(a.numpy()).all()


@fuzz(1)
@given(st.dictionaries(st.sampled_from(["a", "b"]), st.floats(width=32)), st.sampled_from(CODECS))
def test_encode_refuses_non_finite_or_round_trips(values: dict, codec: str) -> None:
    count("codec:encode")
    delta = {k: torch.full((3,), v) for k, v in values.items()}
    try:
        out = decode(encode(delta, codec))
    except FedAdaptError:
        assert not all(np.isfinite(v) for v in values.values())
        return
    assert set(out) == set(delta)
