"""Data layer on tiny synthetic trees: pixel conversion, squash, pairing of images and masks, errors, meta.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zsad.data import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    AnomalyDataset,
    Folder,
    ImageList,
    MVTecAD,
    Sample,
    Visa,
    denormalize,
    find_mask,
    load_image,
    load_mask,
    load_meta_json,
    make_sample_images,
    save_meta_json,
    squash_image,
    squash_mask,
)
from zsad.errors import ZsadInputError


def _png(path: Path, value: int | tuple[int, ...] = 128, size: tuple[int, int] = (12, 8), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (12, 8), on: int = 255) -> Path:
    """A mask with a 4x4 defect square in the top-left corner."""
    a = np.zeros((size[1], size[0]), dtype=np.uint8)
    a[:4, :4] = on
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def _mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def _one_line_error(exc: pytest.ExceptionInfo[ZsadInputError], name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and name in msg, msg
    return msg


# ----------------------------------------------------------------------------------------------- load_image


def _pixel(path: Path) -> tuple[int, ...]:
    img = load_image(path)
    assert img.mode == "RGB"
    return tuple(np.asarray(img)[0, 0].tolist())


def test_load_image_8bit_modes(tmp_path: Path) -> None:
    Image.new("L", (3, 2), 77).save(tmp_path / "l.png")
    assert _pixel(tmp_path / "l.png") == (77, 77, 77)
    Image.new("RGB", (3, 2), (1, 2, 3)).save(tmp_path / "rgb.png")
    assert _pixel(tmp_path / "rgb.png") == (1, 2, 3)
    # RGBA and LA are composited onto black: value * alpha / 255, rounded.
    Image.new("RGBA", (3, 2), (200, 100, 50, 128)).save(tmp_path / "rgba.png")
    assert _pixel(tmp_path / "rgba.png") == (100, 50, 25)
    Image.new("RGBA", (3, 2), (200, 100, 50, 0)).save(tmp_path / "clear.png")
    assert _pixel(tmp_path / "clear.png") == (0, 0, 0)
    Image.fromarray(np.full((2, 3, 2), (200, 128), dtype=np.uint8)).save(tmp_path / "la.png")
    assert _pixel(tmp_path / "la.png") == (100, 100, 100)
    Image.new("1", (3, 2), 1).save(tmp_path / "bw.png")
    assert _pixel(tmp_path / "bw.png") == (255, 255, 255)


def test_load_image_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 10, 200, 30, 250, 5, 7])
    pal.putpixel((0, 0), 1)
    pal.putpixel((1, 0), 2)
    pal.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[10, 200, 30], [250, 5, 7]]]
    pal.save(tmp_path / "pt.png", transparency=2)  # index 2 transparent -> black
    assert np.asarray(load_image(tmp_path / "pt.png")).tolist() == [[[10, 200, 30], [0, 0, 0]]]


def test_load_image_16bit_is_scaled_by_range_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [25700, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")  # 'I;16'
    assert _mode(tmp_path / "g16.png") == "I;16"
    expected = [[0, 4], [100, 255]]  # round(v / 65535 * 255): 1000 -> 3.89 -> 4, 25700 = 100 * 257
    assert np.asarray(load_image(tmp_path / "g16.png"))[..., 0].tolist() == expected
    big = Image.frombytes("I;16B", (2, 2), values.astype(">u2").tobytes())
    big.save(tmp_path / "g16b.tif")
    assert _mode(tmp_path / "g16b.tif") == "I;16B"
    assert np.asarray(load_image(tmp_path / "g16b.tif"))[..., 0].tolist() == expected
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "g32.tif")  # 'I' holding 16-bit data
    assert _mode(tmp_path / "g32.tif") == "I"
    assert np.asarray(load_image(tmp_path / "g32.tif"))[..., 0].tolist() == expected


def test_load_image_float_and_cmyk(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert np.asarray(load_image(tmp_path / "f.tif"))[..., 1].tolist() == [[0, 128], [255, 64]]
    # Float data outside [0, 1] is min-max scaled: -2 -> 0, 2 -> 255, 0 -> 128.
    Image.fromarray(np.array([[-2.0, 2.0, 0.0]], dtype=np.float32)).save(tmp_path / "fw.tif")
    assert np.asarray(load_image(tmp_path / "fw.tif"))[..., 2].tolist() == [[0, 255, 128]]
    Image.new("CMYK", (2, 2), (100, 0, 0, 50)).save(tmp_path / "c.tif")
    assert _pixel(tmp_path / "c.tif") == (125, 205, 205)  # (255 - C) * (255 - K) / 255 per channel


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "directory"])
def test_unreadable_image_is_one_line_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad_image.png"
    if kind == "garbage":
        path.write_bytes(b"this is not an image\nsecond line\n")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(ZsadInputError) as exc:
        load_image(path)
    assert "cannot read image" in _one_line_error(exc, "bad_image.png")
    with pytest.raises(ZsadInputError) as exc:
        load_mask(path)
    _one_line_error(exc, "bad_image.png")


# ------------------------------------------------------------------------------------------------ load_mask


def test_load_mask_binarises_every_encoding(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1, 128, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    assert np.asarray(load_mask(tmp_path / "l.png")).tolist() == [[0, 255, 255, 255]]
    Image.fromarray(np.array([[0, 1]], dtype=np.uint16)).save(tmp_path / "g16.png")  # 1/65535 must survive
    assert np.asarray(load_mask(tmp_path / "g16.png")).tolist() == [[0, 255]]
    Image.fromarray(np.array([[[0, 0, 0], [0, 0, 9]]], dtype=np.uint8)).save(tmp_path / "rgb.png")
    assert np.asarray(load_mask(tmp_path / "rgb.png")).tolist() == [[0, 255]]
    rgba = np.array([[[255, 255, 255, 0], [255, 0, 0, 255]]], dtype=np.uint8)  # transparent white = background
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.asarray(load_mask(tmp_path / "rgba.png")).tolist() == [[0, 255]]
    m = load_mask(tmp_path / "l.png")
    assert m.mode == "L"


# ----------------------------------------------------------------------------------------------- transforms


def test_squash_keeps_the_whole_image_no_crop() -> None:
    a = np.zeros((20, 40, 3), dtype=np.uint8)  # wide image, H=20, W=40
    a[:, :, 2] = 255  # blue
    a[:, :4] = (255, 0, 0)  # red left edge, which a centre crop would cut away
    x = squash_image(Image.fromarray(a), 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    back = denormalize(x)
    assert back.shape == (16, 16, 3) and back.dtype == np.uint8
    assert (back[:, 0, 0] > 200).all() and (back[:, 0, 2] < 50).all()  # left column still red
    assert (back[:, -1, 2] > 200).all() and (back[:, -1, 0] < 50).all()  # right column blue


def test_squash_normalises_with_clip_stats() -> None:
    x = squash_image(Image.new("RGB", (5, 7), (255, 0, 51)), 4)
    expected = [(1.0 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0], -OPENAI_CLIP_MEAN[1] / OPENAI_CLIP_STD[1]]
    expected.append((0.2 - OPENAI_CLIP_MEAN[2]) / OPENAI_CLIP_STD[2])
    assert torch.allclose(x[:, 2, 2], torch.tensor(expected), atol=1e-5)
    assert np.abs(denormalize(x).astype(int) - [255, 0, 51]).max() <= 1


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        # 4 -> 2 bilinear (antialiased triangle of support 2): output column 0 weighs input columns 0, 1, 2 by
        # 0.75, 0.75, 0.25 (/1.75); column 1 weighs 1, 2, 3 by 0.25, 0.75, 0.75.
        ([0, 255, 0, 0], [0, 0]),  # 0.75 * 255 / 1.75 = 109 -> 0.43 < 0.5: a 1-pixel line vanishes
        ([0, 255, 255, 0], [1, 1]),  # (0.75 + 0.25) * 255 / 1.75 = 146 -> 0.57 >= 0.5
        ([255, 255, 0, 0], [1, 0]),  # 1.5 / 1.75 = 0.86 and 0.25 / 1.75 = 0.14
    ],
)
def test_squash_mask_bilinear_then_threshold(columns: list[int], expected: list[int]) -> None:
    mask = Image.fromarray(np.tile(np.array(columns, dtype=np.uint8), (4, 1)))
    out = squash_mask(mask, 2)
    assert out.dtype == torch.float32
    assert out.tolist() == [expected, expected]


# ------------------------------------------------------------------------------------------------- datasets


@pytest.fixture
def mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    cat = root / "bottle"
    for name in ("000.png", "001.png"):
        _png(cat / "train" / "good" / name)
    _png(cat / "test" / "good" / "000.png")
    _png(cat / "test" / "broken" / "001.png")
    _png(cat / "test" / "broken" / "000.png")
    _png(cat / "test" / "crack" / "000.PNG")  # upper-case extension
    (cat / "test" / "crack" / "notes.txt").write_text("not an image")
    _mask(cat / "ground_truth" / "broken" / "000_mask.png")
    _mask(cat / "ground_truth" / "broken" / "001_mask.png")
    _mask(cat / "ground_truth" / "crack" / "000_mask.png")
    _png(root / "cable" / "test" / "good" / "000.png")
    (root / "license.txt").write_text("x")
    return root


def test_mvtec_pairs_images_with_masks(mvtec: Path) -> None:
    ds = MVTecAD(mvtec, "bottle", image_size=32)
    rows = [
        (s.image_path.relative_to(mvtec).as_posix(), s.label, s.mask_path and s.mask_path.name, s.defect_type)
        for s in ds.samples
    ]
    assert rows == [
        ("bottle/test/broken/000.png", 1, "000_mask.png", "broken"),
        ("bottle/test/broken/001.png", 1, "001_mask.png", "broken"),
        ("bottle/test/crack/000.PNG", 1, "000_mask.png", "crack"),
        ("bottle/test/good/000.png", 0, None, "good"),
    ]
    assert ds.samples[2].mask_path == mvtec / "bottle/ground_truth/crack/000_mask.png"
    assert [ds[i]["has_mask"] for i in range(len(ds))] == [True] * 4
    assert ds[0]["gt_mask"].sum() > 0 and ds[3]["gt_mask"].sum() == 0
    assert ds[0]["original_size"] == (8, 12)
    assert MVTecAD.categories(mvtec) == ["bottle", "cable"] and ds.categories == ["bottle"]
    train = MVTecAD(mvtec, "bottle", split="train")
    assert [(s.image_path.name, s.label, s.split) for s in train.samples] == [
        ("000.png", 0, "train"),
        ("001.png", 0, "train"),
    ]


def test_mvtec_errors_name_the_problem(mvtec: Path) -> None:
    with pytest.raises(ZsadInputError) as exc:
        MVTecAD(mvtec, "carpet")
    assert "bottle, cable" in _one_line_error(exc, "carpet")
    (mvtec / "bottle/ground_truth/broken/001_mask.png").unlink()
    with pytest.raises(ZsadInputError) as exc:
        MVTecAD(mvtec, "bottle")
    _one_line_error(exc, "001_mask.png")
    with pytest.raises(ZsadInputError) as exc:
        MVTecAD(mvtec, "cable", split="train")
    _one_line_error(exc, "train")


@pytest.fixture
def visa(tmp_path: Path) -> Path:
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        base = f"{obj}/Data"
        _png(root / base / "Images/Normal/0000.JPG")
        _png(root / base / "Images/Normal/0001.JPG")
        _png(root / base / "Images/Anomaly/000.JPG")
        _mask(root / base / "Masks/Anomaly/000.png", on=1)  # VisA masks are 0/1
        rows += [
            f"{obj},train,normal,{base}/Images/Normal/0000.JPG,",
            f"{obj},test,normal,{base}/Images/Normal/0001.JPG,",
            f"{obj},test,anomaly,{base}/Images/Anomaly/000.JPG,{base}/Masks/Anomaly/000.png",
        ]
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_split_csv_and_01_masks(visa: Path) -> None:
    ds = Visa(visa, "candle", image_size=16)
    assert [(s.image_path.name, s.label, s.mask_path and s.mask_path.name) for s in ds.samples] == [
        ("0001.JPG", 0, None),
        ("000.JPG", 1, "000.png"),
    ]
    assert all(s.category == "candle" and s.split == "test" for s in ds.samples)
    normal, anomalous = ds[0], ds[1]
    assert normal["has_mask"] and normal["gt_mask"].sum() == 0 and normal["gt_label"] == 0
    # 4x4 of 1s in a 12x8 mask squashed to 16x16: the 0/1 mask must not vanish.
    assert anomalous["has_mask"] and anomalous["gt_label"] == 1 and anomalous["gt_mask"].sum() > 0
    assert set(anomalous["gt_mask"].unique().tolist()) == {0.0, 1.0}
    assert [s.image_path.name for s in Visa(visa, "pcb1", split="train").samples] == ["0000.JPG"]
    assert Visa.categories(visa) == ["candle", "pcb1"]
    with pytest.raises(ZsadInputError) as exc:
        Visa(visa, "macaroni1")
    assert "candle, pcb1" in _one_line_error(exc, "macaroni1")


def test_folder_with_mask_dir(tmp_path: Path) -> None:
    root = tmp_path / "f"
    _png(root / "ok" / "n1.png")
    _png(root / "ok" / "n2.jpg")
    _png(root / "bad" / "a.png")
    _png(root / "bad" / "b.JPEG")
    _mask(root / "masks" / "a.png")
    _mask(root / "masks" / "b_mask.bmp")
    _mask(root / "masks" / "n1.png", on=0)  # an explicit empty mask for one normal image
    ds = Folder(root, normal_dir="ok", abnormal_dir="bad", mask_dir="masks", image_size=16)
    pairs = [(s.image_path.name, s.label, s.mask_path and s.mask_path.name) for s in ds.samples]
    assert pairs == [("n1.png", 0, "n1.png"), ("n2.jpg", 0, None), ("a.png", 1, "a.png"), ("b.JPEG", 1, "b_mask.bmp")]
    assert [ds[i]["has_mask"] for i in range(4)] == [True, True, True, True]
    assert ds[1]["gt_mask"].sum() == 0 and ds[1]["mask_path"] == ""
    assert find_mask(root / "bad" / "b.JPEG", root / "masks") == root / "masks" / "b_mask.bmp"
    (root / "masks" / "a.png").unlink()
    with pytest.raises(ZsadInputError) as exc:
        Folder(root, normal_dir="ok", abnormal_dir="bad", mask_dir="masks")
    _one_line_error(exc, "a.png")


def test_folder_without_masks_is_image_level(tmp_path: Path) -> None:
    _png(tmp_path / "ok" / "n.png")
    _png(tmp_path / "bad" / "a.png")
    ds = Folder(tmp_path, normal_dir="ok", abnormal_dir=tmp_path / "bad")  # absolute dirs work too
    assert [ds[i]["has_mask"] for i in range(2)] == [False, False]
    assert [ds[i]["gt_label"] for i in range(2)] == [0, 1]
    known = Folder(tmp_path, normal_dir="ok", abnormal_dir="bad", normal_mask_known=True)
    assert [known[i]["has_mask"] for i in range(2)] == [True, False]


def test_folder_masks_beside_images(tmp_path: Path) -> None:
    """Magnetic Tile layout: X.jpg images with X.png masks in the same folder."""
    d = tmp_path / "MT_Crack" / "Imgs"
    for stem in ("exp1_num_2", "exp1_num_10"):
        _png(d / f"{stem}.jpg")
        _mask(d / f"{stem}.png")
    _png(d / "exp1_num_3.JPG")
    _mask(d / "exp1_num_3.png")
    ds = Folder(tmp_path, abnormal_dir="MT_Crack/Imgs", mask_dir="MT_Crack/Imgs", image_glob="*.jpg")
    pairs = [(s.image_path.name, s.mask_path and s.mask_path.name) for s in ds.samples]
    assert pairs == [
        ("exp1_num_10.jpg", "exp1_num_10.png"),
        ("exp1_num_2.jpg", "exp1_num_2.png"),
        ("exp1_num_3.JPG", "exp1_num_3.png"),  # glob matches the extension in any case
    ]
    with pytest.raises(ZsadInputError) as exc:
        Folder(tmp_path, abnormal_dir="MT_Crack/Imgs", mask_dir="MT_Crack/Imgs")  # masks would be read as images
    assert "image_glob" in _one_line_error(exc, "Imgs")


def test_folder_labels_csv_headct_style(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / "head_ct" / f"{i:03d}.png", size=(10 + i, 9))
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n")
    ds = Folder(tmp_path, image_dir="head_ct", labels_csv="labels.csv", image_size=8)
    assert [(s.image_path.name, s.label) for s in ds.samples] == [
        ("000.png", 1),
        ("001.png", 1),
        ("002.png", 0),
        ("003.png", 0),
    ]
    assert [ds[i]["has_mask"] for i in range(4)] == [False] * 4
    by_name = Folder(tmp_path, image_dir="head_ct", labels_csv="labels.csv", id_column="id", label_column="hemorrhage")
    assert [s.label for s in by_name.samples] == [1, 1, 0, 0]
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n")
    with pytest.raises(ZsadInputError) as exc:
        Folder(tmp_path, image_dir="head_ct", labels_csv="labels.csv")
    _one_line_error(exc, "003.png")
    with pytest.raises(ZsadInputError) as exc:
        Folder(tmp_path, image_dir="head_ct", labels_csv="labels.csv", label_column="label")
    _one_line_error(exc, "labels.csv")


def test_folder_unlabeled_recursive_and_empty(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "b.png")
    _png(tmp_path / "imgs" / "sub" / "a.png")
    (tmp_path / "imgs" / "._b.png").write_bytes(b"AppleDouble junk")  # hidden: skipped
    flat = Folder(tmp_path, image_dir="imgs")
    assert [s.image_path.name for s in flat.samples] == ["b.png"] and flat[0]["gt_label"] == -1
    deep = Folder(tmp_path, image_dir="imgs", recursive=True)
    assert [s.image_path.relative_to(tmp_path / "imgs").as_posix() for s in deep.samples] == ["b.png", "sub/a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsadInputError) as exc:
        Folder(tmp_path, image_dir="empty")
    _one_line_error(exc, "empty")
    with pytest.raises(ZsadInputError) as exc:
        Folder(tmp_path, normal_dir="nope")
    _one_line_error(exc, "nope")


def test_image_list_files_folders_globs(tmp_path: Path) -> None:
    a = _png(tmp_path / "x" / "a.png")
    _png(tmp_path / "x" / "B.JPG")
    ds = ImageList([a, tmp_path / "x", str(tmp_path / "x" / "*.jpg")])
    assert [s.image_path.name for s in ds.samples] == ["a.png", "B.JPG"]  # deduplicated, in argument order
    assert all(s.label is None and s.mask_path is None for s in ds.samples)
    item = ds[1]
    assert item["gt_label"] == -1 and not item["has_mask"] and item["mask_path"] == ""
    with pytest.raises(ZsadInputError) as exc:
        ImageList([tmp_path / "missing.png"])
    _one_line_error(exc, "missing.png")


def test_dataset_validates_masks_and_emptiness(tmp_path: Path) -> None:
    img = _png(tmp_path / "i.png")
    with pytest.raises(ZsadInputError) as exc:
        AnomalyDataset([Sample(img, 1, tmp_path / "gone_mask.png", "c")])
    _one_line_error(exc, "gone_mask.png")
    with pytest.raises(ZsadInputError):
        AnomalyDataset([])
    wrong = _mask(tmp_path / "tall_mask.png", size=(8, 12))  # 8x12 mask for a 12x8 image
    with pytest.raises(ZsadInputError) as exc:
        AnomalyDataset([Sample(img, 1, wrong, "c")])[0]
    _one_line_error(exc, "tall_mask.png")


def test_default_collate(mvtec: Path) -> None:
    ds = MVTecAD(mvtec, "bottle", image_size=24)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["gt_mask"].shape == (4, 24, 24)
    assert batch["has_mask"].dtype == torch.bool and batch["gt_label"].tolist() == [1, 1, 1, 0]
    assert len(batch["image_path"]) == 4 and batch["mask_path"][3] == ""
    assert [t.tolist() for t in batch["original_size"]] == [[8] * 4, [12] * 4]


def test_meta_json_round_trip(mvtec: Path, tmp_path: Path) -> None:
    test = MVTecAD(mvtec, "bottle").samples
    train = MVTecAD(mvtec, "bottle", split="train").samples
    meta = mvtec / "meta.json"
    save_meta_json({"train": train, "test": test}, meta, mvtec)
    raw = json.loads(meta.read_text())
    first = raw["test"]["bottle"][0]
    assert first == {
        "img_path": "bottle/test/broken/000.png",
        "mask_path": "bottle/ground_truth/broken/000_mask.png",
        "cls_name": "bottle",
        "specie_name": "broken",
        "anomaly": 1,
    }
    assert raw["test"]["bottle"][3]["mask_path"] == ""
    assert load_meta_json(meta) == {"bottle": test}
    assert load_meta_json(meta, split=None) == {"bottle": train + test}
    moved = tmp_path / "elsewhere" / "meta.json"
    moved.parent.mkdir()
    moved.write_text(meta.read_text())
    assert load_meta_json(moved, root=mvtec) == {"bottle": test}
    with pytest.raises(ZsadInputError) as exc:
        save_meta_json({"test": [Sample(test[0].image_path, None, None, "c")]}, meta, mvtec)
    _one_line_error(exc, "000.png")
    with pytest.raises(ZsadInputError) as exc:
        load_meta_json(meta, split="val")
    _one_line_error(exc, "meta.json")


def test_sample_images_are_a_folder_dataset(tmp_path: Path) -> None:
    root = make_sample_images(tmp_path / "demo", n_normal=2, n_anomalous=3, size=64, seed=3)
    ds = Folder(root, normal_dir="good", abnormal_dir="defect", mask_dir="ground_truth", image_size=64)
    assert [s.label for s in ds.samples] == [0, 0, 1, 1, 1]
    assert all(ds[i]["gt_mask"].sum() > 0 for i in (2, 3, 4)) and ds[0]["gt_mask"].sum() == 0
    again = make_sample_images(tmp_path / "again", n_normal=2, n_anomalous=3, size=64, seed=3)
    assert (again / "defect" / "defect_001.png").read_bytes() == (root / "defect" / "defect_001.png").read_bytes()
