"""`clients` and `export` never import each other: what both need lives in the core.

The device must run without the exporter (and its torch exporter stack), and the exporter
must not carry the device's Flower app. The check reads every module's imports from its
syntax tree, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in `path` names (absolute or relative)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package folder's import name
                package = "fedadapt." + path.parent.name
                out.add(f"{package}.{node.module}" if node.module else package)
            elif node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def offenders(folder: str, forbidden: str) -> list[str]:
    return sorted(
        f"{p.relative_to(ROOT)} imports {m}"
        for p in (ROOT / folder).rglob("*.py")
        for m in imported_modules(p)
        if m == forbidden or m.startswith(forbidden + ".")
    )


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [("clients", "fedadapt.export"), ("export", "fedadapt.clients")],
)
def test_clients_and_export_do_not_import_each_other(folder: str, forbidden: str) -> None:
    assert offenders(folder, forbidden) == []


def test_the_check_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    """The check itself: an import hidden in a function, in either form, is found."""
    mod = tmp_path / "clients" / "m.py"
    mod.parent.mkdir()
    mod.write_text(
        "def f():\n    from fedadapt.export import graph\n    import fedadapt.export.measure\n"
    )
    assert imported_modules(mod) >= {"fedadapt.export", "fedadapt.export.measure"}
