"""The package's shape: imports run one way, between modules and between layers.

Every import counts, at module level or inside a function, except those only read by type
checkers (``if TYPE_CHECKING:``). The layers, from the bottom: ``core`` (plugin host, specs,
names, binary layers) < ``optim`` and ``data`` < ``train`` < ``bench`` < ``tune`` < ``cli``.
A module may import its own layer and those below it, never one above.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "benchbnn"
LAYERS = {"core": 0, "optim": 1, "data": 1, "train": 2, "bench": 3, "tune": 4, "cli": 5}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Modules of benchbnn imported by ``tree``, TYPE_CHECKING blocks left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "benchbnn")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] == "benchbnn":
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """benchbnn module -> the benchbnn modules it imports (existing modules only)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _runtime_imports(tree, name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_the_package_is_imported_whole_by_this_test():
    graph = import_graph()
    assert {"benchbnn.core.plugins", "benchbnn.train.engine", "benchbnn.cli"} <= set(graph)
    assert "benchbnn.core.specs" in graph["benchbnn.core.plugins"]


def test_no_import_cycles_among_modules():
    graph = import_graph()
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_imports_run_down_the_layers(module):
    graph = import_graph()
    mine = _layer(module)
    if mine is None:  # the top-level package and __main__ sit above every layer
        return
    upward = sorted(d for d in graph[module] if (_layer(d) or -1) > mine)
    assert not upward, f"{module} (layer {mine}) imports a higher layer: {upward}"


def test_the_host_never_imports_a_built_in_plugin():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                assert not any(n.startswith("benchbnn_plugins") for n in names), path


def test_a_cycle_is_detected():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
