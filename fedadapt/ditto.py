"""Ditto (Li et al., 2021): a personal model pulled towards the global one by a proximal term.

Each device keeps a personal copy of the global adapter *and head* (same structure, same
tensor names) and, after each round, trains it on its own data with the extra loss
`lambda/2 * |theta_personal - theta_global|^2` towards the round's global adapter. `lambda`
(`ditto_lambda`) slides between local fine-tuning (0) and the global model (large): with
~25 snippets a client, the pull is what keeps the personal copy from overfitting.

The head is personal too, under the same pull: clients differ mostly in their label mix
(see `fedadapt/head_bias.py`), so a head frozen to the global one would forbid exactly the
correction that helps most, while the proximal term keeps it from drifting on few snippets.

FedProx's term (`proximal_mu`) is the same expression anchored at the round's start; both
use `proximal_term`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def proximal_term(
    params: Mapping[str, torch.nn.Parameter], anchor: Mapping[str, torch.Tensor], weight: float
) -> Callable[[], torch.Tensor]:
    """The loss `weight/2 * sum_k |params[k] - anchor[k]|^2` over the keys of `anchor`.

    `anchor` holds the trainable tensors only (FFA-LoRA's frozen A is not pulled); its
    tensors are detached copies, so the pull never moves the anchor.
    """
    fixed = {k: v.detach().clone() for k, v in anchor.items()}
    missing = sorted(set(fixed) - set(params))
    if missing:
        raise KeyError(f"the anchor names tensors the model does not train: {missing[:3]}")

    def term() -> torch.Tensor:
        return 0.5 * weight * sum(((params[k] - v) ** 2).sum() for k, v in fixed.items())

    return term


def distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """`|a - b|` over the keys of `b`: how far a personal copy sits from the global."""
    return float(sum(((a[k].float() - v.float()) ** 2).sum() for k, v in b.items()) ** 0.5)
