"""The package's import graph: no cycles between modules, and the library never imports a command-line module.

Imports are read with ``ast`` from the source, wherever they sit: module level, inside functions (late
imports hide a cycle from Python, not from a reader) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import tsembed

PACKAGE_ROOT = Path(tsembed.__file__).resolve().parent


def module_files(root: Path = PACKAGE_ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imported_modules(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file.

    ``from a import b`` imports the module ``a.b`` where there is one, else names of the module ``a``;
    relative imports are resolved against the importing module's package.
    """
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return (found & known) - {name}


@cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (read once per session; do not modify)."""
    modules = module_files()
    known = set(modules)
    return {name: imported_modules(name, path, is_package, known) for name, (path, is_package) in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between the package's top-level parts (``tsembed.moe``, ``tsembed.model``, ...)."""

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(top(module), set()).update(top(t) for t in targets if top(t) != top(module))
    return packages


def is_cli(module: str) -> bool:
    """A command-line module: a ``cli`` module, or ``python -m tsembed``'s entry point."""
    return module.rpartition(".")[2] in ("cli", "__main__")


def test_the_graph_is_read():
    """Guards the two checks below against passing on an empty graph."""
    graph = import_graph()
    assert {"tsembed.model", "tsembed.moe.layer", "tsembed.training.trainer"} <= set(graph)
    assert "tsembed.moe.routers" in graph["tsembed.moe.layer"]  # module-level import
    assert "tsembed.backbones.pooling" in graph["tsembed.model"]  # inside a function
    assert sum(len(targets) for targets in graph.values()) > 200
    assert {"tsembed.backbones", "tsembed.moe"} <= package_graph(graph)["tsembed.model"]


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set(), "f": {"g"}, "g": {"f"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c"], ["f", "g"]]


def test_no_import_cycles_between_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "modules that import each other (directly or around a loop): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_import_cycles_between_packages():
    cycles = find_cycles(package_graph(import_graph()))
    assert not cycles, "packages that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_library_module_imports_a_command_line_module():
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if not is_cli(module)
        for target in targets
        if is_cli(target)
    )
    assert not offenders, "the library must not depend on the command line: " + "; ".join(offenders)
