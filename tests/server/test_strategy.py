"""Flower's own strategies, fed `global + delta` replies, aggregate deltas correctly."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedadapt.records import record_to_state, state_to_record
from fedadapt.server.strategy import build_strategy, dp_epsilon
from fedadapt.simconfig import SimConfig

GLOBAL = {"w": torch.zeros(5)}


def _replies(deltas, weights):
    out = []
    for d, n in zip(deltas, weights, strict=True):
        content = RecordDict(
            {
                "arrays": state_to_record({"w": GLOBAL["w"] + d}),
                "metrics": MetricRecord({"num-examples": n, "dp-weight": 1.0, "train_loss": 0.1}),
            }
        )
        out.append(Message(content, dst_node_id=1, message_type="train"))
    return out


class _Grid:
    def get_node_ids(self):
        return [1, 2, 3, 4, 5]


def _aggregate(cfg, deltas, weights):
    strategy = build_strategy(cfg)
    list(strategy.configure_train(1, state_to_record(GLOBAL), ConfigRecord(), _Grid()))
    arrays, _ = strategy.aggregate_train(1, _replies(deltas, weights))
    return record_to_state(arrays)["w"], strategy


DELTAS = [
    torch.tensor([1.0, 2, 3, 4, 5]),
    torch.tensor([3.0, 2, 1, 0, -1]),
    torch.tensor([100.0, 100, 100, 100, 100]),
    torch.tensor([2.0, 2, 2, 2, 2]),
    torch.tensor([0.0, 1, 0, 1, 0]),
]


def _cfg(**kw):
    return SimConfig(num_clients=5, clients_per_round=5, **kw)


def test_fedavg_is_the_weighted_mean_delta():
    w = [1, 2, 3, 4, 5]
    got, _ = _aggregate(_cfg(strategy="fedavg"), DELTAS, w)
    want = sum(d * n for d, n in zip(DELTAS, w, strict=True)) / sum(w)
    torch.testing.assert_close(got, want)


def test_median_and_trimmed_mean_resist_an_outlier():
    med, _ = _aggregate(_cfg(strategy="median"), DELTAS, [1] * 5)
    torch.testing.assert_close(
        med, torch.tensor(np.median(np.stack(DELTAS), axis=0), dtype=torch.float32)
    )
    trimmed, _ = _aggregate(_cfg(strategy="trimmed-mean", trim_fraction=0.2), DELTAS, [1] * 5)
    assert trimmed.max() < 10  # the x100 client is cut


@pytest.mark.parametrize("name", ["krum", "multikrum"])
def test_krum_and_multikrum_leave_the_outlier_out(name):
    """Flower's stock classes: Krum keeps the reply nearest the others, MultiKrum averages
    the nearest ones; the x100 reply is in neither."""
    got, strategy = _aggregate(_cfg(strategy=name, krum_malicious=1), DELTAS, [1] * 5)
    assert type(strategy).__name__ == {"krum": "Krum", "multikrum": "MultiKrum"}[name]
    assert got.abs().max() < 10
    if name == "krum":
        assert any(torch.equal(got, d) for d in DELTAS)


def test_bulyan_is_flowers_and_refuses_too_few_clients_for_its_bound():
    from fedadapt.errors import ConfigError

    cfg = SimConfig(num_clients=7, clients_per_round=7, strategy="bulyan", krum_malicious=1)
    assert type(build_strategy(cfg)).__name__ == "Bulyan"
    with pytest.raises(ConfigError, match=r"clients_per_round >= 4 x 1 \+ 3 \(got 5\)"):
        _cfg(strategy="bulyan", krum_malicious=1)
    with pytest.raises(ConfigError, match="tolerates krum_malicious = 2"):
        _cfg(strategy="krum", krum_malicious=2)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_server_optimizers_move_along_the_mean_delta(name):
    got, _ = _aggregate(_cfg(strategy=name, server_lr=0.1), DELTAS[:2] + DELTAS[3:], [1] * 4)
    mean = sum(DELTAS[:2] + DELTAS[3:]) / 4
    assert torch.all(torch.sign(got) == torch.sign(mean))


def test_central_dp_clips_each_delta_and_accounts_epsilon():
    cfg = _cfg(dp_noise_multiplier=1e-6, dp_clipping_norm=1.0)
    got, strategy = _aggregate(cfg, DELTAS, [1] * 5)
    # every delta clipped to norm 1 before averaging: the mean has norm <= 1
    assert got.norm() <= 1.0 + 1e-3
    eps = dp_epsilon(strategy)
    assert eps is not None and eps > 0


def test_the_default_is_the_trimmed_mean_unless_the_server_sees_only_the_sum():
    """Issue 24: robust aggregation by default; FedAvg where a robust rule cannot run."""
    assert _cfg().strategy == "auto" and _cfg().aggregation == "trimmed-mean"
    assert type(build_strategy(_cfg())).__name__ == "FedTrimmedAvg"
    assert _cfg(secagg=True).aggregation == "fedavg"
    assert _cfg(dp_noise_multiplier=0.5).aggregation == "fedavg"
    assert _cfg(method="lora", lora_tier_ranks="2,4").aggregation == "fedavg"
    trimmed, _ = _aggregate(_cfg(), DELTAS, [1] * 5)  # 0.3 of 5: one cut at each end
    want = torch.tensor(np.sort(np.stack(DELTAS), axis=0)[1:4].mean(axis=0), dtype=torch.float32)
    torch.testing.assert_close(trimmed, want)
