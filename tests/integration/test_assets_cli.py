"""`zsad eval` and `zsad detect` end to end on the real asset images (random weights: plumbing, not quality)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from metrics_check import assert_metrics_match
from PIL import Image
from typer.testing import CliRunner

from zsad.cli.main import app

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


def _run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_eval_magnetic_tile_masks_beside_images(assets_dir: Path, tmp_path: Path) -> None:
    root = assets_dir / "magnetic_tile"
    out = tmp_path / "mt"
    res = _run(
        "eval",
        "--dataset",
        "folder",
        "--root",
        str(root),
        "--normal-dir",
        "MT_Free/Imgs",
        "--abnormal-dir",
        "MT_Crack/Imgs",
        "--mask-dir",
        "MT_Crack/Imgs",
        "--image-glob",
        "*.jpg",
        "--class-name",
        "magnetic tile",
        "--batch-size",
        "64",
        "--overlays",
        "2",
        "--out",
        str(out),
        *TINY,
    )
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    n_free = len(list((root / "MT_Free" / "Imgs").glob("*.jpg")))  # 635 on disk (its README says 634)
    n_crack = len(list((root / "MT_Crack" / "Imgs").glob("*.jpg")))
    assert n_crack == 57 and n_free >= 634
    assert len(rows) == n_free + n_crack
    assert sum(r["gt_label"] == "1" for r in rows) == n_crack
    assert all(r["image_path"].endswith(".jpg") for r in rows)
    for r in rows:
        if r["gt_label"] == "1":
            assert Path(r["mask_path"]).stem == Path(r["image_path"]).stem
    (name, cat), *others = json.loads((out / "metrics.json").read_text())["categories"].items()
    assert not others and {"image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPRO_cflow"} <= set(cat)
    # each image and pixel metric equals scikit-learn's on predictions.csv, the saved maps and the crack masks
    # (squashed to the map size as the evaluation does); the AUPROs are finite
    assert_metrics_match(out, cat, name)
    assert len(list((out / "overlays").rglob("*.png"))) == 2


def test_eval_headct_image_labels_only(assets_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "headct"
    res = _run(
        "eval",
        "--dataset",
        "folder",
        "--root",
        str(assets_dir / "headct"),
        "--image-dir",
        "head_ct",
        "--labels-csv",
        "labels.csv",
        "--class-name",
        "head CT",
        "--batch-size",
        "64",
        "--overlays",
        "0",
        "--out",
        str(out),
        *TINY,
    )
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 200 and sum(r["gt_label"] == "1" for r in rows) == 100
    (name, cat), *others = json.loads((out / "metrics.json").read_text())["categories"].items()
    assert not others and "pixel_AUROC" not in cat  # no masks: no pixel metrics
    expected = assert_metrics_match(out, cat, name)  # image AUROC / AP / F1-max as scikit-learn computes them
    assert set(expected) == {"image_AUROC", "image_AP", "image_F1max"}


def test_detect_real_architecture_on_magnetic_tile(assets_dir: Path, tmp_path: Path) -> None:
    """The real ViT-B-16-plus-240 architecture (seeded random weights) on 2 grayscale, non-square images."""
    imgs = sorted((assets_dir / "magnetic_tile" / "MT_Blowhole" / "Imgs").glob("*.jpg"))[:2]
    out = tmp_path / "det"
    res = _run(
        "detect",
        *map(str, imgs),
        "--class-name",
        "magnetic tile",
        "--pretrained",
        "none",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    for r in _rows(out / "predictions.csv"):
        w, h = Image.open(r["image_path"]).size
        assert np.load(out / r["anomaly_map_path"]).shape == (h, w)
        assert Image.open(out / r["overlay_path"]).mode == "RGB"
