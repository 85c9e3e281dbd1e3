"""Heterogeneous LoRA ranks (device tiers): weak devices train a low rank, strong ones a high one.

`lora_tier_ranks = "2,4,8"` gives every client a tier, drawn from `(seed, partition-id)` or
named by the node config's `tier` (an index into the list); the client trains LoRA at its
tier's rank, the server keeps the global adapter at the largest rank R.

Aggregation: zero-padding and truncation (HetLoRA, Cho et al. 2024), not stacking (FLoRA,
Wang et al. 2024). The server sends a rank-r client the first r rows of A and the first r
columns of B, and pads each reply's delta back to R with zeros before the weighted mean.
Why this rather than FLoRA's stacking:

- It keeps FFA-LoRA exact. A is seeded per layer, and a rank-r draw is the first r rows of
  the rank-R draw (same generator, same order), so every client's `A_r` is a prefix of the
  shared frozen A. With one scaling `s` for every tier (alpha is set to `16 · r / R`), a
  client's change `s · B_i A[:r_i] = s · pad(B_i) · A`, so the mean of the clients' dense
  changes is `s · mean(pad(ΔB_i)) · A`: exactly what the server's padded mean holds.
- The global adapter keeps a fixed size (rank R), so checkpoints, screening, the strategy's
  state and the exported graph are those of a homogeneous rank-R run. FLoRA's stack grows
  with the number of clients per round and must be merged into the base every round, which
  a frozen quantized base and a device that swaps adapters on a live session cannot take.
- Each tier downloads and uploads only its slice: bytes scale with the tier's rank.

What truncation costs: a rank-r client never sees the global B's columns past r, so its
model is the global one truncated; the high columns are learned by high-tier clients only.
Everything here is shape arithmetic on state dicts, without torch imports. The tiers are
parsed and checked against the rest of the config in `fedadapt/simconfig.py`.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedadapt.errors import FedAdaptError
from fedadapt.simconfig import SimConfig, parse_tiers

if TYPE_CHECKING:
    import torch

A_SUFFIX, B_SUFFIX = "lora_A.weight", "lora_B.weight"
RANK_KEY = "lora-rank"  # a reply's delta-meta field: the rank it trained
BASE_ALPHA = 16.0  # LoraConfig's default alpha at the global rank


def global_rank(cfg: SimConfig) -> int:
    """The server's rank: the largest tier's, or `lora_r` without tiers."""
    return max(parse_tiers(cfg.lora_tier_ranks), default=cfg.lora_r)


def global_config(cfg: SimConfig) -> SimConfig:
    """The server's config: `lora_r` set to the largest tier's rank."""
    return dataclasses.replace(cfg, lora_r=global_rank(cfg))


def lora_alpha(cfg: SimConfig) -> float:
    """Alpha for rank `cfg.lora_r` so that every tier has the global rank's scaling
    `BASE_ALPHA / R` (a padded B then means the same change at every rank)."""
    return BASE_ALPHA * cfg.lora_r / global_rank(cfg)


def client_rank(cfg: SimConfig, partition_id: int, node_tier: Any = None) -> int:
    """This client's rank: the node config's `tier` (an index) if given, else a tier drawn
    from `(seed, partition-id)`, the same on every party and in every round."""
    ranks = parse_tiers(cfg.lora_tier_ranks)
    if not ranks:
        return cfg.lora_r
    if node_tier is None:
        return ranks[zlib.crc32(f"{cfg.seed}/{partition_id}/tier".encode()) % len(ranks)]
    if isinstance(node_tier, bool) or not isinstance(node_tier, int):
        raise FedAdaptError(f"node config: tier must be an integer, got {node_tier!r}")
    if not 0 <= node_tier < len(ranks):
        raise FedAdaptError(
            f"node config: tier = {node_tier} is not an index into lora_tier_ranks "
            f"{cfg.lora_tier_ranks!r} (0..{len(ranks) - 1})"
        )
    return ranks[node_tier]


def client_config(cfg: SimConfig, rank: int) -> SimConfig:
    """The config a client of LoRA rank `rank` builds its model with: the run's, `lora_r` changed.

    `lora_alpha` then scales that rank like the global one, so padded deltas mean the same
    change at every tier.
    """
    return dataclasses.replace(cfg, lora_r=rank)


def truncate(state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The rank-`rank` slice of a LoRA state: A's first rows, B's first columns; other
    tensors (the head) as they are. A state of a lower rank than asked cannot be sliced."""
    out = {}
    for k, v in state.items():
        if k.endswith(A_SUFFIX) or k.endswith(B_SUFFIX):
            have = v.shape[0] if k.endswith(A_SUFFIX) else v.shape[1]
            if have < rank:
                raise FedAdaptError(f"{k} has rank {have}, fewer than the {rank} asked")
            v = v[:rank] if k.endswith(A_SUFFIX) else v[:, :rank]
            v = v.contiguous()
        out[k] = v
    return out


def pad(delta: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> dict:
    """A low-rank delta zero-padded to the shapes of `like` (the global state): B's missing
    columns and A's missing rows change nothing."""
    out = {}
    for k, v in delta.items():
        target = like[k]
        if v.shape != target.shape:
            full = target.new_zeros(target.shape)
            full[tuple(slice(0, n) for n in v.shape)] = v
            v = full
        out[k] = v
    return out


def padded_mean(
    deltas: list[Mapping[str, torch.Tensor]], weights: list[float], like: Mapping
) -> dict[str, torch.Tensor]:
    """The weighted mean of mixed-rank deltas, each padded to `like`'s shapes."""
    total = float(sum(weights))
    padded = [pad(d, like) for d in deltas]
    return {
        k: sum(w * p[k] for w, p in zip(weights, padded, strict=True)) / total for k in padded[0]
    }
