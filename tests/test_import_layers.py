"""The layers import downwards only: sparse_ops <- workbench <- saes <- steering <- app.

Every import statement counts, including lazy ones inside functions, so a lower layer can never
reach up (not even at call time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAYERS = ("sparse_ops", "workbench", "saes", "steering", "app")
ROOT = Path(__file__).resolve().parent.parent


def _imported_packages(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def layer_violations(root: Path = ROOT) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            for lineno, imported in _imported_packages(path):
                if imported in rank and rank[imported] > rank[package]:
                    bad.append(f"{path.relative_to(root)}:{lineno} ({package}) imports {imported}")
    return bad


def test_lower_layers_never_import_higher_ones():
    assert layer_violations() == []


def test_the_walk_finds_an_upward_import(tmp_path):
    for package in LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "saes" / "ok.py").write_text("import workbench.lab\nimport sparse_ops\n")
    (tmp_path / "workbench" / "bad.py").write_text("def f():\n    from saes import load_sae\n")
    assert layer_violations(tmp_path) == ["workbench/bad.py:2 (workbench) imports saes"]


@pytest.mark.parametrize("package", LAYERS)
def test_every_layer_exists(package):
    assert (ROOT / package / "__init__.py").exists()
