"""Fuzzing the adapter-folder loader: folders with damaged, mismatched or wrongly typed
configs, and tensors files with wrong names, shapes, dtypes, lengths or truncations.

`read_adapter` and `load_adapter` either succeed or raise a `FedAdaptError`, and a refused
folder leaves the model as it was (no half-added adapter).

Sizes in generated configs stay small (at most 64, or absurd like 2**62): a LoRA rank of
100,000 would make the loader allocate gigabytes before it compares any tensor shape.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load, save

from fedadapt.adapter_files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_adapter,
    read_adapter,
    save_adapter,
)
from fedadapt.adapters import AdapterModel, BitFitConfig, BottleneckConfig, IA3Config, LoraConfig
from fedadapt.base import load_base
from fedadapt.errors import FedAdaptError
from tests.fuzz.support import count, fuzz, json_values, mutated_bytes, mutated_dict

CONFIGS = {
    "lora": LoraConfig(r=2),
    "bottleneck": BottleneckConfig(reduction_factor=64),
    "ia3": IA3Config(),
    "bitfit": BitFitConfig(),
}
small_values = st.one_of(
    st.integers(-2, 64),
    st.sampled_from([2**62, -(2**62), 1.5, float("nan"), float("inf"), None, True, "", "x"]),
    st.lists(st.sampled_from(["query", "value", "key", "dense", "nope"]), max_size=3),
)


@pytest.fixture(scope="module")
def model() -> AdapterModel:
    torch.manual_seed(0)
    return AdapterModel(load_base("none")).eval()


TEMPLATES: dict[str, tuple[dict, bytes]] = {}  # method -> a valid folder's (config, tensors)


@pytest.fixture(scope="module", autouse=True)
def templates(model: AdapterModel) -> None:
    """One valid saved folder per method, kept in memory (a module global rather than a
    fixture value, so a failing example's report does not print every tensor)."""
    with tempfile.TemporaryDirectory() as tmp:
        for method, cfg in CONFIGS.items():
            model.add_adapter(method, cfg, num_labels=2)
            folder = save_adapter(model, method, Path(tmp) / method, version=3)
            model.delete_adapter(method)
            TEMPLATES[method] = (
                json.loads((folder / CONFIG_FILE).read_text()),
                (folder / WEIGHTS_FILE).read_bytes(),
            )


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "fuzzed"


@st.composite
def damaged(draw: st.DrawFn) -> tuple[object, bytes]:
    """A valid folder's (config, tensors) with defects in the config, the tensors, or both."""
    method = draw(st.sampled_from(sorted(TEMPLATES)))
    config: object
    config, blob = TEMPLATES[method]
    config = dict(config)
    for defect in draw(st.lists(st.sampled_from(DEFECTS), min_size=1, max_size=2)):
        if not isinstance(config, dict):
            break
        if defect == "fields":
            config = draw(mutated_dict(config))
        elif defect == "method-config":  # the method's own parameters, small or absurd
            inner = config.get("config") if isinstance(config.get("config"), dict) else {}
            keys = sorted(inner) or ["r"]
            inner = {**inner, draw(st.sampled_from([*keys, "bogus"])): draw(small_values)}
            config["config"] = inner
        elif defect == "other-method":
            config["method"] = draw(st.sampled_from(sorted(TEMPLATES)))
        elif defect == "num-labels":
            config["num_labels"] = draw(small_values)
        elif defect == "tensors":
            blob = _damage_tensors(draw, blob)
        elif defect == "bytes":
            blob = draw(mutated_bytes(blob))
        elif defect == "json":
            config = draw(json_values)
        if defect in ("tensors", "bytes") and isinstance(config, dict) and draw(st.booleans()):
            config.pop("tensors_sha256", None)  # else the hash check refuses every edit
    return config, blob


DEFECTS = ["fields", "method-config", "other-method", "num-labels", "tensors", "bytes", "json"]


def _damage_tensors(draw: st.DrawFn, blob: bytes) -> bytes:
    try:
        tensors = load(blob)
    except SafetensorError:  # already damaged at the byte level
        return blob
    k = draw(st.sampled_from(sorted(tensors)))
    op = draw(st.sampled_from(["drop", "extra", "shape", "dtype", "nan"]))
    if op == "drop":
        del tensors[k]
    elif op == "extra":
        tensors[k + ".extra"] = torch.zeros(2)
    elif op == "shape":
        tensors[k] = torch.zeros(draw(st.lists(st.integers(0, 4), max_size=3)))
    elif op == "dtype":
        tensors[k] = tensors[k].to(draw(st.sampled_from([torch.float16, torch.int64, torch.bool])))
    else:
        tensors[k] = torch.full_like(tensors[k], float("nan"))
    return save(tensors)


def _write(folder: Path, config: object, blob: bytes, missing: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (folder / name).unlink(missing_ok=True)
    if missing != CONFIG_FILE:
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    if missing != WEIGHTS_FILE:
        (folder / WEIGHTS_FILE).write_bytes(blob)


@fuzz(0.5)
@given(data=st.data(), missing=st.sampled_from([None] * 8 + [CONFIG_FILE, WEIGHTS_FILE]))
def test_read_adapter_reads_or_refuses(folder, data, missing) -> None:
    config, blob = data.draw(damaged())
    count("adapter-folder:read")
    _write(folder, config, blob, missing)
    with contextlib.suppress(FedAdaptError):
        read_adapter(folder)


@fuzz(0.3)
@given(data=st.data())
def test_load_adapter_loads_or_refuses_cleanly(model, folder, data) -> None:
    config, blob = data.draw(damaged())
    count("adapter-folder:load")
    _write(folder, config, blob, None)
    before = set(model.configs)
    try:
        load_adapter(model, folder, name="fuzzed")
    except FedAdaptError:
        assert set(model.configs) == before, "a refused folder left an adapter behind"
    finally:  # the next example starts from a clean model, whatever happened here
        if "fuzzed" in model.configs:
            model.delete_adapter("fuzzed")
