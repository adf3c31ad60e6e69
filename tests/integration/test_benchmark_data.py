"""Named benchmarks on real files: MPDD (asset images in MPDD's published layout), HeadCT and ELPV as published.

Random weights (tiny model): these prove loading, labels, masks and metrics end to end, never detection quality.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from metrics_check import assert_metrics_match
from typer.testing import CliRunner

from zsad.cli.main import app
from zsad.data.benchmarks import read_benchmark

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


def _run(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def mpdd_tree(assets: Path, root: Path) -> Path:
    """The asset's flattened good/defect/masks as MPDD publishes them: metal_plate/{train,test}, ground_truth."""
    src = assets / "mpdd_metal_plate"
    good = sorted((src / "good").glob("*.png"))
    base = root / "metal_plate"
    for folder, files in (("train/good", good[:20]), ("test/good", good[20:]), ("test/defect", None)):
        (base / folder).mkdir(parents=True, exist_ok=True)
        for f in files if files is not None else sorted((src / "defect").glob("*.png")):
            (base / folder / f.name).symlink_to(f)
    (base / "ground_truth" / "defect").mkdir(parents=True)
    for m in sorted((src / "masks").glob("*.png")):
        (base / "ground_truth" / "defect" / f"{m.stem}_mask.png").symlink_to(m)
    return root


def test_mpdd_real_files_eval(assets_dir: Path, tmp_path: Path) -> None:
    root = mpdd_tree(assets_dir, tmp_path / "MPDD")
    lay = read_benchmark("mpdd", root)
    rows = lay.test["metal_plate"]
    assert len(rows) == 60 + 81 and sum(s.label for s in rows) == 81 and len(lay.references["metal_plate"]) == 20
    for s in rows:  # every defect paired with its own mask by name
        assert (s.mask_path is None) == (s.label == 0)
        if s.mask_path is not None:
            assert s.mask_path.name == f"{s.image_path.stem}_mask.png"
    out = tmp_path / "out"
    res = _run("eval", "--dataset", "mpdd", "--root", str(root), "--method", "sdp", "--k-shot", "0",
               "--batch-size", "64", "--overlays", "0", "--out", str(out), *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(_rows(out / "predictions.csv")) == 141
    (name, cat), *others = json.loads((out / "metrics.json").read_text())["categories"].items()
    assert name == "metal_plate" and not others and {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(cat)
    assert_metrics_match(out, cat, name)  # image and pixel metrics equal scikit-learn's on the written rows and maps


def test_headct_as_published(assets_dir: Path) -> None:
    lay = read_benchmark("headct", assets_dir / "headct")
    rows = lay.test["brain"]
    with (assets_dir / "headct" / "labels.csv").open() as f:
        want = {int(r[0]): int(r[1]) for i, r in enumerate(csv.reader(f)) if i}
    assert len(rows) == len(want) == 200
    assert {int(s.image_path.stem): s.label for s in rows} == want and all(s.mask_path is None for s in rows)


def test_elpv_eval_without_root(tmp_path: Path) -> None:
    pytest.importorskip("elpv_dataset", reason="pip install 'zsad[datasets]' (elpv-dataset ships the images)")
    out = tmp_path / "elpv"
    res = _run("eval", "--dataset", "elpv", "--category", "mono", "--method", "sdp", "--batch-size", "128",
               "--overlays", "0", "--out", str(out), *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 1074 and sum(r["gt_label"] == "1" for r in rows) == 369
    (name, cat), *others = json.loads((out / "metrics.json").read_text())["categories"].items()
    assert name == "mono" and not others and "pixel_AUROC" not in cat  # image labels only: no pixel metrics
    assert set(assert_metrics_match(out, cat, name)) == {"image_AUROC", "image_AP", "image_F1max"}


def test_eval_names_the_problem(tmp_path: Path) -> None:
    res = _run("eval", "--dataset", "mpdd", "--out", str(tmp_path / "o"), *TINY)
    assert res.exit_code == 2 and "--dataset mpdd: --root is required" in res.output
    (tmp_path / "empty").mkdir()
    res = _run("eval", "--dataset", "br35h", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *TINY)
    assert res.exit_code == 2 and "not a Br35H root (expected yes/ and no/)" in res.output
