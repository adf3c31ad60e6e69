"""Every real asset image is paired with its own mask/label and loads at the right size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zsad.data import Folder


def test_magnetic_tile_pairing(assets_dir: Path) -> None:
    root = assets_dir / "magnetic_tile"
    for defect in ("MT_Blowhole", "MT_Break", "MT_Crack"):
        ds = Folder(
            root,
            normal_dir="MT_Free/Imgs",
            abnormal_dir=f"{defect}/Imgs",
            mask_dir=f"{defect}/Imgs",
            image_glob="*.jpg",
            image_size=240,
        )
        anomalous = [s for s in ds.samples if s.label == 1]
        assert len(anomalous) == len(list((root / defect / "Imgs").glob("*.jpg")))
        for s in ds.samples:
            assert s.image_path.suffix == ".jpg"
            if s.label == 1:
                assert s.mask_path is not None and s.mask_path.stem == s.image_path.stem
                assert Image.open(s.mask_path).size == Image.open(s.image_path).size
        for i in [0, len(ds) - 1, len(ds) // 2]:  # load a few fully
            item = ds[i]
            assert item["image"].shape == (3, 240, 240) and item["gt_mask"].shape == (240, 240)
            assert set(np.unique(item["gt_mask"].numpy())) <= {0.0, 1.0}
        item = ds[len(ds) - 1]  # an anomalous one (sorted after the normals)
        assert item["gt_label"] == 1 and item["gt_mask"].sum() > 0
        assert Image.open(ds.samples[-1].image_path).mode == "L"  # grayscale on disk, RGB after loading


def test_headct_labels(assets_dir: Path) -> None:
    ds = Folder(assets_dir / "headct", image_dir="head_ct", labels_csv="labels.csv", image_size=240)
    assert len(ds) == 200 and sum(s.label == 1 for s in ds.samples) == 100
    assert {s.label for s in ds.samples} == {0, 1}
    sizes = {Image.open(s.image_path).size for s in ds.samples[:40]}
    assert len(sizes) > 1  # varying sizes, all squashed to 240
    assert ds[0]["image"].shape == (3, 240, 240) and not ds[0]["has_mask"]
