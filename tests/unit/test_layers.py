"""The house's layers, read from the source: calls go down (jobs -> cluster -> datasets -> robrep), never up; inside
robrep too (report -> fanout -> store -> the math -> core); and no module imports itself back through others."""

import ast
from pathlib import Path

import pytest
from helpers import LANES, REPO

# What each folder may import of the project's own folders (and robrep: never ray or ffcv).
ALLOWED = {
    "robrep": {"robrep"},
    "datasets": {"datasets", "robrep"},
    "cluster": {"cluster", "datasets", "robrep"},
    "jobs": {"jobs", "cluster", "datasets", "robrep"},
}
FORBIDDEN_THIRD_PARTY = {"robrep": {"ray", "ffcv"}}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_only_go_down_the_layers(folder):
    own = set(ALLOWED)
    for path in sorted((REPO / folder).rglob("*.py")):
        roots = imported_roots(path)
        upward = (roots & own) - ALLOWED[folder]
        assert not upward, f"{path.relative_to(REPO)} imports {sorted(upward)}"
        banned = roots & FORBIDDEN_THIRD_PARTY.get(folder, set())
        assert not banned, f"{path.relative_to(REPO)} imports {sorted(banned)}"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions (prose, not code)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_no_code_outside_the_kinds_names_a_kind():
    """Everything about a kind is in its module: no string in the code of robrep/ (outside robrep/fanout/kinds/),
    datasets/, cluster/ or jobs/ is a kind's name or starts with one (docstrings and comments aside)."""
    from robrep.fanout.registry import list_kinds
    from robrep.store.schema import TABLES

    kinds = set(list_kinds()) - set(TABLES)  # "representations" is also the table that kind writes: the store's name
    named = []
    for folder in ALLOWED:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.is_relative_to(REPO / "robrep" / "fanout" / "kinds"):
                continue
            tree = ast.parse(path.read_text())
            prose = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                    words = node.value.replace(".", " ").replace("{", " ").replace(":", " ").split()
                    hit = sorted(kinds & set(words[:1] + [w.strip("'\"") for w in words]))
                    if node.value in kinds or hit:
                        named.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value[:60]!r}")
    assert not named, "kind names outside robrep/fanout/kinds/:\n" + "\n".join(named)


# Inside robrep, by role, from the top down: each part may import itself and the parts below it, never above.
# "math" is every top-level module (models, pgd, objectives, fast, train, augment, experiments, checkpoint, images).
ROBREP_ORDER = ("report", "fanout", "store", "math", "core")


def _part(module: str) -> str:
    """robrep.fanout.kinds.invert -> fanout; robrep.pgd -> math."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # robrep/__init__.py: a docstring
    return parts[1] if parts[1] in ROBREP_ORDER else "math"


def _module_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _robrep_imports(path: Path) -> set[str]:
    """The robrep modules a file imports, at the top or inside a function (a lazy import is an import)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "robrep"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("robrep"):
            for alias in node.names:  # `from robrep.fanout import kinds` imports the module robrep.fanout.kinds
                sub = f"{node.module}.{alias.name}"
                where = REPO / Path(*sub.split("."))
                out.add(sub if where.with_suffix(".py").exists() or where.is_dir() else node.module)
    return out


def test_robrep_parts_import_only_downwards():
    order = {part: i for i, part in enumerate(ROBREP_ORDER)}
    for path in sorted((REPO / "robrep").rglob("*.py")):
        here = _part(_module_of(path))
        for module in _robrep_imports(path):
            there = _part(module)
            assert order[there] >= order[here], f"{path.relative_to(REPO)} ({here}) imports {module} ({there})"


def test_no_module_of_robrep_imports_itself_back():
    graph = {_module_of(p): _robrep_imports(p) for p in (REPO / "robrep").rglob("*.py")}

    def parents(module: str) -> list[str]:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        return [".".join(parts[:i]) for i in range(2, len(parts))]

    # A module's own packages run before it and are no circle of its making (a package that re-exports it).
    edges = {m: {t for target in targets for t in (*parents(target), target)
                 if t in graph and t != m and not m.startswith(t + ".")}
             for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for nxt in edges[module]:
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_test_is_in_a_lane_and_the_unit_lane_starts_nothing():
    """Each test file lives in tests/<lane>/; a unit test starts no process and no Ray (its conftest also fails a
    test that imports ray or ffcv)."""
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        assert path.parent.name in LANES, f"{path.relative_to(REPO)} is in no lane: move it to tests/<lane>/"
    for path in sorted((REPO / "tests" / "unit").glob("*.py")):
        roots = imported_roots(path)
        assert not roots & {"subprocess", "ray", "ffcv", "cluster", "datasets"}, \
            f"{path.relative_to(REPO)} imports {sorted(roots & {'subprocess', 'ray', 'ffcv', 'cluster', 'datasets'})}"
        calls = {n.func.id for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "run_module" not in calls, f"{path.relative_to(REPO)} runs an entry point as a process"
