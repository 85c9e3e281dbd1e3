import random

import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedadapt.errors import FedAdaptError
from fedadapt.records import record_to_state, state_to_record
from fedadapt.server import checkpoint
from fedadapt.server.strategy import build_strategy, dp_epsilon
from fedadapt.simconfig import SimConfig

TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1


def test_checkpoint_round_trip_keeps_optimizer_state(tmp_path):
    strategy = build_strategy(SimConfig(strategy="fedadam"))
    strategy.m_t = {"w": torch.ones(3).numpy()}
    strategy.v_t = {"w": torch.full((3,), 2.0).numpy()}
    g = {"w": torch.arange(3.0)}
    for r in (1, 2, 3):
        checkpoint.write(tmp_path, r, {"w": g["w"] + r}, strategy, {"rows": [{"round": r}]})
    assert len(list(tmp_path.glob("round-*.safetensors"))) == checkpoint.KEEP
    rnd, state, strat, progress, accountant = checkpoint.read_latest(tmp_path)
    assert rnd == 3 and torch.equal(state["w"], g["w"] + 3) and progress["rows"][0]["round"] == 3
    assert accountant is None  # no accounted DP
    fresh = build_strategy(SimConfig(strategy="fedadam"))
    checkpoint.restore_strategy_state(fresh, strat)
    assert (fresh.v_t["w"] == 2.0).all() and (fresh.m_t["w"] == 1.0).all()


def test_no_checkpoint_reads_none(tmp_path):
    assert checkpoint.read_latest(tmp_path) is None


DP = SimConfig(num_clients=4, clients_per_round=2, dp_noise_multiplier=1.0, strategy="fedavg")


class Nodes:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]


def _dp_round(strategy, r: int, state: dict) -> dict:
    """One accounted round through Flower's DP wrapper, as the server runs it."""
    random.seed(r)
    sent = strategy.configure_train(r, state_to_record(state), ConfigRecord(), Nodes())
    metrics = {"num-examples": 5, "dp-weight": 1.0, "train_loss": 0.1}
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": state_to_record({k: v + 0.01 for k, v in state.items()}),
                    "metrics": MetricRecord(metrics),
                }
            ),
            reply_to=m,
        )
        for m in sent
    ]
    arrays, _ = strategy.aggregate_train(r, replies)
    return record_to_state(arrays)


def test_a_resumed_dp_run_continues_its_epsilon(tmp_path):
    state = {"w": torch.zeros(3)}
    straight = build_strategy(DP)
    for r in (1, 2, 3):
        _dp_round(straight, r, state)
    killed = build_strategy(DP)
    for r in (1, 2):
        _dp_round(killed, r, state)
        checkpoint.write(tmp_path, r, state, killed, {"rows": []})
    eps2 = dp_epsilon(killed)
    resumed = build_strategy(DP)
    saved = checkpoint.read_latest(tmp_path)
    checkpoint.restore_strategy_state(resumed, saved.strategy_tensors, saved.accountant)
    assert dp_epsilon(resumed) == pytest.approx(eps2) and eps2 > 0  # not zero again
    _dp_round(resumed, 3, state)
    assert dp_epsilon(resumed) == pytest.approx(dp_epsilon(straight))
    assert dp_epsilon(resumed) > eps2


def test_resuming_dp_from_a_checkpoint_without_its_ledger_is_refused(tmp_path):
    checkpoint.write(tmp_path, 1, {"w": torch.zeros(3)}, build_strategy(SimConfig()), {"rows": []})
    saved = checkpoint.read_latest(tmp_path)
    with pytest.raises(FedAdaptError, match=r"no DP accountant state .* restart epsilon from zero"):
        checkpoint.restore_strategy_state(build_strategy(DP), saved.strategy_tensors, None)


def test_a_ledger_of_another_population_is_refused(tmp_path):
    strategy = build_strategy(DP)
    _dp_round(strategy, 1, {"w": torch.zeros(3)})
    checkpoint.write(tmp_path, 1, {"w": torch.zeros(3)}, strategy, {"rows": []})
    saved = checkpoint.read_latest(tmp_path)
    other = build_strategy(SimConfig(**{**DP.to_dict(), "num_clients": 5}))
    with pytest.raises(FedAdaptError, match="DP accountant does not fit this run"):
        checkpoint.restore_strategy_state(other, saved.strategy_tensors, saved.accountant)


@pytest.mark.parametrize("damage", [b"", b"\xff" * 40, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_a_corrupt_checkpoint_is_named(tmp_path, damage):
    path = checkpoint.write(
        tmp_path, 1, {"w": torch.zeros(3)}, build_strategy(SimConfig()), {"rows": []}
    )
    path.write_bytes(damage)
    with pytest.raises(FedAdaptError, match=r"checkpoint .*round-0001.safetensors is unreadable"):
        checkpoint.read_latest(tmp_path)
