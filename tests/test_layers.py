"""The house's layers, read from the source: calls go down (jobs -> cluster -> datasets -> robrep), never up."""

import ast
from pathlib import Path

import pytest
from conftest import REPO

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
