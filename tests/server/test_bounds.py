"""The round's bounds on what a client claims (`server.bounds`), and a mean that stays finite.

Each test names the attack it holds: one client claiming far more examples than the rest, a
delta scaled by 1e6 or holding 1e36, NaN/Inf replies mixed in among good ones, an absurd
training loss, and an aggregate that is not finite.
"""

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord

from fedadapt.records import record_to_state
from fedadapt.server.app import _not_finite
from fedadapt.server.bounds import norm_bound, weight_cap
from fedadapt.server.claims import MAX_TRAIN_LOSS, read_evaluation
from fedadapt.server.replies import screen
from tests.server.test_replies import GLOBAL, SHA, TRAINABLE, _raw, _reply


def _deltas(n: int, seed: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(v.shape, generator=g) for k, v in GLOBAL.items()} for _ in range(n)]


def _mean(replies, **bounds) -> tuple:
    s = screen(replies, GLOBAL, TRAINABLE, SHA, max_bytes=50_000, fold_by="num-examples", **bounds)
    return s, record_to_state(s.accepted[0].content["arrays"])


def test_the_bounds_are_multiples_of_the_rounds_median():
    assert weight_cap([20, 25, 30, 10**9], 2.0) == 55.0  # the liar moves the median little
    assert weight_cap([20, 25], 0.0) is None
    assert norm_bound([1.0, 2.0, 3.0, 1e6], 2.0) == 5.0
    assert norm_bound([1.0, 2.0, 3.0], 2.0, fixed=1.5) == 1.5
    assert norm_bound([1.0], 0.0) is None


def test_bad_replies_are_refused_by_name_and_never_reach_the_mean(caplog):
    n = 40
    deltas = _deltas(n)
    bad = {5: float("nan"), 17: float("inf"), 39: float("-inf")}
    for i, v in bad.items():
        deltas[i]["x.adapter_up.weight"][1, 0] = v
    replies = [_reply(blob=_raw(d), n=3 + i % 5) for i, d in enumerate(deltas)]
    with caplog.at_level(logging.WARNING, logger="fedadapt.server"):
        s, mixed = _mean(replies)
    assert s.clients == n - len(bad) and dict(s.rejected) == {"non-finite": len(bad)}
    named = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(named) == len(bad)
    assert all("x.adapter_up.weight: holds NaN or Inf" in m for m in named)
    good = [_reply(blob=_raw(d), n=3 + i % 5) for i, d in enumerate(deltas) if i not in bad]
    _, clean = _mean(good)
    for k in GLOBAL:
        assert torch.isfinite(mixed[k]).all()
        torch.testing.assert_close(mixed[k], clean[k], atol=1e-6, rtol=0)


def test_one_client_claiming_a_thousand_examples_weighs_at_most_twice_the_median():
    """With the old defaults (cap 1000, FedAvg) it got 82% of the weight among ten."""
    honest = {k: torch.ones_like(v) for k, v in GLOBAL.items()}
    liar = {k: -torch.ones_like(v) for k, v in GLOBAL.items()}
    replies = [_reply(honest, n=25) for _ in range(9)] + [_reply(liar, n=1000)]
    _, unbounded = _mean(replies)
    s, bounded = _mean(replies, weight_ratio=2.0)
    share = 50 / (9 * 25 + 50)  # the liar's weight, bounded at 2 x 25
    expected = 1 - 2 * share
    assert torch.allclose(bounded["head.bias"], 1 + torch.full((2,), expected))
    assert unbounded["head.bias"][0] < 1  # without the bound the liar turns the mean around
    assert s.accepted[0].content["metrics"]["num-examples"] == 9 * 25 + 50


def test_a_delta_scaled_a_millionfold_pulls_no_more_than_twice_the_median_norm():
    deltas = _deltas(10)
    deltas[3] = {k: v * 1e6 for k, v in deltas[3].items()}
    _, bounded = _mean([_reply(blob=_raw(d), n=10) for d in deltas], norm_ratio=2.0)
    norms = sorted(
        float(torch.sqrt(sum((d[k] ** 2).sum() for k in d))) for i, d in enumerate(deltas) if i != 3
    )
    median = float(np.median([*norms, float("inf")]))  # the attacker's norm is the top one
    mean_norm = float(torch.sqrt(sum(((bounded[k] - GLOBAL[k]) ** 2).sum() for k in GLOBAL)))
    assert mean_norm <= (sum(norms) + 2 * median) / 10 + 1e-5


def test_one_reply_of_1e36_keeps_the_mean_finite_even_unbounded():
    """The fold used to multiply by the raw weight first: 1e36 x 1000 overflowed to Inf."""
    deltas = [{k: torch.full_like(v, 0.1) for k, v in GLOBAL.items()} for _ in range(9)]
    deltas.append({k: torch.full_like(v, 1e36) for k, v in GLOBAL.items()})
    replies = [_reply(blob=_raw(d), n=1000) for d in deltas]
    _, mean = _mean(replies)  # no weight or norm bound at all
    assert all(torch.isfinite(mean[k]).all() for k in mean)
    _, bounded = _mean(replies, norm_ratio=2.0)
    assert float(bounded["head.bias"].max()) < 1.5


def test_an_absurd_training_loss_is_refused():
    reply = _reply({k: torch.ones_like(v) for k, v in GLOBAL.items()})
    reply.content["metrics"] = MetricRecord({"num-examples": 10, "train_loss": 1e308})
    s = screen([reply], GLOBAL, TRAINABLE, SHA, max_bytes=50_000, fold_by="num-examples")
    assert dict(s.rejected) == {"train-loss": 1} and not s.accepted
    assert MAX_TRAIN_LOSS < 1e308


@pytest.mark.parametrize(
    ("metrics", "ok"),
    [
        ({"partition-id": 3, "num-examples": 12, "global_accuracy": 0.8}, True),
        ({"partition-id": 3, "num-examples": 12, "global_accuracy": 100.0}, False),
        ({"partition-id": 3, "num-examples": 10**12, "global_accuracy": 0.8}, False),
        ({"partition-id": -1, "num-examples": 12}, False),
        ({"partition-id": 3, "num-examples": 12, "loss": float("nan")}, False),
        ({"partition-id": 3, "num-examples": 12, "loss": 1e300}, False),
    ],
)
def test_every_evaluation_metric_is_bounded(metrics, ok):
    from fedadapt.errors import DeltaError

    if ok:
        assert read_evaluation(MetricRecord(metrics), cap=1000)["global_accuracy"] == 0.8
    else:
        with pytest.raises(DeltaError):
            read_evaluation(MetricRecord(metrics), cap=1000)


def test_an_aggregate_that_is_not_finite_is_caught_before_it_becomes_the_global():
    good = ArrayRecord({"a": Array(np.ones(3, np.float32))})
    bad = ArrayRecord({"a": Array(np.ones(3, np.float32)), "b": Array(np.array([np.inf]))})
    assert _not_finite(good) is None
    assert _not_finite(bad) == "b"
