"""No import circles among the package's modules: the tree is a dataflow, each module below the ones that use it.

Imports are read from the source with ``ast``, every one of them, also those inside a function (a lazy
import hides a circle from Python at import time, not from the reader). Imports under ``if TYPE_CHECKING:``
are left out: they never run, and exist only so a signature can name a type.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

import s3_uploader

PACKAGE = Path(s3_uploader.__file__).parent


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.AST]:
    """Every Import and ImportFrom node of ``tree``, at any depth, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph(package: Path, name: str) -> Dict[str, Set[str]]:
    """Module -> the modules of the same (flat) package it imports. ``__init__`` is the package itself."""
    modules = {p.stem for p in package.glob("*.py")}
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for mod in modules:
        for node in _imports(ast.parse((package / f"{mod}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                paths = [a.name.split(".") for a in node.names]
                targets = [parts[1] for parts in paths if parts[0] == name and len(parts) > 1]
            else:
                if node.level == 1:  # from .x import y, from . import x
                    parts = [name] + (node.module.split(".") if node.module else [])
                elif node.level == 0 and node.module and node.module.split(".")[0] == name:
                    parts = node.module.split(".")
                else:
                    continue
                # from . import x: x is a module, or a name of the package's __init__
                targets = [parts[1]] if len(parts) > 1 else \
                    [a.name if a.name in modules else "__init__" for a in node.names]
            graph[mod].update(t for t in targets if t in modules and t != mod)
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (each one or more circles), sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the package is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_module_of_the_package_reaches_itself_through_its_imports():
    found = circles(import_graph(PACKAGE, "s3_uploader"))
    assert not found, "import circles (each group imports itself around): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_finds_a_circle_hidden_in_a_function_and_ignores_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import x\n")
    (pkg / "e.py").write_text("from pkg.d import y\n")
    graph = import_graph(pkg, "pkg")
    assert graph["b"] == {"c"} and graph["c"] == {"a"} and graph["d"] == set() and graph["e"] == {"d"}
    assert circles(graph) == [["a", "b", "c"]]
