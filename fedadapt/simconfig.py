"""The whole configuration of a federated run, as one flat dataclass.

The same keys are Flower's run config (`[tool.flwr.app.config]` in pyproject.toml, so
`flwr run . --run-config 'rounds=3'` works) and the keys of `simulations/*.toml`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedadapt.errors import ConfigError

# Strategies whose aggregate is a weighted mean of the replies (FedAdam, FedYogi and FedAvgM
# apply their server optimizer to that mean): the server may fold replies into their mean,
# and SecAgg+, which yields only the mean, can feed them.
LINEAR_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm")
STRATEGIES = (*LINEAR_STRATEGIES, "trimmed-mean", "median")
PERSONALIZATIONS = ("head-bias", "fedrep", "finetune")


@dataclass(frozen=True)
class SimConfig:
    # data
    dataset: str = "rotten_tomatoes"  # or "bbc"
    num_clients: int = 20
    min_examples: int = 20  # Rotten Tomatoes: movies with fewer snippets are left out
    test_fraction: float = 0.3
    dirichlet_alpha: float = 0.3  # BBC only
    seed: int = 0
    # federation
    rounds: int = 10
    clients_per_round: int = 10
    evaluate_every: int = 1  # evaluate on every client each N rounds (and after the last)
    round_timeout: float = 900.0  # give up on pending clients after this long with no reply
    grid_poll_s: float = 0.2  # how often the server pulls replies (Flower's deployed grid: 3 s)
    # model and adapters
    quantization: str = "int8"
    method: str = "bottleneck"  # or "lora"
    reduction_factor: int = 32
    lora_r: int = 8
    freeze_a: bool = True  # FFA-LoRA: exact averaging
    # local training
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 3e-3
    max_length: int = 64
    proximal_mu: float = 0.0  # FedProx term, used by strategy "fedprox"
    # personalization, all of it on the device: "head-bias" (a per-class offset on the
    # global head fitted to local data, fedadapt/head_bias.py), "fedrep" (a personal adapter
    # + head stacked on the global one) or "finetune" (the global adapter k steps before
    # evaluating)
    personalization: str = "head-bias"
    head_bias_l2: float = 0.1
    personal_reduction_factor: int = 32
    personal_layers: int = 2  # the personal adapter sits in the top N layers only
    personal_epochs: int = 6
    personal_lr: float = 5e-3
    finetune_steps: int = 6
    # aggregation
    strategy: str = "fedavg"
    server_lr: float = 0.01  # FedAdam / FedYogi eta
    server_momentum: float = 0.9  # FedAvgM
    trim_fraction: float = 0.2  # trimmed mean: cut this share at each end
    clip_norm: float = 0.0  # robust per-delta L2 clipping; 0 turns it off
    dp_noise_multiplier: float = 0.0  # > 0 enables central DP (Flower's wrapper)
    dp_clipping_norm: float = 0.5
    dp_delta: float = 1e-5
    codec: str = "fp32"  # fp32 | fp16 | int8 (with client-side error feedback)
    max_reply_bytes: int = 8_000_000
    # SecAgg+ (Flower's SecAggPlusWorkflow): the server sees only the sum of the deltas.
    # Its fixed-point range is `clip_norm` when set (each client clips its own delta), else
    # `secagg_clipping_range` per coordinate; see server/secagg.py.
    secagg: bool = False
    secagg_num_shares: float = 1.0  # share keys with this fraction of the sampled clients
    secagg_reconstruction_threshold: float = 0.67
    secagg_clipping_range: float = 1.0
    secagg_max_weight: float = 1000.0  # > any client's num-examples
    # simulated attacks
    malicious_fraction: float = 0.0
    attack: str = "sign-flip"  # sign-flip (x10) or noise (same norm)
    # baselines (same clients, splits, rounds and seed)
    baselines: bool = True
    full_model_baseline: bool = True  # with `baselines`; the costly one (90 MB per message)
    full_model_lr: float = 1e-4
    full_model_epochs: int = 2
    local_only_epochs: int = 8
    # signed updates: publish the global adapter every N rounds and at the end (0: off)
    publish_every: int = 0
    publish_registry: str = ""
    publish_key: str = ""
    # output
    out: str = "out/sim"
    resume: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.personalization not in PERSONALIZATIONS:
            raise ConfigError(f"personalization must be one of {PERSONALIZATIONS}")
        if self.clients_per_round > self.num_clients:
            raise ConfigError("clients_per_round cannot exceed num_clients")
        if self.attack not in ("sign-flip", "noise"):
            raise ConfigError("attack must be 'sign-flip' or 'noise'")
        if self.secagg:
            self._check_secagg()

    def _check_secagg(self) -> None:
        """What secure aggregation rules out: the server never sees a single delta."""
        if self.strategy not in LINEAR_STRATEGIES:
            raise ConfigError(
                f"secagg hides single deltas, so {self.strategy!r} cannot run on them; "
                "use fedavg, fedprox, fedadam, fedyogi or fedavgm"
            )
        if self.dp_noise_multiplier > 0:
            raise ConfigError(
                "central DP clips single deltas on the server, which secagg hides; "
                "run one or the other"
            )
        if self.codec != "fp32":
            raise ConfigError(
                "secagg uploads Flower's fixed-point encoding of the delta, not a codec's; "
                "leave codec = 'fp32'"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SimConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known: {sorted(fields)}")
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> SimConfig:
        raw = tomllib.loads(Path(path).read_text()) if path else {}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> SimConfig:
        """Flower hands TOML ints as ints, floats as floats; coerce to the declared types."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in run_config:
                v = run_config[f.name]
                kind = type(getattr(cls(), f.name))
                out[f.name] = kind(v) if kind in (int, float) and not isinstance(v, bool) else v
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
