"""The structure the README draws, held against the code: imports point one way. Every
import is read (module level and inside functions), so a lazy import cannot hide a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("drip", "campaigns")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The project modules this file imports, anywhere in it."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]
    modules = {module_name(p): p for p in files}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_module_imports_one_that_imports_it_back():
    assert find_cycle(graph()) == []


def test_the_engine_knows_no_funnel_of_its_own():
    """campaigns registers its tables with drip.funnels; drip never imports campaigns."""
    offenders = {m: sorted(i for i in deps if i.startswith("campaigns")) for m, deps in graph().items() if m.startswith("drip")}
    assert {m: deps for m, deps in offenders.items() if deps} == {}


def test_tasks_are_published_by_name_and_defined_in_one_place():
    """Only Celery imports drip.tasks; every stage publishes through drip.publish."""
    importers = sorted(m for m, deps in graph().items() if "drip.tasks" in deps)
    assert importers == []


def test_the_check_itself_sees_a_cycle():
    edges = graph()
    assert {"drip.steps", "drip.sender", "drip.publish"} <= edges["drip.tasks"]  # relative imports are read
    assert "drip.funnels" in edges["campaigns.apps"]  # and imports inside functions
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
