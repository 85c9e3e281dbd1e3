"""Simulated malicious clients, to measure what robust aggregation and reply screening buy.

Which clients are malicious is fixed by the run seed, so every round and every strategy
faces the same attackers.
"""

from __future__ import annotations

import numpy as np
import torch

from fedadapt.deltas import State

ATTACKS = ("sign-flip", "noise", "inflate-examples", "claim-cap", "scale", "huge")
# What an `inflate-examples` attacker claims: under FedAvg its weight is then ~1 against the
# honest clients' few hundred examples, unless the server caps num-examples.
INFLATED_EXAMPLES = 1_000_000_000


def malicious_clients(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The partition ids that attack: `round(num_clients * fraction)` of them, drawn from the run
    seed alone, so every round and every strategy of a seed faces the same ones.
    """
    n = round(num_clients * fraction)
    return frozenset(np.random.default_rng([seed, 7]).permutation(num_clients)[:n].tolist())


def attack(delta: State, kind: str, seed: int) -> State:
    """`sign-flip`: the delta negated and scaled x10; `noise`: Gaussian noise of the same
    norm; `inflate-examples` and `claim-cap`: the delta negated (its harm comes from the
    weight it claims, see `claimed_examples`, so it has an honest norm and clipping does not
    catch it); `scale`: the delta x1e6; `huge`: every value 1e36 (finite in fp32)."""
    if kind == "sign-flip":
        return {k: -10.0 * v for k, v in delta.items()}
    if kind in ("inflate-examples", "claim-cap"):
        return {k: -v for k, v in delta.items()}
    if kind == "scale":
        return {k: 1e6 * v for k, v in delta.items()}
    if kind == "huge":
        return {k: torch.full_like(v, 1e36) for k, v in delta.items()}
    if kind == "noise":
        g = torch.Generator().manual_seed(seed)
        noise = {k: torch.randn(v.shape, generator=g) for k, v in delta.items()}
        norm = torch.sqrt(sum((v**2).sum() for v in delta.values()))
        nnorm = torch.sqrt(sum((v**2).sum() for v in noise.values()))
        return {k: v * (norm / nnorm) for k, v in noise.items()}
    raise ValueError(f"unknown attack {kind!r}; choose from {ATTACKS}")


def claimed_examples(kind: str, examples: int, cap: int = 0) -> int:
    """The num-examples a malicious client reports: a billion for `inflate-examples`, the
    server's cap itself for `claim-cap` (the most a fixed cap lets through: 1000 by default,
    where an honest rt-full client has about 25)."""
    if kind == "inflate-examples" or (kind == "claim-cap" and not cap):
        return INFLATED_EXAMPLES
    return cap if kind == "claim-cap" else examples
