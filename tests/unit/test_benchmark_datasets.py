"""Every named benchmark on a small synthetic tree in its published layout: counts, labels, masks paired by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad.data.benchmarks import BENCHMARKS, SUITES, read_benchmark
from zsad.errors import ZsadInputError


def _img(path: Path, value: int = 90, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _mask(path: Path, on: bool = True, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    if on:
        arr[4:9, 5:10] = 255
    Image.fromarray(arr).save(path)
    return path


def _check(layout, cat: str, n: int, n_bad: int, pixel: bool) -> None:  # noqa: ANN001
    rows = layout.test[cat]
    assert len(rows) == n and sum(s.label for s in rows) == n_bad
    for s in rows:
        if pixel and s.label == 1:
            assert s.mask_path is not None
            # paired by name: the mask's name starts with the image's stem (any suffix), or is its folder
            assert s.mask_path.name.lower().startswith(s.image_path.stem.lower()), (s.image_path, s.mask_path)
        else:
            assert s.mask_path is None or s.label == 0 or not pixel


def _mvtec_tree(root: Path, cat: str, normal: str = "good", bad: str = "crack", suffix: str = "_mask",
                img_ext: str = ".png", mask_ext: str = ".png") -> None:  # fmt: skip
    for i in range(3):
        _img(root / cat / "train" / normal / f"{i:03d}{img_ext}")
    for i in range(2):
        _img(root / cat / "test" / normal / f"{i:03d}{img_ext}")
    for i in range(3):
        _img(root / cat / "test" / bad / f"{i:03d}{img_ext}", 200)
        _mask(root / cat / "ground_truth" / bad / f"{i:03d}{suffix}{mask_ext}")


@pytest.mark.parametrize(("name", "suffix"), [("mpdd", "_mask"), ("mpdd", ""), ("dtd", "_mask")])
def test_mvtec_like(name: str, suffix: str, tmp_path: Path) -> None:
    cat = "metal_plate" if name == "mpdd" else "Woven_001"
    _mvtec_tree(tmp_path, cat, suffix=suffix)
    lay = read_benchmark(name, tmp_path)
    _check(lay, cat, 5, 3, pixel=True)
    assert len(lay.references[cat]) == 3 and all(s.label == 0 for s in lay.references[cat])


@pytest.mark.parametrize("name", ["mvtec", "mpdd", "btad"])
def test_a_missing_mask_is_one_error_for_every_mvtec_layout_reader(name: str, tmp_path: Path) -> None:
    """One reader of the MVTec layout: an anomalous image without its mask stops the listing, naming both."""
    root = tmp_path / "BTech_Dataset_transformed" if name == "btad" else tmp_path
    normal, bad = ("ok", "ko") if name == "btad" else ("good", "crack")
    _mvtec_tree(root, "01", normal=normal, bad=bad)
    (root / "01" / "ground_truth" / bad / "001_mask.png").unlink()
    with pytest.raises(ZsadInputError, match=f"001.png: anomalous image without a mask in .*{bad}"):
        read_benchmark(name, tmp_path)
    _mask(root / "01" / "ground_truth" / bad / "001_mask.png")
    _check(read_benchmark(name, tmp_path), "01", 5, 3, pixel=True)


def test_btad_ok_ko_with_bmp_masks_and_archive_folder(tmp_path: Path) -> None:
    base = tmp_path / "BTech_Dataset_transformed"
    _mvtec_tree(base, "01", normal="ok", bad="ko", suffix="", img_ext=".bmp", mask_ext=".png")
    _mvtec_tree(base, "03", normal="ok", bad="ko", suffix="", img_ext=".bmp", mask_ext=".bmp")
    lay = read_benchmark("btad", tmp_path)
    assert sorted(lay.test) == ["01", "03"]
    _check(lay, "03", 5, 3, pixel=True)
    assert {s.mask_path.suffix for s in lay.test["03"] if s.mask_path} == {".bmp"}
    assert [*read_benchmark("btad", tmp_path, ["01"]).test] == ["01"]
    with pytest.raises(ZsadInputError, match="no BTAD category '02'"):
        read_benchmark("btad", tmp_path, ["02"])


def test_ksdd2_labels_come_from_mask_content(tmp_path: Path) -> None:
    for split, bad in (("train", {1}), ("test", {0, 2})):
        for i in range(4):
            _img(tmp_path / split / f"{10000 + i}.png")
            _mask(tmp_path / split / f"{10000 + i}_GT.png", on=i in bad)
    lay = read_benchmark("ksdd2", tmp_path)
    _check(lay, "ksdd2", 4, 2, pixel=True)
    assert [s.label for s in lay.test["ksdd2"]] == [1, 0, 1, 0]
    assert len(lay.references["ksdd2"]) == 3  # the defective train image is not a reference
    (tmp_path / "test" / "10003_GT.png").unlink()
    with pytest.raises(ZsadInputError, match="10003.png: no ground-truth file 10003_GT.png"):
        read_benchmark("ksdd2", tmp_path)


@pytest.mark.parametrize("nested", [False, True])
def test_dagm_label_folder(tmp_path: Path, nested: bool) -> None:
    for c in ("Class1", "Class10"):
        base = tmp_path / c / c if nested else tmp_path / c
        for split in ("Train", "Test"):
            for i in range(1, 5):
                _img(base / split / f"{i:04d}.PNG", mode="L")
            for i in (2, 3):
                _mask(base / split / "Label" / f"{i:04d}_label.PNG")
            (base / split / "Label" / "Labels.txt").write_text("header\n")
    lay = read_benchmark("dagm", tmp_path)
    assert list(lay.test) == ["Class1", "Class10"]  # numeric order
    _check(lay, "Class10", 4, 2, pixel=True)
    assert [s.label for s in lay.test["Class1"]] == [0, 1, 1, 0] and len(lay.references["Class1"]) == 2
    assert any("weak" in n for n in lay.notes)


def test_mvtec3d_rgb_only(tmp_path: Path) -> None:
    for t, n in (("good", 2), ("hole", 3)):
        for i in range(n):
            _img(tmp_path / "bagel" / "test" / t / "rgb" / f"{i:03d}.png")
            _mask(tmp_path / "bagel" / "test" / t / "gt" / f"{i:03d}.png", on=t != "good")
            (tmp_path / "bagel" / "test" / t / "xyz").mkdir(exist_ok=True)
    _img(tmp_path / "bagel" / "train" / "good" / "rgb" / "000.png")
    lay = read_benchmark("mvtec3d", tmp_path)
    _check(lay, "bagel", 5, 3, pixel=True)
    assert all(s.mask_path.parent.name == "gt" for s in lay.test["bagel"] if s.mask_path)


def test_mvtec_loco_mask_folders_are_unions(tmp_path: Path) -> None:
    from zsad.data.io import load_mask

    root = tmp_path
    _img(root / "pushpins" / "test" / "good" / "000.png")
    _img(root / "pushpins" / "test" / "logical_anomalies" / "000.png")
    _img(root / "pushpins" / "test" / "structural_anomalies" / "000.png")
    a = np.zeros((16, 16), np.uint8)
    a[0:3] = 255
    b = np.zeros((16, 16), np.uint8)
    b[:, 0:2] = 255
    for t in ("logical_anomalies", "structural_anomalies"):
        (root / "pushpins" / "ground_truth" / t / "000").mkdir(parents=True)
        Image.fromarray(a).save(root / "pushpins" / "ground_truth" / t / "000" / "000.png")
    Image.fromarray(b).save(root / "pushpins" / "ground_truth" / "logical_anomalies" / "000" / "001.png")
    lay = read_benchmark("mvtec_loco", root)
    _check(lay, "pushpins", 3, 2, pixel=True)
    logical = next(s for s in lay.test["pushpins"] if s.defect_type == "logical_anomalies")
    union = np.asarray(load_mask(logical.mask_path)) > 0
    assert union.sum() == ((a > 0) | (b > 0)).sum()


@pytest.mark.parametrize("name", ["brainmri", "br35h"])
def test_yes_no_image_level(name: str, tmp_path: Path) -> None:
    base = tmp_path / "brain_tumor_dataset" if name == "brainmri" else tmp_path
    for i in range(3):
        _img(base / "yes" / f"Y{i}.jpg")
    for i in range(2):
        _img(base / "no" / f"N{i}.JPG")
    _img(tmp_path / "pred" / "pred0.jpg")  # Br35H's unlabelled folder: never read
    lay = read_benchmark(name, tmp_path)
    _check(lay, "brain", 5, 3, pixel=False)
    assert all(s.mask_path is None for s in lay.test["brain"])
    assert BENCHMARKS[name].labels == "image"


def test_headct_labels_csv(tmp_path: Path) -> None:
    for i in range(4):
        _img(tmp_path / "head_ct" / "head_ct" / f"{i:03d}.png", mode="L")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0, 1\n1, 0\n2, 1\n3, 0\n")
    lay = read_benchmark("headct", tmp_path)
    _check(lay, "brain", 4, 2, pixel=False)
    assert [s.image_path.name for s in lay.test["brain"]] == ["000.png", "001.png", "002.png", "003.png"]
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0, yes\n")
    with pytest.raises(ZsadInputError, match="labels.csv: line 2: expected 'id, hemorrhage' integers"):
        read_benchmark("headct", tmp_path)


def test_isic_segmentation_suffix(tmp_path: Path) -> None:
    for i in (3, 12):
        _img(tmp_path / "ISBI2016_ISIC_Part1_Test_Data" / f"ISIC_{i:07d}.jpg")
        _mask(tmp_path / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"ISIC_{i:07d}_Segmentation.png")
    lay = read_benchmark("isic", tmp_path)
    _check(lay, "skin", 2, 2, pixel=True)
    _img(tmp_path / "ISBI2016_ISIC_Part1_Test_Data" / "ISIC_0000099.jpg")
    with pytest.raises(ZsadInputError, match="ISIC_0000099.jpg: anomalous image without a mask"):
        read_benchmark("isic", tmp_path)


@pytest.mark.parametrize("name", ["colondb", "clinicdb", "kvasir", "endo"])
def test_polyp_packs(name: str, tmp_path: Path) -> None:
    ext = ".jpg" if name == "kvasir" else ".png"
    folder = "images" if name != "endo" else "images"
    for i in range(3):
        _img(tmp_path / folder / f"{i + 1}{ext}")
        _mask(tmp_path / "masks" / f"{i + 1}{ext}")
    lay = read_benchmark(name, tmp_path)
    _check(lay, "colon", 3, 3, pixel=True)
    assert any("pixel metrics only" in n for n in lay.notes)


def test_clinicdb_owners_layout_and_endo_other_folder(tmp_path: Path) -> None:
    for i in range(2):
        _img(tmp_path / "c" / "Original" / f"{i + 1}.tif")
        _mask(tmp_path / "c" / "Ground Truth" / f"{i + 1}.tif")
        _img(tmp_path / "e" / "frames" / f"f{i}.jpg")
        _mask(tmp_path / "e" / "masks" / f"f{i}.png")
    assert read_benchmark("clinicdb", tmp_path / "c").name == "Original/ + Ground Truth/"
    assert read_benchmark("endo", tmp_path / "e").name == "frames/ + masks/"


def test_jpeg_masks_are_cut_at_half_range(tmp_path: Path) -> None:
    from zsad.data.io import load_mask

    arr = np.zeros((32, 32), np.uint8)
    arr[8:24, 8:24] = 255
    arr[0, 0] = 30  # what JPEG noise looks like
    Image.fromarray(arr).save(tmp_path / "m.png")
    Image.fromarray(arr).save(tmp_path / "m.jpg", quality=60)
    png, jpg = np.asarray(load_mask(tmp_path / "m.png")) > 0, np.asarray(load_mask(tmp_path / "m.jpg")) > 0
    assert png[0, 0] and not jpg[0, 0]  # PNG keeps every non-zero pixel; JPEG noise is dropped
    assert abs(int(jpg.sum()) - 16 * 16) <= 16  # the square survives compression


def test_elpv_labels_by_probability(tmp_path: Path) -> None:
    probs = [0.0, 0.3333333333333333, 0.6666666666666666, 1.0]
    lines = []
    for i, p in enumerate(probs):
        _img(tmp_path / "images" / f"cell{i:04d}.png", mode="L")
        lines.append(f"images/cell{i:04d}.png  {p}  {'mono' if i % 2 else 'poly'}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    lay = read_benchmark("elpv", tmp_path)
    assert sorted(lay.test) == ["mono", "poly"]
    assert [s.label for s in lay.test["poly"]] == [0, 1] and [s.label for s in lay.test["mono"]] == [0, 1]


def test_generic_repack_and_unknown_names(tmp_path: Path) -> None:
    _mvtec_tree(tmp_path / "bm", "brain", bad="tumor")  # AdaCLIP-style re-pack of an image-level set
    lay = read_benchmark("brainmri", tmp_path / "bm")
    assert lay.name.startswith("generic") and all(s.mask_path is None for s in lay.test["brain"])
    with pytest.raises(ZsadInputError, match="--dataset 'nope': use one of mvtec, visa"):
        read_benchmark("nope", tmp_path)
    with pytest.raises(ZsadInputError, match="not a Br35H root"):
        read_benchmark("br35h", tmp_path)
    assert set(SUITES["anomalyclip17"]) <= set(BENCHMARKS) and set(SUITES["medical"]) <= set(BENCHMARKS)


def test_visa_pytorch_layout_and_mvtec_by_name(tmp_path: Path) -> None:
    """VisA re-organised MVTec-style (masks without suffix in ground_truth/bad); MVTec AD through the registry."""
    _mvtec_tree(tmp_path / "v" / "visa_pytorch", "pcb1", bad="bad", suffix="", img_ext=".JPG")
    lay = read_benchmark("visa", tmp_path / "v")
    _check(lay, "pcb1", 5, 3, pixel=True)
    assert lay.name.startswith("visa_pytorch")
    _mvtec_tree(tmp_path / "m", "bottle", bad="broken_large")
    lay = read_benchmark("mvtec", tmp_path / "m")
    _check(lay, "bottle", 5, 3, pixel=True)
    assert len(lay.references["bottle"]) == 3


def test_eval_opens_every_name_through_the_registry(tmp_path: Path) -> None:
    """``zsad eval --dataset visa`` takes the re-organised layout too; references come from the train split."""
    from zsad.data.spec import DatasetSpec, open_datasets

    _mvtec_tree(tmp_path / "v" / "visa_pytorch", "pcb1", bad="bad", suffix="", img_ext=".JPG")
    [(cat, ds, refs)] = open_datasets(DatasetSpec("visa", tmp_path / "v", k_shot=2))
    assert cat == "pcb1" and len(ds) == 5 and ds.masks_known and len(refs) == 3
    _mvtec_tree(tmp_path / "m", "bottle", bad="broken_large")
    [(cat, ds, refs)] = open_datasets(DatasetSpec("mvtec", tmp_path / "m"))
    assert cat == "bottle" and len(ds) == 5 and refs is None  # no --k-shot: no references opened
    with pytest.raises(ZsadInputError, match=r"no MVTec AD category 'cable' \(available: bottle\)"):
        open_datasets(DatasetSpec("mvtec", tmp_path / "m", categories=["cable"]))
