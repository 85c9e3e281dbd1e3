"""BitFit: train the biases only.

The base stays frozen and shared, so the trained part is kept as a bias *change* beside it
(zero at start): the adapter file then holds no base weight, and switching it off restores
the base exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from fedadapt.adapters.layer import AdapterLayer, linear_dims


class BiasDelta(nn.Module):
    def __init__(self, d_out: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(d_out))


class BitFitLinear(AdapterLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for d in self.active()[1]:
            y = y + d.bias
        return y


@dataclass
class BitFitConfig:
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])

    method: ClassVar[str] = "bitfit"
    wrapper: ClassVar[type[AdapterLayer]] = BitFitLinear

    def targets(self) -> list[str]:
        return self.target_modules

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        return BiasDelta(linear_dims(base_layer)[1])
