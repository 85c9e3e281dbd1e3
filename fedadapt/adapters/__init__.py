"""Adapter methods over the frozen base: each with its config, its layer and its injection."""

from fedadapt.adapters.bitfit import BitFitConfig
from fedadapt.adapters.bottleneck import BottleneckConfig
from fedadapt.adapters.composition import Fuse, Parallel, Stack
from fedadapt.adapters.ia3 import IA3Config
from fedadapt.adapters.lora import LoraConfig
from fedadapt.adapters.model import AdapterModel
from fedadapt.adapters.prefix import PrefixConfig
from fedadapt.adapters.prompt import PromptConfig

METHODS = {
    cfg.method: cfg
    for cfg in (BottleneckConfig, LoraConfig, IA3Config, BitFitConfig, PrefixConfig, PromptConfig)
}

__all__ = [
    "METHODS",
    "AdapterModel",
    "BitFitConfig",
    "BottleneckConfig",
    "Fuse",
    "IA3Config",
    "LoraConfig",
    "Parallel",
    "PrefixConfig",
    "PromptConfig",
    "Stack",
]
