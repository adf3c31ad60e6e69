"""Bad input, in process: every case ends in one line and the right exit code, and leaves exactly one row, map and
overlay per input (each holding its own input's heatmap), or nothing at all when the input was refused.

The table of these cases and what a user gets for each is docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from outputs_check import TINY, assert_one_set_per_input, cli, one_line_error, rows
from PIL import Image


def _img(path: Path, seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Path:
    """A distinct random image (so a map in the wrong file would be noticed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


class Payload:
    """Stands for a whole pickled model object inside a checkpoint."""


@pytest.fixture
def three(tmp_path: Path) -> list[Path]:
    return [_img(tmp_path / "imgs" / f"part_{i}.png", i) for i in range(3)]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Input errors must be found before any model is built."""
    from zsad.backbone import ClipBackbone

    def fail(*a: object, **k: object) -> None:
        raise AssertionError("a model was built before the input error was found")

    monkeypatch.setattr(ClipBackbone, "from_pretrained", fail)


# ------------------------------------------------------------------------------------------- output identity
def test_masks_beside_images_are_refused_until_selected(tmp_path: Path) -> None:
    """The Magnetic Tile layout: X.jpg with its mask X.png in the same folder."""
    folder = tmp_path / "mt"
    jpgs = []
    for i in range(3):
        jpgs.append(_img(folder / f"exp{i}.jpg", i))
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(folder / f"exp{i}.png")
    out = tmp_path / "out"
    one_line_error(cli("detect", folder, "--out", out, *TINY), "exp0.jpg and exp0.png", "--image-glob '*.jpg'")
    assert not out.exists()
    res = cli("detect", folder, "--image-glob", "*.jpg", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert_one_set_per_input(out, jpgs)


@pytest.mark.assets
def test_real_magnetic_tile_folder(tmp_path: Path, assets_dir: Path) -> None:
    src = assets_dir / "magnetic_tile" / "MT_Crack" / "Imgs"
    folder = tmp_path / "crack"
    folder.mkdir()
    for jpg in sorted(src.glob("*.jpg"))[:3]:
        shutil.copy(jpg, folder)
        shutil.copy(jpg.with_suffix(".png"), folder)
    out = tmp_path / "out"
    one_line_error(cli("detect", folder, "--out", out, *TINY), "--image-glob")
    res = cli("detect", folder, "--image-glob", "*.jpg", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert_one_set_per_input(out, sorted(folder.glob("*.jpg")))


def test_paths_equal_in_their_last_components_get_their_own_files(tmp_path: Path) -> None:
    a = _img(tmp_path / "a" / "line" / "cam" / "2026" / "12" / "img.png", 1)
    b = _img(tmp_path / "b" / "line" / "cam" / "2026" / "12" / "img.png", 2)
    out = tmp_path / "out"
    res = cli("detect", a, b, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    rs = assert_one_set_per_input(out, [a, b])
    assert len({r["anomaly_map_path"] for r in rs}) == 2


def test_long_and_odd_file_names(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    files = [
        _img(folder / ("x" * 240 + ".png"), 1),
        _img(folder / "défaut_ü_検査.png", 2),
        _img(folder / 'a,b "c"\nd.png', 3),
        _img(folder / "-starts-with-dash.png", 4),
    ]
    for flags in ([], ["--skip-bad"]):
        out = tmp_path / f"out{len(flags)}"
        res = cli("detect", folder, "--out", out, *flags, *TINY)
        assert res.exit_code == 0, res.output
        rs = assert_one_set_per_input(out, files)
        assert all(len(Path(r["anomaly_map_path"]).name.encode()) < 100 for r in rs)


# ------------------------------------------------------------------------------------------- run identity
def test_rerun_on_another_folder_is_refused(three: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("detect", three[0].parent, "--out", out, *TINY).exit_code == 0
    other = [_img(tmp_path / "other" / f"o{i}.png", 10 + i) for i in range(2)]
    before = (out / "predictions.csv").read_bytes()
    one_line_error(cli("detect", other[0].parent, "--out", out, *TINY), "inputs.paths", "other settings")
    assert (out / "predictions.csv").read_bytes() == before
    one_line_error(cli("detect", three[0].parent, "--image-glob", "*.png", "--out", out, *TINY), "inputs.image_glob")
    one_line_error(cli("detect", three[0].parent, "--out", out, "-o", "window_stride=2", *TINY), "window_stride")
    res = cli("detect", three[0].parent, "--out", out, *TINY)  # the same run: nothing to score, nothing changes
    assert res.exit_code == 0 and "resuming: 3 of 3" in res.output
    assert_one_set_per_input(out, three)


def test_a_folder_that_gains_images_resumes_and_scores_only_them(three: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("detect", three[0].parent, "--out", out, *TINY).exit_code == 0
    new = _img(three[0].parent / "part_new.png", 9)
    res = cli("detect", three[0].parent, "--out", out, *TINY)
    assert res.exit_code == 0 and "resuming: 3 of 4" in res.output
    assert_one_set_per_input(out, [*three, new])


def test_list_file_input(three: list[Path], tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text(f"# today's parts\n{three[0]}\nimgs/{three[1].name}\n\n")
    out = tmp_path / "out"
    res = cli("detect", "--list", lst, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert_one_set_per_input(out, three[:2])


# ------------------------------------------------------------------------------------------- output folder
def test_out_is_a_file_or_under_a_file(three: list[Path], tmp_path: Path, no_model: None) -> None:
    f = tmp_path / "results.txt"
    f.write_text("x")
    one_line_error(cli("detect", three[0], "--out", f, *TINY), "is a file, not a folder")
    one_line_error(cli("detect", three[0], "--out", f / "sub" / "out", *TINY), "lies under", "which is a file")
    assert f.read_text() == "x"


def test_per_file_write_failure(three: list[Path], tmp_path: Path) -> None:
    """A map that cannot be written stops the run in one line, or with --skip-bad is listed and retried later."""
    from zsad.outputs import OutputNames, mark_folder

    out = tmp_path / "out"
    blocker = out / "maps" / f"{OutputNames().name(three[1])}.npy"
    mark_folder(out, "detect", "detect")  # as an earlier run would have left it
    blocker.mkdir(parents=True)  # a folder where the map file must go
    one_line_error(cli("detect", three[0].parent, "--out", out, *TINY), blocker.name)
    shutil.rmtree(out)
    mark_folder(out, "detect", "detect")
    blocker.mkdir(parents=True)
    res = cli("detect", three[0].parent, "--out", out, "--skip-bad", *TINY)
    assert res.exit_code == 1, res.output
    assert [r["image_path"] for r in rows(out)] == [str(three[0]), str(three[2])]
    assert blocker.name in (out / "errors.csv").read_text()
    blocker.rmdir()
    res = cli("detect", three[0].parent, "--out", out, "--skip-bad", *TINY)  # the failed file is retried
    assert res.exit_code == 0 and not (out / "errors.csv").exists(), res.output
    assert_one_set_per_input(out, three)


# ------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("window_stride=abc", "window_stride=abc: expected an integer"),
        ("scales=[2,3", "scales=[2,3: expected a list"),
        ("temperature=nan", "temperature=nan: expected a finite number"),
        ("temperature=0", "temperature=0.0: must be > 0"),
        ("bogusmethod:x=1", "'bogusmethod' is not a selected method"),
        ("winclip:bogus=1", "winclip has no option 'bogus'"),
        ("scales=[]", "scales=[]: must be a non-empty list"),
        ("text_aggregation=median", "text_aggregation=median: must be one of"),
        ("noequals", "expected KEY=VALUE"),
    ],
)
def test_bad_options_before_the_model(three: list[Path], tmp_path: Path, no_model: None, option: str, needle: str):
    out = tmp_path / "out"
    one_line_error(cli("detect", three[0], "--out", out, "-o", option, *TINY), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "0"], "--batch-size 0"),
        (["--k-shot", "-1"], "--k-shot -1"),
        (["--normalize", "global"], "--normalize 'global'"),
        (["--max-map-size", "-5"], "--max-map-size -5"),
        (["--reference-dir", "/nonexistent/refs"], "/nonexistent/refs"),
        (["--image-size", "0"], "--image-size 0"),
        (["--backbone", "ViT-Q-99"], "ViT-Q-99"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--checkpoint", "/nonexistent/ckpt"], "has no trained parts"),
    ],
)
def test_bad_arguments_before_the_model(
    three: list[Path], tmp_path: Path, no_model: None, args: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    one_line_error(cli("detect", three[0], "--out", out, *TINY, *args), needle)
    assert not out.exists()


def test_missing_and_empty_inputs(tmp_path: Path, no_model: None) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    one_line_error(cli("detect", tmp_path / "missing", "--out", out, *TINY), "missing: no such file or folder")
    one_line_error(cli("detect", tmp_path / "empty", "--out", out, *TINY), "no image files in this folder")
    one_line_error(cli("detect", str(tmp_path / "*.png"), "--out", out, *TINY), "no image files match")
    one_line_error(cli("detect", "--out", out, *TINY), "no images given")
    assert not out.exists()


# ------------------------------------------------------------------------------------------- weights
def test_offline_default_weights_fail_fast(three: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` without network: one line naming the ways out, without a single download attempt."""
    import open_clip

    def no_download(*a: object, **k: object) -> None:
        raise AssertionError("open_clip tried to build/download the model")

    monkeypatch.setattr(open_clip, "create_model", no_download)
    monkeypatch.delenv("ZSAD_WEIGHTS", raising=False)
    line = one_line_error(
        cli("detect", three[0], "--out", tmp_path / "out", "--device", "cpu"),
        "laion400m_e31",
        "--weights FILE",
        "ZSAD_WEIGHTS",
        "--pretrained none",
    )
    assert "unreachable" in line or "HF_HUB_OFFLINE" in line
    one_line_error(cli("detect", three[0], "--out", tmp_path / "o2", "--pretrained", "laion2b"), "no such weights")


def test_weights_that_are_not_weights(three: list[Path], tmp_path: Path) -> None:
    import torch

    text = tmp_path / "weights.pt"
    text.write_text("this is not a checkpoint\n")
    args = ["detect", three[0], "--out", tmp_path / "out", "--backbone", "zsad-tiny", "--image-size", "96"]
    line = one_line_error(cli(*args, "--weights", text), str(text), "not a weights file")
    assert "weights_only=False" not in line
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    one_line_error(cli(*args, "--weights", empty), "empty file")
    pickled = tmp_path / "objects.pt"
    torch.save({"model": Payload()}, pickled)  # an object a weights-only load refuses to unpickle
    res = cli(*args, "--weights", pickled)
    line = one_line_error(res, str(pickled), "does not unpickle")
    assert "weights_only=False" not in res.output and "set to `False`" not in res.output


# ------------------------------------------------------------------------------------------- image files
def test_unreadable_and_odd_images(tmp_path: Path) -> None:
    """Zero-byte, non-image and truncated files are named and skipped; 1x1, 16-bit, RGBA, CMYK, L are scored."""
    folder = tmp_path / "odd"
    good = [
        _img(folder / "one_pixel.png", 1, (1, 1)),
        _img(folder / "rgba.png", 2, mode="RGBA"),
        _img(folder / "cmyk.jpg", 3, mode="CMYK"),
        _img(folder / "gray.png", 4, mode="L"),
    ]
    wide = folder / "sixteen_bit.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(wide)
    good.append(wide)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    full = _img(tmp_path / "full.png", 5, (128, 96)).read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    out = tmp_path / "out"
    line = one_line_error(cli("detect", folder, "--out", out, *TINY), "cannot read image")
    assert "BytesIO" not in line and "object at 0x" not in line
    res = cli("detect", folder, "--out", out, "--skip-bad", *TINY)
    assert res.exit_code == 1, res.output
    assert "BytesIO" not in res.output
    assert_one_set_per_input(out, good)
    errors = {Path(r["image_path"]).name: r["error"] for r in rows(out, "errors.csv")}
    assert set(errors) == {"empty.png", "notes.png", "truncated.png"}
    assert "empty file (0 bytes)" in errors["empty.png"] and "not an image file" in errors["notes.png"]
    assert all(name in err for name, err in errors.items())


def test_large_image_maps_are_capped(tmp_path: Path) -> None:
    big = tmp_path / "big" / "wide.png"
    big.parent.mkdir()
    grad = np.linspace(0, 255, 4500, dtype=np.float32)[None, :, None].repeat(3000, 0).repeat(3, 2)
    Image.fromarray(grad.astype(np.uint8)).save(big)
    out = tmp_path / "out"
    res = cli("detect", big, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    (r,) = rows(out)
    assert (r["image_size"], r["map_size"]) == ("4500x3000", "4096x2731")
    assert np.load(out / r["anomaly_map_path"]).shape == (2731, 4096)
    with Image.open(out / r["overlay_path"]) as im:
        assert im.width <= 2 * 4096 + 12 and im.height < 2731 + 100
    assert json.loads((out / "manifest.json").read_text())["max_map_size"] == 4096
    out2 = tmp_path / "out2"
    assert cli("detect", big, "--out", out2, "--max-map-size", "300", *TINY).exit_code == 0
    assert rows(out2)[0]["map_size"] == "300x200"


# ------------------------------------------------------------------------------------------- crash repair
def test_torn_and_duplicate_rows_are_repaired_on_resume(three: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("detect", three[0].parent, "--out", out, *TINY).exit_code == 0
    csv_path = out / "predictions.csv"
    text = csv_path.read_text()
    lines = text.splitlines(keepends=True)
    (out / rows(out)[2]["anomaly_map_path"]).unlink()  # the crash came before this map reached the disk
    csv_path.write_text(text + lines[1] + lines[1] + lines[2][:30])  # two duplicates, then a torn row
    res = cli("detect", three[0].parent, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert "dropped" in res.output and "resuming: 2 of 3" in res.output
    assert_one_set_per_input(out, three)


def test_stale_temporary_files_are_removed(three: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("detect", three[0].parent, "--out", out, *TINY).exit_code == 0
    (out / "maps" / ".part_0-0123.npy.abc123.tmp").write_bytes(b"half a map")  # a run killed mid-write
    assert cli("detect", three[0].parent, "--out", out, *TINY).exit_code == 0
    assert_one_set_per_input(out, three)


# ------------------------------------------------------------------------------------------- records and console
def test_manifest_records_the_effective_backbone_only(three: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("detect", three[0], "--out", out, *TINY).exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["backbone"]["pretrained"] == "none" and m["backbone"]["model_name"] == "zsad-tiny"
    assert not {"backbone", "pretrained", "image_size"} & set(m["config"])
    assert m["inputs"]["paths"] == [str(three[0])]
    assert json.loads((out / "run_key.json").read_text())["inputs"] == m["inputs"]


def test_progress_prints_once_and_counts_skipped_files(three: list[Path], tmp_path: Path) -> None:
    (three[0].parent / "broken.png").write_bytes(b"\x89PNG garbage")
    res = cli("detect", three[0].parent, "--out", tmp_path / "out", "--skip-bad", *TINY)
    assert res.exit_code == 1
    scoring = [ln for ln in res.output.splitlines() if "winclip: scoring" in ln]
    overlays = [ln for ln in res.output.splitlines() if ln.startswith("overlays")]
    assert len(scoring) == 1 and "4/4" in scoring[0], res.output
    assert len(overlays) == 1 and "3/3" in overlays[0], res.output
    assert "1 files failed" in res.output and "exit code 1" in res.output


def test_tables_keep_whole_values_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    res = cli("methods")
    assert res.exit_code == 0 and "…" not in res.output
    for name in ("winclip", "sdp+", "adaclip", "dual-image", "rwda", "ViT-L-14-336"):
        assert name in res.output


def test_eval_mismatched_mask_and_reruns(tmp_path: Path) -> None:
    root = tmp_path / "set"
    normal = [_img(root / "good" / f"g{i}.png", i) for i in range(2)]
    bad = _img(root / "bad" / "b0.png", 7)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((10, 50), np.uint8)).save(root / "masks" / "b0.png")  # 5:1, the image is 4:3
    args = ["eval", "--dataset", "folder", "--root", root, "--normal-dir", "good", "--abnormal-dir", "bad"]
    out = tmp_path / "out"
    one_line_error(cli(*args, "--mask-dir", "masks", "--out", out, *TINY), "b0.png", "different aspect ratio")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / "masks" / "b0.png")
    shutil.rmtree(out)
    res = cli(*args, "--mask-dir", "masks", "--out", out, "--overlays", "0", *TINY)
    assert res.exit_code == 0, res.output
    assert sorted(r["image_path"] for r in rows(out)) == sorted(map(str, [*normal, bad]))
    assert len(list((out / "maps").rglob("*.npy"))) == 3
    res = cli(*args, "--mask-dir", "masks", "--out", out, "--overlays", "0", *TINY)  # same run: same rows
    assert res.exit_code == 0 and len(rows(out)) == 3
    one_line_error(cli(*args, "--out", out, "--overlays", "0", *TINY), "data.mask_dir")
    assert os.path.isabs(rows(out)[0]["image_path"])


@pytest.mark.parametrize("command", ["detect", "eval", "train"])
def test_every_command_refuses_a_busy_folder(three: list[Path], tmp_path: Path, command: str) -> None:
    """The lock is taken before any model loads by every command that writes a folder."""
    from zsad.outputs import RunLock

    out = tmp_path / "out"
    (tmp_path / "l.csv").write_text("id,label\npart_0,0\npart_1,1\npart_2,0\n")
    args = {
        "detect": ["detect", three[0].parent],
        "eval": ["eval", "--dataset", "folder", "--root", tmp_path, "--image-dir", "imgs", "--labels-csv", "l.csv"],
        "train": ["train", "--method", "rwda", "-o", "n_pairs=10"],
    }[command]
    with RunLock(out):
        line = one_line_error(cli(*args, "--out", out, *TINY), "another zsad run", f"PID {os.getpid()}")
    assert str(out) in line
    assert sorted(p.name for p in out.iterdir()) == [".zsad.lock"]  # nothing else written
