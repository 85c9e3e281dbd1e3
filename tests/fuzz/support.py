"""What every fuzz target shares: the profiles, the input counter, and input strategies.

Two profiles: `ci` (the default, what `pytest` runs: a few hundred inputs per target, seeded
so CI is repeatable) and `long` (`make fuzz`, FEDADAPT_FUZZ_PROFILE=long: fresh random
inputs, at least 100,000 in total). The profile is applied per test through `fuzz()` rather
than loaded globally, so the project's other Hypothesis tests keep their own settings.

The strategies build structurally interesting inputs, not only random bytes: JSON with wrong
types, NaN/Inf and huge numbers; safetensors files with wrong lengths, dtypes, shapes and
offsets; and byte-level mutations (truncate, flip, insert, splice) of valid files.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE = os.environ.get("FEDADAPT_FUZZ_PROFILE", "ci")
# Inputs per unit of weight: a target of weight 1 runs this many examples
# (FEDADAPT_FUZZ_EXAMPLES overrides it, to size a run).
BASE_EXAMPLES = {"ci": 100, "long": 3300}
if os.environ.get("FEDADAPT_FUZZ_EXAMPLES"):
    BASE_EXAMPLES[PROFILE] = int(os.environ["FEDADAPT_FUZZ_EXAMPLES"])
_SLOW_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
settings.register_profile(
    "ci", deadline=None, derandomize=True, database=None, suppress_health_check=_SLOW_CHECKS
)
settings.register_profile(
    "long",
    deadline=None,
    database=DirectoryBasedExampleDatabase("out/fuzz-db"),  # out/ is git-ignored
    suppress_health_check=_SLOW_CHECKS,
)

# Inputs actually run, per target (shrinking and replays included): printed at session end.
COUNTS: Counter[str] = Counter()


def fuzz(weight: float = 1.0) -> settings:
    """Settings for one target: the active profile, with `weight` x its base example count
    (cheap parsers get more, targets that build a model or write files get fewer)."""
    n = max(10, int(BASE_EXAMPLES[PROFILE] * weight))
    return settings(settings.get_profile(PROFILE), max_examples=n)


def count(target: str) -> None:
    COUNTS[target] += 1


# -- JSON --------------------------------------------------------------------------------------
huge_ints = st.sampled_from([-(2**63), 2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(10**30)])
odd_floats = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 1e-320])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    odd_floats,
    st.text(max_size=12),
    st.sampled_from(["", "0", "1", "fp32", "int8", "2030-01-01T00:00:00+00:00", "a" * 64]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)


def dumps(value: Any) -> bytes:
    """JSON as Python writes it, NaN and Infinity included (json.loads reads them back)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@st.composite
def mutated_dict(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """`valid` with a few fields dropped, retyped, or added."""
    out = dict(valid)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["retype", "retype", "drop", "add"]))
        if op == "add" or not out:
            out[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
            continue
        key = draw(st.sampled_from(sorted(out)))
        if op == "drop":
            del out[key]
        else:
            out[key] = draw(json_values)
    return out


# -- bytes -------------------------------------------------------------------------------------
@st.composite
def mutated_bytes(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` truncated, bit-flipped, with bytes inserted or deleted, or spliced with itself.

    Positions are drawn from a fixed range and wrapped, so what Hypothesis draws does not
    depend on the length of `valid` (which it replays against, when shrinking)."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "splice"]))
        n = len(data)
        i, j = (draw(st.integers(0, 1 << 20)) % (n + 1) for _ in range(2))
        if op == "truncate":
            del data[i:]
        elif op == "flip" and i < n:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and i < n:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "splice":
            data[min(i, j) : min(i, j)] = bytes(data[max(i, j) :])
    return bytes(data)


def canonical_safetensors(blob: bytes) -> bytes:
    """`blob` with its header's keys sorted. safetensors writes `__metadata__` from a Rust
    HashMap, whose order changes from call to call; Hypothesis needs the same bytes from the
    same draws."""
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8 : 8 + n])
    except ValueError:  # safetensors writes `{},"__metadata__":{}}` for no tensors, {} metadata
        return blob
    text = json.dumps(header, sort_keys=True, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + blob[8 + n :]


# -- safetensors -------------------------------------------------------------------------------
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64"]
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
DTYPE_SIZE |= {"U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}
odd_dtypes = st.sampled_from(["BOOL", "F8_E4M3", "F8_E5M2", "C64", "f32", "", "STR"])


@st.composite
def safetensors_blob(
    draw: st.DrawFn, names: list[str] | None = None, metadata: st.SearchStrategy | None = None
) -> bytes:
    """A safetensors file built by hand: mostly well-formed, with wrong dtypes, shapes, offsets,
    header lengths and metadata mixed in."""
    header: dict[str, Any] = {}
    offset, body = 0, bytearray()
    keys = names if names is not None else ["a", "b", "head.bias"]
    for name in draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys))):
        dtype = draw(st.one_of(st.sampled_from(DTYPES), odd_dtypes))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = DTYPE_SIZE.get(dtype, 4)
        for d in shape:
            size *= d
        start, end = offset, offset + size
        if draw(st.integers(0, 9)) == 0:  # wrong shape, length or offsets
            shape = draw(st.one_of(st.lists(st.integers(-2, 2**40), max_size=3), json_values))
            start, end = draw(st.integers(-8, offset + 8)), draw(st.integers(-8, end + 8))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
        body += draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
        offset += max(size, 0)
    if metadata is not None:
        header["__metadata__"] = draw(metadata)
    if draw(st.integers(0, 9)) == 0:
        header = draw(st.one_of(json_values, st.just(header)))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    length = len(text)
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.one_of(st.integers(0, length + 16), st.just(2**63), st.just(2**64 - 1)))
    return struct.pack("<Q", length) + text + bytes(body)
