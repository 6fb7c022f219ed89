"""The packages are ours (PyPI has distributions named fs, daemon, proxy, ledger) and
imports flow one way (docs/architecture.md):

    cli    -> anything
    fs     -> wire, ledger.events          (never daemon, proxy, cli)
    daemon -> wire, ledger, proxy's client side
    wire   -> ledger.events
    proxy, ledger -> nothing of the project
    inside fs: format -> errors;  vault -> format;  mount -> vault, format
    inside fs only fs.format.cryptocore derives keys (cryptography's kdf, hashes, hmac)

Every module is scanned, at any depth and with imports inside functions too, so a
cycle cannot hide behind a function-level import.
"""
from __future__ import annotations

import ast
import importlib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("fs", "cli", "daemon", "proxy", "ledger", "wire")

# package (or fs layer) -> the modules of other packages (or layers) it may import
ALLOWED = {
    "fs": {"wire", "ledger.events"},
    "daemon": {"wire", "ledger", "proxy.sharing", "proxy.shares", "proxy.keyring", "proxy.client", "proxy.errors"},
    "wire": {"ledger.events"},
    "proxy": set(),
    "ledger": set(),
}
FS_LAYERS = {
    "fs.format": {"fs.errors"},
    "fs.vault": {"fs.errors", "fs.format"},
    "fs.mount": {"fs.errors", "fs.format", "fs.vault"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


@cache
def _imports(path: Path) -> frozenset[str]:
    """Every module name imported anywhere in *path* (relative imports resolved)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return frozenset(found)


def _project_imports(path: Path) -> set[str]:
    """The project modules *path* imports (``from proxy import client`` is proxy.client)."""
    modules = _modules()
    names = {name for name in _imports(path) if name in modules}
    return {n for n in names if not any(other.startswith(n + ".") for other in names)}


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_resolve_inside_the_repo(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == REPO / name


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    bad = []
    for module, path in _modules().items():
        if module.split(".")[0] != package:
            continue
        for name in _project_imports(path):
            if name.split(".")[0] != package and not _allowed(name, ALLOWED[package]):
                bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize("layer", sorted(FS_LAYERS))
def test_fs_layers_flow_down(layer: str) -> None:
    bad = []
    for module, path in _modules().items():
        if not _allowed(module, {layer}):
            continue
        for name in _project_imports(path):
            if name.startswith("fs.") and not _allowed(name, {layer}) and not _allowed(name, FS_LAYERS[layer]):
                bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(sorted(bad))


def test_only_the_mount_adapter_imports_pyfuse3_and_trio() -> None:
    bad = [
        f"{module} imports {name}"
        for module, path in _modules().items()
        if module.startswith("fs.") and not _allowed(module, {"fs.mount"})
        for name in _imports(path)
        if name.split(".")[0] in ("pyfuse3", "trio")
    ]
    assert not bad, "\n".join(sorted(bad))


# Key derivation (HKDF and its hash, Argon2id, HMAC): fs/format/cryptocore.py holds every
# domain-separation label and is frozen by tests/fs/test_format_vectors.py, so nothing else
# in fs may derive a key.  AEAD classes (AESGCM, AESSIV) are still used by the modules that
# seal bytes (fs.format.*, and today fs.vault.headers/versions/fsck and fs.mount.lockdown).
KEY_DERIVATION = ("cryptography.hazmat.primitives.kdf", "cryptography.hazmat.primitives.hashes",
                  "cryptography.hazmat.primitives.hmac")


def test_only_cryptocore_derives_keys() -> None:
    bad = [
        f"{module} imports {name}"
        for module, path in _modules().items()
        if module.startswith("fs.") and module != "fs.format.cryptocore"
        for name in _imports(path)
        if _allowed(name, set(KEY_DERIVATION))  # `from ...primitives import hashes` counts too
    ]
    assert not bad, "\n".join(sorted(bad))


def test_no_command_module_imports_another() -> None:
    bad = [
        f"{module} imports {name}"
        for module, path in _modules().items()
        if module.startswith("cli.") and module.endswith("_cmds")
        for name in _project_imports(path)
        if name.startswith("cli.") and name.endswith("_cmds") and name != module
    ]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    """Between modules, counting imports inside functions too (package __init__ files
    that only carry a docstring take no part)."""
    modules = _modules()
    graph = {m: {n for n in _project_imports(p) if n != m and modules[n].stat().st_size and
                 not (n == m.rpartition(".")[0])} for m, p in modules.items()}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)
