"""Delta replies as one flat float32 vector: decoded without copying, checked in whole-vector
passes, so that folding a reply costs about what adding its bytes costs.

An honest client's codec bytes (`fedadapt.codecs.encode`) are a safetensors file whose
tensors are exactly the trainable ones, in name order, back to back: its data section *is*
the flat vector, and an fp32 reply is read in place. Only the small JSON header is parsed
and checked entry by entry (names, dtype, shape, offsets); values are checked with one
reduction over the whole vector (a float64 sum is finite only if every value is). A reply in
any other valid layout is refused by `NotFlat`, and the caller decodes it the general way,
which also names exactly what is wrong with a bad one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedadapt.codecs import CODECS
from fedadapt.deltas import State
from fedadapt.errors import DeltaError

_WIRE = {"fp32": ("F32", np.float32), "fp16": ("F16", np.float16), "int8": ("I8", np.int8)}


class NotFlat(Exception):
    """Not in the canonical layout: decode it the general way (it may still be valid)."""


@dataclass(frozen=True)
class Layout:
    """Where each trainable tensor sits in the flat vector (name order, as encode writes)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    bounds: tuple[int, ...]  # element offsets: tensor i is [bounds[i], bounds[i + 1])

    @classmethod
    def of(cls, global_state: State, trainable: set[str]) -> Layout:
        """The layout of `trainable`'s tensors, with the shapes they have in `global_state`, in name
        order: the order `fedadapt.codecs.encode` writes them.
        """
        names = tuple(sorted(trainable))
        shapes = tuple(tuple(global_state[k].shape) for k in names)
        bounds = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shapes])])
        return cls(names, shapes, tuple(int(b) for b in bounds))

    def spans(self) -> Iterator[tuple[str, tuple[int, ...], int, int]]:
        """`(name, shape, begin, end)` of each tensor, in order."""
        return zip(self.names, self.shapes, self.bounds[:-1], self.bounds[1:], strict=True)

    @property
    def size(self) -> int:
        """Elements in the whole flat vector."""
        return self.bounds[-1]

    def sizes(self) -> np.ndarray:
        """Elements in each tensor, in layout order (one int8 scale covers each)."""
        return np.diff(np.asarray(self.bounds))

    def unflatten(self, flat: np.ndarray) -> State:
        """Torch tensors over `flat` (copied once, so the result owns writable memory)."""
        t = torch.from_numpy(np.array(flat, dtype=np.float32, copy=True))
        return {k: t[a:b].view(s) for k, s, a, b in self.spans()}

    def first_bad(self, flat: np.ndarray) -> str:
        """The first tensor holding a NaN or Inf (only asked once a vector failed)."""
        for k, _, a, b in self.spans():
            if not np.isfinite(flat[a:b]).all():
                return k
        return self.names[0]


def _header(blob: memoryview) -> tuple[dict, int]:
    if len(blob) < 8:
        raise DeltaError("malformed delta payload: shorter than a safetensors header")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise DeltaError("malformed delta payload: header length exceeds the payload")
    try:
        header = json.loads(bytes(blob[8 : 8 + n]))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DeltaError(f"malformed delta payload: {e}") from e
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise DeltaError("malformed delta payload: the header is not a JSON object")
    return header, 8 + n


def _entries_in_place(header: dict, layout: Layout, codec: str) -> None:
    """The tensors are exactly the layout's, of the codec's dtype, back to back in name
    order from offset 0; `NotFlat` otherwise (the data section's length is checked apart)."""
    tag, dtype = _WIRE[codec]
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    if len(entries) != len(layout.names) or not all(isinstance(v, dict) for _, v in entries):
        raise NotFlat
    try:
        entries.sort(key=lambda e: e[1]["data_offsets"][0])
    except (TypeError, KeyError, IndexError) as e:
        raise NotFlat from e
    item = np.dtype(dtype).itemsize
    for (k, v), (name, shape, a, b) in zip(entries, layout.spans(), strict=True):
        if k != name or v.get("dtype") != tag or v.get("shape") != list(shape):
            raise NotFlat
        if v["data_offsets"] != [a * item, b * item]:
            raise NotFlat


def _scales(meta: dict, layout: Layout) -> np.ndarray:
    try:
        table = json.loads(meta["scales"])
        scales = np.array([float(table[k]) for k in layout.names], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise DeltaError(f"int8 delta without a valid scale table: {e}") from e
    if not np.isfinite(scales).all():
        raise DeltaError("int8 scale table holds NaN or Inf", reason="non-finite")
    return scales


class FlatReader:
    """`flat_delta` for one round's replies. Honest fp32/fp16 replies share one header byte
    for byte (int8 ones differ in their scales), so a header already parsed and checked
    for this layout is not parsed again."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._seen: dict[bytes, tuple[str, dict]] = {}

    def _checked_header(self, blob: memoryview) -> tuple[str, dict, int]:
        if len(blob) < 8:
            raise DeltaError("malformed delta payload: shorter than a safetensors header")
        start = 8 + int.from_bytes(blob[:8], "little")
        key = bytes(blob[:start])
        if (hit := self._seen.get(key)) is not None:
            return (*hit, start)
        header, _ = _header(blob)
        codec = header.get("__metadata__", {}).get("codec")
        if not isinstance(codec, str) or codec not in CODECS:
            raise DeltaError(f"delta payload names an unknown codec {str(codec)[:32]!r}")
        _entries_in_place(header, self.layout, codec)
        if len(self._seen) < 64 and start < 65_536:
            self._seen[key] = (codec, header.get("__metadata__", {}))
        return codec, header.get("__metadata__", {}), start

    def read(self, blob: memoryview, check: bool = True) -> np.ndarray:
        """The reply's delta as one float32 vector in layout order, checked finite.

        fp32 is a read-only view of the reply's own bytes; fp16 and int8 cost one conversion.
        With `check=False` an fp32 view is returned unchecked, for a caller whose pass that
        measures its norm also proves it finite (`server.replies.finite_norm`); a converted
        vector is always checked here, so that nobody holds on to unchecked copies. Raises
        `DeltaError` with a reason, or `NotFlat` for a layout to decode the general way.
        """
        layout = self.layout
        codec, meta, start = self._checked_header(blob)
        wire = _WIRE[codec][1]
        if len(blob) - start != layout.size * np.dtype(wire).itemsize:
            raise NotFlat  # the data section is not exactly the layout's tensors
        raw = np.frombuffer(blob[start:], dtype=wire)
        if codec == "fp32":
            flat = raw
        elif codec == "fp16":
            flat = raw.astype(np.float32)
        else:
            flat = raw * np.repeat(_scales(meta, layout), layout.sizes())
        if check or codec != "fp32":
            check_finite(flat, layout)
        return flat


def check_finite(flat: np.ndarray, layout: Layout) -> None:
    """`DeltaError` naming the first tensor with a NaN or Inf, if any.

    A float32 sum is finite when every value is (one fast pass); only when it is not (a
    NaN/Inf, or finite values summing past 3e38) is each value looked at.
    """
    if not np.isfinite(flat.sum()) and not np.isfinite(flat).all():
        raise DeltaError(f"{layout.first_bad(flat)}: holds NaN or Inf", reason="non-finite")


def flat_delta(blob: memoryview, layout: Layout) -> np.ndarray:
    """`FlatReader(layout).read(blob)`, for a single reply."""
    return FlatReader(layout).read(blob)


def flatten(delta: State, layout: Layout) -> np.ndarray:
    """A delta decoded the general way, in the same flat layout."""
    return np.concatenate([delta[k].detach().float().reshape(-1).numpy() for k in layout.names])


def l2(flat: np.ndarray) -> float:
    """The L2 norm of `flat`, accumulated in float64 so a long vector loses no precision."""
    return float(np.sqrt(np.einsum("i,i->", flat, flat, dtype=np.float64)))
