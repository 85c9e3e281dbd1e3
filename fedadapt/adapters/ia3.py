"""IA³: learned rescaling of keys, values and the FFN intermediate, starting at one.

As in HF PEFT, a feed-forward target (`output.dense`) scales its *input* (the intermediate
activation, width 1536) and the others scale their output; vectors keep PEFT's shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from fedadapt.adapters.layer import AdapterLayer, linear_dims


class IA3Vector(nn.Module):
    """One adapter's learned scale for one layer, all ones at start.

    A feed-forward vector scales the layer's input (shape `[1, d_in]`), any other its output
    (shape `[d_out, 1]`): PEFT's shapes, so files convert both ways.
    """

    def __init__(self, d_in: int, d_out: int, feedforward: bool) -> None:
        super().__init__()
        self.feedforward = feedforward
        shape = (1, d_in) if feedforward else (d_out, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape))

    def vector(self) -> torch.Tensor:
        """The scale as a flat vector, ready to broadcast over the last dimension."""
        return self.ia3_l.flatten()


class IA3Linear(AdapterLayer):
    """Scales compose by product, under Stack and Parallel alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale the input by feed-forward vectors, run the base, scale its output by the rest."""
        vectors = self.active()[1]
        for v in vectors:
            if v.feedforward:
                x = x * v.vector()
        y = self.base_layer(x)
        for v in vectors:
            if not v.feedforward:
                y = y * v.vector()
        return y


@dataclass
class IA3Config:
    """IA³ settings: which Linears are rescaled, and which of them scale their input.

    Parameters
    ----------
    target_modules : list[str] (default: `["key", "value", "output.dense"]`)
        Module names or patterns (`fedadapt.adapters.inject.matches`), or presets.
    feedforward_modules : list[str] (default: `["output.dense"]`)
        Targets whose input is scaled instead of their output. A name matches by the same
        suffix rule, so `output.dense` also covers `attention.output.dense`, as in PEFT.
    """

    target_modules: list[str] = field(default_factory=lambda: ["key", "value", "output.dense"])
    feedforward_modules: list[str] = field(default_factory=lambda: ["output.dense"])

    method: ClassVar[str] = "ia3"
    wrapper: ClassVar[type[AdapterLayer]] = IA3Linear

    def targets(self) -> list[str]:
        """The patterns `inject` wraps."""
        return self.target_modules

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        """An all-ones `IA3Vector` for layer `name`; feed-forward if `feedforward_modules` match."""
        ff = any(name == p or name.endswith("." + p) for p in self.feedforward_modules)
        return IA3Vector(*linear_dims(base_layer), feedforward=ff)
