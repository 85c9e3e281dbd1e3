import torch

from fedadapt.server import checkpoint
from fedadapt.server.strategy import build_strategy
from fedadapt.simconfig import SimConfig


def test_checkpoint_round_trip_keeps_optimizer_state(tmp_path):
    strategy = build_strategy(SimConfig(strategy="fedadam"))
    strategy.m_t = {"w": torch.ones(3).numpy()}
    strategy.v_t = {"w": torch.full((3,), 2.0).numpy()}
    g = {"w": torch.arange(3.0)}
    for r in (1, 2, 3):
        checkpoint.write(tmp_path, r, {"w": g["w"] + r}, strategy, {"rows": [{"round": r}]})
    assert len(list(tmp_path.glob("round-*.safetensors"))) == checkpoint.KEEP
    rnd, state, strat, progress = checkpoint.read_latest(tmp_path)
    assert rnd == 3 and torch.equal(state["w"], g["w"] + 3) and progress["rows"][0]["round"] == 3
    fresh = build_strategy(SimConfig(strategy="fedadam"))
    checkpoint.restore_strategy_state(fresh, strat)
    assert (fresh.v_t["w"] == 2.0).all() and (fresh.m_t["w"] == 1.0).all()


def test_no_checkpoint_reads_none(tmp_path):
    assert checkpoint.read_latest(tmp_path) is None
