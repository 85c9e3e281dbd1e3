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
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """`(alpha / r) · B A`: what merging adds to the base weight."""
        return self.scaling * self.lora_B.weight @ self.lora_A.weight


class LoraLinear(AdapterLayer):
    """LoRA branches are additive, so Stack and Parallel both sum them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for branch in self.active()[1]:
            y = y + branch(x)
        return y


@dataclass
class LoraConfig:
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
        return self.target_modules

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        return LoraBranch(*linear_dims(base_layer), self, name)
