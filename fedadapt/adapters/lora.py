"""LoRA: `y = W x + (alpha / r) · B A x`, with B starting at zero.

Federated note: averaging A and B separately is not averaging the products `B A`; the mean of
products differs from the product of means. FFA-LoRA (`freeze_a=True`) keeps A fixed and
shared, so `mean(B_i) A = mean(B_i A)` and averaging is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from fedadapt.adapters.layer import AdapterLayer, layer_generator, linear_dims


class LoraBranch(nn.Module):
    """One adapter's low-rank update `(alpha / r) · B A` for one Linear.

    A is drawn from `(init_seed, layer name)`, so clients that build the same config draw the
    same A; B starts at zero, so a fresh branch changes nothing. With `freeze_a` A gets no
    gradient (FFA-LoRA).
    """

    def __init__(self, d_in: int, d_out: int, cfg: LoraConfig, name: str) -> None:
        super().__init__()
        self.lora_A = nn.Linear(d_in, cfg.r, bias=False)
        self.lora_B = nn.Linear(cfg.r, d_out, bias=False)
        # A from (seed, layer name): layers differ, and with FFA-LoRA every client holds the
        # same A in each layer.
        g = layer_generator(cfg.init_seed, name)
        bound = 1.0 / math.sqrt(d_in)  # kaiming-uniform(a=sqrt(5)), as nn.Linear and PEFT
        with torch.no_grad():
            self.lora_A.weight.uniform_(-bound, bound, generator=g)
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.weight.requires_grad_(not cfg.freeze_a)
        self.scaling = cfg.lora_alpha / cfg.r
        self.dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        self.freeze_a = cfg.freeze_a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branch's contribution `(alpha / r) · B A dropout(x)`, added to the base output."""
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """`(alpha / r) · B A`: what merging adds to the base weight."""
        return self.scaling * self.lora_B.weight @ self.lora_A.weight


class LoraLinear(AdapterLayer):
    """LoRA branches are additive, so Stack and Parallel both sum them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base output plus every active branch, each applied to the same `x`."""
        y = self.base_layer(x)
        for branch in self.active()[1]:
            y = y + branch(x)
        return y


@dataclass
class LoraConfig:
    """LoRA settings.

    Parameters
    ----------
    r : int (default: 8)
        The rank; must be at least 1.
    lora_alpha : float (default: 16.0)
        The update is scaled by `lora_alpha / r`.
    lora_dropout : float (default: 0.0)
        Dropout on the branch's input, in training only.
    target_modules : list[str] (default: `["query", "value"]`)
        Module names or patterns (`fedadapt.adapters.inject.matches`), or presets.
    freeze_a : bool (default: False)
        FFA-LoRA: keep A fixed so that averaging B across clients is exact.
    init_seed : int (default: 0)
        Seeds A per layer; clients must agree on it when `freeze_a` is set.
    """

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    freeze_a: bool = False  # FFA-LoRA
    init_seed: int = 0

    method: ClassVar[str] = "lora"
    wrapper: ClassVar[type[AdapterLayer]] = LoraLinear

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank must be positive, got {self.r}")

    def targets(self) -> list[str]:
        """The patterns `inject` wraps."""
        return self.target_modules

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        """A fresh `LoraBranch` sized to `base_layer`, with A drawn for layer `name`."""
        return LoraBranch(*linear_dims(base_layer), self, name)
