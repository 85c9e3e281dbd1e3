"""The adapter each bench section builds per method, so `core` and `export` time the same
shapes that the simulations train.

Every method is the run config's own (`model_setup.global_adapter_config` over `SimConfig`'s
defaults, which are bbc-dirichlet.toml's adapter settings: bottleneck reduction factor 32,
FFA-LoRA r 8, IA³/BitFit defaults, 10 prefix/prompt vectors). `core` keeps its two historical
shapes for bottleneck and LoRA (`CORE_LEGACY`): bench.json's keys are compared across commits,
and those two rows have been measured at these shapes since the first bench.
"""

from __future__ import annotations

from fedadapt.simconfig import FEDERATED_METHODS

METHODS = FEDERATED_METHODS  # bottleneck, lora, ia3, bitfit, prefix, prompt
CORE_LEGACY = ("bottleneck", "lora")


def adapter_config(method: str, core_legacy: bool = False):
    """The adapter config for `method`: a simulation's, or with `core_legacy` the core
    section's historical bottleneck (reduction factor 16) and LoRA (r 8, A trained)."""
    from fedadapt.adapters import BottleneckConfig, LoraConfig
    from fedadapt.model_setup import global_adapter_config
    from fedadapt.simconfig import SimConfig

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; have {METHODS}")
    if core_legacy and method == "bottleneck":
        return BottleneckConfig(reduction_factor=16)
    if core_legacy and method == "lora":
        return LoraConfig(r=8)
    return global_adapter_config(SimConfig(method=method))
