"""The packages are ours (PyPI has distributions named fs, daemon, proxy, ledger)
and imports flow one way: cli -> fs, never fs -> cli."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_packages_resolve_inside_the_repo() -> None:
    for name in ("fs", "cli"):
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == REPO / name


def test_fs_does_not_import_cli() -> None:
    for path in (REPO / "fs").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            assert not any(n == "cli" or n.startswith("cli.") for n in names), path
