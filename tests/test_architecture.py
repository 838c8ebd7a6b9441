"""The shape of the package: no import cycles at any level, no algorithm-name branches outside the engine.

Both read the source with ``ast`` (nothing is imported): every ``import`` counts, also those inside functions;
only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rca_gpu"

#: Cycles tolerated while a refactoring opens them in steps, each as the set of rooms (modules or folders, at
#: the level where the cycle lies) it joins. None today: any cycle fails the test.
ALLOWED_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package as its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, modules: dict[str, Path], here: str) -> set[str]:
    """Modules of the package that ``tree`` imports (``from pkg import name`` names the module pkg.name when it
    is one, else pkg itself)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = here.split(".")[: len(here.split(".")) - node.level + (1 if _is_package(here) else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    found.add(target)
                elif base in modules:
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    def _is_package(name: str) -> bool:
        return modules[name].name == "__init__.py"

    visit(tree)
    found.discard(here)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at run time, anywhere in the file)."""
    modules = _modules()
    return {name: _imported(ast.parse(path.read_text()), modules, name) for name, path in modules.items()}


def _room(module: str, level: str) -> str | None:
    """The child of package ``level`` that holds ``module`` (a module or a sub-package), or None."""
    if not module.startswith(level + "."):
        return None
    return level + "." + module[len(level) + 1:].split(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[tuple[frozenset[str], list[str]]]:
    """Every strongly connected component of more than one node (Tarjan), with one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [(frozenset(c), _one_cycle(graph, set(c))) for c in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A closed path a -> ... -> a through the component (to name in a failure)."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in component)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return path + [start]
        step = next((w for w in nxt if w not in seen), None)
        if step is None:
            return path + [nxt[0]]
        path.append(step)
        seen.add(step)


def level_graphs(graph: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """For each package P: the graph of P's children (modules and sub-packages) drawn from module imports
    between different children. A cycle among the files of one folder, or among the folders of one package,
    shows here."""
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    out: dict[str, dict[str, set[str]]] = {}
    for level in packages:
        rooms: dict[str, set[str]] = {}
        for source, targets in graph.items():
            a = _room(source, level)
            if a is None:
                continue
            rooms.setdefault(a, set())
            for target in targets:
                b = _room(target, level)
                if b is not None and b != a:
                    rooms[a].add(b)
        out[level] = rooms
    return out


def test_the_import_graph_has_no_cycle_at_any_level():
    graph = import_graph()
    found = []
    for level, rooms in sorted(level_graphs(graph).items()):
        for component, cycle in cycles(rooms):
            if component not in ALLOWED_CYCLES:
                found.append(f"in {level}: " + " -> ".join(cycle))
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(found)


def test_the_cycle_finder_names_a_cycle_and_the_allowed_ones_still_exist():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [(frozenset("abc"), ["a", "b", "c", "a"])]
    assert cycles({"a": {"b"}, "b": set()}) == []
    present = {c for rooms in level_graphs(import_graph()).values() for c, _ in cycles(rooms)}
    gone = [sorted(c) for c in ALLOWED_CYCLES if c not in present]
    assert not gone, f"these cycles are gone: remove them from ALLOWED_CYCLES: {gone}"


def test_function_level_imports_count():
    tree = ast.parse("def f():\n    from rca_gpu.engine import registry\nif TYPE_CHECKING:\n    import rca_gpu.cli\n")
    modules = _modules()
    assert _imported(tree, modules, "rca_gpu.x") == {"rca_gpu.engine.registry"}


# ---------------------------------------------------------------------------------------------------------
# Algorithm-name branches
# ---------------------------------------------------------------------------------------------------------


def _card_names() -> tuple[set[str], set[str]]:
    from rca_gpu.engine import registry

    return set(registry.reducers()), set(registry.clusterers())


def _strings(node: ast.AST) -> list[str] | None:
    """The string constants of a constant or a tuple / list / set of them; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
        values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return values if len(values) == len(node.elts) else None
    return None


def name_branches(source: str, reducers: set[str], clusterers: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each comparison with algorithm names, and each table keyed by them, in ``source``.

    A comparison counts when every string it compares with is a card's name ("none", also an ordinary word, only
    when the other side mentions a reducer); a dict literal counts when two of its keys are cards' names.
    """
    names = (reducers | clusterers) - {"none"}
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for side in node.comparators:
                values = _strings(side)
                if not values:
                    continue
                left = ast.unparse(node.left)
                if all(v in names or (v == "none" and "reduc" in left) for v in values):
                    out.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            if sum(k in names for k in keys) >= 2:
                out.append((node.lineno, ast.unparse(node)[:80]))
    return out


def test_no_algorithm_name_branches_outside_the_engine():
    reducers, clusterers = _card_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "engine") in path.parents:
            continue
        for line, text in name_branches(path.read_text(), reducers, clusterers):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text}")
    assert not found, "ask the algorithm's card (rca_gpu.engine) instead of branching on its name:\n" + "\n".join(found)


@pytest.mark.parametrize("code, hits", [
    ('if spec.name == "dbscan": pass', 1),
    ('if clusterer in ("kmeans", "ward"): pass', 1),
    ('if reduce_spec.name == "none": pass', 1),
    ('if weights in ("none", "random"): pass', 0),
    ('if cause == "none": pass', 0),
    ('GRID = {"dbscan": 1, "hdbscan": 2}', 1),
    ('x = registry.cluster_card("dbscan")', 0),
])
def test_the_branch_finder_sees_branches_and_leaves_other_words(code, hits):
    assert len(name_branches(code, {"umap", "pca", "none"}, {"dbscan", "hdbscan", "kmeans", "ward"})) == hits
