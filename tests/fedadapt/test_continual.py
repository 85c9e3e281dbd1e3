"""Continual learning on the real base: task A's outputs stay bit-identical while task B (and a
fusion over both) trains; the naive shared adapter and head change them."""

from __future__ import annotations

import json

import pytest
import torch

from fedadapt import continual
from fedadapt.adapter_files import save_adapter
from fedadapt.adapters import BottleneckConfig, Fuse, LoraConfig
from fedadapt.errors import FedAdaptError
from fedadapt.train import TrainConfig, predict, train

TASK_A = (
    ["A warm, funny film.", "Dull and far too long.", "A joy from start to end.", "Flat jokes."],
    [1, 0, 1, 0],
)
TASK_B = (
    [
        "Shares fell on the stock market.",
        "The striker scored twice.",
        "Parliament voted today.",
        "Profits rose at the bank.",
        "The match ended in a draw.",
        "The minister resigned.",
    ],
    [0, 1, 2, 0, 1, 2],
)
STEPS = TrainConfig(lr=1e-2, batch_size=4, epochs=2, seed=0)


def _logits(model, tok, setup, texts=TASK_A[0]):
    model.set_active(setup)
    return predict(model, tok, texts)


@pytest.mark.slow  # three short trainings on the real base: about a minute on a busy CPU
def test_task_b_and_a_fusion_leave_task_a_bit_identical(fresh_model, tok):
    model = fresh_model()
    continual.add_task(model, "a", BottleneckConfig(), num_labels=2)
    train(model, tok, *TASK_A, STEPS)
    before_a = _logits(model, tok, "a")
    state_a = model.adapter_state("a")
    continual.add_task(model, "b", BottleneckConfig(), num_labels=3)
    assert set(model.adapter_state("b", trainable_only=True)) == set(model.adapter_state("b"))
    assert not model.adapter_state("a", trainable_only=True)  # a is frozen while b trains
    train(model, tok, *TASK_B, STEPS)
    before_b = _logits(model, tok, "b", TASK_B[0])
    assert before_b.shape == (6, 3)
    assert torch.equal(_logits(model, tok, "a"), before_a)
    assert all(torch.equal(v, state_a[k]) for k, v in model.adapter_state("a").items())

    key = continual.add_fusion(model, ["a", "b"], num_labels=3)
    fused_params = set(map(id, model.fusion_parameters(key).values()))
    assert {id(p) for p in model.trainable_parameters()} == fused_params
    fresh = _logits(model, tok, Fuse("a", "b"), TASK_B[0])
    model.train_fusion(Fuse("a", "b"))
    train(model, tok, *TASK_B, TrainConfig(lr=1e-2, batch_size=4, max_steps=2))
    assert (_logits(model, tok, Fuse("a", "b"), TASK_B[0]) - fresh).abs().max() > 1e-3
    assert torch.equal(_logits(model, tok, "a"), before_a)
    assert torch.equal(_logits(model, tok, "b", TASK_B[0]), before_b)


def test_the_naive_shared_adapter_and_head_change_task_a(fresh_model, tok):
    """One adapter and one head over A's and B's labels (A: 0-1, B: 2-4), trained in turn."""
    model = fresh_model()
    continual.add_task(model, "shared", BottleneckConfig(), num_labels=5)
    train(model, tok, *TASK_A, STEPS)
    before = _logits(model, tok, "shared")[:, :2]
    model.train_adapter("shared")
    train(model, tok, TASK_B[0], [y + 2 for y in TASK_B[1]], STEPS)
    after = _logits(model, tok, "shared")[:, :2]
    assert (after - before).abs().max() > 1e-2


def test_bad_tasks_and_fusions_are_one_line_errors(fresh_model):
    model = fresh_model()
    continual.add_task(model, "a", BottleneckConfig(), num_labels=2)
    with pytest.raises(FedAdaptError, match=r"task 'a' already exists"):
        continual.add_task(model, "a", BottleneckConfig(), num_labels=2)
    with pytest.raises(FedAdaptError, match=r"a fusion needs at least two task adapters"):
        continual.add_fusion(model, ["a"], num_labels=2)
    continual.add_task(model, "l", LoraConfig(r=2), num_labels=2)
    with pytest.raises(FedAdaptError, match=r"cannot fuse \['a', 'l'\]: .*no block holds all"):
        continual.add_fusion(model, ["a", "l"], num_labels=2)


def test_a_continued_run_lists_every_task_and_refuses_a_mismatch(fresh_model, tmp_path):
    model = fresh_model()
    model.add_adapter("global", BottleneckConfig(), num_labels=2)
    run_a = tmp_path / "rt"
    save_adapter(model, "global", run_a / "adapter")
    (run_a / "config.json").write_text(json.dumps({"dataset": "rotten_tomatoes"}))
    earlier = continual.check_continuation(run_a, "bbc", "bottleneck")
    assert earlier == [{"name": "rotten_tomatoes", "adapter": str((run_a / "adapter").resolve())}]
    with pytest.raises(FedAdaptError, match=r"task 'rotten_tomatoes' is already learned there"):
        continual.check_continuation(run_a, "rotten_tomatoes", "bottleneck")
    with pytest.raises(FedAdaptError, match=r"is a bottleneck adapter; the new task must use"):
        continual.check_continuation(run_a, "bbc", "lora")
    with pytest.raises(FedAdaptError, match=r"no config.json there"):
        continual.check_continuation(tmp_path / "nowhere", "bbc", "bottleneck")
    run_b = tmp_path / "bbc"
    run_b.mkdir()
    path = continual.write_tasks(run_b, earlier, "bbc")
    names = [t["name"] for t in continual.read_tasks(run_b)]
    assert path == run_b / "tasks.json" and names == ["rotten_tomatoes", "bbc"]
    (run_b / "tasks.json").write_text('{"tasks": [{"name": "x"}]}')
    with pytest.raises(FedAdaptError, match=r"is not a task list: each task needs"):
        continual.read_tasks(run_b)


def test_a_padded_head_keeps_its_logits_and_never_predicts_the_padding(fresh_model, batch):
    model = fresh_model()
    continual.add_task(model, "a", BottleneckConfig(), num_labels=2)
    model.set_active("a")
    with torch.no_grad():
        before = model(*batch)
        continual.pad_head(model, "a", 5)
        after = model(*batch)
    assert after.shape == (4, 5)
    # the same sums, but a 5-wide matmul may block them differently from a 2-wide one (seen on
    # an AMD EPYC, not on a Xeon): equal to float rounding, the same predictions
    torch.testing.assert_close(after[:, :2], before, atol=1e-6, rtol=0)
    assert torch.equal(after.argmax(dim=1), before.argmax(dim=1))
    assert (after[:, 2:] == continual.PAD_LOGIT).all()


def test_continue_from_a_folder_that_is_no_run_is_refused_before_running(tmp_path, capsys):
    from fedadapt.cli.app import main

    out = tmp_path / "out"
    argv = ["simulate", "--continue-from", str(tmp_path / "nowhere"), "--out", str(out)]
    assert main(argv) == 2
    assert "no config.json there; name a finished simulate run folder" in capsys.readouterr().err
    assert not out.exists()
