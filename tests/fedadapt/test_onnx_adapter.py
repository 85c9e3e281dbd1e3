"""`.onnx_adapter` files carry what ORT does not check: the base and every tensor's shape."""

from __future__ import annotations

import numpy as np
import pytest

from fedadapt.errors import AdapterLoadError
from fedadapt.onnx_adapter import check_fits, read_onnx_adapter, write_onnx_adapter

SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SLOTS = {"a.weight": (4, 3), "head.bias": (2,)}


def _tensors():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SLOTS.items()}


def test_round_trip_keeps_tensors_and_versions(tmp_path):
    t = _tensors()
    path = write_onnx_adapter(tmp_path / "x.onnx_adapter", t, 7, SHA)
    version, model_version, back = read_onnx_adapter(path)
    assert version == 7 and model_version == int(SHA[:7], 16)
    assert back.keys() == t.keys() and all(np.array_equal(back[k], t[k]) for k in t)
    assert check_fits(path, SHA, SLOTS)[0] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx_adapter"]  # no temp files left


def test_wrong_base_is_refused(tmp_path):
    path = write_onnx_adapter(tmp_path / "x.onnx_adapter", _tensors(), 1, "f" * 64)
    with pytest.raises(AdapterLoadError, match="another base model"):
        check_fits(path, SHA, SLOTS)


def test_unknown_and_misshaped_tensors_are_refused(tmp_path):
    t = _tensors()
    extra = write_onnx_adapter(tmp_path / "e.onnx_adapter", {**t, "lora_A": t["a.weight"]}, 1, SHA)
    with pytest.raises(AdapterLoadError, match="cannot take"):
        check_fits(extra, SHA, SLOTS)
    bad = write_onnx_adapter(
        tmp_path / "b.onnx_adapter", {**t, "a.weight": np.ones((3, 4), np.float32)}, 1, SHA
    )
    with pytest.raises(AdapterLoadError, match="mis-shaped"):
        check_fits(bad, SHA, SLOTS)


def test_damaged_file_is_a_clear_error(tmp_path):
    path = write_onnx_adapter(tmp_path / "x.onnx_adapter", _tensors(), 1, SHA)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(AdapterLoadError, match="not a readable"):
        read_onnx_adapter(path)
