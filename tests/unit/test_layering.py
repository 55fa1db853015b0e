"""A module imports only from lower layers; siblings in a layer do not import each other."""
from __future__ import annotations

import ast
from pathlib import Path

import crossfuse

ROOT = Path(crossfuse.__file__).parent
LAYERS = {
    "errors": 0, "types": 0, "progress": 0, "threads": 0, "atomic": 0.5, "registry": 0.5, "encryption": 0.75,  # L0; these two report through errors
    "config": 1,
    "layers": 2,
    "encoders": 3, "fusion": 3, "heads": 3, "metrics": 3, "data": 3, "cache": 3, "index": 3,
    "models": 4,
    "engine": 5,
    "estimator": 6, "compare": 6, "demo": 6.5,  # the demo is a comparison on bundled data
    "serve": 7, "cli": 7.5, "__main__": 8,  # only the CLI's serve command reaches serve/
}


def unit_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def imported_units(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "crossfuse" \
                else [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "crossfuse" and len(parts) > 1 and parts[1] in LAYERS:
                yield parts[1], node.lineno


def test_every_module_belongs_to_a_layer():
    units = {unit_of(p) for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT}
    assert units - {"resources"} <= set(LAYERS), units - set(LAYERS)


def test_imports_only_go_down():
    bad = []
    for path in ROOT.rglob("*.py"):
        if path.parent == ROOT and path.name == "__init__.py":
            continue  # the public API re-exports (lazily for the upper layers)
        unit = unit_of(path)
        for target, line in imported_units(path):
            if target != unit and LAYERS[target] >= LAYERS[unit]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({unit}, L{LAYERS[unit]}) imports {target} "
                           f"(L{LAYERS[target]})")
    assert not bad, "\n".join(bad)
