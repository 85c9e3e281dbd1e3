"""The layering rules, read from the real import graph.

Every `import` and `from ... import` in every module counts, including those inside
functions: a lazy import hides a dependency from the reader, not from the rules. Module names
come from the folders as `pyproject.toml` maps them (`server/` is `fedadapt.server`, ...).

The rules (docs/explanation/architecture.md):
- no import circles;
- the core's library packages import nothing from the sides (`server`, `clients`,
  `export`) nor from what sits above them (`launch`, `bench`, `cli`);
- the sides import nothing from above them either;
- `server` and `clients` never import each other, nor `clients` and `export`.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("fedadapt.server", "fedadapt.clients", "fedadapt.export")
ABOVE = ("fedadapt.launch", "fedadapt.bench", "fedadapt.cli", "fedadapt.__main__")


def package_folders(root: Path) -> dict[str, Path]:
    """Import name -> folder, as `[tool.setuptools.package-dir]` maps them."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = pyproject["tool"]["setuptools"]["package-dir"]
    return {name: root / rel for name, rel in mapping.items()}


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the installed package, by import name (`pkg.__init__` is `pkg`)."""
    folders = package_folders(root)
    out: dict[str, Path] = {}
    for name, folder in folders.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            module = ".".join((name, *parts))
            # a mapped sub-package (fedadapt.server) wins over a same-named folder inside
            # fedadapt/, which setuptools would not install under that name
            if module in out and name == "fedadapt":
                continue
            out[module] = path
    return out


def imports_of(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of `known` that `module` (at `path`) imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        # `import a.b.c` binds a.b.c; the closest known module is the dependency
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
                sub = f"{source}.{alias.name}"
                add(sub if sub in known else source)
    found.discard(module)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    return {m: imports_of(p, m, p.name == "__init__.py", known) for m, p in sorted(files.items())}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# What each layer may not import. The sides import nothing above them; server and clients
# never import each other, nor clients and export. Everything else in `fedadapt` is the
# core, which imports no side and nothing above.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "fedadapt.server": (*ABOVE, "fedadapt.clients"),
    "fedadapt.clients": (*ABOVE, "fedadapt.server", "fedadapt.export"),
    "fedadapt.export": (*ABOVE, "fedadapt.clients"),
}


def forbidden_for(module: str) -> tuple[str, ...]:
    if under(module, ABOVE):
        return ()
    for side, forbidden in FORBIDDEN.items():
        if under(module, (side,)):
            return forbidden
    return SIDES + ABOVE


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that crosses a layer the wrong way, as 'a imports b'."""
    return [
        f"{m} imports {d}"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if under(d, forbidden_for(m))
    ]


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_layers_are_respected() -> None:
    assert violations(import_graph()) == []


def test_the_graph_sees_the_packages_by_their_mapped_names() -> None:
    graph = import_graph()
    assert graph["fedadapt.clients.app"] >= {
        "fedadapt.clients.handlers",
        "fedadapt.clients.warm_link",
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small package laid out like this repository, to test the checker itself."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"fedadapt" = "fedadapt"\n"fedadapt.server" = "server"\n'
        '"fedadapt.clients" = "clients"\n'
    )
    for folder in ("fedadapt", "fedadapt/base", "server", "clients"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "__init__.py").write_text("")
    return tmp_path


def test_a_lazy_import_inside_a_function_closes_a_circle(tree: Path) -> None:
    (tree / "fedadapt/base/model.py").write_text(
        "def load():\n    from fedadapt.base import cache\n"
    )
    (tree / "fedadapt/base/cache.py").write_text("from .model import load\n")
    assert cycles(import_graph(tree)) == [["fedadapt.base.cache", "fedadapt.base.model"]]


def test_the_core_importing_a_side_and_the_sides_importing_each_other_are_caught(
    tree: Path,
) -> None:
    (tree / "fedadapt/base/model.py").write_text("import fedadapt.server.app\n")
    (tree / "server/app.py").write_text("from fedadapt import clients\n")
    (tree / "clients/app.py").write_text("def f():\n    from ..server import app\n")
    assert violations(import_graph(tree)) == [
        "fedadapt.base.model imports fedadapt.server.app",
        "fedadapt.clients.app imports fedadapt.server.app",
        "fedadapt.server.app imports fedadapt.clients",
    ]
