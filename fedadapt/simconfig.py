"""The whole configuration of a federated run, as one flat, typed dataclass.

The same keys are Flower's run config (`[tool.flwr.app.config]` in pyproject.toml, so
`flwr run . --run-config 'rounds=3'` works) and the keys of `simulations/*.toml`.

Every way in (a TOML file, `--set`, a CLI flag, a checkpoint's config.json, Flower's run
config, or plain construction) goes through `__post_init__`, which checks each field's type
and allowed values (each field's `rule`), then the settings that rule each other out
(`CONFLICTS`). A bad value is refused with one line naming the key, the value
and what is allowed, before any process starts: a typo must not become an untrained run
that exits 0.

Each field carries its help text, its rule and whether `--resume` may change it, so this
file is the reference itself: docs/reference/config.md is generated from it
(`python -m fedadapt.cli.reference`). That table is why the file is longer than most.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedadapt.config_rules import Choice, NonEmpty, Range, check_value, parse_text
from fedadapt.errors import ConfigError

# Strategies whose aggregate is a weighted mean of the replies (FedAdam, FedYogi and FedAvgM
# apply their server optimizer to that mean): the server may fold replies into their mean,
# and SecAgg+, which yields only the mean, can feed them.
LINEAR_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm")
# Byzantine-robust rules that pick among whole replies (Flower's stock Krum, MultiKrum and
# Bulyan): they need every reply, so they run over rebuilt replies, never folded.
KRUM_STRATEGIES = ("krum", "multikrum", "bulyan")
STRATEGIES = ("auto", *LINEAR_STRATEGIES, "trimmed-mean", "median", *KRUM_STRATEGIES)
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
# clients/attacks.py; extend here
ATTACKS = ("sign-flip", "noise", "inflate-examples", "claim-cap", "scale", "huge")


def key(
    default: Any,
    help: str,
    rule: Range | Choice | NonEmpty | None = None,
    resume_safe: bool = False,
) -> Any:
    """One config key: its default with its help text, its allowed values and whether
    `--resume` may change it, side by side (PEFT's `field(metadata={"help": ...})`). The help
    is what docs/reference/config.md shows; `rule` is checked on every way in."""
    return field(default=default, metadata={"help": help, "rule": rule, "resume_safe": resume_safe})


@dataclass(frozen=True)
class SimConfig:
    """The run config; each field's help, rule and resume-safety are in its metadata."""

    # data
    dataset: str = key(
        "rotten_tomatoes",
        "the task: Rotten Tomatoes (one movie per client), BBC News (Dirichlet split) or Rotten "
        "Tomatoes snippets pooled and split by label with flwr-datasets' Dirichlet partitioner "
        "(any number of clients: `simulations/fleet-1000.toml`)",
        rule=Choice(DATASETS),
    )
    num_clients: int = key(20, "clients (SuperNodes) in the federation", rule=Range(1))
    min_examples: int = key(
        20,
        "Rotten Tomatoes: movies with fewer snippets are left out",
        rule=Range(2),
    )
    test_fraction: float = key(
        0.3,
        "share of each client's examples held out for its test split",
        rule=Range(0, 1, low_open=True, high_open=True),
    )
    dirichlet_alpha: float = key(
        0.3,
        "BBC and `rotten_tomatoes_dirichlet`: Dirichlet concentration of each client's label mix",
        rule=Range(0, low_open=True),
    )
    seed: int = key(
        0,
        "seeds the client draw, the splits, the attackers and training",
        rule=Range(0),
    )
    # federation
    rounds: int = key(10, "federated rounds", rule=Range(1), resume_safe=True)
    clients_per_round: int = key(
        10,
        "clients sampled for training each round (at most `num_clients`)",
        rule=Range(1),
    )
    evaluate_every: int = key(
        1,
        "evaluate on every client each N rounds (and after the last)",
        rule=Range(1),
        resume_safe=True,
    )
    evaluate_sample: int = key(
        0,
        "per-round evaluation on a seeded sample of N clients (drawn from `seed` and the round); "
        "0: all; every client is still evaluated after the last round",
        rule=Range(0),
        resume_safe=True,
    )
    round_timeout: float = key(
        900.0,
        "seconds without a reply before pending clients are given up",
        rule=Range(0, low_open=True),
        resume_safe=True,
    )
    grid_poll_s: float = key(
        0.2,
        "how often the server pulls replies",
        rule=Range(0, low_open=True),
        resume_safe=True,
    )
    # model and adapters
    quantization: str = key(
        "int8",
        "weight-only quantization of the frozen base",
        rule=Choice(QUANTIZATIONS),
    )
    method: str = key(
        "bottleneck",
        "adapter method trained in the federation (`ia3`, `bitfit` with their default targets; "
        "`prefix`, `prompt` with 10 virtual tokens seeded by `seed`: `fedadapt/model_setup.py`)",
        rule=Choice(FEDERATED_METHODS),
    )
    reduction_factor: int = key(
        32,
        "bottleneck: hidden size / adapter size (32: 12 units, 237 kB per round; on rt-full, 4 "
        "brings the global adapter within 1 pt of full-model FedAvg at 1.79 MB per round: "
        "docs/results/personalization.md)",
        rule=Range(1),
    )
    lora_r: int = key(8, "LoRA rank", rule=Range(1))
    freeze_a: bool = key(True, "FFA-LoRA: freeze A so averaging is exact")
    lora_tier_ranks: str = key(
        "",
        'HetLoRA device tiers (`"2,4,8"`): each client trains the rank of its tier (drawn from '
        "the seed, or the node config's `tier` index); the global rank is the largest, `lora_r` "
        'is then ignored; needs `method = "lora"` and a linear strategy without secagg or DP '
        "(`fedadapt/hetlora.py`)",
    )
    # local training
    local_epochs: int = key(2, "epochs of local training per round", rule=Range(1))
    batch_size: int = key(16, "local batch size", rule=Range(1))
    lr: float = key(3e-3, "local learning rate", rule=Range(0, low_open=True))
    max_length: int = key(64, "token limit per example", rule=Range(2, 512))
    proximal_mu: float = key(0.0, "FedProx term (strategy `fedprox`)", rule=Range(0))
    # personalization, all of it on the device
    personalization: str = key(
        "head-bias",
        "on-device personalization: per-class head bias, FedRep personal adapter (top "
        "`personal_layers`), FedRep plus a head bias fitted on top, Ditto (a personal copy of the"
        " global adapter and head pulled towards it, `fedadapt/ditto.py`), or k fine-tuning steps",
        rule=Choice(PERSONALIZATIONS),
    )
    head_bias_l2: float = key(0.1, "L2 penalty of the head-bias fit", rule=Range(0))
    personal_reduction_factor: int = key(
        32,
        "FedRep: the personal adapter's reduction factor",
        rule=Range(1),
    )
    personal_layers: int = key(
        2,
        "FedRep: the personal adapter sits in the top N layers",
        rule=Range(1),
    )
    personal_epochs: int = key(6, "FedRep: epochs of personal training", rule=Range(1))
    personal_lr: float = key(5e-3, "FedRep: personal learning rate", rule=Range(0, low_open=True))
    finetune_steps: int = key(
        6,
        "`finetune`: steps on the global adapter before evaluating",
        rule=Range(0),
    )
    ditto_lambda: float = key(
        0.1,
        "`ditto`: weight of the pull `lambda/2 * ||personal - global||^2` (0: plain local "
        "fine-tuning of the copy); trained for `personal_epochs` at `personal_lr`",
        rule=Range(0),
    )
    # aggregation
    strategy: str = key(
        "auto",
        "server aggregation; `auto`: the trimmed mean (`trim_fraction` cut at each end of every "
        "coordinate) where the server sees each delta, else `fedavg` (with `secagg`, central "
        "DP or `lora_tier_ranks`, which need a linear mean): under 20% sign-flipping clients "
        "it held quick.toml's global accuracy within 1 point of clean FedAvg, where FedAvg "
        "lost 10 (docs/results/accuracy.md)",
        rule=Choice(STRATEGIES),
    )
    server_lr: float = key(
        0.01,
        "FedAdam / FedYogi server learning rate",
        rule=Range(0, low_open=True),
    )
    server_momentum: float = key(0.9, "FedAvgM momentum", rule=Range(0, 1, high_open=True))
    trim_fraction: float = key(
        0.3,
        "trimmed mean: share cut at each end (0.3 of 10 replies: 3 each end, so up to 3 liars "
        "per round fall off)",
        rule=Range(0, 0.5, high_open=True),
    )
    clip_norm: float = key(0.0, "per-delta L2 clipping on the server (0: off)", rule=Range(0))
    krum_malicious: int = key(
        1,
        "krum, multikrum, bulyan: the number of malicious clients per round the rule tolerates "
        "(Flower's `num_malicious_nodes`)",
        rule=Range(0),
    )
    multikrum_select: int = key(
        0,
        "multikrum: replies averaged after selection; 0: all but `krum_malicious`",
        rule=Range(0),
    )
    weight_ratio: float = key(
        2.0,
        "a reply's weight is at most this times the round's median claimed `num-examples`, so "
        "no few clients own the mean by claiming more (server/bounds.py); 0: off",
        rule=Range(0),
    )
    norm_ratio: float = key(
        2.0,
        "a delta's L2 norm is scaled down to this times the round's median norm (an adaptive "
        "bound, server/bounds.py); 0: off",
        rule=Range(0),
    )
    dp_noise_multiplier: float = key(0.0, "central DP noise (0: off)", rule=Range(0))
    dp_clipping_norm: float = key(0.5, "central DP clipping norm", rule=Range(0, low_open=True))
    dp_delta: float = key(1e-5, "central DP delta", rule=Range(0, 1, low_open=True, high_open=True))
    codec: str = key(
        "fp32",
        "how a client encodes its delta (`int8` with client-side error feedback)",
        rule=Choice(CODECS),
    )
    max_reply_bytes: int = key(
        8_000_000,
        "larger replies are rejected (`oversize`)",
        rule=Range(1),
        resume_safe=True,
    )
    max_num_examples: int = key(
        1000,
        "a reply claiming more examples is rejected (`num-examples`); 0: no cap",
        rule=Range(0),
    )
    # SecAgg+ (Flower's SecAggPlusWorkflow): the server sees only the sum of the deltas.
    # Its fixed-point range is `clip_norm` when set (each client clips its own delta), else
    # `secagg_clipping_range` per coordinate; see server/secagg.py.
    secagg: bool = key(False, "SecAgg+: the server sees only the sum of the deltas")
    secagg_num_shares: float = key(
        1.0,
        "SecAgg+: share keys with this fraction of the sampled clients",
        rule=Range(0, 1, low_open=True),
    )
    secagg_reconstruction_threshold: float = key(
        0.67,
        "SecAgg+: the fraction of shares needed to reconstruct",
        rule=Range(0, 1, low_open=True),
    )
    secagg_clipping_range: float = key(
        1.0,
        "SecAgg+: fixed-point range per coordinate when `clip_norm` is 0",
        rule=Range(0, low_open=True),
    )
    secagg_max_weight: float = key(
        1000.0,
        "SecAgg+: bound on any client's weight",
        rule=Range(0, low_open=True),
    )
    # simulated attacks
    malicious_fraction: float = key(
        0.0,
        "share of clients that attack (simulated)",
        rule=Range(0, 1),
    )
    attack: str = key("sign-flip", "what malicious clients send", rule=Choice(ATTACKS))
    # baselines (same clients, splits, rounds and seed)
    baselines: bool = key(
        True,
        "also run the baselines (same clients, splits, rounds and seed)",
        resume_safe=True,
    )
    full_model_baseline: bool = key(
        True,
        "with `baselines`: the costly full-model FedAvg baseline",
        resume_safe=True,
    )
    full_model_lr: float = key(
        1e-4,
        "full-model baseline learning rate",
        rule=Range(0, low_open=True),
    )
    full_model_epochs: int = key(2, "full-model baseline local epochs", rule=Range(1))
    local_only_epochs: int = key(8, "local-only baseline epochs", rule=Range(1))
    full_model_from: str = key(
        "",
        "a run folder (or its `report.json`) to take the full-model FedAvg baseline from instead "
        "of training it: its dataset, clients, seed, rounds, full-model settings and full-model "
        "personalization must match this run's, else the run is refused before it starts "
        "(`server/full_model_reuse.py`); taken with or without `baselines`; relative to the "
        "directory `fedadapt simulate` runs in",
    )
    # signed updates
    publish_every: int = key(
        0,
        "publish the global adapter every N rounds and at the end (0: off)",
        rule=Range(0),
        resume_safe=True,
    )
    publish_registry: str = key("", "registry folder to publish into", resume_safe=True)
    publish_key: str = key("", "private key file to sign with", resume_safe=True)
    # where the ClientApps run: "" a private single-node Ray, else an existing Ray cluster's
    # address (`ray start --head` prints it), e.g. "10.0.0.5:6379"
    ray_address: str = key(
        "",
        '`""`: a private single-node Ray; else the address of an existing Ray cluster '
        "(`HOST:PORT` as `ray start --head` prints it) that runs the ClientApps (`--ray-address`;"
        " docs/how-to/simulate.md)",
        resume_safe=True,
    )
    # output
    out: str = key("out/sim", "run folder (set by `--out`)", rule=NonEmpty(), resume_safe=True)
    resume: bool = key(False, "set by `--resume`", resume_safe=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = check_value(f.name, _TYPES[f.type], getattr(self, f.name), RULES.get(f.name))
            object.__setattr__(self, f.name, value)  # an int given for a float becomes a float
        for conflict in CONFLICTS:
            if conflict.applies(self):
                raise ConfigError(conflict.message.format(**self.to_dict()))

    @property
    def aggregation(self) -> str:
        """The strategy that runs: `strategy`, with `auto` resolved (`auto_strategy`). Kept
        apart from the field, so that a config derived from this one (`to_dict`, then other
        keys) resolves `auto` again for its own keys."""
        return auto_strategy(self) if self.strategy == "auto" else self.strategy

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
        """A config from a table of keys (a TOML file, a run config), every value checked.

        Unknown keys are refused with the nearest known one, as a bad value or a conflict is:
        all as `ConfigError`, never silently dropped. Missing keys take their defaults.
        """
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
        """Every field by name: what `from_dict` reads back, and what a run config holds."""
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
    """Settings that rule each other out: `rule` says what must hold (the reference page
    lists it); when `applies` holds, the config is refused with `message`, formatted with the
    config's fields."""

    rule: str
    applies: Callable[[SimConfig], bool]
    message: str


# The settings that rule each other out, as a table (AdapterHub's ALLOWED_NESTINGS is the
# model): each row is checked in order after every field passed its own rule.
CONFLICTS: tuple[Conflict, ...] = (
    Conflict(
        "clients_per_round <= num_clients",
        lambda c: c.clients_per_round > c.num_clients,
        "config: clients_per_round = {clients_per_round} exceeds num_clients = {num_clients}",
    ),
    Conflict(
        "evaluate_sample <= num_clients",
        lambda c: c.evaluate_sample > c.num_clients,
        "config: evaluate_sample = {evaluate_sample} exceeds num_clients = {num_clients}",
    ),
    Conflict(
        "publish_every > 0 needs publish_registry and publish_key",
        lambda c: c.publish_every > 0 and not (c.publish_registry and c.publish_key),
        "config: publish_every = {publish_every} needs publish_registry and publish_key (the "
        "folder to publish into and the key to sign with), checked before any round trains",
    ),
    # What secure aggregation rules out: the server never sees a single delta.
    Conflict(
        "secagg needs a linear strategy (fedavg, fedprox, fedadam, fedyogi, fedavgm)",
        lambda c: c.secagg and c.aggregation not in LINEAR_STRATEGIES,
        "secagg hides single deltas, so {strategy!r} cannot run on them; "
        "use fedavg, fedprox, fedadam, fedyogi or fedavgm",
    ),
    Conflict(
        "secagg and central DP (dp_noise_multiplier > 0) exclude each other",
        lambda c: c.secagg and c.dp_noise_multiplier > 0,
        "central DP clips single deltas on the server, which secagg hides; run one or the other",
    ),
    Conflict(
        'secagg needs codec = "fp32"',
        lambda c: c.secagg and c.codec != "fp32",
        "secagg uploads Flower's fixed-point encoding of the delta, not a codec's; "
        "leave codec = 'fp32'",
    ),
    # What Krum's and Bulyan's guarantees need: enough honest replies around the liars.
    Conflict(
        "krum and multikrum need clients_per_round > 2 x krum_malicious + 2",
        lambda c: (
            c.strategy in ("krum", "multikrum") and c.clients_per_round <= 2 * c.krum_malicious + 2
        ),
        "config: strategy = {strategy!r} tolerates krum_malicious = {krum_malicious} liars only "
        "with clients_per_round > 2 x {krum_malicious} + 2 (got {clients_per_round})",
    ),
    Conflict(
        "bulyan needs clients_per_round >= 4 x krum_malicious + 3",
        lambda c: c.strategy == "bulyan" and c.clients_per_round < 4 * c.krum_malicious + 3,
        "config: strategy = 'bulyan' tolerates krum_malicious = {krum_malicious} liars only "
        "with clients_per_round >= 4 x {krum_malicious} + 3 (got {clients_per_round})",
    ),
    Conflict(
        "multikrum_select <= clients_per_round",
        lambda c: c.multikrum_select > c.clients_per_round,
        "config: multikrum_select = {multikrum_select} exceeds clients_per_round = "
        "{clients_per_round}",
    ),
    # What HetLoRA's tiers rule out: another method, and aggregations that need every delta
    # at one shape (robust rules, SecAgg+, central DP); the server averages each tier, then
    # pads.
    Conflict(
        'lora_tier_ranks needs method = "lora"',
        lambda c: bool(parse_tiers(c.lora_tier_ranks)) and c.method != "lora",
        "config: lora_tier_ranks needs method = 'lora', not {method!r}",
    ),
    Conflict(
        "lora_tier_ranks needs a linear strategy, without secagg or central DP",
        lambda c: (
            bool(parse_tiers(c.lora_tier_ranks))
            and (c.aggregation not in LINEAR_STRATEGIES or c.secagg or c.dp_noise_multiplier > 0)
        ),
        "config: lora_tier_ranks averages each tier's deltas, then pads them: it needs a "
        "linear strategy (fedavg, fedprox, fedadam, fedyogi, fedavgm) without secagg or DP",
    ),
)


def auto_strategy(cfg: SimConfig) -> str:
    """What `strategy = "auto"` runs: a robust rule by default, since a mean lets a few clients
    steer it, but the linear mean where the server may only see the sum (SecAgg+), central DP
    clips and noises each reply for an accounted mean, or HetLoRA folds tiers of ranks."""
    if cfg.secagg or cfg.dp_noise_multiplier > 0 or cfg.lora_tier_ranks:
        return "fedavg"
    return "trimmed-mean"


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
    return f"config: unknown key {', '.join(hints)}; see docs/reference/config.md for the keys"


_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}

# Allowed values and ranges by key, and what `--resume` may change (how long and how the run
# goes on, and what it reports, never what the checkpointed adapter, strategy state or
# client split mean): read off the fields.
RULES: dict[str, Range | Choice | NonEmpty] = {
    f.name: f.metadata["rule"] for f in dataclasses.fields(SimConfig) if f.metadata["rule"]
}
RESUME_SAFE = frozenset(f.name for f in dataclasses.fields(SimConfig) if f.metadata["resume_safe"])
