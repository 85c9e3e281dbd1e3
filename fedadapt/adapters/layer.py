"""What every adapter wrapper shares: the wrapped `base_layer`, named adapters, the active setup.

One `AdapterControl` is shared by all wrappers of a model, so activating a setup is a single
assignment instead of a walk over the module tree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from fedadapt.adapters.composition import Block, Fuse


@dataclass
class AdapterControl:
    """The active setup, shared by every wrapper of one model; None means no adapter is active."""

    active: Block | None = None


class AdapterLayer(nn.Module):
    """Wraps one base module; holds one small module per adapter name."""

    supports_fuse = False  # AdapterFusion attends over bottleneck outputs only

    def __init__(self, base_layer: nn.Module, control: AdapterControl) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.control = control

    def active(self) -> tuple[type[Block], list[nn.Module]]:
        """The active block's kind and this layer's adapters in it, in order."""
        block = self.control.active
        if block is None:
            return Block, []
        if isinstance(block, Fuse) and not self.supports_fuse:
            raise NotImplementedError(
                f"AdapterFusion fuses bottleneck adapters; {type(self).__name__} cannot fuse"
            )
        return type(block), [self.adapters[n] for n in block.names if n in self.adapters]


def logical_name(module_path: str) -> str:
    """A module's path with wrapper hops removed: what users and adapter files name it by."""
    return ".".join(p for p in module_path.split(".") if p != "base_layer")


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """`(in_features, out_features)` of a Linear-like module, looking through wrappers."""
    while isinstance(module, AdapterLayer):
        module = module.base_layer
    if not hasattr(module, "in_features") or not hasattr(module, "out_features"):
        raise TypeError(f"expected a Linear layer, got {type(module).__name__}")
    return module.in_features, module.out_features


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded by `(seed, module name)`: every layer draws its own initial values,
    yet every client that builds the same adapter from the same seed draws the same ones
    (FFA-LoRA's shared, frozen A relies on that)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
