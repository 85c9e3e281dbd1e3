"""The evaluation of every client, asked in batches that bound the queued bytes."""

from types import SimpleNamespace

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedadapt.server import evaluation
from fedadapt.simconfig import SimConfig


class RecordingGrid:
    """Answers each EVALUATE message at once, and records how many were queued together."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def send_and_receive(self, messages, timeout, progress=None):
        nodes = [m.metadata.dst_node_id for m in messages]
        self.batches.append(nodes)
        return [
            SimpleNamespace(
                has_error=lambda: False,
                content=RecordDict(
                    {"metrics": MetricRecord({"partition-id": n - 100, "global_accuracy": 0.5})}
                ),
            )
            for n in nodes
        ]


def test_large_evaluation_messages_are_sent_in_batches(monkeypatch):
    arrays = ArrayRecord([np.zeros(25_000, dtype=np.float32)])  # ~100 kB a message
    monkeypatch.setattr(evaluation, "EVAL_INFLIGHT_BYTES", 250_000)  # room for two at a time
    grid = RecordingGrid()
    out = evaluation.evaluate_all(grid, list(range(100, 105)), arrays, SimConfig(), 1, "full")
    assert grid.batches == [[100, 101], [102, 103], [104]]
    assert sorted(out) == [0, 1, 2, 3, 4] and out[3] == {"global_accuracy": 0.5}


def test_small_evaluation_messages_go_out_together():
    arrays = ArrayRecord([np.zeros(60_000, dtype=np.float32)])  # like a 240 kB adapter
    grid = RecordingGrid()
    out = evaluation.evaluate_all(grid, list(range(100, 438)), arrays, SimConfig(), 1, "adapter")
    assert len(grid.batches) == 1 and len(out) == 338


def test_round_sample_is_seeded_sized_and_changes_by_round():
    nodes = list(range(500, 1500))
    cfg = SimConfig(num_clients=1000, clients_per_round=100, evaluate_sample=100, seed=3)
    first = evaluation.round_sample(nodes, cfg, 1)
    assert len(set(first)) == 100 and set(first) <= set(nodes)
    assert evaluation.round_sample(list(reversed(nodes)), cfg, 1) == first  # order-free
    assert evaluation.round_sample(nodes, cfg, 2) != first
    other_seed = SimConfig(**{**cfg.to_dict(), "seed": 4})
    assert evaluation.round_sample(nodes, other_seed, 1) != first


def test_round_sample_of_zero_or_more_than_the_fleet_is_everyone():
    nodes = [5, 3, 9]
    assert evaluation.round_sample(nodes, SimConfig(evaluate_sample=0), 1) == nodes
    assert evaluation.round_sample(nodes, SimConfig(evaluate_sample=7), 1) == nodes


class SilentGrid(RecordingGrid):
    """Like RecordingGrid, but its last node never answers, and progress is reported."""

    def send_and_receive(self, messages, timeout, progress=None):
        replies = super().send_and_receive(messages, timeout)[:-1]
        if progress is not None:
            progress(len(replies), len(replies) + 1)
        return replies


def test_an_evaluation_missing_clients_says_how_many_and_why(capsys):
    """After a Ctrl-C on a device in the final evaluation, the run's final figures were null
    and no line said why."""
    arrays = ArrayRecord([np.zeros(10, dtype=np.float32)])
    cfg = SimConfig(round_timeout=30)
    out = evaluation.evaluate_all(SilentGrid(), [100, 101, 102], arrays, cfg, 4, "adapter")
    assert sorted(out) == [0, 1]
    line = capsys.readouterr().out.strip()
    assert line.startswith("evaluation of round 4 (adapter): figures from 2 of 3 clients in ")
    assert line.endswith("; 1 gave no answer within 30 s (round_timeout)")


def test_a_quick_complete_evaluation_says_nothing_and_a_long_one_shows_progress(capsys):
    arrays = ArrayRecord([np.zeros(10, dtype=np.float32)])
    evaluation.evaluate_all(RecordingGrid(), [100, 101], arrays, SimConfig(), 1, "adapter")
    assert capsys.readouterr().out == ""
    tally = evaluation.Tally("evaluation of round 9 (adapter)", 10, every_s=0.0)
    tally.heard(4)
    tally.answered = 10
    tally.done(60)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "evaluation of round 9 (adapter): 4/10 clients answered"
    assert lines[1].startswith("evaluation of round 9 (adapter): figures from 10 of 10 clients")
