"""The package's import graph: no cycles, and the layering rules (read from the source with ast).

Every `import` / `from ... import` statement counts, at module level and inside functions (a lazy
import still makes a circle at run time). Parent packages' `__init__` run implicitly on any import;
only the modules a statement names are edges here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "nwb_lfads_emg"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# layer (module prefix) -> third-party top-level packages it must never import, directly or through
# the package's own modules it imports
FORBIDDEN = {
    f"{PACKAGE}.lfads": {"pynwb", "h5py", "dandi"},
    f"{PACKAGE}.training": {"pynwb", "h5py", "dandi"},
    f"{PACKAGE}.sources": {"torch"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges to the package's modules, top-level third-party names) per module."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    external: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node)
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    while target not in modules:  # `import pkg.mod.attr` style: the longest module prefix
                        target = target.rsplit(".", 1)[0]
                    if target != mod:
                        edges[mod].add(target)
                elif target:
                    external[mod].add(target.split(".")[0])
    return edges, external


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a closed path) or None, by depth-first search."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_walker_sees_the_package_and_finds_a_planted_cycle():
    modules = _modules()
    edges, external = _imports(modules)
    assert len(modules) > 30
    assert f"{PACKAGE}.metrics" in edges[f"{PACKAGE}.report"]  # module level
    assert f"{PACKAGE}.report" in edges[f"{PACKAGE}.evaluate"]  # inside a function
    assert "torch" in external[f"{PACKAGE}.training.trainer"]
    planted = {k: set(v) for k, v in edges.items()}
    planted[f"{PACKAGE}.metrics"].add(f"{PACKAGE}.evaluate")  # evaluate -> metrics already
    assert _find_cycle(planted) is not None


def test_no_import_cycle():
    edges, _ = _imports(_modules())
    cycle = _find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layering(layer):
    """lfads/ and training/ never reach pynwb/h5py/dandi; sources/ never reaches torch."""
    edges, external = _imports(_modules())
    members = [m for m in edges if m == layer or m.startswith(layer + ".")]
    assert members
    for mod in members:
        for reached in sorted(_reachable(edges, mod)):
            bad = external[reached] & FORBIDDEN[layer]
            assert not bad, f"{mod} imports {sorted(bad)}" + (f" through {reached}" if reached != mod else "")
