"""Rewrite ops that mobile execution providers cannot run into ones they can.

NNAPI has no `LayerNormalization`, `Gelu` or `Erf`. LayerNorm decomposes exactly into
ReduceMean/Sub/Mul/Sqrt/Div. GELU has no exact decomposition without Erf, so `gelu-tanh`
uses the tanh approximation (max |Δ| ≈ 3e-4 per activation); the export report measures
what it does to parity and to NNAPI's partitions, so the trade is visible.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedadapt.base.bert import Intermediate

DECOMPOSITIONS = ("layernorm", "gelu-tanh")


class ExplicitLayerNorm(nn.Module):
    """`nn.LayerNorm` written out, sharing the original's parameters."""

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm over the last dimension (biased variance, as `nn.LayerNorm`), in plain ops."""
        centred = x - x.mean(-1, keepdim=True)
        var = (centred * centred).mean(-1, keepdim=True)
        return centred / torch.sqrt(var + self.eps) * self.weight + self.bias


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, in ops NNAPI has (no Erf); within about 3e-4 of exact GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def decompose(model: nn.Module, which: tuple[str, ...]) -> int:
    """Apply the named decompositions in place; returns how many modules changed."""
    unknown = set(which) - set(DECOMPOSITIONS)
    if unknown:
        raise ValueError(f"unknown decompositions {sorted(unknown)}; have {DECOMPOSITIONS}")
    changed = 0
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if "layernorm" in which and isinstance(child, nn.LayerNorm):
                setattr(parent, attr, ExplicitLayerNorm(child))
                changed += 1
        if "gelu-tanh" in which and isinstance(parent, Intermediate):
            parent.act = tanh_gelu
            changed += 1
    return changed
