"""Fuzzing what issue 24 made parse untrusted input: a device's own data files, a device's
rollout report, an evaluation reply's metrics, and the warm worker's frames.

Each target feeds inputs of any shape and asserts what the parser promises: only its own
error comes out (never a traceback), what it returns holds its bounds, and a device error's
wire form is a code and counts, never the text it read.
"""

from __future__ import annotations

import contextlib
import json
import socket

from flwr.app import MetricRecord
from hypothesis import example, given
from hypothesis import strategies as st

from fedadapt.clients import warm_link
from fedadapt.data.local_files import read_folder
from fedadapt.errors import DeltaError, DeviceError, loggable_reason
from fedadapt.server.claims import MAX_METRIC, read_evaluation
from fedadapt.updates.rollout_report import MAX_INT, ReportRefused, check_report
from tests.fuzz.support import count, fuzz, json_values, mutated_bytes, mutated_dict

LABELS = ["rotten", "fresh"]
CANARY = "CANARY-3b9"
JSONL = (
    json.dumps({"text": f"{CANARY} a good film", "label": "fresh"})
    + "\n"
    + json.dumps({"text": f"{CANARY} dull", "label": 0})
    + "\n"
).encode()
CSV = f"text,label\n{CANARY} a good film,fresh\n{CANARY} dull,0\n".encode()
REPORT = {
    "device": "0123456789abcdef",
    "channel": "main",
    "seq": 3,
    "stable": 1,
    "candidate": 2,
    "running": 2,
    "examples": 10,
    "stable_accuracy": 0.7,
    "candidate_accuracy": 0.8,
    "stable_latency_ms": 1.5,
    "candidate_latency_ms": 1.6,
    "stable_failures": 0,
    "candidate_failures": 1,
    "rolled_back": 0,
}
METRICS = {"partition-id": 3, "num-examples": 12, "global_accuracy": 0.8, "loss": 0.4}
numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.just(10**400))


@fuzz(2)
@given(
    st.sampled_from(["a.jsonl", "a.csv"]),
    st.one_of(mutated_bytes(JSONL), mutated_bytes(CSV), st.binary(max_size=300)),
)
@example("a.jsonl", JSONL.replace(b"a good", "a\u2028good".encode()))
@example("a.csv", f"{CANARY} no header,1\n".encode())
def test_a_data_file_of_any_bytes_is_read_or_refused_without_leaking(tmp_path_factory, name, data):
    count("device:data-file")
    folder = tmp_path_factory.mktemp("data")
    (folder / name).write_bytes(data)
    try:
        local = read_folder(folder, LABELS, 0.3, key="k")
    except DeviceError as e:
        assert CANARY not in e.wire() and loggable_reason(e.wire()) == e.wire()
        return
    for text in local.data.train_texts + local.data.test_texts:
        assert isinstance(text, str) and text.strip()
    assert all(y in (0, 1) for y in local.data.train_labels + local.data.test_labels)


@fuzz(2)
@given(
    st.one_of(
        mutated_dict(REPORT),
        json_values,
        st.fixed_dictionaries(
            {k: st.one_of(st.just(v), numbers, json_values) for k, v in REPORT.items()}
        ),
    )
)
@example({**REPORT, "examples": 10**400})
@example({**REPORT, "stable_latency_ms": 10**400})
def test_a_report_of_any_shape_is_checked_or_refused_with_a_4xx(raw):
    count("device:report")
    try:
        report = check_report(raw)
    except ReportRefused as e:
        assert 400 <= e.status < 500
        return
    for name in ("seq", "stable", "candidate", "examples", "candidate_failures"):
        assert 0 <= report[name] <= MAX_INT
    assert 0 <= report["candidate_accuracy"] <= 1 and 0 <= report["stable_accuracy"] <= 1


@fuzz(2)
@given(st.one_of(mutated_dict(METRICS), st.dictionaries(st.text(max_size=12), numbers)))
@example({**METRICS, "global_accuracy": 1e300})
def test_evaluation_metrics_of_any_value_are_bounded_or_refused(metrics):
    count("server:evaluation-metrics")
    try:
        record = MetricRecord(metrics)
    except (TypeError, ValueError):
        return  # not even a record Flower can hold: it never reaches the server
    try:
        out = read_evaluation(record, cap=1000)
    except DeltaError:
        return
    assert isinstance(out["partition-id"], int) and out["partition-id"] >= 0
    for key, value in out.items():
        assert abs(value) <= MAX_METRIC
        if key.endswith("accuracy"):
            assert 0 <= value <= 1


@fuzz(2)
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1), st.sampled_from(b"MCEZ"))
def test_a_frame_of_any_header_and_body_is_read_or_refused(body, size, kind):
    count("warm:frame")
    a, b = socket.socketpair()
    with a, b:
        a.sendall(warm_link.HEADER.pack(bytes([kind]), size) + body)
        a.shutdown(socket.SHUT_WR)
        with contextlib.suppress(warm_link.LinkError, ConnectionError):
            got_kind, payload = warm_link.recv_frame(b, max_frame=1 << 20)
            assert got_kind == bytes([kind]) and len(payload) == size <= 1 << 20
