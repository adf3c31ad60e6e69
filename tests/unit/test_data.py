"""Data layer on hand-made files: conversions, squash, mask binarisation, dataset layouts, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from zsad.data import (
    Folder,
    ImageList,
    MVTecAD,
    Visa,
    load_image,
    load_mask,
    load_meta_json,
    save_meta_json,
    squash_image,
    squash_mask,
)
from zsad.errors import ZsadInputError


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def test_sixteen_bit_is_scaled_not_clipped(tmp_path) -> None:
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    out = np.asarray(load_image(p))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 128, 255]


def test_palette_rgba_gray_conversions(tmp_path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png"))[0, 1].tolist() == [255, 0, 0]
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    _save(tmp_path / "rgba.png", rgba, "RGBA")
    out = np.asarray(load_image(tmp_path / "rgba.png"))
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 1].tolist() == [0, 0, 0]  # alpha over black
    assert abs(int(out[0, 2, 0]) - 100) <= 1
    _save(tmp_path / "g.png", np.array([[7, 9]], dtype=np.uint8), "L")
    assert np.asarray(load_image(tmp_path / "g.png")).tolist() == [[[7, 7, 7], [9, 9, 9]]]


def test_masks_are_binarised_including_zero_one_and_rgb(tmp_path) -> None:
    _save(tmp_path / "01.png", np.array([[0, 1, 0]], dtype=np.uint8), "L")  # VisA style
    assert np.asarray(load_mask(tmp_path / "01.png")).tolist() == [[0, 255, 0]]
    _save(tmp_path / "rgb.png", np.array([[[0, 0, 0], [0, 3, 0]]], dtype=np.uint8))
    assert np.asarray(load_mask(tmp_path / "rgb.png")).tolist() == [[0, 255]]


def test_squash_keeps_the_whole_image(tmp_path) -> None:
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, :6] = 255  # a white left edge that a centre crop would cut away
    t = squash_image(Image.fromarray(arr), 30, mean=(0, 0, 0), std=(1, 1, 1))
    assert t.shape == (3, 30, 30)
    assert t[:, :, 0].min() > 0.9 and t[:, :, 15].max() < 0.1


def test_mask_resize_then_threshold_at_half() -> None:
    m = np.zeros((4, 4), dtype=np.uint8)
    m[:, :2] = 255
    out = squash_mask(Image.fromarray(m, "L"), 2)
    assert out.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    one = np.zeros((4, 4), dtype=np.uint8)
    one[0, 0] = 255  # a quarter of a 2x2 cell: bilinear gives < 0.5 -> dropped
    assert squash_mask(Image.fromarray(one, "L"), 2).sum() == 0


def test_unreadable_files_give_one_line_errors(tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    for call in (lambda: load_image(bad), lambda: load_image(tmp_path / "missing.jpg")):
        with pytest.raises(ZsadInputError) as e:
            call()
        assert "\n" not in str(e.value) and ("bad.png" in str(e.value) or "missing.jpg" in str(e.value))


def _mvtec(root):
    rng = np.random.default_rng(0)
    for split, defect, n in (("train", "good", 2), ("test", "good", 2), ("test", "crack", 2)):
        for i in range(n):
            _save(root / "bottle" / split / defect / f"{i:03d}.png", rng.integers(0, 255, (30, 40, 3), np.uint8))
            if defect != "good":
                m = np.zeros((30, 40), np.uint8)
                m[5:15, 5:20] = 255
                _save(root / "bottle" / "ground_truth" / defect / f"{i:03d}_mask.png", m, "L")
    return root


def test_mvtec_layout_pairing_and_collate(tmp_path) -> None:
    root = _mvtec(tmp_path / "mvtec")
    ds = MVTecAD(root, "bottle", image_size=32)
    assert MVTecAD.list_categories(root) == ["bottle"] and len(ds) == 4
    by_name = {(s.defect_type, s.image_path.name): s for s in ds.samples}
    assert by_name[("crack", "001.png")].mask_path.name == "001_mask.png"
    assert by_name[("good", "000.png")].mask_path is None and by_name[("good", "000.png")].label == 0
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["gt_mask"].shape == (4, 32, 32)
    assert batch["has_mask"].all() and batch["gt_label"].tolist() == [1, 1, 0, 0]
    assert batch["gt_mask"][0].sum() > 0 and batch["gt_mask"][2].sum() == 0
    assert batch["original_size"][0].tolist() == [30] * 4
    assert len(MVTecAD(root, "bottle", split="train")) == 2
    with pytest.raises(ZsadInputError, match="bottle"):
        MVTecAD(root, "screw")


def test_visa_from_split_csv(tmp_path) -> None:
    root = tmp_path / "visa"
    _save(root / "candle/Data/Images/Normal/0.JPG", np.zeros((10, 10, 3), np.uint8))
    _save(root / "candle/Data/Images/Anomaly/1.JPG", np.zeros((10, 10, 3), np.uint8))
    m = np.zeros((10, 10), np.uint8)
    m[2:8, 2:8] = 1  # VisA masks are 0/1
    _save(root / "candle/Data/Masks/Anomaly/1.png", m, "L")
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,test,normal,candle/Data/Images/Normal/0.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/1.JPG,candle/Data/Masks/Anomaly/1.png\n"
    )
    ds = Visa(root, "candle", image_size=10)
    assert [s.label for s in ds.samples] == [0, 1]
    assert ds[1]["gt_mask"].sum() == 36 and ds[0]["has_mask"]
    assert Visa.list_categories(root) == ["candle"]


def test_folder_masks_beside_images_and_labels_csv(tmp_path) -> None:
    root = tmp_path / "f"
    img = np.zeros((12, 20), np.uint8)
    for stem in ("a", "b"):
        _save(root / "bad" / f"{stem}.jpg", img, "L")
        m = np.zeros((12, 20), np.uint8)
        m[:6] = 255
        _save(root / "bad" / f"{stem}.png", m, "L")
    _save(root / "good" / "c.jpg", img, "L")
    ds = Folder(root, normal_dir="good", abnormal_dir="bad", mask_dir="bad", image_glob="*.jpg", image_size=8)
    assert [(s.image_path.name, s.mask_path.name if s.mask_path else None, s.label) for s in ds.samples] == [
        ("c.jpg", None, 0),
        ("a.jpg", "a.png", 1),
        ("b.jpg", "b.png", 1),
    ]
    assert ds[0]["has_mask"] and ds[1]["gt_mask"].sum() == 32
    (root / "bad" / "b.png").unlink()
    with pytest.raises(ZsadInputError, match="b.jpg"):
        Folder(root, abnormal_dir="bad", mask_dir="bad", image_glob="*.jpg")
    with pytest.raises(ZsadInputError, match="nothere"):
        Folder(root, normal_dir="nothere")
    # image-level labels, HeadCT style: "id, label" header with a space, zero-padded file names
    for i in range(3):
        _save(root / "ct" / f"{i:03d}.png", np.zeros((5, 5, 3), np.uint8))
    (root / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n2,1\n")
    ct = Folder(root, image_dir="ct", labels_csv="labels.csv", image_size=8)
    assert [s.label for s in ct.samples] == [1, 0, 1] and not ct[0]["has_mask"]


def test_image_list_files_folders_globs(tmp_path) -> None:
    for n in ("x.png", "y.PNG", "z.txt"):
        (tmp_path / n).write_bytes(b"")
    _save(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "y.PNG", np.zeros((4, 4, 3), np.uint8))
    assert len(ImageList([str(tmp_path)])) == 2
    assert len(ImageList([str(tmp_path / "*.png"), str(tmp_path / "x.png")])) == 1
    with pytest.raises(ZsadInputError, match="nothing_here"):
        ImageList([str(tmp_path / "nothing_here")])


def test_meta_json_round_trip(tmp_path) -> None:
    root = _mvtec(tmp_path / "mvtec")
    ds = MVTecAD(root, "bottle")
    save_meta_json({"test": ds.samples}, root / "meta.json", root)
    back = load_meta_json(root / "meta.json")["bottle"]
    assert [(s.image_path, s.mask_path, s.label) for s in back] == [
        (s.image_path, s.mask_path, s.label) for s in ds.samples
    ]
