"""The layout's rules, read from the source: no import cycles, and the process boundary.

Every `import` statement counts, wherever it sits (module level, inside a function, under
`if TYPE_CHECKING:`): a cycle hidden in a function or a type-only import is still two
modules that cannot be understood, tested or moved one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs", "engine")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))}


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every module name an import statement in `path` mentions (`from a import b` yields
    both `a` and `a.b`: b may be a module)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def internal_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name resolves to the longest known
    module it starts with; importing `a.b` also imports its package `a`, which is not an
    edge we count, since a package's `__init__` importing its children is normal)."""
    modules = source_modules()
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for name in imported_names(path, module):
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            target = ".".join(parts)
            if target and target != module:
                targets.add(target)
        edges[module] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_bot_cogs_or_engine_is_part_of_an_import_cycle() -> None:
    assert cycles(internal_edges()) == []


#: The engine's modules that run its side of the process boundary (torch, the worker).
ENGINE_SIDE = ("models", "generate", "cutouts", "masking", "worker", "batching", "compiling",
               "generator_runner")


@pytest.mark.parametrize("package", ["bot", "cogs"])
def test_the_bot_side_never_imports_torch_or_the_model_code(package: str) -> None:
    forbidden = ("torch", "torchvision", "kornia", "clip", "taming")
    modules = source_modules()
    offenders = [
        f"{module} imports {name}"
        for module, path in modules.items() if module.split(".")[0] == package
        for name in imported_names(path, module)
        if name.split(".")[0] in forbidden
        or (name.startswith("engine.") and name.split(".")[1] in ENGINE_SIDE)
    ]
    assert offenders == []


def test_the_engine_never_imports_discord() -> None:
    modules = source_modules()
    offenders = [
        f"{module} imports {name}"
        for module, path in modules.items() if module.startswith("engine")
        for name in imported_names(path, module) if name.split(".")[0] in ("discord", "bot", "cogs")
    ]
    assert offenders == []
