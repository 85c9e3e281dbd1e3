"""Typed checks for flat config values: each failure is one line naming the key, the value
and what is allowed (`config: rounds = 'ten' is not an integer`).

Kept apart from `SimConfig` so the rules read as a table there and the checking reads once
here. Types are strict: a string is never a bool or a number (TOML's `baselines = "False"`
once meant true), a bool is never a number, and a float must be finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedadapt.errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "a boolean (true or false)", str: "a string"}


@dataclass(frozen=True)
class Range:
    """low <= value <= high; an open end excludes its bound; None means unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, v: float) -> bool:
        """Whether `v` lies in the range."""
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def describe(self) -> str:
        """The range as the error message and the reference page show it: `>= 1`, `in (0, 1]`.

        Only called for a bounded range (an unbounded one allows every value).
        """
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    allowed: tuple[str, ...]


@dataclass(frozen=True)
class NonEmpty:
    """A string with at least one character (a folder name, say)."""


def _refuse(key: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"config: {key} = {value!r} is not {what}")


def check_value(key: str, kind: type, value: Any, rule: Range | Choice | NonEmpty | None) -> Any:
    """`value` as `kind` if it is one and `rule` allows it (an int passes as a float and is
    returned as one); else a ConfigError naming the key, the value and what is allowed."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _refuse(key, value, _NAMES[kind])
    if kind is float and not math.isfinite(value):
        raise _refuse(key, value, "a finite number")
    if isinstance(rule, Range) and not rule.allows(value):
        raise _refuse(key, value, f"{_NAMES[kind]} {rule.describe()}")
    if isinstance(rule, Choice) and value not in rule.allowed:
        raise _refuse(key, value, f"one of {', '.join(rule.allowed)}")
    if isinstance(rule, NonEmpty) and not value:
        raise _refuse(key, value, "a non-empty string")
    return value


def parse_text(key: str, kind: type, text: str) -> Any:
    """Command-line TEXT read as `kind`, the key's declared type: `--set seed=7` is an int
    because seed is one, and `--set publish_key=123` stays the string '123'. A string may
    also be written quoted, as in TOML (`--set "out='my run'"`)."""
    if kind is str:
        return _unquoted(text)
    if kind is bool:
        if text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        raise _refuse(key, text, _NAMES[bool])
    try:
        return kind(text.strip())
    except ValueError:
        raise _refuse(key, text, _NAMES[kind]) from None


def _unquoted(text: str) -> str:
    """TEXT, or the string a quoted TOML literal in TEXT stands for."""
    import tomllib

    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    return text
