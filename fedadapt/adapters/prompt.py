"""Prompt tuning (Lester et al., 2021): trainable soft-prompt vectors prepended to the input.

The prompt (`prompt_embeddings`, `[P, hidden]`) is prepended to the *output* of the embedding
layer, so the virtual tokens carry no position and the real tokens keep positions `0..S-1`,
the ones the frozen base was trained with (prepending before the position embeddings, as PEFT
does for BERT, would shift every real token by P). The encoder then:
- attends to the virtual tokens always: the attention mask grows by P ones in front;
- returns the real tokens' hidden states only (`Bert.forward` cuts the first P), so mean
  pooling averages over the real tokens alone. Why: the sentence embedding stays what the base
  and the head were built on (the mean of real tokens' states), its count does not depend on P,
  and padding still changes nothing. The prompt acts through attention in every layer.

A zero-length prompt changes nothing; a non-empty fresh one does (the real tokens attend to it).
The init copies the embeddings of P vocabulary tokens drawn from the seed, which Lester et al.
found better than random vectors; `init="random"` draws N(0, init_std) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from fedadapt.adapters.layer import AdapterLayer, layer_generator

INITS = ("vocab", "random")
FIRST_WORD_ID = 1000  # BERT's uncased vocab: ids below are [PAD], [unused*], [CLS], ...


class SoftPrompt(nn.Module):
    """One adapter's soft prompt, `prompt_embeddings` of shape `[P, hidden]`.

    Drawn from `(init_seed, layer name)`: with `init="vocab"`, P word embeddings passed through
    the embedding LayerNorm (no position); with `init="random"`, N(0, init_std).
    """

    def __init__(self, embeddings: nn.Module, cfg: PromptConfig, name: str) -> None:
        super().__init__()
        g = layer_generator(cfg.init_seed, name)
        words = embeddings.word_embeddings
        p, d = cfg.num_virtual_tokens, words.embedding_dim
        if cfg.init == "vocab":
            ids = torch.randint(FIRST_WORD_ID, words.num_embeddings, (p,), generator=g)
            with torch.no_grad():  # what the embedding layer makes of them, minus a position
                x = words(ids) + embeddings.token_type_embeddings.weight[0]
                init = embeddings.LayerNorm(x).float()
        else:
            init = torch.randn(p, d, generator=g) * cfg.init_std
        self.prompt_embeddings = nn.Parameter(init.detach().clone())


class PromptEmbeddings(AdapterLayer):
    """Wraps the embedding layer; Stack and Parallel both concatenate the active prompts."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The embeddings `[B, S, d]` with the active prompts in front: `[B, P_total + S, d]`."""
        x = self.base_layer(input_ids)
        prompts = [p.prompt_embeddings for p in self.active()[1]]
        if not prompts:
            return x
        virtual = torch.cat(prompts).to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([virtual, x], dim=1)


@dataclass
class PromptConfig:
    """Prompt tuning settings.

    Parameters
    ----------
    num_virtual_tokens : int (default: 10)
        P, the prompt's length; 0 is allowed and changes nothing.
    init : str (default: "vocab")
        `vocab` (embeddings of seeded vocabulary tokens) or `random`.
    init_std : float (default: 0.02)
        The standard deviation of a `random` init.
    init_seed : int (default: 0)
        Seeds the init, so clients that build the same config start from the same prompt.
    target_modules : list[str] (default: `["embeddings"]`)
        The embedding layer to wrap.
    """

    num_virtual_tokens: int = 10
    init: str = "vocab"
    init_std: float = 0.02
    init_seed: int = 0
    target_modules: list[str] = field(default_factory=lambda: ["embeddings"])

    method: ClassVar[str] = "prompt"
    wrapper: ClassVar[type[AdapterLayer]] = PromptEmbeddings

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 0:
            raise ValueError(
                f"num_virtual_tokens must not be negative, got {self.num_virtual_tokens}"
            )
        if self.init not in INITS:
            raise ValueError(f"prompt init must be one of {INITS}, got {self.init!r}")

    def targets(self) -> list[str]:
        """The patterns `inject` wraps: the embedding layer."""
        return self.target_modules

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        """A fresh `SoftPrompt`; `TypeError` unless `base_layer` is an embedding layer."""
        if not hasattr(base_layer, "word_embeddings"):
            raise TypeError(
                f"prompt tuning wraps the embedding layer, not {type(base_layer).__name__}"
            )
        return SoftPrompt(base_layer, self, name)
