"""The model that every party of a run builds identically from its config and seed.

The server needs it to start round 0 (`build_fresh_global`), to know which tensors a reply
must carry a delta for (`trainable_global_keys`), to save the adapter with its label names
and to build the full-model baseline; the device needs it to train. It lives in the core so
that neither side imports the other: `server/` never imports `fedadapt.clients`.
"""

from __future__ import annotations

import zlib
from functools import cache

import torch

from fedadapt.adapters import METHODS, AdapterModel, BottleneckConfig, LoraConfig
from fedadapt.adapters.inject import AdapterConfig
from fedadapt.base import load_base
from fedadapt.deltas import State
from fedadapt.errors import ConfigError
from fedadapt.hetlora import lora_alpha
from fedadapt.simconfig import SimConfig

GLOBAL, PERSONAL = "global", "personal"


def label_names(dataset: str) -> list[str]:
    """The class names a head's outputs stand for; saved with the adapter for the runtime.

    A device's own data names its labels from this list (or by index), so it is the run's
    label set whether the device holds a demo partition or its own files.
    """
    if dataset in ("rotten_tomatoes", "rotten_tomatoes_dirichlet"):
        from fedadapt.data import rotten_tomatoes

        return list(rotten_tomatoes.LABELS)
    if dataset == "bbc":
        from fedadapt.data import bbc

        return list(bbc.LABELS)
    raise ConfigError(f"unknown dataset {dataset!r}")


def num_labels(cfg: SimConfig) -> int:
    """How many classes the run's data set has: the width of every head."""
    return len(label_names(cfg.dataset))


def global_adapter_config(cfg: SimConfig) -> AdapterConfig:
    """The federated (global) adapter's config for the run's `method`.

    Its random initial values come from the run's seed (`init_seed` here, or `build_model`'s
    `torch.manual_seed`), so the server and every device build the same initial adapter.
    Raises `ConfigError` for a method federated runs do not support.
    """
    if cfg.method == "bottleneck":
        return BottleneckConfig(reduction_factor=cfg.reduction_factor)
    if cfg.method == "lora":
        return LoraConfig(
            r=cfg.lora_r, lora_alpha=lora_alpha(cfg), freeze_a=cfg.freeze_a, init_seed=cfg.seed
        )
    if cfg.method in ("ia3", "bitfit"):
        return METHODS[cfg.method]()
    if cfg.method in ("prefix", "prompt"):  # their initial vectors drawn from the run's seed
        return METHODS[cfg.method](init_seed=cfg.seed)
    raise ConfigError(f"federated runs support methods {sorted(METHODS)}, not {cfg.method!r}")


def personal_adapter_config(cfg: SimConfig, num_layers: int) -> BottleneckConfig:
    """A small bottleneck in the top `personal_layers` layers only: backward stops there.

    `num_layers` is the encoder's depth (6 for MiniLM-L6), so the top layers are counted
    from the model actually loaded rather than assumed.
    """
    n = cfg.personal_layers
    if not 1 <= n <= num_layers:
        raise ConfigError(f"personal_layers must be between 1 and {num_layers}, got {n}")
    top = "|".join(str(i) for i in range(num_layers - n, num_layers))
    return BottleneckConfig(
        reduction_factor=cfg.personal_reduction_factor,
        target_modules=[rf"encoder\.layer\.({top})\.output"],
    )


def build_model(cfg: SimConfig, full_model: bool = False) -> AdapterModel:
    """The global adapter and head, plus the personal adapter on the top layers.

    With `full_model`, the full-model FedAvg baseline instead: the whole fp32 base plus a
    head, all trainable.
    """
    torch.manual_seed(cfg.seed)
    if full_model:
        model = AdapterModel(load_base("none"))
        model.add_head(GLOBAL, num_labels(cfg), seed=cfg.seed)
        return model
    model = AdapterModel(load_base(cfg.quantization))
    model.add_adapter(GLOBAL, global_adapter_config(cfg), num_labels=num_labels(cfg))
    layers = model.encoder.config.num_hidden_layers
    model.add_adapter(PERSONAL, personal_adapter_config(cfg, layers), num_labels=num_labels(cfg))
    return model


@cache
def _built(cfg: SimConfig, full_model: bool) -> tuple[AdapterModel, State]:
    model = build_model(cfg, full_model)
    return model, ({} if full_model else model.adapter_state(PERSONAL))


def cached_model(cfg: SimConfig, full_model: bool = False) -> AdapterModel:
    """One model per process and config: a device reuses it every round. Its tensors hold
    whatever was trained or loaded last (in a simulation's Ray actor, another client's)."""
    return _built(cfg, full_model)[0]


def fresh_personal(cfg: SimConfig) -> State:
    """The personal adapter as built, before any training: a client's new personal part
    starts here, never from the cached model's, which may be another client's."""
    return _built(cfg, False)[1]


def clear_model_cache() -> None:
    """Drop the cached models (a warm worker does when another run's messages arrive)."""
    _built.cache_clear()


@cache
def build_fresh_global(cfg: SimConfig) -> State:
    """The round-0 global adapter and head: identical on the server and every device."""
    return build_model(cfg).adapter_state(GLOBAL)


@cache
def trainable_global_keys(cfg: SimConfig) -> frozenset[str]:
    """The global tensors a reply must carry a delta for (FFA-LoRA's frozen A is not one)."""
    model = cached_model(cfg, False)
    model.train_adapter(GLOBAL)
    return frozenset(model.adapter_state(GLOBAL, trainable_only=True))


def full_model_state(model: AdapterModel) -> State:
    """Every tensor of the full-model baseline: encoder weights plus head."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    state.update({f"head.{k}": v for k, v in model.heads[GLOBAL].state_dict().items()})
    return state


def load_full_model_state(model: AdapterModel, state: State) -> None:
    """Load `full_model_state`'s tensors back into a full-model baseline; strict, none missing."""
    model.encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    model.heads[GLOBAL].load_state_dict(
        {k[5:]: v for k, v in state.items() if k.startswith("head.")}
    )


def mix_seed(*parts: int | str) -> int:
    """A seed for (run seed, round, client, purpose) that does not depend on call order."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF
