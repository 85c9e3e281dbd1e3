"""AdapterFusion (Pfeiffer et al., 2021): learned attention over bottleneck adapters' outputs.

At each fused block, the sub-layer output `h` queries the adapters' outputs `h + f_i(h)`:

    p = softmax_i(query(h) · key(h + f_i(h)) / T),   fused change = value(Σ_i p_i f_i(h))

`value` starts as the identity and `query`/`key` near zero, so a fresh fusion is the average
of the adapters' changes; training the fusion (adapters frozen) learns which adapter each
token should listen to. Only bottleneck adapters fuse, as in AdapterHub.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class FusionConfig:
    """AdapterFusion settings.

    Parameters
    ----------
    temperature : float (default: 1.0)
        Divides the attention scores; higher spreads the weights across adapters.
    init_seed : int (default: 0)
        Seeds the initial `query` and `key` weights.
    """

    temperature: float = 1.0
    init_seed: int = 0


class Fusion(nn.Module):
    """One block's fusion over `d`-wide adapter changes: query, key and value projections.

    `value` starts as the identity and `query`/`key` near zero, so a fresh fusion averages the
    adapters' changes.
    """

    def __init__(self, d: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.temperature = cfg.temperature
        g = torch.Generator().manual_seed(cfg.init_seed)
        with torch.no_grad():
            for lin in (self.query, self.key):
                lin.weight.normal_(0.0, 0.02, generator=g)
            self.value.weight.copy_(torch.eye(d))
            for lin in (self.query, self.key, self.value):
                lin.bias.zero_()

    def forward(self, h: torch.Tensor, changes: list[torch.Tensor]) -> torch.Tensor:
        """The fused change for sub-layer output `h`, from adapter `changes` shaped like `h`."""
        f = torch.stack(changes, dim=-2)  # [..., K, d]
        scores = (self.query(h).unsqueeze(-2) * self.key(h.unsqueeze(-2) + f)).sum(-1)
        p = torch.softmax(scores / self.temperature, dim=-1)  # [..., K]
        return self.value((p.unsqueeze(-1) * f).sum(-2))


def fusion_key(names: tuple[str, ...]) -> str:
    """The module key of a fusion over `names` ("." is not allowed in module names)."""
    return ",".join(names)
