"""Delta codecs: how an adapter delta becomes the bytes a client uploads.

Every codec writes safetensors (never pickle) and names itself in the file's metadata, so a
receiver decodes any reply without knowing the sender's settings. int8 keeps one scale per
tensor; its rounding error is carried into the next round by `ErrorFeedback` on the client,
so nothing is lost over time, only delayed.

A non-finite delta is never encoded: int8 would scale it to zeros (or to NaN everywhere), hiding
a diverged client from the server's NaN check, so `encode` refuses it and the client replies
with an error instead. On decode, each codec's tensors must have its own dtype: an int32 tensor
in an "fp32" payload is a malformed reply, not a float one.
"""

from __future__ import annotations

import json

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fedadapt.errors import ConfigError, DeltaError

CODECS = ("fp32", "fp16", "int8")
WIRE_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}


def encode(delta: dict[str, torch.Tensor], codec: str = "fp32") -> bytes:
    """The codec's safetensors bytes; a NaN/Inf anywhere raises `DeltaError` (`non-finite`)."""
    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}; choose from {CODECS}")
    tensors = {k: v.detach().float().contiguous() for k, v in delta.items()}
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise DeltaError(f"{k}: holds NaN or Inf; refusing to encode it", reason="non-finite")
    meta = {"codec": codec}
    if codec == "fp16":
        tensors = {k: v.half() for k, v in tensors.items()}
    elif codec == "int8":
        scales = {k: float(v.abs().max()) / 127.0 if v.numel() else 0.0 for k, v in tensors.items()}
        tensors = {
            k: (
                torch.round(v / scales[k]).clamp(-127, 127)
                if scales[k] > 0
                else torch.zeros_like(v)
            ).to(torch.int8)
            for k, v in tensors.items()
        }
        meta["scales"] = json.dumps(scales)
    return save(tensors, metadata=meta)


def decode(data: bytes) -> dict[str, torch.Tensor]:
    """fp32 tensors from any codec's bytes; malformed input raises `DeltaError`."""
    try:
        meta = _metadata(data)
        tensors = load(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise DeltaError(f"malformed delta payload: {e}") from e
    codec = meta.get("codec")
    if codec not in CODECS:
        raise DeltaError(f"delta payload names an unknown codec {str(codec)[:32]!r}")
    for k, v in tensors.items():
        if v.dtype != WIRE_DTYPE[codec]:
            raise DeltaError(f"{k}: {v.dtype} in a {codec} payload", reason="dtype")
    if codec in ("fp32", "fp16"):
        return {k: v.float() for k, v in tensors.items()}
    try:
        scales = json.loads(meta["scales"])
        return {k: v.float() * float(scales[k]) for k, v in tensors.items()}
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise DeltaError(f"int8 delta without a valid scale table: {e}") from e


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of in-memory safetensors bytes (safetensors only reads it from files).

    The format is an 8-byte little-endian header length followed by a JSON header.
    """
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length exceeds the payload")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("the header or its __metadata__ is not a JSON object")
    return meta


class ErrorFeedback:
    """Client-side memory of what the lossy codec dropped, added back to the next delta."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.residual: dict[str, torch.Tensor] = {}

    def encode(self, delta: dict[str, torch.Tensor]) -> bytes:
        """The corrected delta's bytes. A failed encode leaves the residual as it was, and a
        residual that is not finite (one loaded from a broken device file, or an fp16
        overflow) is dropped: a NaN carried here would poison every later round."""
        if not _finite(self.residual):
            self.residual = {}
        corrected = {k: v.float() + self.residual.get(k, 0.0) for k, v in delta.items()}
        data = encode(corrected, self.codec)
        sent = decode(data)
        residual = {k: corrected[k] - sent[k] for k in corrected}
        self.residual = residual if _finite(residual) else {}
        return data


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values())
