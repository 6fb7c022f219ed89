"""The packages are ours (PyPI has distributions named fs, daemon, proxy, ledger)
and imports flow one way: cli → everything; daemon → ledger; fs → only the pure
shared modules of daemon and ledger; ledger and proxy → nothing of fs, daemon or cli."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("fs", "cli", "daemon", "proxy", "ledger")

# package → modules of other project packages it may import
ALLOWED = {
    "fs": {"ledger.events", "daemon.protocol", "daemon.spool", "daemon.clock", "daemon.mounts"},
    "daemon": {"ledger", "proxy.client", "proxy.shares", "proxy.identity", "proxy.errors"},  # guard revocation
    "ledger": set(),
    "proxy": {"ledger.events"},
}


def _project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_resolve_inside_the_repo(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == REPO / name


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    allowed = ALLOWED[package]
    for path in (REPO / package).glob("*.py"):
        for name in _project_imports(path):
            if name.split(".")[0] == package:
                continue
            ok = any(name == a or name.startswith(a + ".") for a in allowed)
            assert ok, f"{path.relative_to(REPO)} imports {name}"
