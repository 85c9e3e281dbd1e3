"""Prefix tuning (Li & Liang, 2021): trainable keys and values prepended in every attention layer.

Each `attention.self` module gets `num_virtual_tokens` (P) key vectors and P value vectors,
stored as `prefix_keys` / `prefix_values` of shape `[P, hidden]`, that is `[P, head_dim]` per
head. They sit after the key and value projections, so they are attention *states*, not tokens:
every real token attends to them (the mask grows by P always-attended slots), and they produce
no output position of their own.

With `reparam_hidden > 0` each layer trains an embedding `[P, hidden]` through a small MLP
(`Linear → tanh → Linear` to `2·hidden`), which Li & Liang found steadier than training the
states directly. The MLP is a training device only: `fold()` (and adapter files, and exports)
replace it by the keys and values it produces, so what ships is the plain tensors.

A fresh prefix is *not* an identity, unlike a fresh bottleneck or LoRA: softmax gives the prefix
some attention mass, which every real token loses. Only a zero-length prefix (P = 0) changes
nothing. The default init draws small keys and values (std 0.02, seeded by layer name), so the
prefix starts near-silent: small keys score ~0, small values add little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from fedadapt.adapters.layer import AdapterLayer, layer_generator, linear_dims

ATTENTION_LAYERS = r"encoder\.layer\.\d+\.attention\.self"


def _seeded_linear(d_in: int, d_out: int, g: torch.Generator) -> nn.Linear:
    """`nn.Linear` with its default uniform init, drawn from `g` (reproducible per layer)."""
    lin = nn.Linear(d_in, d_out)
    bound = 1.0 / math.sqrt(d_in)
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound, generator=g)
        lin.bias.uniform_(-bound, bound, generator=g)
    return lin


class PrefixStates(nn.Module):
    """One layer's prefix: plain `prefix_keys` / `prefix_values`, or an embedding and its MLP."""

    def __init__(self, hidden: int, cfg: PrefixConfig, name: str) -> None:
        super().__init__()
        g = layer_generator(cfg.init_seed, name)
        p = cfg.num_virtual_tokens
        self.hidden = hidden
        if cfg.reparam_hidden:
            self.prefix_embedding = nn.Parameter(torch.randn(p, hidden, generator=g))
            self.reparam = nn.Sequential(
                _seeded_linear(hidden, cfg.reparam_hidden, g),
                nn.Tanh(),
                _seeded_linear(cfg.reparam_hidden, 2 * hidden, g),
            )
        else:
            self.prefix_keys = nn.Parameter(torch.randn(p, hidden, generator=g) * cfg.init_std)
            self.prefix_values = nn.Parameter(torch.randn(p, hidden, generator=g) * cfg.init_std)

    @property
    def reparametrized(self) -> bool:
        """Whether the states come from the MLP (not yet folded)."""
        return hasattr(self, "reparam")

    def key_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`([P, hidden], [P, hidden])`: the keys and values this layer prepends."""
        if self.reparametrized:
            kv = self.reparam(self.prefix_embedding)
            return kv[:, : self.hidden], kv[:, self.hidden :]
        return self.prefix_keys, self.prefix_values

    def folded_tensors(self) -> dict[str, torch.Tensor]:
        """The plain tensors that serve inference (the MLP evaluated once, then dropped)."""
        with torch.no_grad():
            k, v = self.key_values()
        return {"prefix_keys": k.detach().clone(), "prefix_values": v.detach().clone()}

    def fold(self) -> None:
        """Replace the MLP by the tensors it produces; outputs stay the same."""
        if not self.reparametrized:
            return
        trainable = self.prefix_embedding.requires_grad
        tensors = self.folded_tensors()
        del self.reparam, self.prefix_embedding
        for k, t in tensors.items():
            self.register_parameter(k, nn.Parameter(t, requires_grad=trainable))


def _heads(t: torch.Tensor, num_heads: int, batch: int) -> torch.Tensor:
    """`[P, hidden]` → `[batch, heads, P, head_dim]`, the layout SDPA takes."""
    p, hidden = t.shape
    return (
        t.view(p, num_heads, hidden // num_heads)
        .transpose(0, 1)
        .unsqueeze(0)
        .expand(batch, -1, -1, -1)
    )


class PrefixAttention(AdapterLayer):
    """Wraps a `SelfAttention`; Stack and Parallel both concatenate the active prefixes."""

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        """Self-attention with the active prefixes' keys and values in front, always attended."""
        base = self.base_layer
        prefixes = self.active()[1]
        if not prefixes:
            return base(x, mask_bias)
        q, k, v = base.project(x)
        keys, values = zip(*(p.key_values() for p in prefixes), strict=True)
        b, n = x.shape[0], base.num_heads
        k = torch.cat([_heads(torch.cat(keys).to(k.dtype), n, b), k], dim=2)
        v = torch.cat([_heads(torch.cat(values).to(v.dtype), n, b), v], dim=2)
        open_slots = mask_bias.new_zeros(*mask_bias.shape[:-1], k.shape[2] - q.shape[2])
        return base.attend(q, k, v, torch.cat([open_slots, mask_bias], dim=-1))


@dataclass
class PrefixConfig:
    """Prefix tuning settings.

    Parameters
    ----------
    num_virtual_tokens : int (default: 10)
        P, the number of prefix states per layer; 0 changes nothing.
    reparam_hidden : int (default: 0)
        If > 0, train through a per-layer MLP of this width; `fold` removes it for serving.
    init_std : float (default: 0.02)
        The standard deviation of plain (not reparametrized) initial keys and values.
    init_seed : int (default: 0)
        Seeds the init per layer, so clients that build the same config start alike.
    target_modules : list[str] (default: every `attention.self`)
        The self-attention modules to wrap.
    """

    num_virtual_tokens: int = 10
    reparam_hidden: int = 0  # > 0: train through a per-layer MLP of this width, folded on save
    init_std: float = 0.02
    init_seed: int = 0
    target_modules: list[str] = field(default_factory=lambda: [ATTENTION_LAYERS])

    method: ClassVar[str] = "prefix"
    wrapper: ClassVar[type[AdapterLayer]] = PrefixAttention

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 0 or self.reparam_hidden < 0 or self.init_std < 0:
            raise ValueError(
                "num_virtual_tokens, reparam_hidden and init_std must not be negative, got "
                f"{self.num_virtual_tokens}, {self.reparam_hidden}, {self.init_std}"
            )

    def targets(self) -> list[str]:
        """The patterns `inject` wraps: self-attention modules."""
        return self.target_modules

    def folded(self) -> PrefixConfig:
        """The config of the folded adapter: plain tensors, no MLP."""
        return replace(self, reparam_hidden=0)

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        """Fresh `PrefixStates` for layer `name`; `TypeError` unless it wraps self-attention."""
        if not hasattr(base_layer, "project") or not hasattr(base_layer, "attend"):
            raise TypeError(
                f"prefix tuning wraps self-attention modules, not {type(base_layer).__name__}"
            )
        return PrefixStates(linear_dims(base_layer.key)[1], self, name)
