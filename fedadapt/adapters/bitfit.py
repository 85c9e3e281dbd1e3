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
    """One adapter's change to a layer's bias, `[d_out]`, zero at start."""

    def __init__(self, d_out: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(d_out))


class BitFitLinear(AdapterLayer):
    """A Linear plus the bias changes of its active adapters; they add under Stack and Parallel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base output plus every active bias change."""
        y = self.base_layer(x)
        for d in self.active()[1]:
            y = y + d.bias
        return y


@dataclass
class BitFitConfig:
    """BitFit settings: which Linears get a trainable bias change.

    Parameters
    ----------
    target_modules : list[str] (default: every Linear of the encoder)
        Module names or patterns (`fedadapt.adapters.inject.matches`), or presets.
    """

    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])

    method: ClassVar[str] = "bitfit"
    wrapper: ClassVar[type[AdapterLayer]] = BitFitLinear

    def targets(self) -> list[str]:
        """The patterns `inject` wraps."""
        return self.target_modules

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        """A zero `BiasDelta` as wide as `base_layer`'s output."""
        return BiasDelta(linear_dims(base_layer)[1])
