"""Training and search meet only in the shared modules (models/, datasets, onnx_runtime): neither package
imports the other, so each can change without breaking the other."""

import ast
from pathlib import Path

import pytest

import lookalike

PACKAGE = Path(lookalike.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the lookalike modules `path` imports, at any depth of the file."""
    parts = ("lookalike",) + path.relative_to(PACKAGE).with_suffix("").parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = parts[:len(parts) - node.level] if node.level else ()
            module = ".".join(base + tuple((node.module or "").split(".")) if node.module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package, forbidden", [("train", "lookalike.search"), ("search", "lookalike.train")])
def test_train_and_search_do_not_import_each_other(package, forbidden):
    offending = sorted(f"{path.relative_to(PACKAGE)} imports {name}"
                       for path in (PACKAGE / package).rglob("*.py") for name in imported_modules(path)
                       if name == forbidden or name.startswith(forbidden + "."))
    assert offending == []


def test_relative_imports_resolve_to_absolute_names():
    names = imported_modules(PACKAGE / "train" / "checkpoint.py")
    assert "lookalike.models.from_checkpoint" in names and "lookalike.atomic" in names
