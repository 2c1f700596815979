"""The README and docs/ stay current with the code: every file they name exists, every link between them resolves,
every `from robrep... import ...` of their Python blocks imports, and the README stays a front door."""

import importlib
import re

import pytest
from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PATH = re.compile(r"`((?:robrep|datasets|cluster|jobs|tests|bench|scripts|docs)/[\w./-]+\.(?:py|yaml|md|sh))`")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_file_and_link_a_page_names_exists(page):
    text = page.read_text()
    for path in PATH.findall(text):
        assert (REPO / path).exists(), f"{page.name} names {path}, which is not in the tree"
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in link:
            assert (page.parent / link).exists(), f"{page.name} links {link}, which is not there"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_robrep_import_of_a_page_imports(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    for block in blocks:
        for module, names in re.findall(r"^from (robrep[\w.]*) import ([\w, ]+)", block, re.M):
            imported = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(imported, name), f"{page.name}: {module} has no {name}"


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text and text.count("ray job submit") >= 1
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"the README does not link docs/{page.name}"
