"""Continual learning without forgetting: one frozen base, one adapter and head per task.

Why this cannot forget: task B's adapter and head are new modules, and while B trains only
they are trainable (`AdapterModel.train_adapter`). Task A's adapter, head and the base are
never touched, and an inactive adapter adds nothing to a layer's output, so A's outputs stay
bit-identical (tested). The naive way, fine-tuning one shared adapter and head on B after A,
moves the tensors A depends on and loses A's accuracy (`simulations/continual.py` measures
by how much).

AdapterFusion (Pfeiffer et al., 2021) then reuses the task adapters for a target task: a
fusion layer learns, per token, how much to listen to each frozen adapter; only the fusion
and its head train, so no task's own outputs change either.

A run continued from another (`fedadapt simulate --continue-from DIR`) trains the new task's
adapter on the same base and lists every task's adapter folder in `tasks.json`; `fedadapt
export` over those folders writes one graph that serves every task through `task_index`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedadapt.adapters import AdapterModel, Fuse
from fedadapt.adapters.fusion import FusionConfig
from fedadapt.adapters.inject import AdapterConfig
from fedadapt.atomic import atomic_write_text
from fedadapt.errors import FedAdaptError

TASKS_FILE = "tasks.json"
PAD_LOGIT = -1e4  # a padded head's extra outputs (see `pad_head`)


def add_task(model: AdapterModel, name: str, cfg: AdapterConfig, num_labels: int) -> None:
    """Add task `name`'s adapter and head beside the tasks already there, and make them the
    only trainable tensors (every other task stays frozen)."""
    if name in model.configs or name in model.heads:
        raise FedAdaptError(f"task {name!r} already exists; have {sorted(model.configs)}")
    model.add_adapter(name, cfg, num_labels=num_labels)
    model.train_adapter(name)


def add_fusion(
    model: AdapterModel, tasks: list[str], num_labels: int, cfg: FusionConfig | None = None
) -> str:
    """AdapterFusion over the frozen adapters `tasks`, with a new head for the target task;
    only the fusion layers and that head are trainable. Returns the fusion's key (its head's
    name), for `model.set_active(Fuse(*tasks))`."""
    if len(tasks) < 2:
        raise FedAdaptError(f"a fusion needs at least two task adapters, got {tasks}")
    fuse = Fuse(*tasks)
    try:
        key = model.add_fusion(fuse, cfg, num_labels=num_labels)
    except (KeyError, ValueError) as e:
        raise FedAdaptError(f"cannot fuse {tasks}: {e}") from None
    model.train_fusion(fuse)
    return key


def pad_head(model: AdapterModel, name: str, num_labels: int) -> None:
    """Widen head `name` to `num_labels` outputs for a graph that stacks every task's head
    (one shape for all): the extra rows have zero weights and a bias of -1e4, so they never
    win an argmax and take no softmax mass; the task's own logits are the same sums (to float
    rounding: a wider matmul may block them differently), so its predictions are unchanged.
    Task A's bit-identical outputs are the torch model's; this widening is for export only."""
    head = model.heads[name]
    extra = num_labels - head.out_features
    if extra <= 0:
        return
    wide = nn.Linear(head.in_features, num_labels)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[: head.out_features] = head.weight
        wide.bias.fill_(PAD_LOGIT)
        wide.bias[: head.out_features] = head.bias
    wide.requires_grad_(head.weight.requires_grad)
    model.heads[name] = wide


# -- runs continued from runs: the task list ----------------------------------------------------
def read_tasks(run: Path) -> list[dict[str, str]]:
    """The tasks a run folder serves: its `tasks.json`, else its own adapter as one task."""
    listed = run / TASKS_FILE
    if listed.is_file():
        try:
            tasks = json.loads(listed.read_text(encoding="utf-8"))["tasks"]
            if not all(isinstance(t, dict) and {"name", "adapter"} <= set(t) for t in tasks):
                raise ValueError("each task needs a name and an adapter")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FedAdaptError(f"{listed} is not a task list: {e}") from None
        return tasks
    config = _run_config(run)
    return [{"name": str(config.get("dataset")), "adapter": str((run / "adapter").resolve())}]


def _run_config(run: Path) -> dict[str, Any]:
    path = run / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedAdaptError(
            f"--continue-from {run}: no config.json there; name a finished simulate run folder"
        ) from None
    except (OSError, ValueError) as e:
        raise FedAdaptError(f"--continue-from {run}: cannot read {path}: {e}") from None


def check_continuation(run: Path, dataset: str, method: str) -> list[dict[str, str]]:
    """The earlier run's tasks, if the new run can add task `dataset` to them: each earlier
    adapter is readable, none is the same task, and the method matches (one graph stacks
    every task's tensors, so they must have one layout)."""
    from fedadapt.adapter_files import read_adapter

    tasks = read_tasks(run)
    for t in tasks:
        if t["name"] == dataset:
            raise FedAdaptError(
                f"--continue-from {run}: task {dataset!r} is already learned there; "
                "continue with another data set"
            )
        config, _ = read_adapter(t["adapter"])
        if config.get("method") != method:
            raise FedAdaptError(
                f"--continue-from {run}: task {t['name']!r} is a {config.get('method')} adapter; "
                f"the new task must use the same method to share one graph (set method = "
                f"{config.get('method')!r})"
            )
    return tasks


def write_tasks(out: Path, earlier: list[dict[str, str]], dataset: str) -> Path:
    """`out/tasks.json`: the earlier tasks, then this run's adapter as task `dataset`."""
    tasks = [*earlier, {"name": dataset, "adapter": str((out / "adapter").resolve())}]
    path = out / TASKS_FILE
    atomic_write_text(path, json.dumps({"tasks": tasks}, indent=2) + "\n")
    return path
