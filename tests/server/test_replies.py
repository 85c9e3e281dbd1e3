"""Screening delta replies: each bad kind is dropped with its reason; good ones are rebuilt."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from safetensors.torch import save

from fedadapt.codecs import encode
from fedadapt.records import pack_delta, record_to_state
from fedadapt.server.replies import clip, screen

SHA = "a" * 64
GLOBAL = {"x.adapter_up.weight": torch.zeros(4, 2), "head.bias": torch.ones(2)}
TRAINABLE = set(GLOBAL)


def _raw(delta, codec="fp32"):
    """Codec bytes written directly: `encode` refuses NaN/Inf, a hostile client need not."""
    return save({k: v.float().contiguous() for k, v in delta.items()}, metadata={"codec": codec})


def _reply(delta=None, blob=None, sha=SHA, n=10):
    blob = blob if blob is not None else encode(delta)
    content = RecordDict(
        {
            "arrays": pack_delta(blob),
            "metrics": MetricRecord({"num-examples": n, "train_loss": 0.5}),
            "delta-meta": ConfigRecord({"base-sha256": sha, "codec": "fp32"}),
        }
    )
    return Message(content, dst_node_id=1, message_type="train")


def _good(scale=1.0):
    return {k: torch.full_like(v, scale) for k, v in GLOBAL.items()}


def test_good_reply_becomes_global_plus_delta():
    s = screen([_reply(_good(0.5))], GLOBAL, TRAINABLE, SHA, max_bytes=10_000)
    assert len(s.accepted) == 1 and not s.rejected
    rebuilt = record_to_state(s.accepted[0].content["arrays"])
    assert torch.equal(rebuilt["head.bias"], torch.full((2,), 1.5))
    assert "delta-meta" not in s.accepted[0].content
    assert s.upload_bytes > 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            lambda: _reply(blob=_raw({**_good(), "head.bias": torch.tensor([float("nan"), 0.0])})),
            "non-finite",
        ),
        (
            lambda: _reply(blob=_raw({**_good(), "head.bias": torch.tensor([float("inf"), 0.0])})),
            "non-finite",
        ),
        (lambda: _reply({**_good(), "head.bias": torch.zeros(3)}), "shape"),
        (
            lambda: _reply(
                {**_good(), "encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)}
            ),
            "unknown-names",
        ),
        (lambda: _reply({"head.bias": torch.zeros(2)}), "missing-names"),
        (lambda: _reply(_good(), sha="b" * 64), "base-model"),
        (lambda: _reply(blob=b"\x00" * 3), "malformed"),
        (lambda: _reply({k: torch.zeros(400, 400) for k in ["big"]}), "oversize"),
    ],
    ids=["nan", "inf", "shape", "unknown", "missing", "base", "malformed", "oversize"],
)
def test_bad_replies_are_dropped_with_reason(reply, reason):
    s = screen([reply(), _reply(_good())], GLOBAL, TRAINABLE, SHA, max_bytes=50_000)
    assert dict(s.rejected) == {reason: 1}
    assert len(s.accepted) == 1


def test_int_dtype_delta_is_rejected():
    blob = save(
        {
            "head.bias": torch.zeros(2, dtype=torch.int32),
            "x.adapter_up.weight": torch.zeros(4, 2, dtype=torch.int32),
        },
        metadata={"codec": "fp32"},
    )
    # an "fp32" payload must hold float32 tensors: the decoder used to cast ints to float
    s = screen([_reply(blob=blob), _reply(_good())], GLOBAL, TRAINABLE, SHA, max_bytes=50_000)
    assert dict(s.rejected) == {"dtype": 1} and s.clients == 1


def test_client_error_is_counted():
    ok = _reply(_good())
    err = Message(Error(code=0, reason="ClientApp crashed"), reply_to=ok)
    s = screen([err, _reply(_good())], GLOBAL, TRAINABLE, SHA, max_bytes=50_000)
    assert dict(s.rejected) == {"client-error": 1} and len(s.accepted) == 1


def test_clip_scales_to_the_norm():
    d = {"a": torch.tensor([3.0, 4.0])}
    torch.testing.assert_close(clip(d, 1.0)["a"], torch.tensor([0.6, 0.8]))
    assert clip(d, 10.0) is d


def test_array_record_without_delta_is_malformed():
    content = RecordDict(
        {
            "arrays": ArrayRecord({"other": Array(np.zeros(2, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 1, "train_loss": 0.1}),
            "delta-meta": ConfigRecord({"base-sha256": SHA}),
        }
    )
    s = screen(
        [Message(content, dst_node_id=1, message_type="train")],
        GLOBAL,
        TRAINABLE,
        SHA,
        max_bytes=50_000,
    )
    assert dict(s.rejected) == {"malformed": 1}


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_folded_mean_aggregates_like_every_rebuilt_reply(name):
    from flwr.serverapp.strategy import FedAdam, FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
    g = torch.Generator().manual_seed(0)
    deltas = [{k: torch.randn(v.shape, generator=g) for k, v in GLOBAL.items()} for _ in range(5)]

    def aggregate(fold_by):
        replies = [_reply(d, n=3 + i) for i, d in enumerate(deltas)]
        replies.append(_reply({"head.bias": torch.zeros(2)}))  # rejected, never folded
        s = screen(replies, GLOBAL, TRAINABLE, SHA, max_bytes=50_000, fold_by=fold_by)
        assert s.clients == 5 and s.rejected == {"missing-names": 1}
        kw = {"min_train_nodes": 1, "min_available_nodes": 1}
        strategy = FedAvg(**kw) if name == "fedavg" else FedAdam(**kw, eta=0.1)
        if name == "fedadam":
            strategy.current_arrays = {k: v.numpy() for k, v in GLOBAL.items()}
        arrays, _ = strategy.aggregate_train(1, s.accepted)
        return record_to_state(arrays), s

    each, plain = aggregate(None)
    folded, screened = aggregate("num-examples")
    assert len(plain.accepted) == 5 and len(screened.accepted) == 1
    for k in GLOBAL:
        assert torch.allclose(each[k], folded[k], atol=1e-6)
    assert not torch.equal(folded["head.bias"], GLOBAL["head.bias"])


@pytest.mark.parametrize("rule", ["trimmed-mean", "median"])
def test_stacked_robust_rule_matches_flowers_own_per_reply(rule):
    """The vectorized stack over flat deltas gives what Flower's FedTrimmedAvg / FedMedian
    compute tensor by tensor over every rebuilt reply."""
    from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
    g = torch.Generator().manual_seed(1)
    deltas = [{k: torch.randn(v.shape, generator=g) for k, v in GLOBAL.items()} for _ in range(7)]
    deltas[3]["head.bias"] = torch.tensor([50.0, -50.0])  # an outlier the rule must cut

    def aggregate(robust):
        replies = [_reply(d, n=3 + i) for i, d in enumerate(deltas)]
        s = screen(replies, GLOBAL, TRAINABLE, SHA, max_bytes=50_000, robust=robust)
        assert s.clients == 7
        kw = {"min_train_nodes": 1, "min_available_nodes": 1}
        strategy = FedTrimmedAvg(**kw, beta=0.2) if rule == "trimmed-mean" else FedMedian(**kw)
        arrays, _ = strategy.aggregate_train(1, s.accepted)
        return record_to_state(arrays), s

    flower, each = aggregate(None)
    stacked, one = aggregate((rule, 0.2 if rule == "trimmed-mean" else 0.0))
    assert len(each.accepted) == 7 and len(one.accepted) == 1
    for k in GLOBAL:
        torch.testing.assert_close(stacked[k], flower[k], atol=1e-6, rtol=0)
    assert stacked["head.bias"].abs().max() < 5  # the outlier was cut


def test_a_valid_reply_in_another_layout_is_decoded_the_general_way():
    """Tensors stored out of name order cannot be read in place; they are still accepted."""
    import json

    a, b = torch.full((2,), 0.5), torch.full((4, 2), 0.25)  # head.bias, x.adapter_up.weight
    header = {
        "__metadata__": {"codec": "fp32"},
        "x.adapter_up.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]},
        "head.bias": {"dtype": "F32", "shape": [2], "data_offsets": [32, 40]},
    }
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    blob = len(head).to_bytes(8, "little") + head + b.numpy().tobytes() + a.numpy().tobytes()
    s = screen([_reply(blob=blob)], GLOBAL, TRAINABLE, SHA, max_bytes=50_000)
    assert not s.rejected and s.clients == 1
    rebuilt = record_to_state(s.accepted[0].content["arrays"])
    torch.testing.assert_close(rebuilt["head.bias"], GLOBAL["head.bias"] + a)
    torch.testing.assert_close(rebuilt["x.adapter_up.weight"], b)
