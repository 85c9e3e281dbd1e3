"""Continual learning, measured centrally (not federated, CPU-cheap): RT sentiment, then BBC.

    .venv/bin/python simulations/continual.py [--steps 60] [--train 480] [--test 300]

Rows written to simulations/results/continual/ (results.json, table.md):

- adapters per task (`fedadapt.continual.add_task`): task A's accuracy before and after
  task B is learned, and whether A's logits stayed bit-identical;
- naive sequential fine-tuning: one adapter and one head over A's and B's labels (A: 0-1,
  B: 2-6; each task read through its own logits), trained on A, then on B;
- on the target task B: AdapterFusion over the frozen A and B adapters, the best single
  adapter (B's own, or A's frozen adapter with a new head), and a fresh adapter.

Every training run has the same budget (`--steps` AdamW steps of batch 16, max length 64)
on the fp32 base, seed 0.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from fedadapt import continual
from fedadapt.adapters import AdapterModel, BottleneckConfig, Fuse
from fedadapt.atomic import atomic_write_text
from fedadapt.base import load_base
from fedadapt.base.checkpoint import load_tokenizer
from fedadapt.data import bbc, rotten_tomatoes
from fedadapt.train import TrainConfig, accuracy, embed, predict, train, train_probe

OUT = Path(__file__).resolve().parent / "results" / "continual"


def _pooled(clients, n_train: int, n_test: int, seed: int) -> tuple[tuple, tuple]:
    """`n_train` training and `n_test` test examples drawn from every client's splits."""
    rng = random.Random(seed)
    tr = [(t, y) for c in clients for t, y in zip(c.train_texts, c.train_labels, strict=True)]
    te = [(t, y) for c in clients for t, y in zip(c.test_texts, c.test_labels, strict=True)]
    rng.shuffle(tr)
    rng.shuffle(te)
    tr, te = tr[:n_train], te[:n_test]
    return ([t for t, _ in tr], [y for _, y in tr]), ([t for t, _ in te], [y for _, y in te])


def _phase(name: str, t0: float) -> None:
    print(f"[continual] {name} done at {time.perf_counter() - t0:.0f} s", flush=True)


def _acc(model: AdapterModel, tok, setup, data, cols: slice = slice(None)) -> float:
    model.set_active(setup)
    return round(accuracy(predict(model, tok, data[0])[:, cols], data[1]), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--train", type=int, default=480)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    tok = load_tokenizer(64)
    a_train, a_test = _pooled(rotten_tomatoes.load_clients(), args.train, args.test, 0)
    b_train, b_test = _pooled(bbc.load_clients(num_clients=20), args.train, args.test, 0)
    run = TrainConfig(lr=3e-3, batch_size=16, epochs=100, max_steps=args.steps, seed=0)
    n_a, n_b = len(rotten_tomatoes.LABELS), len(bbc.LABELS)
    model = AdapterModel(load_base("none"))

    # adapters per task
    continual.add_task(model, "rt", BottleneckConfig(), n_a)
    train(model, tok, *a_train, run)
    logits_a = predict(model, tok, a_test[0])
    a_before = _acc(model, tok, "rt", a_test)
    continual.add_task(model, "bbc", BottleneckConfig(), n_b)
    train(model, tok, *b_train, run)
    a_after = _acc(model, tok, "rt", a_test)
    identical = torch.equal(predict(model, tok, a_test[0]), logits_a)
    b_own = _acc(model, tok, "bbc", b_test)
    _phase("adapters per task", t0)

    # naive: one shared adapter and head, A's labels then B's
    continual.add_task(model, "shared", BottleneckConfig(), n_a + n_b)
    train(model, tok, *a_train, run)
    naive_before = _acc(model, tok, "shared", a_test, slice(0, n_a))
    naive_logits_a = predict(model, tok, a_test[0])[:, :n_a]
    model.train_adapter("shared")
    train(model, tok, b_train[0], [y + n_a for y in b_train[1]], run)
    naive_after = _acc(model, tok, "shared", a_test, slice(0, n_a))
    naive_identical = torch.equal(predict(model, tok, a_test[0])[:, :n_a], naive_logits_a)
    naive_b = _acc(model, tok, "shared", b_test, slice(n_a, None))
    _phase("naive sequential", t0)

    # target task B: A's frozen adapter with a new head (a probe on its features)
    model.set_active("rt")
    probe = torch.nn.Linear(model.encoder.config.hidden_size, n_b)
    probe_run = TrainConfig(lr=3e-3, batch_size=16, epochs=30, seed=0)  # fixed features: cheap
    train_probe(probe, embed(model, tok, b_train[0]), b_train[1], probe_run)
    with torch.no_grad():
        a_probe = round(accuracy(probe(embed(model, tok, b_test[0])), b_test[1]), 4)
    # AdapterFusion over the frozen rt and bbc adapters, new head
    continual.add_fusion(model, ["rt", "bbc"], n_b)
    train(model, tok, *b_train, run)
    fusion = _acc(model, tok, Fuse("rt", "bbc"), b_test)
    _phase("fusion", t0)

    rows = {
        "adapters_per_task": {"a_before": a_before, "a_after": a_after, "bit_identical": identical},
        "naive_sequential": {
            "a_before": naive_before,
            "a_after": naive_after,
            "bit_identical": naive_identical,
            "b": naive_b,
        },
        "target_bbc": {
            "fusion_rt_bbc": fusion,
            "fresh_adapter_bbc": b_own,
            "rt_adapter_new_head": a_probe,
            "best_single": max(b_own, a_probe),
        },
        "setup": {**vars(args), "out": str(args.out), "base": "fp32", "seconds": 0.0},
    }
    rows["setup"]["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(args.out / "table.md", _table(rows))
    print(_table(rows))


def _table(r: dict) -> str:
    per, naive, tgt, s = r["adapters_per_task"], r["naive_sequential"], r["target_bbc"], r["setup"]
    return (
        f"Task A = RT sentiment, task B = BBC topics; {s['steps']} steps per training, "
        f"{s['train']} train / {s['test']} test examples per task, {s['seconds']} s.\n\n"
        "| method | A acc before B | A acc after B | A logits bit-identical |\n|---|---|---|---|\n"
        f"| adapter + head per task | {per['a_before']} | {per['a_after']} | "
        f"{per['bit_identical']} |\n"
        f"| naive: one shared adapter + head | {naive['a_before']} | {naive['a_after']} | "
        f"{naive['bit_identical']} |\n"
        "\n| on BBC (target) | accuracy |\n|---|---|\n"
        f"| AdapterFusion(rt, bbc) + new head | {tgt['fusion_rt_bbc']} |\n"
        f"| fresh bbc adapter + head | {tgt['fresh_adapter_bbc']} |\n"
        f"| rt adapter (frozen) + new head | {tgt['rt_adapter_new_head']} |\n"
        f"| naive shared adapter after B | {naive['b']} |\n"
    )


if __name__ == "__main__":
    main()
