"""The layers of ``ampt`` import downward only: no cycle between its sub-packages and top-level modules.

Every import counts, at module level or inside a function (a deferred import
is still a dependency). Nodes are ``ampt``'s sub-packages (``ampt.engine``)
and top-level modules (``ampt.results``); an import inside one node of
another adds the edge.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "ampt"

Edges = Dict[str, Dict[str, List[str]]]  # node -> imported node -> "file:line" of each import


def _nodes() -> Set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> List[str]:
    """Dotted names an import statement may load (``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_edges() -> Edges:
    nodes = _nodes()
    edges: Edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        source = module.split(".")[1] if "." in module else None
        if source is None:  # ampt/__init__.py
            continue
        for statement in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for name in _imported(statement, module, path.name == "__init__.py"):
                parts = name.split(".")
                if parts[0] != "ampt" or len(parts) < 2 or parts[1] not in nodes or parts[1] == source:
                    continue
                where = f"{path.relative_to(PACKAGE.parent)}:{statement.lineno}"
                found = edges.setdefault(source, {}).setdefault(parts[1], [])
                if where not in found:
                    found.append(where)
    return edges


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(component: List[str], edges: Edges) -> str:
    lines: List[Tuple[str, str, str]] = [
        (a, b, ", ".join(edges[a][b])) for a in component for b in sorted(edges.get(a, {})) if b in component]
    return "; ".join(f"{a} -> {b} ({where})" for a, b, where in lines)


def test_no_import_cycle_between_ampt_subpackages():
    edges = import_edges()
    found = cycles({a: set(targets) for a, targets in edges.items()})
    assert not found, "Import cycles in ampt (move the shared code below both): " + " | ".join(
        _describe(component, edges) for component in found)


def test_the_walk_sees_deferred_and_relative_imports():
    edges = import_edges()
    assert "utils" in edges["data"] and "utils" in edges["engine"]  # distributed, from both layers
    assert "data" in edges["engine"]  # engine/trainer.py imports DataManager inside a function
    assert set(edges["utils"]) <= {"errors"}  # the ground floor


def test_cycles_finds_a_loop_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
