"""The quantized base cached in a device folder: the same model, without quantizing again."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fedadapt.base import load_base
from fedadapt.base.cache import (
    BASE_CACHE_ENV,
    cache_file,
    checkpoint_sha256,
    load_cached_base,
    read_mapped,
)
from fedadapt.base.checkpoint import base_sha256
from fedadapt.base.model import build_base


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(BASE_CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _out(base, batch) -> torch.Tensor:
    with torch.no_grad():
        return base.encoder(*batch)


def test_a_cached_int8_base_is_the_built_one_and_skips_quantizing(cache, batch):
    first = load_base("int8")  # a miss: built, then cached
    path = cache_file(cache, "int8", base_sha256())
    assert path.exists()
    quantize_calls = []
    import fedadapt.base.quantize as q

    real = q.quantize_int8
    q.quantize_int8 = lambda w: quantize_calls.append(w.shape) or real(w)
    try:
        hit = load_base("int8")
    finally:
        q.quantize_int8 = real
    assert quantize_calls == []  # no quantization work on a hit
    assert q.quantize_int8 is real  # the skeleton's stand-ins are put back
    assert torch.equal(_out(hit, batch), _out(first, batch))
    assert torch.equal(_out(hit, batch), _out(build_base("int8"), batch))
    assert hit.sha256 == base_sha256() and hit.params == first.params
    hit.encoder.train()  # trains like the built base: no dropout in the frozen base
    assert torch.equal(_out(hit, batch), _out(first, batch))


def test_a_damaged_cache_file_is_rebuilt_not_trusted(cache, batch):
    load_base("int8")
    path = cache_file(cache, "int8", base_sha256())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # torn
    again = load_cached_base("int8", cache)
    assert torch.equal(_out(again, batch), _out(build_base("int8"), batch))
    assert read_mapped(path)  # whole again


def test_the_mapped_tensors_are_copy_on_write(cache):
    load_base("int8")
    path = cache_file(cache, "int8", base_sha256())
    before = path.read_bytes()
    state = read_mapped(path)
    name = next(k for k, v in state.items() if v.dtype == torch.int8)
    state[name].fill_(7)
    assert path.read_bytes() == before


def test_the_checkpoint_hash_is_remembered_until_the_file_changes(tmp_path):
    sha = checkpoint_sha256(tmp_path)
    memo = tmp_path / "base-sha256.json"
    assert sha == base_sha256() and json.loads(memo.read_text())["sha256"] == sha
    known = json.loads(memo.read_text())
    memo.write_text(json.dumps({**known, "sha256": "f" * 64}))
    assert checkpoint_sha256(tmp_path) == "f" * 64  # trusted while size and mtime match
    memo.write_text(json.dumps({**known, "mtime_ns": known["mtime_ns"] - 1, "sha256": "f" * 64}))
    assert checkpoint_sha256(tmp_path) == sha  # another mtime: hashed again


def test_without_the_variable_nothing_is_cached(tmp_path, monkeypatch):
    monkeypatch.delenv(BASE_CACHE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    load_base("int8")
    assert os.listdir(tmp_path) == []
