"""The data layer on real files: Magnetic Tile (masks beside grayscale JPGs) and HeadCT (labels CSV, RGB/RGBA).

Pairing is checked for every file by path; pixels are loaded for a subset to stay fast.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad.data import Folder, load_image, load_mask, load_meta_json, save_meta_json

ASSETS = Path(os.environ.get("ZSAD_ASSETS", Path(__file__).resolve().parents[2].parent / "shared" / "assets"))
if not ASSETS.is_dir():
    pytest.skip(f"ZSAD_ASSETS={ASSETS} not found: real-image tests need ../shared/assets", allow_module_level=True)

pytestmark = pytest.mark.assets

MT = ASSETS / "magnetic_tile"
# Counts on disk. The assets README says 634 for MT_Free, but the folder holds 635 image/mask pairs.
MT_COUNTS = {"MT_Free": 635, "MT_Blowhole": 115, "MT_Break": 85, "MT_Crack": 57}


def _every(items: list, n: int) -> list:
    """``n`` items spread over the list (first and last included), so a subset still covers its range."""
    idx = np.unique(np.linspace(0, len(items) - 1, num=min(n, len(items))).round().astype(int))
    return [items[i] for i in idx]


@pytest.mark.parametrize("cls", sorted(MT_COUNTS))
def test_magnetic_tile_every_image_has_its_own_mask(cls: str) -> None:
    folder = f"{cls}/Imgs"
    kind = {"normal_dir": folder} if cls == "MT_Free" else {"abnormal_dir": folder}
    ds = Folder(MT, mask_dir=folder, image_glob="*.jpg", category=cls, **kind)
    assert len(ds) == MT_COUNTS[cls]
    for s in ds.samples:
        assert s.image_path.suffix == ".jpg" and s.mask_path is not None and s.mask_path.suffix == ".png"
        assert s.mask_path.parent == s.image_path.parent and s.mask_path.stem == s.image_path.stem
        assert s.label == (0 if cls == "MT_Free" else 1)
        with Image.open(s.image_path) as im, Image.open(s.mask_path) as mk:  # headers only: cheap
            assert im.size == mk.size, s.mask_path
    if cls != "MT_Free":  # every defect mask has defect pixels (masks are small: read them all)
        assert all(np.asarray(load_mask(s.mask_path)).any() for s in ds.samples if s.mask_path is not None)
    for i in _every(list(range(len(ds))), 6):
        item = ds[i]
        assert item["image"].shape == (3, 240, 240) and item["gt_mask"].shape == (240, 240) and item["has_mask"]
        h, w = item["original_size"]
        with Image.open(item["image_path"]) as im:
            assert im.size == (w, h) and h != w
        positives = float(item["gt_mask"].sum())
        assert positives == 0 if cls == "MT_Free" else positives > 0, item["mask_path"]


def test_magnetic_tile_normal_vs_crack_as_in_the_readme() -> None:
    """Normal folder without masks of its own in mask_dir: normal masks are known empty, cracks are paired."""
    ds = Folder(
        MT, normal_dir="MT_Free/Imgs", abnormal_dir="MT_Crack/Imgs", mask_dir="MT_Crack/Imgs", image_glob="*.jpg"
    )
    labels = [s.label for s in ds.samples]
    assert labels.count(0) == MT_COUNTS["MT_Free"] and labels.count(1) == MT_COUNTS["MT_Crack"]
    assert all(s.mask_path is None for s in ds.samples if s.label == 0)
    assert all(s.mask_path is not None and s.mask_path.stem == s.image_path.stem for s in ds.samples if s.label == 1)
    first_normal, first_crack = 0, labels.index(1)
    assert ds[first_normal]["has_mask"] and ds[first_normal]["gt_mask"].sum() == 0
    assert ds[first_crack]["gt_mask"].sum() > 0


def test_magnetic_tile_grayscale_jpgs_load_as_rgb() -> None:
    path = sorted((MT / "MT_Blowhole" / "Imgs").glob("*.jpg"))[0]
    with Image.open(path) as im:
        assert im.mode == "L"
        gray = np.asarray(im)
    rgb = np.asarray(load_image(path))
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[..., 0] == gray).all()


def test_magnetic_tile_meta_json_round_trip(tmp_path: Path) -> None:
    ds = Folder(MT, abnormal_dir="MT_Crack/Imgs", mask_dir="MT_Crack/Imgs", image_glob="*.jpg", category="tile")
    save_meta_json({"test": ds.samples}, tmp_path / "meta.json", MT)
    assert load_meta_json(tmp_path / "meta.json", root=MT) == {"tile": ds.samples}


def test_headct_labels_csv() -> None:
    root = ASSETS / "headct"
    ds = Folder(root, image_dir="head_ct", labels_csv="labels.csv", category="headct")
    assert len(ds) == 200
    with (root / "labels.csv").open() as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    assert rows[0] == ["id", "hemorrhage"]
    truth = {int(i): int(v) for i, v in rows[1:]}
    assert {int(s.image_path.stem): s.label for s in ds.samples} == truth
    assert sum(s.label == 1 for s in ds.samples) == 100 and sum(s.label == 0 for s in ds.samples) == 100
    picked = _every(list(range(len(ds))), 8) + [188, 199]  # 188..199 are stored as RGBA
    sizes = set()
    for i in picked:
        item = ds[i]
        assert item["image"].shape == (3, 240, 240) and not item["has_mask"] and item["gt_label"] in (0, 1)
        sizes.add(item["original_size"])
        assert load_image(item["image_path"]).mode == "RGB"
    assert len(sizes) > 3  # varying sizes
