"""Adapter folders: `adapter_config.json` plus `adapter_model.safetensors`, never base weights.

LoRA and IA³ folders are PEFT folders: PEFT's key names and config fields, the head as the
`classifier` in `modules_to_save` (see `fedadapt.peft_format`), so `PeftModel.from_pretrained`
loads them, and a folder PEFT saved loads here. Other methods keep fedadapt's names. Readers
take both key styles, so older fedadapt LoRA/IA³ folders still load. The config also records
the SHA-256 of the tensors file and is written last, so a folder interrupted mid-save fails to
load loudly instead of loading mismatched tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save

from fedadapt.adapters import METHODS, AdapterModel
from fedadapt.adapters.inject import remove
from fedadapt.atomic import atomic_write_bytes, atomic_write_text
from fedadapt.base.checkpoint import BASE_MODEL_NAME
from fedadapt.errors import AdapterLoadError
from fedadapt.peft_format import (
    from_peft_config,
    from_peft_keys,
    peft_fields,
    to_peft_keys,
    uses_peft_keys,
)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_LABELS = 100_000


def save_adapter(
    model: AdapterModel,
    name: str,
    folder: str | Path,
    version: int = 1,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save adapter `name` and its head, if any, as an adapter folder; returns the folder.

    What is saved is the inference state (`AdapterModel.inference_state`): prefix tuning's
    MLP is folded first, without changing the live model. The tensors file is written before
    the config, which records its hash, so an interrupted save never loads.

    Parameters
    ----------
    model : AdapterModel
        The model holding the adapter.
    name : str
        The adapter to save; it is stored without its name, so it loads under any.
    folder : str | Path
        Where to write; created if missing, files in it replaced atomically.
    version : int (default: 1)
        The version recorded in the config and in the tensors file's metadata.
    extra : dict[str, Any] | None (default: None)
        More config fields, e.g. `label_names`; they override the standard ones.
    """
    folder = Path(folder)
    cfg, state = model.inference_state(name)  # prefix tuning's MLP folds to its keys/values
    head = model.heads[name] if name in model.heads else None  # noqa: SIM401 (no ModuleDict.get)
    tensors = {k: v.contiguous() for k, v in state.items()}
    blob = save(
        to_peft_keys(tensors) if uses_peft_keys(cfg.method) else tensors,
        metadata={"base_model_sha256": model.base.sha256, "version": str(version)},
    )
    config = {
        "method": cfg.method,
        "placement": getattr(cfg, "placement", None),
        "config": dataclasses.asdict(cfg),
        "num_labels": head.out_features if head is not None else None,
        "base_model_name_or_path": BASE_MODEL_NAME,
        "base_model_sha256": model.base.sha256,
        "version": version,
        "trainable_params": sum(v.numel() for v in state.values()),
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        **peft_fields(cfg, has_head=head is not None),
        **(extra or {}),
    }
    atomic_write_bytes(folder / WEIGHTS_FILE, blob)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], bytes]:
    """The config and the raw tensors file, checked against each other."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        blob = (folder / WEIGHTS_FILE).read_bytes()
    except FileNotFoundError as e:
        raise AdapterLoadError(f"{folder} is not an adapter folder: {e.filename} is missing") from e
    except json.JSONDecodeError as e:
        raise AdapterLoadError(f"{folder / CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise AdapterLoadError(f"{folder / CONFIG_FILE} is not a JSON object")
    want = config.get("tensors_sha256")
    if want and hashlib.sha256(blob).hexdigest() != want:
        raise AdapterLoadError(
            f"{folder}: {WEIGHTS_FILE} does not match its config (torn or edited)"
        )
    if "method" not in config and "peft_type" in config:
        config = from_peft_config(config, folder)
    if not isinstance(config.get("method"), str) or config["method"] not in METHODS:
        raise AdapterLoadError(f"{folder}: unknown adapter method {config.get('method')!r}")
    return _fedadapt_names(config, blob)


def _fedadapt_names(config: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The tensors under fedadapt's names (what graphs and update bundles use), whichever key
    style the file holds; a file safetensors cannot parse passes unchanged, for the caller to
    report in its own words."""
    try:
        tensors = load(blob)
    except SafetensorError:
        return config, blob
    renamed = from_peft_keys(tensors)
    if renamed.keys() == tensors.keys():
        return config, blob
    head = renamed.get("head.weight")
    if config.get("num_labels") is None and head is not None and head.ndim == 2:
        config = {**config, "num_labels": int(head.shape[0])}
    return config, save(dict(sorted(renamed.items())))


def load_adapter(model: AdapterModel, folder: str | Path, name: str | None = None) -> str:
    """Add the adapter in `folder` to `model` (as `name`, default the folder's name)."""
    folder = Path(folder)
    config, blob = read_adapter(folder)
    # A folder PEFT saved names no base hash; its tensors' shapes are still checked below.
    peft_saved = "base_model_sha256" not in config and "peft_type" in config
    if not peft_saved and config.get("base_model_sha256") != model.base.sha256:
        raise AdapterLoadError(
            f"{folder} was trained on base {str(config.get('base_model_sha256'))[:12]}…, "
            f"but this model's base is {model.base.sha256[:12]}…"
        )
    try:
        state = load(blob)
    except SafetensorError as e:
        raise AdapterLoadError(f"{folder / WEIGHTS_FILE} is not valid safetensors: {e}") from e
    name = name or folder.name
    try:
        cfg = METHODS[config["method"]](**config["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterLoadError(f"{folder / CONFIG_FILE}: bad {config['method']} config: {e}") from e
    labels = config.get("num_labels")
    if labels is not None and (type(labels) is not int or not 0 < labels <= MAX_LABELS):
        raise AdapterLoadError(f"{folder / CONFIG_FILE}: num_labels must be 1..{MAX_LABELS}")
    if name in model.configs:
        raise AdapterLoadError(f"{folder}: the model already has an adapter named {name!r}")
    try:
        model.add_adapter(name, cfg, num_labels=labels)
    except (TypeError, ValueError, RuntimeError) as e:  # targets that match nothing or misfit
        if name in model.configs:
            model.delete_adapter(name)
        else:  # failed mid-injection: drop what was wrapped
            remove(model.encoder, name)
        raise AdapterLoadError(f"{folder}: cannot add it as adapter {name!r}: {e}") from e
    try:
        model.load_adapter_state(name, state)
    except AdapterLoadError:
        model.delete_adapter(name)
        raise
    return name
