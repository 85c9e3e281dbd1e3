"""Fuzzing the `.onnx_adapter` check a device runs before ORT may use an adapter file.

Files are written by ORT's own writer and then truncated, bit-flipped or spliced, or written
with missing, extra or mis-shaped tensors, another base's model version, or odd dtypes and
values; the graph's slots may disagree with them. `check_fits` either returns tensors that
fit the slots (one for each slot, with its shape) or raises a `FedAdaptError`: a file that
leaves a slot out is refused (ORT would silently run the export's default for it). Only an
adapter the caller names optional may be left out, and only whole (a stacked graph's
`personal:` slots, see `fedadapt.clients.personalized`); these slots name none.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedadapt.errors import FedAdaptError
from fedadapt.onnx_adapter import check_fits, write_onnx_adapter
from tests.fuzz.support import count, fuzz, mutated_bytes

BASE = "5a" * 32
OTHER_BASE = "a5" * 32
SLOTS = {"layer.0.lora_A": (2, 4), "layer.0.lora_B": (4, 2), "head.bias": (3,)}
shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)
values = st.sampled_from([0.0, 1.5, -2.0, float("nan"), float("inf"), 3e38])


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@st.composite
def adapter_tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """The slots' tensors, with some dropped, added, reshaped or filled with odd values."""
    tensors = {k: np.full(shape, 0.5, np.float32) for k, shape in SLOTS.items()}
    for defect in draw(st.lists(st.sampled_from(["drop", "extra", "shape", "value"]), max_size=3)):
        k = draw(st.sampled_from(sorted(SLOTS)))
        if defect == "drop":
            tensors.pop(k, None)
        elif defect == "extra":
            tensors[draw(st.sampled_from(["layer.1.lora_A", "", "head.bias "]))] = np.zeros(2)
        elif defect == "shape":
            tensors[k] = np.zeros(draw(shapes), np.float32)
        else:
            tensors[k] = np.full(SLOTS[k], draw(values), np.float32)
    return tensors


def _fuzz_file(path: Path, data: st.DataObject) -> None:
    """Write a generated adapter file at `path`: ORT's bytes, damaged at times."""
    tensors = data.draw(adapter_tensors())
    version = data.draw(st.sampled_from([0, 1, 7, 2**31 - 1]))
    base = data.draw(st.sampled_from([BASE, BASE, OTHER_BASE]))
    write_onnx_adapter(path, tensors, version, base)
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutated_bytes(path.read_bytes())))


@fuzz(0.5)
@given(
    data=st.data(),
    slots=st.one_of(st.just(SLOTS), st.dictionaries(st.sampled_from(sorted(SLOTS)), shapes)),
)
def test_check_fits_returns_fitting_tensors_or_refuses(folder, data, slots) -> None:
    path = folder / "fuzzed.onnx_adapter"
    _fuzz_file(path, data)
    count("onnx-adapter:check")
    try:
        _, tensors = check_fits(path, BASE, slots)
    except FedAdaptError:
        return
    assert all(v.shape == tuple(slots[k]) for k, v in tensors.items()), "a misfit was accepted"
    assert set(tensors) == set(slots), f"missing tensors accepted: {set(slots) - set(tensors)}"


@fuzz(4)
@given(st.binary(max_size=256))
def test_random_bytes_are_not_an_adapter(folder, data: bytes) -> None:
    path = folder / "random.onnx_adapter"
    path.write_bytes(data)
    count("onnx-adapter:bytes")
    try:
        check_fits(path, BASE, SLOTS)
    except FedAdaptError:
        return
    raise AssertionError(f"{len(data)} random bytes passed as an adapter")
