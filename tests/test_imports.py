"""The package's import graph has no cycle: each module can be read after the ones it imports.

Imports inside functions count too (a lazy import is how a cycle hides), and so do imports
under `if TYPE_CHECKING:`: they never run, but a reader follows them both ways all the same.
The layering targets are asserted too: the step's data model (step_plan) is a leaf, the
policies sit above it and only the scheduler imports them.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = Path(__file__).resolve().parents[1] / "backend_src"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGES).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Modules this module imports, at run time or for type checking only (relative imports
    resolved; `from pkg import mod` names the submodule, not the package's __init__)."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGES.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = imported(ast.parse(path.read_text()), name, path.name == "__init__.py", set(files))
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_backend_src_has_no_import_cycle():
    graph = import_graph()
    assert "laminar.model_runner" in graph["laminar.worker"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_type_only_import_counts():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from laminar.b import B\n")
    assert imported(tree, "laminar.a", False, {"laminar.a", "laminar.b"}) == {"typing", "laminar.b"}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_step_plan_is_a_leaf_under_the_policies():
    graph = import_graph()
    policies = {m for m in graph if m == "laminar.policies" or m.startswith("laminar.policies.")}
    assert graph["laminar.step_plan"] <= {"laminar.sequence"}, graph["laminar.step_plan"]
    assert graph["laminar.cost_model"] == {"laminar.step_plan"}
    assert not reachable(graph, "laminar.forward_batch") & policies
    importers = {m for m, deps in graph.items() if deps & policies} - policies
    assert importers == {"laminar.scheduler"}, importers
