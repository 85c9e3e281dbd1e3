"""Local training and evaluation of adapters and heads on one client's data.

Only what `train_adapter` marked trainable gets an optimizer; the base stays frozen. A given
seed fixes the shuffling and dropout, so a run repeats exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from fedadapt.adapters import AdapterModel
from fedadapt.base.checkpoint import tokenize


@dataclass
class TrainConfig:
    """Local training settings, shared by `train` and `train_probe`.

    `train_probe` works on fixed features, so it ignores `max_length` and `max_steps`.

    Parameters
    ----------
    lr : float (default: 2e-3)
        AdamW's learning rate.
    batch_size : int (default: 16)
        Examples per optimizer step.
    epochs : int (default: 1)
        Passes over the client's training examples.
    max_length : int (default: 64)
        Tokens per example; longer texts are truncated.
    seed : int (default: 0)
        Fixes the shuffling and dropout.
    weight_decay : float (default: 0.0)
        AdamW's decoupled weight decay.
    max_steps : int | None (default: None)
        Stop after this many optimizer steps, even mid-epoch.
    """

    lr: float = 2e-3
    batch_size: int = 16
    epochs: int = 1
    max_length: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    max_steps: int | None = None  # stop early after this many optimizer steps


def batches(
    tok: Tokenizer,
    texts: list[str],
    labels: list[int],
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """`(input_ids, attention_mask, labels)` batches; shuffled by `generator`, in order without one.

    Truncation is the tokenizer's own setting: enable it first (`train` does).
    """
    order = (
        torch.randperm(len(texts), generator=generator) if generator else torch.arange(len(texts))
    )
    for i in range(0, len(texts), batch_size):
        idx = order[i : i + batch_size].tolist()
        ids, mask = tokenize(tok, [texts[j] for j in idx])
        yield ids, mask, torch.tensor([labels[j] for j in idx], dtype=torch.long)


def train(
    model: AdapterModel,
    tok: Tokenizer,
    texts: list[str],
    labels: list[int],
    cfg: TrainConfig,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """AdamW over the trainable tensors; `extra_loss` adds a regulariser (FedProx's term)."""
    params = model.trainable_parameters()
    if not params:
        raise ValueError("nothing to train: call model.train_adapter(...) first")
    tok.enable_truncation(max_length=cfg.max_length)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    total, n, steps = 0.0, 0, 0
    for _ in range(cfg.epochs):
        for ids, mask, y in batches(tok, texts, labels, cfg.batch_size, gen):
            loss = F.cross_entropy(model(ids, mask), y)
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            n += len(y)
            steps += 1
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
    model.eval()
    # `examples` is how many distinct examples were trained on, not examples x epochs: it is
    # the client's weight in FedAvg and the server caps it. Each epoch is a permutation, so
    # the first `len(texts)` seen are distinct.
    return {"train_loss": total / max(n, 1), "steps": steps, "examples": min(n, len(texts))}


def train_probe(
    head: torch.nn.Module, features: torch.Tensor, labels: list[int], cfg: TrainConfig
) -> dict[str, float]:
    """A head on fixed features, with `train`'s optimizer, batches and epochs.

    Why not `train` with only the head trainable: nothing below the head changes, so running
    the frozen encoder again for every batch of every epoch only repeats the same features.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y = torch.tensor(labels, dtype=torch.long)
    total, n = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(head(features[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
    return {"train_loss": total / max(n, 1), "examples": min(n, len(y))}


@torch.no_grad()
def embed(
    model: AdapterModel,
    tok: Tokenizer,
    texts: list[str],
    batch_size: int = 64,
    max_length: int = 64,
) -> torch.Tensor:
    """The pooled encoder output under the active adapter setup, without a head."""
    return _batched(model, model.embed, tok, texts, batch_size, max_length)


@torch.no_grad()
def predict(
    model: AdapterModel,
    tok: Tokenizer,
    texts: list[str],
    batch_size: int = 64,
    max_length: int = 64,
) -> torch.Tensor:
    """Logits of the active setup and head."""
    return _batched(model, model, tok, texts, batch_size, max_length)


def _batched(
    model: AdapterModel,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tok: Tokenizer,
    texts: list[str],
    batch_size: int,
    max_length: int,
) -> torch.Tensor:
    tok.enable_truncation(max_length=max_length)
    model.eval()
    out = [fn(*tokenize(tok, texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def accuracy(logits: torch.Tensor, labels: list[int]) -> float:
    """The share of rows whose arg-max logit is the label (NaN for no rows)."""
    return float((logits.argmax(-1) == torch.tensor(labels, dtype=torch.long)).float().mean())
