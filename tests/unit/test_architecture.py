"""The layering of docs/architecture.md, checked on the source: each layer imports only from the layers below it.

Every import counts, including the ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "zsad"
BOTTOM = {
    "types", "errors", "fileio", "progress", "sysinfo", "ops", "thresholds", "synth", "bank", "mutual",
    "backbone", "prompts", "data", "metrics", "viz", "train", "outputs",
}  # fmt: skip
LAYER = {
    **dict.fromkeys(BOTTOM, 0),
    "client": 0,
    "runtime": 0,
    "methods": 1,
    "runs": 2,
    "export": 2,
    "serve": 3,
    "engines": 3,
    "cli": 3,
    "__main__": 3,
}
TERMINAL = {"rich", "typer", "click"}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        out.append((rel.parts[0] if len(rel.parts) > 1 or rel.parts[0] != "__init__" else "", path))
    return out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("part", "path"), _modules(), ids=lambda v: str(v))
def test_imports_follow_the_layers(part: str, path: Path) -> None:
    if part == "":  # zsad/__init__.py: the public API re-exports from every layer
        return
    assert part in LAYER, f"{path.relative_to(SRC)}: a new top-level module; give it a layer here and in the docs"
    layer = LAYER[part]
    for name in _imports(path):
        top = name.split(".")[0]
        if top in TERMINAL:
            assert part == "cli", f"{path.relative_to(SRC)} imports {name}: terminal output belongs to zsad.cli"
        if top == "zsad" and name.count(".") >= 1:
            other = name.split(".")[1]
            assert LAYER.get(other, 0) <= layer, f"{path.relative_to(SRC)} (layer {part}) imports {name} from above"
