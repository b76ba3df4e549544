"""The layering the design asks for, read from the source: the engine does not reach up into the
spec loader or the paper's figures (they hang on the after_sweep hook), and models do not reach into
data sources (both share specreach.datainfo)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "specreach"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package, forbidden", [("engine", ("specreach.paper", "specreach.config", "specreach.cli")),
                                                ("models", ("specreach.data", "specreach.engine"))])
def test_a_package_does_not_import_the_layers_above_it(package, forbidden):
    offending = {f"{path.relative_to(PACKAGE)}: {module}" for path in (PACKAGE / package).rglob("*.py")
                 for module in imported_modules(path) if module.split(".")[:2] in [f.split(".") for f in forbidden]}
    assert not offending
