"""Every public function, class and method of the package has a docstring.

A newcomer reads the code before the docs: each public name says why it exists (numpydoc
`Parameters` / `Returns` where the arguments are not obvious). Private names (`_x`) and
nested functions are left to judgement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedadapt", "server", "clients", "export")


def undocumented(path: Path) -> list[str]:
    """The public functions, classes and methods in `path` without a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in getattr(node, "body", []):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if child.name.startswith("_"):
                continue
            if ast.get_docstring(child) is None:
                out.append(f"{prefix}{child.name}")
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return out


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_public_name_has_a_docstring(path: Path) -> None:
    assert undocumented(path) == []


def test_the_check_finds_a_public_method_without_one(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text(
        'class A:\n    """Why A."""\n\n    def f(self):\n        pass\n\n    def _g(self):\n'
        "        pass\n\n\ndef h():\n    def inner():\n        pass\n"
    )
    assert undocumented(mod) == ["A.f", "h"]
