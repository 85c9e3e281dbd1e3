"""Replies of every malformed shape: each is refused with its named reason, none raises.

Each bad reply is screened beside one good reply, on both server paths: the fold path (FedAvg
and the server optimizers, replies folded into their mean as they come) and the per-reply path
(trimmed mean, median, central DP), and what is accepted then goes through Flower's own
`aggregate_train`, as in a round.
"""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import save

from fedadapt.clients.attacks import INFLATED_EXAMPLES, attack, claimed_examples
from fedadapt.codecs import encode
from fedadapt.records import pack_delta, record_to_state
from fedadapt.server.replies import screen, screen_full

TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
SHA = "a" * 64
GLOBAL = {"x.adapter_up.weight": torch.zeros(4, 2), "head.bias": torch.ones(2)}
GOOD = {k: torch.full_like(v, 0.25) for k, v in GLOBAL.items()}
METRICS = {"num-examples": 10, "train_loss": 0.5, "dp-weight": 1.0}


def _content(metrics=None, arrays=None, meta=None, drop=()) -> RecordDict:
    content = {
        "arrays": arrays if arrays is not None else pack_delta(encode(GOOD)),
        "metrics": metrics if metrics is not None else MetricRecord(METRICS),
        "delta-meta": meta if meta is not None else ConfigRecord({"base-sha256": SHA}),
    }
    return RecordDict({k: v for k, v in content.items() if k not in drop})


def _msg(content: RecordDict) -> Message:
    return Message(content, dst_node_id=1, message_type="train")


def _with_metrics(**changes) -> Message:
    metrics = {k: v for k, v in {**METRICS, **changes}.items() if v is not None}
    return _msg(_content(metrics=MetricRecord(metrics)))


def _no_content() -> Message:
    msg = _msg(_content())
    msg.__dict__["_content"] = None  # neither content nor error: no Flower API makes this
    return msg


def _bool_examples() -> Message:
    metrics = MetricRecord(METRICS)
    metrics.__dict__["_data"]["num-examples"] = True  # Flower refuses bools; a bug may not
    return _msg(_content(metrics=metrics))


def _blob(blob: bytes) -> Message:
    return _msg(_content(arrays=pack_delta(blob)))


def _raw_array(data: bytes, dtype="uint8", shape=None) -> Message:
    a = Array(dtype=dtype, shape=shape or (len(data),), stype="numpy.ndarray", data=data)
    return _msg(_content(arrays=ArrayRecord({"delta": a})))


def _error() -> Message:
    return Message(Error(code=0, reason="ClientApp crashed"), reply_to=_msg(_content()))


NAN = float("nan")
CASES = {
    # missing content or records
    "no-content": (_no_content, "malformed"),
    "empty-content": (lambda: _msg(RecordDict()), "metrics"),
    "no-metrics": (lambda: _msg(_content(drop=("metrics",))), "metrics"),
    "no-arrays": (lambda: _msg(_content(drop=("arrays",))), "malformed"),
    "no-meta": (lambda: _msg(_content(drop=("delta-meta",))), "malformed"),
    "error-message": (_error, "client-error"),
    # wrong record types
    "metrics-as-config": (lambda: _msg(_content(metrics=ConfigRecord(METRICS))), "metrics"),
    "arrays-as-metrics": (lambda: _msg(_content(arrays=MetricRecord({"delta": 1}))), "malformed"),
    "meta-as-arrays": (lambda: _msg(_content(meta=pack_delta(b"x"))), "malformed"),
    "extra-array": (
        lambda: _msg(
            _content(
                arrays=ArrayRecord(
                    {"delta": Array(np.zeros(3, np.uint8)), "more": Array(np.zeros(2))}
                )
            )
        ),
        "malformed",
    ),
    "sha-as-int": (lambda: _msg(_content(meta=ConfigRecord({"base-sha256": 7}))), "base-model"),
    # wrong metric types
    "examples-missing": (lambda: _with_metrics(**{"num-examples": None}), "num-examples"),
    "examples-float": (lambda: _with_metrics(**{"num-examples": 10.0}), "num-examples"),
    "examples-list": (lambda: _with_metrics(**{"num-examples": [10]}), "num-examples"),
    "examples-bool": (_bool_examples, "num-examples"),
    "loss-missing": (lambda: _with_metrics(train_loss=None), "train-loss"),
    "loss-list": (lambda: _with_metrics(train_loss=[0.5]), "train-loss"),
    # garbage bytes
    "garbage-blob": (lambda: _blob(bytes(range(256)) * 4), "malformed"),
    "garbage-array": (lambda: _raw_array(b"\x00garbage, not numpy"), "malformed"),
    "float-array": (lambda: _raw_array(np.zeros(4, np.float32).tobytes(), "float32"), "malformed"),
    "unknown-codec": (
        lambda: _blob(save({"head.bias": torch.zeros(2)}, {"codec": "zstd"})),
        "malformed",
    ),
    # huge values
    "examples-billion": (lambda: _with_metrics(**{"num-examples": 10**9}), "num-examples-cap"),
    "examples-beyond-int64": (lambda: _with_metrics(**{"num-examples": 2**70}), "num-examples-cap"),
    "loss-beyond-int64": (lambda: _with_metrics(train_loss=2**70), "train-loss"),  # > bound
    "loss-inf": (lambda: _with_metrics(train_loss=float("inf")), "train-loss"),
    # negative values
    "examples-negative": (lambda: _with_metrics(**{"num-examples": -5}), "num-examples"),
    "examples-zero": (lambda: _with_metrics(**{"num-examples": 0}), "num-examples"),
    "loss-negative": (lambda: _with_metrics(train_loss=-1.0), "train-loss"),
    # NaN
    "examples-nan": (lambda: _with_metrics(**{"num-examples": NAN}), "num-examples"),
    "loss-nan": (lambda: _with_metrics(train_loss=NAN), "train-loss"),
    "delta-nan": (
        lambda: _blob(save({**GOOD, "head.bias": torch.tensor([NAN, 0.0])}, {"codec": "fp32"})),
        "non-finite",
    ),
    "int8-nan-scale": (
        lambda: _blob(
            save(
                {k: torch.ones(v.shape, dtype=torch.int8) for k, v in GOOD.items()},
                {"codec": "int8", "scales": '{"head.bias": NaN, "x.adapter_up.weight": 1}'},
            )
        ),
        "non-finite",
    ),
}


def _aggregate(accepted: list[Message]) -> dict[str, torch.Tensor]:
    arrays, _ = FedAvg(min_train_nodes=1, min_available_nodes=1).aggregate_train(1, accepted)
    return record_to_state(arrays)


@pytest.mark.parametrize("fold_by", [None, "num-examples"], ids=["per-reply", "fold"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_reply_is_refused_with_its_reason(case, fold_by):
    make, reason = CASES[case]
    s = screen(
        [make(), _msg(_content())],
        GLOBAL,
        set(GLOBAL),
        SHA,
        max_bytes=50_000,
        fold_by=fold_by,
        max_examples=1000,
    )
    assert dict(s.rejected) == {reason: 1}
    assert s.clients == 1 and len(s.accepted) == 1
    new = _aggregate(s.accepted)
    for k, v in GLOBAL.items():
        torch.testing.assert_close(new[k], v + GOOD[k])  # the good reply alone


@pytest.mark.parametrize(
    ("weight", "accepted"), [(1.0, True), (1, True), (3.0, False), (NAN, False), (None, False)]
)
def test_central_dp_needs_a_dp_weight_of_one(weight, accepted):
    s = screen([_with_metrics(**{"dp-weight": weight})], GLOBAL, set(GLOBAL), SHA, 50_000, dp=True)
    assert s.clients == int(accepted)
    assert dict(s.rejected) == ({} if accepted else {"dp-weight": 1})
    if accepted:  # only the checked metrics reach the strategy
        assert dict(s.accepted[0].content["metrics"]) == METRICS


def test_only_the_checked_metrics_and_arrays_reach_the_strategy():
    content = _content(metrics=MetricRecord({**METRICS, "junk": [1.0, 2.0]}))
    content["extra"] = ArrayRecord({"w": Array(np.zeros(2))})
    s = screen([_msg(content)], GLOBAL, set(GLOBAL), SHA, 50_000)
    assert set(s.accepted[0].content) == {"arrays", "metrics"}
    assert dict(s.accepted[0].content["metrics"]) == {"num-examples": 10, "train_loss": 0.5}


def _honest_and_inflating(n_honest: int = 4) -> list[Message]:
    """Honest clients push +0.25; one attacker sends the flipped delta and claims a billion."""
    honest = [
        _msg(_content(metrics=MetricRecord({**METRICS, "num-examples": 50})))
        for _ in range(n_honest)
    ]
    bad = attack(GOOD, "inflate-examples", seed=0)
    claim = claimed_examples("inflate-examples", 50)
    inflated = MetricRecord({**METRICS, "num-examples": claim})
    return [*honest, _msg(_content(metrics=inflated, arrays=pack_delta(encode(bad))))]


@pytest.mark.parametrize("fold_by", [None, "num-examples"], ids=["per-reply", "fold"])
def test_the_cap_rejects_an_inflate_examples_attacker(fold_by):
    capped = screen(
        _honest_and_inflating(),
        GLOBAL,
        set(GLOBAL),
        SHA,
        50_000,
        fold_by=fold_by,
        max_examples=1000,
    )
    assert dict(capped.rejected) == {"num-examples-cap": 1} and capped.clients == 4
    torch.testing.assert_close(_aggregate(capped.accepted)["head.bias"], torch.full((2,), 1.25))
    # without the cap, the attacker owns the mean: the global moves against the honest clients
    open_ = screen(_honest_and_inflating(), GLOBAL, set(GLOBAL), SHA, 50_000, fold_by=fold_by)
    assert not open_.rejected and open_.clients == 5
    owned = _aggregate(open_.accepted)["head.bias"]
    assert INFLATED_EXAMPLES >= 10**9
    torch.testing.assert_close(owned, torch.full((2,), 0.75), atol=1e-5, rtol=0)


def _full(state=None, metrics=None) -> Message:
    state = state if state is not None else {k: v + 0.5 for k, v in GLOBAL.items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v.numpy()) for k, v in state.items()}),
            "metrics": metrics if metrics is not None else MetricRecord(METRICS),
        }
    )
    return _msg(content)


FULL_CASES = {
    "no-metrics": (lambda: _msg(RecordDict({"arrays": _full().content["arrays"]})), "metrics"),
    "over-cap": (
        lambda: _full(metrics=MetricRecord({**METRICS, "num-examples": 10**9})),
        "num-examples-cap",
    ),
    "missing-tensor": (lambda: _full({"head.bias": torch.ones(2)}), "missing-names"),
    "unknown-tensor": (lambda: _full({**GLOBAL, "extra": torch.ones(2)}), "unknown-names"),
    "shape": (lambda: _full({**GLOBAL, "head.bias": torch.ones(3)}), "shape"),
    "nan": (lambda: _full({**GLOBAL, "head.bias": torch.tensor([NAN, 1.0])}), "non-finite"),
    "int": (lambda: _full({**GLOBAL, "head.bias": torch.ones(2, dtype=torch.int32)}), "dtype"),
    "garbage": (
        lambda: _full_with(Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"junk")),
        "malformed",
    ),
    "error": (_error, "client-error"),
}


def _full_with(bias: Array) -> Message:
    arrays = ArrayRecord(
        {"x.adapter_up.weight": Array(np.zeros((4, 2), np.float32)), "head.bias": bias}
    )
    return _msg(RecordDict({"arrays": arrays, "metrics": MetricRecord(METRICS)}))


@pytest.mark.parametrize("case", list(FULL_CASES))
def test_a_bad_full_model_reply_is_refused_with_its_reason(case):
    make, reason = FULL_CASES[case]
    s = screen_full([make(), _full()], GLOBAL, max_examples=1000)
    assert dict(s.rejected) == {reason: 1} and s.clients == 1
    new = _aggregate(s.accepted)
    for k, v in GLOBAL.items():
        torch.testing.assert_close(new[k], v + 0.5)
