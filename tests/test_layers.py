"""The structure the README draws, held against the code: imports point one way, down the
rank table below, and the README's package map lists the tree as it is. Every import is read
(module level and inside functions), so a lazy import cannot hide an upward one."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("drip", "campaigns")

# The layers, bottom first: a module may import its own layer and those below, never above.
# A prefix names a package (every module in it) or a module.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("drip.support",),  # imports nothing of Drip's
    ("drip.domain.validation", "drip.domain.addresses", "drip.domain.pacing"),  # values, no models
    ("drip.models", "drip.migrations"),
    ("drip.domain", "campaigns.funnels"),  # the rules on the models; the funnel tables
    ("drip.timer",),  # publishing, dispatch, recovery
    ("drip.delivery",),  # a Message to its provider
    ("drip.engine",),  # registrations, steps, services
    ("drip.doors", "drip.ops"),  # where the outside comes in
    ("drip.admin", "drip.management", "drip.tasks"),  # the console, the shell, Celery's entry
    ("drip.urls", "drip.apps", "drip.settings", "drip.wsgi", "drip.formats", "drip", "campaigns"),  # the project
)


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
    """campaigns registers its tables with drip.domain.funnels; drip never imports campaigns."""
    offenders = {m: sorted(i for i in deps if i.startswith("campaigns")) for m, deps in graph().items() if m.startswith("drip")}
    assert {m: deps for m, deps in offenders.items() if deps} == {}


def test_tasks_are_published_by_name_and_defined_in_one_place():
    """Only Celery imports drip.tasks; every stage publishes through drip.timer.publish."""
    importers = sorted(m for m, deps in graph().items() if "drip.tasks" in deps)
    assert importers == []


def test_the_check_itself_sees_a_cycle():
    edges = graph()
    assert {"drip.engine.steps", "drip.delivery.sender", "drip.timer.publish"} <= edges["drip.tasks"]
    assert "drip.domain.funnels" in edges["campaigns.apps"]  # imports inside functions are read
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def rank(module: str) -> int:
    """The layer of the longest prefix that names the module."""
    best, found = -1, -1
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found >= 0, f"{module} is in no layer of LAYERS"
    return found


def test_every_import_points_down_the_layers():
    upward = sorted(
        f"{module} (layer {rank(module)}) imports {dep} (layer {rank(dep)})"
        for module, deps in graph().items() for dep in deps if rank(dep) > rank(module)
    )
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    assert rank("drip.engine.steps") > rank("drip.delivery.sender") > rank("drip.timer.publish") > rank("drip.models")
    assert rank("drip.domain.consent") > rank("drip.models") > rank("drip.domain.validation")


def package_map() -> set[str]:
    """The paths the README's package map lists (its first column)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Package map", 1)[1].split("\n## ", 1)[0]
    return {row.split("`")[1].rstrip("/") for row in section.splitlines() if row.startswith("| `")}


def test_the_readme_package_map_is_the_tree():
    """Every package and module directly under drip/ is on the map, and nothing else is."""
    tree = {
        f"drip/{p.name}" for p in (ROOT / "drip").iterdir()
        if p.name not in ("__init__.py", "__pycache__") and (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    listed = {path for path in package_map() if path.startswith("drip/")}
    assert listed == tree
