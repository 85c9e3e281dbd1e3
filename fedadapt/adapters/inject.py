"""Finding target modules by name and wrapping them, as PEFT's `target_modules` does.

A pattern matches a module whose logical name equals it or ends with `.pattern` (PEFT's
rule), or, when it holds regex characters, one that it fully matches. Wrappers of different
methods can nest on one module; a second adapter of the same method joins the existing wrapper.
"""

from __future__ import annotations

import re
from typing import Protocol

from torch import nn

from fedadapt.adapters.layer import AdapterControl, AdapterLayer, logical_name

_REGEX_CHARS = set("\\^$*+?[](){}|")

# Presets for BERT blocks, usable anywhere a target list is.
BERT_PRESETS: dict[str, list[str]] = {
    "attention": ["query", "key", "value", "attention.output.dense"],
    "qv": ["query", "value"],
    "ffn": ["intermediate.dense", "output.dense"],
    "all-linear": ["query", "key", "value", "dense"],
}


class AdapterConfig(Protocol):
    """What `inject` needs of an adapter method's config.

    `method` names the method (as saved in adapter files), `wrapper` is the `AdapterLayer`
    subclass that wraps a target module. Every adapter config class in this package fits.
    """

    method: str
    wrapper: type[AdapterLayer]

    def targets(self) -> list[str]:
        """The target patterns (names, regexes or `BERT_PRESETS` keys)."""

    def make_adapter(self, base_layer: nn.Module, name: str) -> nn.Module:
        """A fresh adapter module for `base_layer`, found at logical name `name`."""


def matches(name: str, pattern: str) -> bool:
    """Whether logical module name `name` is selected by `pattern`.

    A pattern with regex characters must match the whole name; a plain one must equal the name
    or be a dot-separated suffix of it (`value` selects `encoder.layer.0.attention.self.value`).
    """
    if _REGEX_CHARS & set(pattern):
        return re.fullmatch(pattern, name) is not None
    return name == pattern or name.endswith("." + pattern)


def expand(patterns: list[str]) -> list[str]:
    """Replace preset names (`BERT_PRESETS`) by their patterns; other patterns pass through."""
    out: list[str] = []
    for p in patterns:
        out.extend(BERT_PRESETS.get(p, [p]))
    return out


def find_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Logical names of the base modules that the patterns select, in model order."""
    patterns = expand(patterns)
    found: list[str] = []
    for path, module in model.named_modules():
        inside = ".adapters." in f".{path}." or ".fusions." in f".{path}."
        if not path or inside or isinstance(module, AdapterLayer):
            continue
        name = logical_name(path)
        if name not in found and any(matches(name, p) for p in patterns):
            found.append(name)
    return found


def _outermost(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    """`(parent, attribute, module)` of whatever now sits at logical name `name`."""
    *parents, attr = name.split(".")
    parent = model
    for part in [*parents, None]:
        while isinstance(parent, AdapterLayer):  # an ancestor was wrapped: look through it
            parent = parent.base_layer
        if part is not None:
            parent = getattr(parent, part)
    return parent, attr, getattr(parent, attr)


def inject(
    model: nn.Module, control: AdapterControl, adapter: str, cfg: AdapterConfig
) -> list[str]:
    """Add adapter `adapter` to every target of `cfg`; returns the targets' logical names."""
    targets = find_targets(model, cfg.targets())
    if not targets:
        raise ValueError(f"no module matches the {cfg.method} targets {cfg.targets()}")
    for name in targets:
        parent, attr, module = _outermost(model, name)
        layer = module
        while isinstance(layer, AdapterLayer) and not isinstance(layer, cfg.wrapper):
            layer = layer.base_layer
        if not isinstance(layer, cfg.wrapper):
            layer = cfg.wrapper(module, control)
            setattr(parent, attr, layer)
        if adapter in layer.adapters:
            raise ValueError(f"adapter {adapter!r} already exists at {name}")
        layer.adapters[adapter] = cfg.make_adapter(layer.base_layer, name)
    return targets


def remove(model: nn.Module, adapter: str) -> None:
    """Drop adapter `adapter` everywhere; unwrap layers left with no adapters."""
    for module in list(model.modules()):
        if isinstance(module, AdapterLayer) and adapter in module.adapters:
            del module.adapters[adapter]
    for path, module in reversed(list(model.named_modules())):
        if isinstance(module, AdapterLayer) and len(module.adapters) == 0:
            parent_name, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, module.base_layer)
