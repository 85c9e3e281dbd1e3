"""Reading run reports and bench.json into result tables (simulations/*_table.py).

The table scripts compare finished runs; what they share lives here: each input read with a
one-line error that names what is missing, nested fields looked up by a dotted path, paired
intervals and counts formatted one way, and the table written as markdown plus JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedadapt.atomic import atomic_write_text
from fedadapt.errors import FedAdaptError

NOT_MEASURED = "not measured"
NOT_RECORDED = "not recorded"


def check_present(inputs: Mapping[str, Path]) -> None:
    """One error naming every missing input (`label (path)`), so one run shows them all."""
    missing = [f"{label} ({path})" for label, path in inputs.items() if not Path(path).is_file()]
    if missing:
        raise FedAdaptError(f"missing inputs: {', '.join(missing)}")


def load_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; missing, unreadable or not an object: one FedAdaptError."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedAdaptError(f"missing {what}: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedAdaptError(f"{what} {path} is unreadable: {e}") from None
    if not isinstance(value, dict):
        raise FedAdaptError(f"{what} {path} is not a JSON object")
    return value


def shown(path: Path) -> str:
    """`path` relative to the working directory where it lies below it (a committed
    table.json then names repository paths, not one machine's), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def lookup(data: Any, dotted: str) -> Any:
    """`data["a"]["b"]` for `"a.b"`, or None where any step is absent."""
    for key in dotted.split("."):
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def require(data: Any, dotted: str, where: str, hint: str = "") -> Any:
    """`lookup`, but an absent field is a FedAdaptError naming the field and the file."""
    value = lookup(data, dotted)
    if value is None:
        raise FedAdaptError(f"{where} has no {dotted}{f' ({hint})' if hint else ''}")
    return value


def config_differences(
    reports: Mapping[str, Mapping[str, Any]], ignore: frozenset[str]
) -> dict[str, dict[str, Any]]:
    """The run-config keys (outside `ignore`) whose values differ between reports:
    `{key: {report label: value}}`. Tables compare runs; this says what else differed."""
    configs = {label: r.get("config") or {} for label, r in reports.items()}
    keys = sorted({k for c in configs.values() for k in c} - ignore)
    out = {}
    for k in keys:
        # a key an older report does not record is named so, not shown as a value
        values = {label: c.get(k, NOT_RECORDED) for label, c in configs.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            out[k] = values
    return out


def interval(cmp: Mapping[str, Any] | None) -> str:
    """A paired comparison as `+0.007 [-0.009, +0.025]`, with ` *` when the 95% interval
    excludes 0 (docs/reference/formats.md: a claim of better or worse needs that)."""
    if not cmp:
        return "not in report"
    lo, hi = cmp["ci95_low"], cmp["ci95_high"]
    star = " *" if lo > 0 or hi < 0 else ""
    return f"{cmp['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def size(n: float | None) -> str:
    """Bytes in kB (or MB from 1 MB on), decimal units as byte counts are reported."""
    if n is None:
        return NOT_MEASURED
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table of already formatted cells; every row must have `header`'s length."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(out: Path, text: str, data: Mapping[str, Any]) -> None:
    """`table.md` and `table.json` in `out` (created), each written atomically, then the
    table printed with where it went (both table scripts end this way)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "table.json", json.dumps(data, indent=2) + "\n")
    print(text, end="")
    print(f"written to {out / 'table.md'} and table.json")
