"""A small plain-torch BERT encoder, enough to run all-MiniLM-L6-v2 without `transformers`.

Module names follow Hugging Face's `BertModel`, so the shipped `model.safetensors` loads
as-is and adapter target patterns (`query`, `value`, `output.dense`, ...) read like PEFT's.

The residual sub-blocks (`attention.output` and `output`) take both the sub-layer's hidden
state and the residual input. That is where bottleneck adapters hook in, as AdapterHub does:
a sequential adapter rewrites the hidden state, a parallel one reads the residual input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    """Shape and dropout settings of a BERT encoder; the defaults are all-MiniLM-L6-v2's.

    Field names match Hugging Face's `config.json`, so `from_json` reads it directly.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        """Read a Hugging Face `config.json`, keeping only the fields this encoder knows.

        Unknown keys are ignored. Raises `ValueError` if `hidden_act` is not `gelu`, since
        `Intermediate` applies GELU.
        """
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: only GELU BERTs are supported, got {raw['hidden_act']!r}")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (as `BertEmbeddings`)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed `[B, S]` token ids as `[B, S, d]`; every token gets type 0 (single segment)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        # Single-segment inputs only: token type 0 everywhere, as sentence-transformers does.
        types = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(types)
        )
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over `query`, `key`, `value` projections.

    `project` and `attend` are separate so prefix tuning can extend keys and values between them.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        return x.view(b, s, self.num_heads, h // self.num_heads).transpose(1, 2)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as `[B, heads, S, head_dim]` (prefix tuning extends k, v)."""
        return self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        """`attend(*project(x))`: the plain path, with no prefix."""
        return self.attend(*self.project(x), mask_bias)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_bias: torch.Tensor
    ) -> torch.Tensor:
        """Attention of `q` over `k`, `v`, with heads merged back into `[B, S, d]`.

        Parameters
        ----------
        q, k, v : torch.Tensor
            `[B, heads, S, head_dim]` from `project`; `k` and `v` may be longer than `q` (prefixes).
        mask_bias : torch.Tensor
            Additive mask broadcastable to `[B, heads, S, S_kv]`: 0 where attended, a large
            negative where not. Its last dimension must match the length of `k`.

        Returns
        -------
        torch.Tensor
            `[B, S, d]` context. Dropout on the attention weights applies in training mode only.
        """
        p = self.dropout_p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias, dropout_p=p)
        b, _, s, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, s, -1)


class ResidualOutput(nn.Module):
    """`LayerNorm(dropout(dense(hidden)) + residual)`: the adapter hook point of a block."""

    def __init__(self, in_features: int, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Project `hidden`, add `residual`, normalize; bottleneck adapters wrap this module."""
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class Attention(nn.Module):
    """Self-attention followed by its residual output (`BertAttention`)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = ResidualOutput(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        """Attend over `x`, then add `x` back as the residual."""
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    """The feed-forward expansion to `intermediate_size`, with GELU.

    `act` is an attribute, not a call to `F.gelu`, so the exporter can swap the activation.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = F.gelu  # the exporter may swap in a decomposition (export/decompose.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`act(dense(x))`, shape `[B, S, intermediate_size]`."""
        return self.act(self.dense(x))


class Layer(nn.Module):
    """One transformer block: attention, then the feed-forward sub-block (`BertLayer`)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = ResidualOutput(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        """Attention, then feed-forward with the attention output as the residual."""
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    """The stack of `num_hidden_layers` blocks, named `layer.N` as in `BertEncoder`."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        """Run every block in order with the same additive mask."""
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class Bert(nn.Module):
    """Token embeddings → encoder; returns the last hidden state."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of the real tokens only.

        Prompt tuning prepends virtual tokens to the embeddings' output: they are always
        attended (the mask grows by ones in front) and are cut from the result, so pooling and
        heads see the same `[B, S, d]` with or without them.
        """
        x = self.embeddings(input_ids)
        virtual = x.shape[1] - input_ids.shape[1]
        if virtual:
            ones = attention_mask.new_ones(attention_mask.shape[0], virtual)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        # Additive mask: 0 where attended, a large negative where padded.
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        hidden = self.encoder(x, mask_bias)
        return hidden[:, virtual:] if virtual else hidden


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: the sentence embedding that sentence-transformers uses.

    Written as two batched MatMuls rather than sums, so that exported graphs hold no
    ReduceSum, which NNAPI cannot run (the token count is `m·m` since the mask is 0/1).
    """
    m = attention_mask.to(hidden.dtype).unsqueeze(1)  # [B, 1, S]
    total = torch.matmul(m, hidden).squeeze(1)  # [B, d]
    count = torch.matmul(m, m.transpose(1, 2)).squeeze(1)  # [B, 1]
    return total / count.clamp(min=1e-9)
