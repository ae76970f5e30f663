"""The package's layers are real: every module imports (at the top or inside a function) only its own layer or lower."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "SR4ZCT" / "SR4ZCTLib"
LAYERS = [  # lowest first; the README's layout lists them in this order
    {"errors", "options", "progress"},
    {"core"},
    {"io"},
    {"metrics", "model"},
    {"enhance", "report"},
    {"batch", "sample"},
    {"cli", "mrml"},
]


def layer_of(part: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if part in names)


def imported_parts(path: Path) -> set[str]:
    """The first package part of every SR4ZCTLib module this file imports (relative imports resolved)."""
    module = path.relative_to(LIBRARY).with_suffix("").parts
    package = module[:-1]
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = list(base) + (node.module.split(".") if node.module else [])
            if target:
                parts.add(target[0])
            else:  # `from .. import name`: the package root re-exports its version and errors only
                assert {alias.name for alias in node.names} <= {"__version__"}, f"{path}: {ast.dump(node)}"
    return parts


def test_every_module_imports_only_its_layer_or_lower():
    modules = [p for p in LIBRARY.rglob("*.py") if p.name != "__init__.py" or p.parent != LIBRARY]
    assert len(modules) > 30
    for path in modules:
        own = layer_of(path.relative_to(LIBRARY).parts[0].removesuffix(".py"))
        for part in imported_parts(path):
            assert layer_of(part) <= own, f"{path.relative_to(LIBRARY)} (layer {own}) imports {part} (layer {layer_of(part)})"


def test_the_package_root_holds_at_most_twelve_modules_and_every_one_has_a_layer():
    root = sorted(p.stem for p in LIBRARY.glob("*.py") if p.name != "__init__.py")
    folders = sorted(p.name for p in LIBRARY.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert len(root) + 1 <= 12, root
    for name in root + folders:
        layer_of(name)
