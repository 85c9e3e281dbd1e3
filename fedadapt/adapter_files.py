"""Adapter folders: `adapter_config.json` plus `adapter_model.safetensors`, never base weights.

LoRA and IA³ configs carry HF PEFT's own fields (`peft_type`, `r`, `lora_alpha`,
`target_modules`, ...) so PEFT can read them. The config also records the SHA-256 of the
tensors file and is written last, so a folder interrupted mid-save fails to load loudly
instead of loading mismatched tensors.
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
from fedadapt.atomic import atomic_write_bytes, atomic_write_text
from fedadapt.base_model import BASE_MODEL_NAME
from fedadapt.errors import AdapterLoadError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def _peft_fields(cfg: Any) -> dict[str, Any]:
    if cfg.method == "lora":
        return {
            "peft_type": "LORA",
            "task_type": "FEATURE_EXTRACTION",
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "target_modules": cfg.target_modules,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "modules_to_save": None,
        }
    if cfg.method == "ia3":
        return {
            "peft_type": "IA3",
            "task_type": "FEATURE_EXTRACTION",
            "target_modules": cfg.target_modules,
            "feedforward_modules": cfg.feedforward_modules,
            "fan_in_fan_out": False,
            "init_ia3_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
        }
    return {}


def save_adapter(
    model: AdapterModel,
    name: str,
    folder: str | Path,
    version: int = 1,
    extra: dict[str, Any] | None = None,
) -> Path:
    folder = Path(folder)
    cfg = model.configs[name]
    state = model.adapter_state(name)
    blob = save(
        {k: v.contiguous() for k, v in state.items()},
        metadata={"base_model_sha256": model.base.sha256, "version": str(version)},
    )
    head = model.heads[name] if name in model.heads else None  # noqa: SIM401 (no ModuleDict.get)
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
        **_peft_fields(cfg),
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
    if config.get("method") not in METHODS:
        raise AdapterLoadError(f"{folder}: unknown adapter method {config.get('method')!r}")
    want = config.get("tensors_sha256")
    if want and hashlib.sha256(blob).hexdigest() != want:
        raise AdapterLoadError(
            f"{folder}: {WEIGHTS_FILE} does not match its config (torn or edited)"
        )
    return config, blob


def load_adapter(model: AdapterModel, folder: str | Path, name: str | None = None) -> str:
    """Add the adapter in `folder` to `model` (as `name`, default the folder's name)."""
    folder = Path(folder)
    config, blob = read_adapter(folder)
    if config.get("base_model_sha256") != model.base.sha256:
        raise AdapterLoadError(
            f"{folder} was trained on base {str(config.get('base_model_sha256'))[:12]}…, "
            f"but this model's base is {model.base.sha256[:12]}…"
        )
    try:
        state = load(blob)
    except SafetensorError as e:
        raise AdapterLoadError(f"{folder / WEIGHTS_FILE} is not valid safetensors: {e}") from e
    name = name or folder.name
    cfg = METHODS[config["method"]](**config["config"])
    model.add_adapter(name, cfg, num_labels=config.get("num_labels"))
    try:
        model.load_adapter_state(name, state)
    except AdapterLoadError:
        model.delete_adapter(name)
        raise
    return name
