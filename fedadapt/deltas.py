"""Adapter deltas: `delta = local − global` over adapter tensors only, and its inverse.

Every check that a server or device needs before trusting a delta lives in `check_delta`, so a
bad reply is rejected with one clear reason and the global state is never half-updated.
"""

from __future__ import annotations

import torch

from fedadapt.errors import DeltaError

State = dict[str, torch.Tensor]


def compute_delta(local: State, global_: State) -> State:
    """`local - global_` per tensor, in fp32 and detached: what a client sends back.

    Both states must hold the same tensor names (`DeltaError` otherwise).
    """
    if set(local) != set(global_):
        raise DeltaError(
            f"local and global adapters differ in tensors: {sorted(set(local) ^ set(global_))[:5]}"
        )
    return {k: local[k].detach().float() - global_[k].detach().float() for k in local}


def check_delta(delta: State, reference: State, required: set[str] | None = None) -> None:
    """Raise `DeltaError` naming the first reason `delta` cannot apply to `reference`.

    `required` names the tensors a delta must hold (a reply must cover every trainable one).
    """
    unknown = sorted(set(delta) - set(reference))
    if unknown:
        raise DeltaError(f"unknown tensor names {unknown[:5]}", reason="unknown-names")
    missing = sorted((required or set()) - set(delta))
    if missing:
        raise DeltaError(f"missing tensors {missing[:5]}", reason="missing-names")
    for k, v in delta.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            got = getattr(v, "dtype", type(v))
            raise DeltaError(f"{k}: expected a floating-point tensor, got {got}", reason="dtype")
        if v.shape != reference[k].shape:
            shapes = f"{tuple(v.shape)} != {tuple(reference[k].shape)}"
            raise DeltaError(f"{k}: shape {shapes}", reason="shape")
        if not torch.isfinite(v).all():
            raise DeltaError(f"{k}: holds NaN or Inf", reason="non-finite")


def apply_delta(global_: State, delta: State) -> State:
    """`global + delta` as a new state; tensors absent from `delta` (frozen ones) carry over."""
    check_delta(delta, global_)
    return {
        k: (v.float() + delta[k].float()).to(v.dtype) if k in delta else v.clone()
        for k, v in global_.items()
    }


def clip(delta: State, max_norm: float) -> State:
    """Scale `delta` down to L2 norm `max_norm` (unchanged if already within it)."""
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values())).item()
    if norm <= max_norm or norm == 0:
        return delta
    return {k: v * (max_norm / norm) for k, v in delta.items()}
