"""The layering of docs/architecture.md, checked on the source: each layer imports only from the layers below it.

Every import counts, including the ones inside functions (a lazy import is still a dependency), and
``from zsad import X`` counts as an import of the module X really comes from: a submodule (``zsad.runs``), or the
module the package face takes the name from (its ``_LAZY`` table or its own imports, e.g. ``__version__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "zsad"
BOTTOM = {
    "types", "errors", "fileio", "progress", "sysinfo", "ops", "thresholds", "synth", "bank", "mutual",
    "backbone", "prompts", "data", "metrics", "viz", "train", "outputs", "limits", "_version", "store", "feedback",
    "tiling",
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
# Modules whose layer differs from their package's: the runtime's detect run is a front end (it ends its runs with
# zsad.runs' decision and folder stages), while the exported model itself stays bottom and torch-free.
MODULE_LAYER = {"runtime/detect.py": 3}
FRONT_END = 3  # front ends use zsad.runs only through its public face (``zsad.runs``), never its modules


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        out.append((rel.parts[0] if len(rel.parts) > 1 or rel.parts[0] != "__init__" else "", path))
    return out


def _face_names() -> dict[str, str]:
    """Where each name the package face (``zsad/__init__.py``) offers comes from: its ``_LAZY`` table and imports."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("zsad."):
            names.update({a.asname or a.name: node.module for a in node.names})
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            names.update(ast.literal_eval(node.value))
    return names


def _resolve(name: str) -> str:
    """``zsad.X`` for ``from zsad import X``: the submodule X, else the module the face takes X from."""
    if (SRC / f"{name}.py").is_file() or (SRC / name / "__init__.py").is_file():
        return f"zsad.{name}"
    face = _face_names()
    assert name in face, f"from zsad import {name}: the package face offers no such name"
    return face[name]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "zsad":
                names |= {_resolve(a.name) for a in node.names}
            else:
                names.add(node.module)
    return names


def test_from_zsad_import_resolves_to_the_real_module() -> None:
    """The resolution the layer check relies on: submodules, lazy names and the face's own imports."""
    assert _resolve("runs") == "zsad.runs"
    assert _resolve("limits") == "zsad.limits"
    assert _resolve("ClipBackbone") == "zsad.backbone"
    assert _resolve("import_checkpoint") == "zsad.runs"
    assert _resolve("__version__") == "zsad._version"
    with pytest.raises(AssertionError, match="no such name"):
        _resolve("not_a_name")


def test_a_from_zsad_import_from_above_is_caught(tmp_path: Path) -> None:
    """A bottom module taking ``runs`` (or a lazily exported name of it) through the face is a violation."""
    bad = tmp_path / "bad.py"
    bad.write_text("from zsad import runs, import_checkpoint, __version__\n")
    assert _imports(bad) == {"zsad.runs", "zsad._version"}
    layers = {LAYER[n.split(".")[1]] for n in _imports(bad)}
    assert max(layers) > LAYER["sysinfo"]


@pytest.mark.parametrize(("part", "path"), _modules(), ids=lambda v: str(v))
def test_imports_follow_the_layers(part: str, path: Path) -> None:
    if part == "":  # zsad/__init__.py: the public API re-exports from every layer
        return
    assert part in LAYER, f"{path.relative_to(SRC)}: a new top-level module; give it a layer here and in the docs"
    rel = path.relative_to(SRC).as_posix()
    layer = MODULE_LAYER.get(rel, LAYER[part])
    for name in _imports(path):
        top = name.split(".")[0]
        if top in TERMINAL:
            assert part == "cli", f"{path.relative_to(SRC)} imports {name}: terminal output belongs to zsad.cli"
        if top == "zsad" and name.count(".") >= 1:
            other = name.split(".")[1]
            assert LAYER.get(other, 0) <= layer, f"{path.relative_to(SRC)} (layer {part}) imports {name} from above"
            if layer == FRONT_END and other == "runs":
                assert name == "zsad.runs", f"{rel} imports {name}: a front end uses zsad.runs' public face only"


def test_the_runs_face_names_exist() -> None:
    """Every name ``zsad.runs`` offers resolves, and ``__all__`` lists exactly those names."""
    from zsad import runs

    assert set(runs.__all__) == set(runs._WHERE)
    for name in runs.__all__:
        assert getattr(runs, name) is not None, name
    assert callable(runs.detect) and callable(runs.train) and callable(runs.evaluate)  # not their modules
