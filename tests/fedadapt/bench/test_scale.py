"""Bench section `scale`: the figures come from the server's round rows as named."""

from __future__ import annotations

from pathlib import Path

from fedadapt.bench import scale
from fedadapt.simconfig import SimConfig


def _row(rnd: int, evaluate_s: float) -> dict:
    return {
        "round": rnd,
        "clients": 100,
        "seconds": 40.0 + rnd,
        "sample_s": 0.02,
        "train_s": 30.0,
        "aggregate_s": 0.125,
        "evaluate_s": evaluate_s,
        "server_peak_rss_mb": 600.0 + rnd,
        "actor_peak_rss_mb": 900.0 - rnd,
    }


def test_figures_are_the_first_rounds_split_and_the_peaks_over_all_rounds():
    fig = scale.figures({"rounds": [_row(1, 9.5), {**_row(2, 80.0), "aggregate_s": 0.012}]}, 123.45)
    assert fig["round_s"] == 41.0 and fig["evaluate_s"] == 9.5
    assert fig["aggregate_ms"] == 12.0 and fig["aggregate_first_round_ms"] == 125.0
    assert fig["split_s"] == {
        "sampling": 0.02,
        "client_work": 30.0,
        "aggregation": 0.125,
        "evaluation": 9.5,
    }
    assert fig["server_peak_rss_mb"] == 602.0 and fig["actor_rss_mb"] == 899.0
    assert fig["final_evaluate_all_s"] == 80.0 and fig["wall_s"] == 123.5


def test_each_fleet_trains_and_evaluates_a_tenth_of_its_clients(tmp_path):
    cmd = scale.command(1000, 2, tmp_path / "run")
    flags = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    assert Path(flags["--config"]).name == "fleet-1000.toml"
    assert flags["--clients"] == "1000" and flags["--clients-per-round"] == "100"
    assert "evaluate_sample=100" in cmd and "evaluate_every=1" in cmd and "--no-baselines" in cmd
    fleet = SimConfig.load(scale.CONFIG)
    assert fleet.num_clients >= 1000 and fleet.clients_per_round == 100
    assert fleet.dataset == "rotten_tomatoes_dirichlet" and fleet.evaluate_sample == 100
