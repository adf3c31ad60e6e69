"""The public ``zsad.runs`` API takes what a user types: a backbone by name (or dict), paths as str or Path, and a
wrong type is refused naming the argument and the type it expects (not an AttributeError from deep inside).

``BackboneSpec.of`` and ``MethodSpec``'s constructor do the coercion; evaluate, benchmark, read_predictions and
load_map apply it at their top. A backbone named by a str runs on a local weights file (``ZSAD_WEIGHTS``): the
tiny model's seeded weights, so nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from outputs_check import TINY, cli, write_image

from zsad import runs
from zsad.errors import ZsadInputError
from zsad.runs import BackboneSpec, DatasetSpec, MethodSpec
from zsad.runs.benchmark import benchmark


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Any) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    return path


@pytest.fixture
def by_name(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backbone given by name only takes its weights from ZSAD_WEIGHTS (no download in a test)."""
    monkeypatch.setenv("ZSAD_WEIGHTS", str(weights))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DatasetSpec:
    root = tmp_path_factory.mktemp("data")
    for i in range(2):
        write_image(root / "good" / f"g{i}.png", i)
        write_image(root / "bad" / f"b{i}.png", 10 + i)
    return DatasetSpec("folder", root, normal_dir="good", abnormal_dir="bad")


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished detect folder (made by the CLI) to read back."""
    tmp = tmp_path_factory.mktemp("detect")
    image = write_image(tmp / "imgs" / "part.png", 3)
    out = tmp / "out"
    assert cli("detect", image, "--out", out, *TINY).exit_code == 0
    return out


# ------------------------------------------------------------------------------------------- the coercion
def test_backbone_of_takes_what_a_user_types(tmp_path: Path) -> None:
    spec = BackboneSpec("ViT-B-16", seed=3)
    assert BackboneSpec.of(spec) is spec
    assert BackboneSpec.of(None, seed=3) == BackboneSpec(seed=3)
    assert BackboneSpec.of("ViT-B-16", seed=3) == spec
    assert BackboneSpec.of(tmp_path / "model.json") == BackboneSpec(model_name=str(tmp_path / "model.json"))
    got = BackboneSpec.of({"model_name": "zsad-tiny", "weights": "w.pt", "image_size": 96}, seed=2)
    assert got == BackboneSpec("zsad-tiny", None, Path("w.pt"), 96, None, 2)
    with pytest.raises(ZsadInputError, match=r"^backbone: unknown field\(s\) 'model', 'size'; use model_name, "):
        BackboneSpec.of({"model": "ViT-B-16", "size": 224})
    with pytest.raises(TypeError, match=r"^backbone: expected a BackboneSpec, a model name \(str\), .* not int$"):
        BackboneSpec.of(16)


def test_method_spec_constructor_takes_names_dicts_and_str_paths() -> None:
    spec = MethodSpec("winclip", "zsad-tiny", None, "ckpt")  # type: ignore[arg-type]
    assert spec.backbone == BackboneSpec(model_name="zsad-tiny")
    assert spec.options == {} and spec.checkpoint == Path("ckpt")
    assert MethodSpec.of("winclip", backbone={"model_name": "zsad-tiny"}).backbone.model_name == "zsad-tiny"
    assert MethodSpec.of(spec) is spec
    checked = MethodSpec("winclip", {"model_name": "zsad-tiny", "pretrained": "none", "image_size": 96}).validate()  # type: ignore[arg-type]
    assert checked.backbone.image_size == 96 and checked.backbone.random_init


# ------------------------------------------------------------------------------------------- str backbones
def test_evaluate_with_a_backbone_named_by_a_str(
    data: DatasetSpec, tmp_path: Path, weights: Path, by_name: None
) -> None:
    out = tmp_path / "eval"
    got = runs.evaluate(data, str(out), methods="winclip", backbone="zsad-tiny", batch_size=2, overlays=0)
    assert list(got) == ["winclip"]
    assert len(got["winclip"].per_category) == 1 and 0.0 <= got["winclip"].mean["image_AUROC"] <= 1.0
    assert len(runs.read_predictions(out)) == 4
    backbone = json.loads((out / "manifest.json").read_text())["backbone"]
    assert backbone["model_name"] == "zsad-tiny" and backbone["weights"]["size"] == weights.stat().st_size


def test_benchmark_with_a_backbone_named_by_a_str(tmp_path: Path, by_name: None) -> None:
    """No dataset of the suite under the root: nothing is evaluated, but every spec was built from the name."""
    (tmp_path / "root").mkdir()
    got = benchmark(
        "industrial", str(tmp_path / "root"), str(tmp_path / "out"), methods="winclip", datasets="mvtec",
        backbone="zsad-tiny",
    )  # fmt: skip
    assert got.found == {} and got.missing == ["mvtec"]  # one name, not its letters
    assert got.producers["winclip"]["backbone"]["model_name"] == "zsad-tiny"
    assert (tmp_path / "out" / "table.md").is_file()


@pytest.mark.parametrize("kind", [str, Path])
def test_read_back_with_str_or_path(detected: Path, kind: Callable[[Any], Any]) -> None:
    rows = runs.read_predictions(kind(detected))
    assert len(rows) == 1
    by_row = runs.load_map(kind(detected), rows[0])
    by_path = runs.load_map(kind(detected), kind(rows[0]["image_path"]))
    assert by_row.dtype == np.float32 and by_row.ndim == 2
    assert np.array_equal(by_row, by_path)


# ------------------------------------------------------------------------------------------- wrong types
def _evaluate(data: DatasetSpec, tmp: Path, **kw: Any) -> Any:
    args = {"data": data, "out": tmp / "o", **kw}
    return runs.evaluate(args.pop("data"), args.pop("out"), **args)


def _benchmark(tmp: Path, **kw: Any) -> Any:
    args = {"suite": "industrial", "data_root": tmp, "out": tmp / "o", "datasets": ["mvtec"], **kw}
    return benchmark(args.pop("suite"), args.pop("data_root"), args.pop("out"), **args)


WRONG: list[tuple[str, Callable[[DatasetSpec, Path, Path], Any], str]] = [
    ("evaluate out", lambda d, t, o: _evaluate(d, t, out=5), r"^out: expected a path \(str or pathlib.Path\), not int"),
    ("evaluate data", lambda d, t, o: _evaluate("mvtec", t), r"^data: expected a DatasetSpec, not str"),  # type: ignore[arg-type]
    ("evaluate backbone", lambda d, t, o: _evaluate(d, t, backbone=5), r"^backbone: expected a BackboneSpec, "),
    ("evaluate methods", lambda d, t, o: _evaluate(d, t, methods=[5]), r"^methods\[0\]: expected a method name "),
    ("evaluate batch", lambda d, t, o: _evaluate(d, t, batch_size=2.0), r"^batch_size: expected an int, not float"),
    ("evaluate ckpt", lambda d, t, o: _evaluate(d, t, checkpoints=[3]), r"^checkpoints\[0\]: expected a path "),
    ("evaluate options", lambda d, t, o: _evaluate(d, t, options=["x"]), r"^options: expected a dict, not list"),
    ("benchmark out", lambda d, t, o: _benchmark(t, out=5), r"^out: expected a path"),
    ("benchmark root", lambda d, t, o: _benchmark(t, data_root=None), r"^data_root: expected a path .* NoneType"),
    ("benchmark suite", lambda d, t, o: _benchmark(t, suite=5), r"^suite: expected a suite name \(str\), not int"),
    ("benchmark backbone", lambda d, t, o: _benchmark(t, backbone=2.5), r"^backbone: expected a BackboneSpec, "),
    ("benchmark methods", lambda d, t, o: _benchmark(t, methods=[None]), r"^methods\[0\]: expected a method name"),
    ("read_predictions out", lambda d, t, o: runs.read_predictions(5), r"^out: expected a path"),  # type: ignore[arg-type]
    ("load_map out", lambda d, t, o: runs.load_map(5, "x"), r"^out: expected a path"),  # type: ignore[arg-type]
    ("load_map row", lambda d, t, o: runs.load_map(o, 5), r"^row: expected a row of read_predictions \(dict\)"),  # type: ignore[arg-type]
    ("MethodSpec name", lambda d, t, o: MethodSpec(5, BackboneSpec()), r"^method: expected a method name \(str\)"),  # type: ignore[arg-type]
    ("MethodSpec backbone", lambda d, t, o: MethodSpec("winclip", 5), r"^backbone: expected a BackboneSpec, "),  # type: ignore[arg-type]
    ("MethodSpec ckpt", lambda d, t, o: MethodSpec("winclip", checkpoint=5), r"^checkpoint: expected a path"),  # type: ignore[arg-type]
    ("MethodSpec.of", lambda d, t, o: MethodSpec.of(None), r"^method: expected a method name \(str\) or a MethodSpec"),
]


@pytest.mark.parametrize(("case", "call", "message"), WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_type_is_named_with_what_was_expected(
    data: DatasetSpec, detected: Path, tmp_path: Path, case: str, call: Callable[..., Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        call(data, tmp_path, detected)
    assert not (tmp_path / "o").exists()  # refused before anything was written
