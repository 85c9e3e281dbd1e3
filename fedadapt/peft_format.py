"""HF PEFT's adapter-folder layout for LoRA and IA³, both ways.

PEFT keys a tensor by its module path under the `PeftModel` wrapper, with the adapter's own
name left out: `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`. Module
paths are `transformers`' `BertModel` names, which fedadapt's encoder shares. The task head is
not a PEFT layer: it is stored the way PEFT stores a classifier, as the module `classifier`
listed in `modules_to_save` (`base_model.model.classifier.weight` / `.bias`). A PEFT user gets
the head by giving their `BertModel` a `classifier = nn.Linear(384, num_labels)` attribute
before `PeftModel.from_pretrained`, and applies it to the mean-pooled last hidden state.

fedadapt writes LoRA and IA³ folders in this layout, and reads it as well as its own older one
(bare module paths, the head as `head.*`). A folder saved by PEFT (no fedadapt fields) is read
by translating its PEFT config; options fedadapt does not implement are refused by name.
"""

from __future__ import annotations

from typing import Any

from fedadapt.errors import AdapterLoadError

PEFT_PREFIX = "base_model.model."
HEAD_MODULE = "classifier"
HEAD_PREFIX = "head."
PEFT_METHODS = {"LORA": "lora", "IA3": "ia3"}
# PEFT options that change what a layer computes; fedadapt runs none of them.
_UNSUPPORTED = (
    "use_dora",
    "use_rslora",
    "use_qalora",
    "use_bdlora",
    "rank_pattern",
    "alpha_pattern",
    "fan_in_fan_out",
    "layers_to_transform",
    "layer_replication",
    "lora_bias",
    "target_parameters",
    "exclude_modules",
    "trainable_token_indices",
    "alora_invocation_tokens",
)


def uses_peft_keys(method: str) -> bool:
    """Whether fedadapt saves `method`'s folders in PEFT's layout (LoRA and IA³ only)."""
    return method in PEFT_METHODS.values()


def to_peft_keys(state: dict[str, Any]) -> dict[str, Any]:
    """fedadapt names → PEFT names (adapter tensors under the wrapper, the head as classifier)."""
    out = {}
    for k, v in state.items():
        name = HEAD_MODULE + "." + k[len(HEAD_PREFIX) :] if k.startswith(HEAD_PREFIX) else k
        out[PEFT_PREFIX + name] = v
    return out


def from_peft_keys(state: dict[str, Any]) -> dict[str, Any]:
    """Either key style → fedadapt names; keys without PEFT's prefix pass unchanged."""
    out = {}
    for k, v in state.items():
        if k.startswith(PEFT_PREFIX):
            k = k[len(PEFT_PREFIX) :]
            if k.startswith(HEAD_MODULE + "."):
                k = HEAD_PREFIX + k[len(HEAD_MODULE) + 1 :]
        if k in out:
            raise AdapterLoadError(f"the tensors file holds {k!r} under both key styles")
        out[k] = v
    return out


def peft_fields(cfg: Any, has_head: bool) -> dict[str, Any]:
    """The PEFT config fields of a LoRA or IA³ adapter (none for other methods)."""
    common = {
        "task_type": "FEATURE_EXTRACTION",
        "target_modules": cfg.target_modules,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": [HEAD_MODULE] if has_head else None,
    }
    if cfg.method == "lora":
        return {
            "peft_type": "LORA",
            "r": cfg.r,
            "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout,
            "bias": "none",
            **common,
        }
    if cfg.method == "ia3":
        return {
            "peft_type": "IA3",
            "feedforward_modules": cfg.feedforward_modules,
            "init_ia3_weights": True,
            **common,
        }
    return {}


def _names(config: dict[str, Any], key: str) -> list[str]:
    """An optional list-of-names field (None or absent: empty)."""
    value = config.get(key)
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise AdapterLoadError(f"PEFT config field {key!r} must be a list of strings or null")


def _targets(config: dict[str, Any], key: str) -> list[str]:
    value = config.get(key)
    if isinstance(value, str):
        return [value]  # PEFT: a string is one regex that must match the whole module path
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise AdapterLoadError(f"PEFT config field {key!r} must be a string or a list of strings")


def from_peft_config(config: dict[str, Any], folder: Any) -> dict[str, Any]:
    """A config saved by PEFT, as fedadapt's `method` / `config` fields (added beside)."""
    method = PEFT_METHODS.get(str(config.get("peft_type")))
    if method is None:
        raise AdapterLoadError(
            f"{folder}: unknown adapter method {config.get('method')!r} "
            f"(PEFT type {config.get('peft_type')!r}; fedadapt reads PEFT's LORA and IA3)"
        )
    used = [k for k in _UNSUPPORTED if config.get(k) not in (None, False, {}, [], "")]
    if config.get("bias", "none") != "none":
        used.append("bias")
    extra = [m for m in _names(config, "modules_to_save") if m != HEAD_MODULE]
    if extra:
        used.append(f"modules_to_save {extra}")
    if used:
        raise AdapterLoadError(f"{folder}: PEFT options fedadapt does not run: {used}")
    if method == "lora":
        cfg = {
            "r": config.get("r"),
            "lora_alpha": config.get("lora_alpha"),
            "lora_dropout": config.get("lora_dropout", 0.0),
            "target_modules": _targets(config, "target_modules"),
        }
    else:
        cfg = {
            "target_modules": _targets(config, "target_modules"),
            "feedforward_modules": _targets(config, "feedforward_modules"),
        }
    return {**config, "method": method, "config": cfg}
