"""The shape of the package: layers that import only those below them, short functions,
a small top level, and no private name used outside its module."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "ndm"
#: Each sub-package, lowest first: a package may import only itself and those before it.
LAYERS = (
    ("data", "nets"),
    ("diffusion",),
    ("sampling",),
    ("losses",),
    ("models",),
    ("analysis",),
    ("plots",),
    ("runs",),
    ("evaluation",),
)
MODULES = sorted(PACKAGE.rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    """The ``ndm`` sub-packages a module imports from."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("ndm.") and n.count(".") >= 1}
    return found


@pytest.mark.parametrize("rank", range(len(LAYERS)))
def test_each_layer_imports_only_the_layers_below_it(rank):
    allowed = {name for layer in LAYERS[: rank + 1] for name in layer}
    for package in LAYERS[rank]:
        for path in (PACKAGE / package).rglob("*.py"):
            above = _imported_packages(path) - allowed
            assert not above, f"{path.relative_to(PACKAGE)} imports from {sorted(above)}"


def test_every_module_belongs_to_a_package_and_the_top_level_is_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == {name for layer in LAYERS for name in layer}


def test_no_library_function_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{path.relative_to(PACKAGE)}: {node.module}.{alias.name}"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ndm")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert not private
