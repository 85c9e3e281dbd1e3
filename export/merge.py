"""Fold a fixed, global LoRA into the fp32 base weights before any quantization.

Merging costs nothing at inference, but it is only right for an adapter every device shares:
a personal LoRA merged into int4 weights loses most of its effect (its update is far below
the int4 step), so personal adapters stay float branches.
"""

from __future__ import annotations

import torch

from fedadapt.adapters.lora import LoraLinear
from fedadapt.adapters.model import AdapterModel


def merge_lora(model: AdapterModel, name: str) -> int:
    """Add `name`'s `scale · B A` into each wrapped fp32 weight and detach it from the forward
    (its head stays); returns the number of merged layers."""
    if model.configs[name].method != "lora":
        raise ValueError(
            f"--merge-lora needs a LoRA adapter; {name!r} is {model.configs[name].method}"
        )
    merged = 0
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, LoraLinear) and name in module.adapters:
                weight = module.base_layer.weight
                if weight.dtype != torch.float32:
                    raise TypeError("merge LoRA into the fp32 base, before quantization")
                weight += module.adapters[name].delta_weight()
                merged += 1
    model.set_active(None, head=name)
    return merged
