"""The quantized base, cached in a device folder as safetensors and loaded memory-mapped.

A deployed SuperNode (Flower 1.42) starts a new ClientApp process for every message, and each
one used to rebuild the int8 base from the fp32 checkpoint (per-channel scales, and for int4 a
clipping search per group): 0.8 s per message on an idle 2-core Xeon. The quantized tensors
depend only on the checkpoint and the mode, so they are computed once and kept in
`$FEDADAPT_BASE_CACHE/base-<mode>-<sha>.safetensors` (`fedadapt device run` points it into the
device folder). Later processes build the model's skeleton on the meta device (no
allocation, no quantization work) and give it the cached tensors as read-only memory maps of
the file: the pages come from the page cache, shared by every process on the device.
A damaged or foreign cache file is rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedadapt.atomic import atomic_write_bytes

if TYPE_CHECKING:  # torch is imported where it is used: `device run` never needs it
    import torch

BASE_CACHE_ENV = "FEDADAPT_BASE_CACHE"
_DTYPES = {"I8": np.int8, "U8": np.uint8, "F16": np.float16, "F32": np.float32, "I64": np.int64}


def cache_file(folder: Path, quantization: str, sha256: str) -> Path:
    """The cache file for this base and quantization in `folder`.

    The name holds the quantization and the checkpoint's hash, so another base or mode never
    reads a stale cache: it simply finds no file.
    """
    return Path(folder) / f"base-{quantization}-{sha256[:16]}.safetensors"


def read_mapped(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as copy-on-write memory maps (no read, no copy)."""
    import torch

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    size = path.stat().st_size
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        if 8 + n + end > size:
            raise ValueError(f"{path}: tensor {name} runs past the end of the file")
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if count * dtype.itemsize != end - start:
            raise ValueError(f"{path}: tensor {name} has {end - start} bytes for shape {shape}")
        if count == 0:
            out[name] = torch.from_numpy(np.zeros(shape, dtype))
            continue
        array = np.memmap(path, dtype=dtype, mode="c", offset=8 + n + start, shape=shape)
        out[name] = torch.from_numpy(array)
    return out


@contextlib.contextmanager
def _skeleton() -> Iterator[None]:
    """Modules made on the meta device, without their random init: torch's meta `normal_`
    goes through its Python references and imports the compiler stack (~2 s, every process),
    for values that the cached tensors replace anyway."""
    import torch
    from torch import nn

    from fedadapt.base import quantize

    layers = (nn.Linear, nn.Embedding, nn.LayerNorm)
    saved = {cls: cls.reset_parameters for cls in layers}
    kernels = quantize.quantize_int8, quantize.quantize_int4
    for cls in layers:
        cls.reset_parameters = lambda self: None
    quantize.quantize_int8, quantize.quantize_int4 = _int8_shapes, _int4_shapes
    try:
        with torch.device("meta"):
            yield
    finally:
        for cls, method in saved.items():
            cls.reset_parameters = method
        quantize.quantize_int8, quantize.quantize_int4 = kernels


def _int8_shapes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_int8`'s outputs, shapes and dtypes only (the cache holds the values)."""
    import torch

    rows, cols = w.shape
    return torch.empty(rows, cols, dtype=torch.int8), torch.empty(rows)


def _int4_shapes(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, ...]:
    """`quantize_int4`'s outputs (packed, scale, offset), shapes and dtypes only."""
    import torch

    rows, cols = w.shape
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8)
    return packed, *(torch.empty(rows, cols // group, dtype=torch.float16) for _ in range(2))


def load_cached_base(quantization: str, folder: Path):
    """The quantized base from the cache in `folder`, built and cached on a miss."""

    from fedadapt.base.bert import Bert, BertConfig
    from fedadapt.base.checkpoint import model_dir
    from fedadapt.base.model import BaseModel, build_base
    from fedadapt.base.quantize import quantize_

    sha = checkpoint_sha256(folder)
    path = cache_file(folder, quantization, sha)
    if path.exists():
        try:
            state = read_mapped(path)
            cfg = BertConfig.from_json(model_dir() / "config.json")
            no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
            with _skeleton():  # as `build_base` makes it: the frozen base, no dropout
                encoder = Bert(BertConfig(**{**cfg.__dict__, **no_dropout}))
                params = sum(p.numel() for p in encoder.parameters())
                quantize_(encoder, quantization)
            encoder.load_state_dict(state, strict=True, assign=True)
            encoder.requires_grad_(False)
            return BaseModel(encoder, sha, quantization, params, params * 4)
        except (OSError, ValueError, KeyError, RuntimeError):
            path.unlink(missing_ok=True)  # damaged or from another build: rebuild below
    base = build_base(quantization)
    state = {k: v.contiguous() for k, v in base.encoder.state_dict().items()}
    from safetensors.torch import save

    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(state, metadata={"base_sha256": sha, "mode": quantization}))
    return base


def checkpoint_sha256(folder: Path) -> str:
    """The base checkpoint's SHA-256, remembered in `folder` against the file's size and
    mtime: hashing 90 MB costs ~0.15 s, in every process, for the same answer."""
    from fedadapt.base.checkpoint import file_sha256, model_dir

    checkpoint = model_dir() / "model.safetensors"
    st = checkpoint.stat()
    key = {"path": str(checkpoint), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = Path(folder) / "base-sha256.json"
    try:
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in key} == key and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError):
        pass
    sha = file_sha256(checkpoint)
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(memo, json.dumps({**key, "sha256": sha}).encode())
    return sha


def cache_folder() -> Path | None:
    """Where this process caches the base (`$FEDADAPT_BASE_CACHE`), if anywhere."""
    folder = os.environ.get(BASE_CACHE_ENV)
    return Path(folder) if folder else None
