"""The shape of the code, checked for all later work: modules and functions stay small enough to read, no two
modules import each other (at any depth, deferred imports included), and each piece of shared maths is defined in
one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lookalike

PACKAGE = Path(lookalike.__file__).parent
MAX_MODULE_LINES = 600  # the fence; aim at 500
MAX_FUNCTION_LINES = 100  # from `def` to the last line, docstring included; aim at 80
SHARED_MATHS = ("similarity_to_distance", "distance_to_similarity")  # defined once, imported everywhere else


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("lookalike",) + path.relative_to(PACKAGE).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def imports_of(name: str, path: Path, is_package: bool, known: dict) -> set[str]:
    """The lookalike modules `name` imports anywhere in its file (a package's own submodules resolved)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_module_is_too_long():
    long = {name: n for name, (path, _) in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = []
    for name, (path, _) in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({length})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycles():
    known = modules()
    graph = {name: imports_of(name, path, is_package, known) for name, (path, is_package) in known.items()}
    assert not cycles(graph)


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", SHARED_MATHS)
def test_shared_maths_is_defined_once(name):
    places = {module for module, (path, _) in modules().items()
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.FunctionDef) and node.name == name}
    assert len(places) <= 1, f"{name} is defined in {sorted(places)}"


def _is_number(node, value: float) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and node.value == value


def test_the_distance_formula_is_written_once():
    """`2 - 2 * similarity` (the squared distance of unit vectors) appears only in `vector_math`."""
    places = set()
    for module, (path, _) in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _is_number(node.left, 2) \
                    and isinstance(node.right, ast.BinOp) and isinstance(node.right.op, ast.Mult) \
                    and _is_number(node.right.left, 2):
                places.add(module)
    assert places == {"lookalike.search.vector_math"}, sorted(places)  # found there, and nowhere else
