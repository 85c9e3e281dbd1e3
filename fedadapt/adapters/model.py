"""A frozen base plus named adapters and task heads: add, activate, swap, delete.

Adapter tensors are addressed by `<logical module name>.<tensor>` (for example
`encoder.layer.0.attention.self.query.lora_A.weight`) and heads by `head.<tensor>`, with the
adapter's own name left out, so a saved adapter loads under any name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedadapt.adapters.bottleneck import BottleneckBlock
from fedadapt.adapters.composition import Fuse, Setup, as_block
from fedadapt.adapters.fusion import Fusion, FusionConfig, fusion_key
from fedadapt.adapters.inject import AdapterConfig, inject, remove
from fedadapt.adapters.layer import AdapterControl, AdapterLayer, linear_dims, logical_name
from fedadapt.base.bert import mean_pool
from fedadapt.base.model import BaseModel
from fedadapt.errors import AdapterLoadError

HEAD_PREFIX = "head."


class AdapterModel(nn.Module):
    """A frozen base encoder with named adapters, fusions and classification heads.

    The encoder is shared with `base` and frozen on construction; adapters are injected into
    it in place. Nothing is active until `set_active` (or a `train_*` method) is called, and
    `forward` needs an active head.
    """

    def __init__(self, base: BaseModel) -> None:
        super().__init__()
        self.encoder = base.encoder
        self.encoder.requires_grad_(False)
        self.base = base
        self.control = AdapterControl()
        self.heads = nn.ModuleDict()
        self.configs: dict[str, Any] = {}
        self.active_head: str | None = None

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(self, name: str, cfg: AdapterConfig, num_labels: int | None = None) -> None:
        """Inject a new adapter `name` into every layer `cfg` targets; it is not activated.

        Parameters
        ----------
        name : str
            A name not yet in use (`ValueError` otherwise).
        cfg : AdapterConfig
            The method and its settings (LoRA, IA³, bottleneck...).
        num_labels : int | None (default: None)
            If given, also add a head of that many classes under the same name.
        """
        if name in self.configs:
            raise ValueError(f"adapter {name!r} already exists")
        inject(self.encoder, self.control, name, cfg)
        self.configs[name] = cfg
        if num_labels is not None:
            self.add_head(name, num_labels)

    def add_head(self, name: str, num_labels: int, seed: int = 0) -> None:
        """Add (or replace) linear head `name` on the pooled embedding.

        Weights are drawn from N(0, 0.02) with a generator seeded by `seed`, biases are zero, so
        every client that adds the same head starts from the same tensors.
        """
        head = nn.Linear(self.encoder.config.hidden_size, num_labels)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02, generator=g)
            head.bias.zero_()
        self.heads[name] = head

    def add_fusion(
        self, fuse: Fuse, cfg: FusionConfig | None = None, num_labels: int | None = None
    ) -> str:
        """An AdapterFusion layer over `fuse`'s adapters in every block that holds them all;
        returns its key (also the name of its head, when `num_labels` is given)."""
        for n in fuse.names:
            self._check(n)
        key = fusion_key(fuse.names)
        blocks = [
            m
            for m in self.encoder.modules()
            if isinstance(m, BottleneckBlock) and all(n in m.adapters for n in fuse.names)
        ]
        if not blocks:
            raise ValueError(f"no block holds all of {fuse.names} as bottleneck adapters")
        for block in blocks:
            width = linear_dims(block.base_layer.dense)[1]
            block.fusions[key] = Fusion(width, cfg or FusionConfig())
        if num_labels is not None:
            self.add_head(key, num_labels)
        return key

    def fusion_parameters(self, key: str) -> dict[str, nn.Parameter]:
        """A fusion's tensors as `<block>.fusion.<tensor>`, and its head's as `head.<tensor>`."""
        out: dict[str, nn.Parameter] = {}
        for path, module in self.encoder.named_modules():
            if isinstance(module, BottleneckBlock) and key in module.fusions:
                for k, p in module.fusions[key].named_parameters():
                    out[f"{logical_name(path)}.fusion.{k}"] = p
        if not out:
            raise KeyError(f"no fusion {key!r}")
        if key in self.heads:
            for k, p in self.heads[key].named_parameters():
                out[HEAD_PREFIX + k] = p
        return out

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter, its head, and any fusion that includes it."""
        self._check(name)
        for m in self.encoder.modules():
            if isinstance(m, BottleneckBlock):
                for key in [k for k in m.fusions if name in k.split(",")]:
                    del m.fusions[key]
                    if key in self.heads:
                        del self.heads[key]
        remove(self.encoder, name)
        del self.configs[name]
        if name in self.heads:
            del self.heads[name]
        block = self.control.active
        if block is not None and name in block.names:
            rest = [n for n in block.names if n != name]
            self.set_active(type(block)(*rest) if rest else None)

    def set_active(self, setup: Setup, head: str | None = None) -> None:
        """Activate a name or composition; the head defaults to the last adapter that has one."""
        block = as_block(setup)
        for n in block.names if block else ():
            self._check(n)
        self.control.active = block
        names = block.names if block else ()
        fused = fusion_key(names) if isinstance(block, Fuse) else None
        self.active_head = (
            head
            or (fused if fused in self.heads else None)
            or next((n for n in reversed(names) if n in self.heads), None)
        )

    def deactivate(self) -> None:
        """Turn every adapter off but keep the active head: the head over the bare base."""
        self.set_active(None, head=self.active_head)

    def swap(self, old: str, new: str) -> None:
        """Put `new` where `old` stands in the active setup, keeping the composition."""
        block = self.control.active
        if block is None or old not in block.names:
            raise ValueError(f"adapter {old!r} is not active")
        self._check(new)
        names = [new if n == old else n for n in block.names]
        head = new if self.active_head == old and new in self.heads else self.active_head
        self.set_active(type(block)(*names), head=head)

    def train_adapter(self, setup: Setup, only: list[str] | None = None) -> None:
        """Activate `setup` and make its adapters and heads trainable (or just those in `only`,
        e.g. a personal adapter trained on top of a frozen global one)."""
        self.set_active(setup)
        self.requires_grad_(False)
        for name in only or self.control.active.names:
            for key, p in self.adapter_parameters(name).items():
                frozen_a = key.endswith("lora_A.weight") and getattr(
                    self.configs[name], "freeze_a", False
                )
                p.requires_grad_(not frozen_a)

    def train_fusion(self, fuse: Fuse) -> None:
        """Activate `fuse` and train only its fusion layers and head; the adapters stay frozen."""
        self.set_active(fuse)
        self.requires_grad_(False)
        for p in self.fusion_parameters(fusion_key(fuse.names)).values():
            p.requires_grad_(True)

    def train_head(self, name: str) -> None:
        """A linear probe: no adapter active, only head `name` trainable."""
        self.set_active(None, head=name)
        self.requires_grad_(False)
        self.heads[name].requires_grad_(True)

    def _check(self, name: str) -> None:
        if name not in self.configs:
            raise KeyError(f"no adapter named {name!r}; have {sorted(self.configs)}")

    # -- state ------------------------------------------------------------------------------
    def _adapter_modules(self, name: str) -> list[tuple[str, nn.Module]]:
        """`(logical module name, adapter module)` for every layer that holds adapter `name`."""
        self._check(name)
        return [
            (logical_name(path), module.adapters[name])
            for path, module in self.encoder.named_modules()
            if isinstance(module, AdapterLayer) and name in module.adapters
        ]

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """The live parameters of adapter `name` and of its head, if any.

        Keys are `<logical module name>.<tensor>` and `head.<tensor>`, without the adapter's
        name, so they match adapter files and load under another name.
        """
        out: dict[str, nn.Parameter] = {}
        for prefix, adapter in self._adapter_modules(name):
            for k, p in adapter.named_parameters():
                out[f"{prefix}.{k}"] = p
        if name in self.heads:
            for k, p in self.heads[name].named_parameters():
                out[HEAD_PREFIX + k] = p
        return out

    def adapter_state(self, name: str, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """Detached copies of an adapter's tensors (and its head's)."""
        return {
            k: p.detach().clone()
            for k, p in self.adapter_parameters(name).items()
            if p.requires_grad or not trainable_only
        }

    def inference_state(self, name: str) -> tuple[Any, dict[str, torch.Tensor]]:
        """The config and tensors that serve adapter `name`, with training-only parts (prefix
        tuning's MLP) folded, without touching the live model: what adapter files hold."""
        cfg = self.configs[name]
        folded = getattr(cfg, "folded", None)
        if folded is None:
            return cfg, self.adapter_state(name)
        out: dict[str, torch.Tensor] = {}
        for prefix, adapter in self._adapter_modules(name):
            for k, t in adapter.folded_tensors().items():
                out[f"{prefix}.{k}"] = t
        heads = self.adapter_state(name)
        out.update({k: v for k, v in heads.items() if k.startswith(HEAD_PREFIX)})
        return folded(), out

    def fold(self, name: str) -> None:
        """Fold adapter `name`'s training-only parts in place (see `inference_state`)."""
        folded = getattr(self.configs[name], "folded", None)
        if folded is None:
            return
        for _, adapter in self._adapter_modules(name):
            adapter.fold()
        self.configs[name] = folded()

    def load_adapter_state(
        self, name: str, state: dict[str, torch.Tensor], strict: bool = True
    ) -> None:
        """Copy tensors into adapter `name`; a missing, extra or mis-shaped tensor is an error."""
        own = self.adapter_parameters(name)
        extra = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state)) if strict else []
        bad = [
            f"{k}: expected {tuple(own[k].shape)}, got {tuple(v.shape)}"
            for k, v in state.items()
            if k in own and own[k].shape != v.shape
        ]
        problems = []
        if missing:
            problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            problems.append(f"unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if bad:
            problems.append(f"mis-shaped tensors {bad[:5]}")
        if problems:
            raise AdapterLoadError(f"adapter {name!r} does not fit: " + "; ".join(problems))
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(own[k].dtype))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that currently require gradients: what an optimizer should get."""
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        """How many scalars `trainable_parameters` holds."""
        return sum(p.numel() for p in self.trainable_parameters())

    # -- forward ----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean-pooled sentence embedding `[B, d]`, through the active adapters."""
        return mean_pool(self.encoder(input_ids, attention_mask), attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The active head's logits `[B, num_labels]`; `RuntimeError` if no head is active."""
        if self.active_head is None:
            raise RuntimeError("no active head: add one with add_adapter(..., num_labels=N)")
        return self.heads[self.active_head](self.embed(input_ids, attention_mask))
