"""Bottleneck adapters `x + up(act(down(x)))`: layer, wrapper and config side by side.

Placements:
- `pfeiffer`: one sequential adapter on each FFN output (Pfeiffer et al., 2021).
- `houlsby`: sequential adapters after attention and after the FFN (Houlsby et al., 2019).
- `parallel`: the adapter reads the FFN block's input and adds to its output (He et al., 2022).

`up` starts at zero, so a fresh adapter is exactly the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedadapt.adapters.composition import Fuse, Parallel
from fedadapt.adapters.fusion import fusion_key
from fedadapt.adapters.layer import AdapterControl, AdapterLayer, linear_dims

PLACEMENTS = {
    "pfeiffer": [r"encoder\.layer\.\d+\.output"],
    "houlsby": [r"encoder\.layer\.\d+\.attention\.output", r"encoder\.layer\.\d+\.output"],
    "parallel": [r"encoder\.layer\.\d+\.output"],
}
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


class Bottleneck(nn.Module):
    """One bottleneck adapter: `d → hidden → d` with `up` at zero, so it starts as the identity.

    `parallel` marks the `parallel` placement: the wrapping block then feeds it the residual
    input instead of the sub-layer's output.
    """

    def __init__(self, d: int, hidden: int, cfg: BottleneckConfig) -> None:
        super().__init__()
        self.adapter_down = nn.Linear(d, hidden)
        self.adapter_up = nn.Linear(hidden, d)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        self.act = ACTIVATIONS[cfg.activation]
        self.residual = cfg.residual
        self.scaling = cfg.scaling
        self.parallel = cfg.placement == "parallel"

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """The change this adapter makes to `y` (so the skip connection stays outside)."""
        f = self.scaling * self.adapter_up(self.act(self.adapter_down(y)))
        return f if self.residual else f - y


class BottleneckBlock(AdapterLayer):
    """Wraps a `ResidualOutput` block: `LayerNorm(dense(hidden) + adapters + residual)`."""

    supports_fuse = True

    def __init__(self, base_layer: nn.Module, control: AdapterControl) -> None:
        super().__init__(base_layer, control)
        self.fusions = nn.ModuleDict()  # fusion_key(names) -> Fusion

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`ResidualOutput`'s computation with the active adapters' changes added before LayerNorm.

        Stack feeds each sequential adapter the previous one's output, Parallel feeds them all the
        sub-layer output, Fuse weighs their changes by the matching `Fusion`; parallel-placement
        adapters always read `residual`.
        """
        base = self.base_layer
        h0 = base.dropout(base.dense(hidden))
        kind, adapters = self.active()
        if kind is Fuse and adapters:
            changes = [a(residual if a.parallel else h0) for a in adapters]
            fused = self.fusions[fusion_key(self.control.active.names)](h0, changes)
            return base.LayerNorm(h0 + fused + residual)
        h = h0
        for a in adapters:
            # Stack feeds each sequential adapter the previous output; Parallel feeds all h0.
            src = residual if a.parallel else (h0 if kind is Parallel else h)
            h = h + a(src)
        return base.LayerNorm(h + residual)


@dataclass
class BottleneckConfig:
    """Bottleneck adapter settings.

    Parameters
    ----------
    placement : str (default: "pfeiffer")
        `pfeiffer`, `houlsby` or `parallel` (see the module's docstring); picks the targets
        when `target_modules` is empty.
    reduction_factor : int (default: 16)
        Hidden width is the block width divided by this, at least 1.
    hidden_size : int | None (default: None)
        The hidden width; overrides `reduction_factor` when set.
    activation : str (default: "relu")
        One of `ACTIVATIONS`.
    residual : bool (default: True)
        False: the adapter's output replaces its input instead of adding to it.
    scaling : float (default: 1.0)
        Multiplies the adapter's output.
    target_modules : list[str] (default: [])
        Residual output blocks to wrap; empty means the placement's preset.
    """

    placement: str = "pfeiffer"
    reduction_factor: int = 16
    hidden_size: int | None = None  # overrides reduction_factor when set
    activation: str = "relu"
    residual: bool = True  # False: the adapter's output replaces its input (no skip)
    scaling: float = 1.0
    target_modules: list[str] = field(default_factory=list)  # empty: the placement's preset

    method: ClassVar[str] = "bottleneck"
    wrapper: ClassVar[type[AdapterLayer]] = BottleneckBlock

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}")
        if self.reduction_factor < 1 or (self.hidden_size is not None and self.hidden_size < 1):
            raise ValueError("reduction_factor and hidden_size must be positive")

    def targets(self) -> list[str]:
        """`target_modules`, or the placement's preset if it is empty."""
        return self.target_modules or PLACEMENTS[self.placement]

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        """A fresh `Bottleneck` as wide as the block; `TypeError` if it is not a residual block."""
        if not hasattr(base_layer, "dense") or not hasattr(base_layer, "LayerNorm"):
            raise TypeError(
                f"bottleneck adapters wrap residual output blocks, not {type(base_layer).__name__}"
            )
        d = linear_dims(base_layer.dense)[1]  # dense may itself be wrapped (IA³, BitFit)
        return Bottleneck(d, self.hidden_size or max(1, d // self.reduction_factor), self)
