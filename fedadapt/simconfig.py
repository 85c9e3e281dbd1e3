"""The whole configuration of a federated run, as one flat, typed dataclass.

The same keys are Flower's run config (`[tool.flwr.app.config]` in pyproject.toml, so
`flwr run . --run-config 'rounds=3'` works) and the keys of `simulations/*.toml`.

Every way in (a TOML file, `--set`, a CLI flag, a checkpoint's config.json, Flower's run
config, or plain construction) goes through `__post_init__`, which checks each field's type
and allowed values (`RULES`). A bad value is refused with one line naming the key, the value
and what is allowed, before any process starts: a typo must not become an untrained run
that exits 0.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedadapt.config_rules import Choice, NonEmpty, Range, check_value, parse_text
from fedadapt.errors import ConfigError

# Strategies whose aggregate is a weighted mean of the replies (FedAdam, FedYogi and FedAvgM
# apply their server optimizer to that mean): the server may fold replies into their mean,
# and SecAgg+, which yields only the mean, can feed them.
LINEAR_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm")
STRATEGIES = (*LINEAR_STRATEGIES, "trimmed-mean", "median")
PERSONALIZATIONS = ("head-bias", "fedrep", "fedrep-head-bias", "ditto", "finetune")
# Modes with a personal adapter stacked on the global one (FedRep, top `personal_layers`), and
# modes that fit a head bias on top of what they evaluate (fedadapt/head_bias.py).
PERSONAL_ADAPTER_MODES = ("fedrep", "fedrep-head-bias")
HEAD_BIAS_MODES = ("head-bias", "fedrep-head-bias")


def full_model_personalization(personalization: str) -> str:
    """How the full-model FedAvg baseline is personalized, to compare with `personalization`.

    A full model has no adapter to stack or copy, so only two ways apply to it: the head bias
    (no training, the strong cheap one on rt-full) for every adapter mode, and fine-tuning for
    "finetune". One way for all adapter modes makes their rt-full comparisons share one
    baseline column, which a run can then take from another run (`full_model_from`).
    """
    return "finetune" if personalization == "finetune" else "head-bias"


# Adapter methods a federated run can train (clients/device.py builds these); extend here.
FEDERATED_METHODS = ("bottleneck", "lora", "ia3", "bitfit", "prefix", "prompt")
DATASETS = ("rotten_tomatoes", "bbc", "rotten_tomatoes_dirichlet")
QUANTIZATIONS = ("none", "int8", "int4")  # fedadapt.base.quantize's (that one needs torch)
CODECS = ("fp32", "fp16", "int8")  # fedadapt.codecs.CODECS (that one needs torch)
ATTACKS = ("sign-flip", "noise", "inflate-examples")  # clients/attacks.py; extend here


@dataclass(frozen=True)
class SimConfig:
    # data
    dataset: str = "rotten_tomatoes"  # or "bbc"
    num_clients: int = 20
    min_examples: int = 20  # Rotten Tomatoes: movies with fewer snippets are left out
    test_fraction: float = 0.3
    dirichlet_alpha: float = 0.3  # BBC and rotten_tomatoes_dirichlet
    seed: int = 0
    # federation
    rounds: int = 10
    clients_per_round: int = 10
    evaluate_every: int = 1  # evaluate on every client each N rounds (and after the last)
    evaluate_sample: int = 0  # evaluate a seeded sample of N clients per round; 0: all
    round_timeout: float = 900.0  # give up on pending clients after this long with no reply
    grid_poll_s: float = 0.2  # how often the server pulls replies (Flower's deployed grid: 3 s)
    # model and adapters
    quantization: str = "int8"
    method: str = "bottleneck"  # or lora, ia3, bitfit, prefix, prompt
    reduction_factor: int = 32
    lora_r: int = 8
    freeze_a: bool = True  # FFA-LoRA: exact averaging
    lora_tier_ranks: str = ""  # HetLoRA device tiers, e.g. "2,4,8" (fedadapt/hetlora.py)
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
    # "fedrep-head-bias" (FedRep's personal adapter, then a head bias fitted on top) or "ditto"
    # (a personal copy of the global adapter and head pulled towards it, fedadapt/ditto.py)
    personalization: str = "head-bias"
    head_bias_l2: float = 0.1
    personal_reduction_factor: int = 32
    personal_layers: int = 2  # the personal adapter sits in the top N layers only
    personal_epochs: int = 6
    personal_lr: float = 5e-3
    finetune_steps: int = 6
    ditto_lambda: float = 0.1  # Ditto's pull lambda/2 |personal - global|^2; 0: local fine-tuning
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
    max_num_examples: int = 1000  # a reply claiming more examples is rejected; 0: no cap
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
    attack: str = "sign-flip"  # sign-flip (x10), noise (same norm) or inflate-examples
    # baselines (same clients, splits, rounds and seed)
    baselines: bool = True
    full_model_baseline: bool = True  # with `baselines`; the costly one (90 MB per message)
    full_model_lr: float = 1e-4
    full_model_epochs: int = 2
    local_only_epochs: int = 8
    # take the full-model FedAvg baseline from an earlier run's folder (its report.json) instead
    # of training it again: it depends only on the data, clients, seed and rounds, which are
    # checked to match (server/full_model_reuse.py); "" trains it here
    full_model_from: str = ""
    # signed updates: publish the global adapter every N rounds and at the end (0: off)
    publish_every: int = 0
    publish_registry: str = ""
    publish_key: str = ""
    # where the ClientApps run: "" a private single-node Ray, else an existing Ray cluster's
    # address (`ray start --head` prints it), e.g. "10.0.0.5:6379"
    ray_address: str = ""
    # output
    out: str = "out/sim"
    resume: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = check_value(f.name, _TYPES[f.type], getattr(self, f.name), RULES.get(f.name))
            object.__setattr__(self, f.name, value)  # an int given for a float becomes a float
        for conflict in CONFLICTS:
            if conflict.applies(self):
                raise ConfigError(conflict.message.format(**self.to_dict()))

    @classmethod
    def field_type(cls, key: str) -> type:
        """The declared type of `key`; an unknown key is refused, with the nearest known one."""
        for f in dataclasses.fields(cls):
            if f.name == key:
                return _TYPES[f.type]
        raise ConfigError(_unknown([key]))

    @classmethod
    def parse_override(cls, key: str, text: str) -> Any:
        """`--set KEY=TEXT`: TEXT read as KEY's declared type (not guessed from its look)."""
        return parse_text(key, cls.field_type(key), text)

    @classmethod
    def from_dict(cls, raw: Any) -> SimConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"config: a table of keys was expected, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in raw if k not in known)
        if unknown:
            raise ConfigError(_unknown(unknown))
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> SimConfig:
        """The TOML file at `path` (if any) with `overrides` (those not None) on top."""
        raw = read_toml(Path(path)) if path else {}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> SimConfig:
        """Flower's run config, checked like any other source (ints become floats where a
        float is declared; a string where a bool is declared is refused)."""
        return cls.from_dict(dict(run_config))

    def resumed(self, overrides: dict[str, Any]) -> SimConfig:
        """This (checkpointed) config set to resume, with `overrides` applied where that is
        safe. An override that would change what the checkpoint means is refused, never
        ignored; one equal to the checkpoint's value is no change and passes."""
        for key, value in overrides.items():
            kind = self.field_type(key)  # an unknown key is named as such
            if key in RESUME_SAFE:
                continue
            if check_value(key, kind, value, RULES.get(key)) != getattr(self, key):
                raise ConfigError(
                    f"config: --resume cannot change {key} (the checkpoint has "
                    f"{getattr(self, key)!r}, asked {value!r}): it changes what the checkpoint "
                    f"means; start a new run instead. Safe to change on resume: "
                    f"{', '.join(sorted(RESUME_SAFE - {'out', 'resume'}))}"
                )
        return SimConfig.from_dict({**self.to_dict(), **overrides, "resume": True})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_tiers(text: str) -> tuple[int, ...]:
    """HetLoRA's device tiers (`fedadapt/hetlora.py`): `"2,4,8"` as `(2, 4, 8)`, `""` (no
    tiers) as `()`. Ranks are distinct positive integers."""
    if not text.strip():
        return ()
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ConfigError(
            f"config: lora_tier_ranks = {text!r} is not a comma-separated list of positive "
            "integers (for example '2,4,8')"
        )
    ranks = tuple(int(p) for p in parts)
    if len(set(ranks)) != len(ranks):
        raise ConfigError(f"config: lora_tier_ranks = {text!r} names a rank twice")
    return ranks


@dataclass(frozen=True)
class Conflict:
    """Settings that rule each other out: when `applies` holds, the config is refused with
    `message`, formatted with the config's fields."""

    applies: Callable[[SimConfig], bool]
    message: str


# The settings that rule each other out, as a table (AdapterHub's ALLOWED_NESTINGS is the
# model): each row is checked in order after every field passed its own rule.
CONFLICTS: tuple[Conflict, ...] = (
    Conflict(
        lambda c: c.clients_per_round > c.num_clients,
        "config: clients_per_round = {clients_per_round} exceeds num_clients = {num_clients}",
    ),
    # What secure aggregation rules out: the server never sees a single delta.
    Conflict(
        lambda c: c.secagg and c.strategy not in LINEAR_STRATEGIES,
        "secagg hides single deltas, so {strategy!r} cannot run on them; "
        "use fedavg, fedprox, fedadam, fedyogi or fedavgm",
    ),
    Conflict(
        lambda c: c.secagg and c.dp_noise_multiplier > 0,
        "central DP clips single deltas on the server, which secagg hides; run one or the other",
    ),
    Conflict(
        lambda c: c.secagg and c.codec != "fp32",
        "secagg uploads Flower's fixed-point encoding of the delta, not a codec's; "
        "leave codec = 'fp32'",
    ),
    # What HetLoRA's tiers rule out: another method, and aggregations that need every delta
    # at one shape (robust rules, SecAgg+, central DP); the server averages each tier, then
    # pads.
    Conflict(
        lambda c: bool(parse_tiers(c.lora_tier_ranks)) and c.method != "lora",
        "config: lora_tier_ranks needs method = 'lora', not {method!r}",
    ),
    Conflict(
        lambda c: (
            bool(parse_tiers(c.lora_tier_ranks))
            and (c.strategy not in LINEAR_STRATEGIES or c.secagg or c.dp_noise_multiplier > 0)
        ),
        "config: lora_tier_ranks averages each tier's deltas, then pads them: it needs a "
        "linear strategy (fedavg, fedprox, fedadam, fedyogi, fedavgm) without secagg or DP",
    ),
)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's table; a missing, unreadable or invalid file is one ConfigError."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def _unknown(keys: list[str]) -> str:
    import difflib

    names = [f.name for f in dataclasses.fields(SimConfig)]
    hints = []
    for k in keys:
        near = difflib.get_close_matches(k, names, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return f"config: unknown key {', '.join(hints)}; see docs/config.md for the keys"


_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}

# Allowed values and ranges, by key; a key without a rule is only type-checked.
RULES: dict[str, Range | Choice | NonEmpty] = {
    "dataset": Choice(DATASETS),
    "num_clients": Range(1),
    "min_examples": Range(2),  # a client needs a train and a test snippet
    "test_fraction": Range(0, 1, low_open=True, high_open=True),
    "dirichlet_alpha": Range(0, low_open=True),
    "seed": Range(0),
    "rounds": Range(1),
    "clients_per_round": Range(1),
    "evaluate_every": Range(1),
    "evaluate_sample": Range(0),
    "round_timeout": Range(0, low_open=True),
    "grid_poll_s": Range(0, low_open=True),
    "quantization": Choice(QUANTIZATIONS),
    "method": Choice(FEDERATED_METHODS),
    "reduction_factor": Range(1),
    "lora_r": Range(1),
    "local_epochs": Range(1),
    "batch_size": Range(1),
    "lr": Range(0, low_open=True),
    "max_length": Range(2, 512),  # [CLS] + [SEP] .. the base's position embeddings
    "proximal_mu": Range(0),
    "personalization": Choice(PERSONALIZATIONS),
    "head_bias_l2": Range(0),
    "personal_reduction_factor": Range(1),
    "personal_layers": Range(1),
    "personal_epochs": Range(1),
    "personal_lr": Range(0, low_open=True),
    "finetune_steps": Range(0),
    "ditto_lambda": Range(0),
    "strategy": Choice(STRATEGIES),
    "server_lr": Range(0, low_open=True),
    "server_momentum": Range(0, 1, high_open=True),
    "trim_fraction": Range(0, 0.5, high_open=True),
    "clip_norm": Range(0),
    "dp_noise_multiplier": Range(0),
    "dp_clipping_norm": Range(0, low_open=True),
    "dp_delta": Range(0, 1, low_open=True, high_open=True),
    "codec": Choice(CODECS),
    "max_reply_bytes": Range(1),
    "max_num_examples": Range(0),
    "secagg_num_shares": Range(0, low_open=True),
    "secagg_reconstruction_threshold": Range(0, low_open=True),
    "secagg_clipping_range": Range(0, low_open=True),
    "secagg_max_weight": Range(0, low_open=True),
    "malicious_fraction": Range(0, 1),
    "attack": Choice(ATTACKS),
    "full_model_lr": Range(0, low_open=True),
    "full_model_epochs": Range(1),
    "local_only_epochs": Range(1),
    "publish_every": Range(0),
    "out": NonEmpty(),
}

# What `--resume` may change: how long and how the run goes on, and what it reports, never
# what the checkpointed adapter, strategy state or client split mean.
RESUME_SAFE = frozenset(
    {
        "rounds",
        "baselines",
        "full_model_baseline",
        "evaluate_every",
        "evaluate_sample",
        "ray_address",
        "round_timeout",
        "grid_poll_s",
        "max_reply_bytes",
        "publish_every",
        "publish_registry",
        "publish_key",
        "out",
        "resume",
    }
)
