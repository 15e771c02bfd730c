"""The import graph of ``avgn`` has no circle, counting imports inside functions too."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "avgn"


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` from every ``import`` / ``from ... import``
    statement anywhere in the file (module level, functions, ``TYPE_CHECKING`` blocks)."""
    mods: dict[str, Path] = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_circle(tmp_path):
    pkg = tmp_path / "avgn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from avgn.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from avgn.a import g  # hidden inside a function\n")
    (pkg / "c.py").write_text("import avgn.a\n")
    assert cycles(module_graph(pkg)) == [["avgn.a", "avgn.b"]]


def test_avgn_has_no_import_circle():
    found = cycles(module_graph())
    assert not found, f"import circles in avgn (break them by moving code down the layers of avgn/__init__.py): {found}"


@pytest.mark.parametrize("name", sorted(set(module_graph()) - {"avgn.__main__"}))  # that one runs the command line
def test_every_module_imports_on_its_own(name):
    importlib.import_module(name)


BOOK = ROOT.parent / "avgnbook"


def _imports_of(root: Path) -> dict[str, set[str]]:
    """``{module file: every module name it imports}`` (anywhere in the file)."""
    out: dict[str, set[str]] = {}
    for p in root.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(p.relative_to(root.parent))] = names
    return out


def test_the_library_never_imports_the_books_studies():
    offenders = {f: sorted(n for n in names if n == "avgnbook" or n.startswith("avgnbook."))
                 for f, names in _imports_of(ROOT).items()}
    assert not {f: n for f, n in offenders.items() if n}, offenders


def test_the_books_studies_have_no_import_circle():
    assert cycles(module_graph(BOOK)) == []


def test_the_library_has_at_most_twenty_top_level_modules():
    top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 20, top
