"""Bad input, in process: every case ends in one line and the right exit code, and leaves exactly one row, map and
overlay per input (each holding its own input's heatmap), or nothing at all when the input was refused.

Everything here runs in this process: the CLI (``CliRunner``), the service (``Service`` and the app's
``TestClient``), the export and the torch-free runtime (``zsad.runtime.detect.run``, whose stdout is the user's screen).
The second part holds issue 25's cases, one section per numbered item of the issue: folders zsad did not make,
all-bad batches, serve restarts, inputs that vanished, no decision below three images, tables and overlays that say
what produced them, the export's pixel threshold, one-line errors, silent ignores, spreadsheet-safe CSVs, the
service's input limits and the leakage guard. Those that need real processes (kills, a full disk, a server, Ray, a
browser, a torch-free child) are in test_faults.py. The export cases need onnxruntime and skip one by one without it.

The table of these cases and what a user gets for each is docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from outputs_check import (
    BB,
    TINY,
    assert_one_set_per_input,
    cli,
    csv_rows,
    error_line,
    needs_onnxruntime,
    one_line_error,
    read_manifest,
    rows,
    service_detect,
    snapshot,
    uploads,
    write_image,
    write_images,
)
from PIL import Image

import zsad
from zsad.serve.app import create_app
from zsad.serve.service import ServeConfig, Service
from zsad.viz import image_grid, render_prediction

SIZE = 96  # the image size of TINY
WARNING_COLOR = (200, 0, 0)  # zsad.viz.overlay.WARNING_COLOR: the red of warnings on overlays
FORMULA = '=HYPERLINK("http://x","y").png'


class Payload:
    """Stands for a whole pickled model object inside a checkpoint."""


@pytest.fixture
def three(tmp_path: Path) -> list[Path]:
    return [write_image(tmp_path / "imgs" / f"part_{i}.png", i) for i in range(3)]


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
        jpgs.append(write_image(folder / f"exp{i}.jpg", i))
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
    a = write_image(tmp_path / "a" / "line" / "cam" / "2026" / "12" / "img.png", 1)
    b = write_image(tmp_path / "b" / "line" / "cam" / "2026" / "12" / "img.png", 2)
    out = tmp_path / "out"
    res = cli("detect", a, b, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    rs = assert_one_set_per_input(out, [a, b])
    assert len({r["anomaly_map_path"] for r in rs}) == 2


def test_long_and_odd_file_names(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    files = [
        write_image(folder / ("x" * 240 + ".png"), 1),
        write_image(folder / "défaut_ü_検査.png", 2),
        write_image(folder / 'a,b "c"\nd.png', 3),
        write_image(folder / "-starts-with-dash.png", 4),
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
    other = [write_image(tmp_path / "other" / f"o{i}.png", 10 + i) for i in range(2)]
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
    new = write_image(three[0].parent / "part_new.png", 9)
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
        write_image(folder / "one_pixel.png", 1, (1, 1)),
        write_image(folder / "rgba.png", 2, mode="RGBA"),
        write_image(folder / "cmyk.jpg", 3, mode="CMYK"),
        write_image(folder / "gray.png", 4, mode="L"),
    ]
    wide = folder / "sixteen_bit.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(wide)
    good.append(wide)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    full = write_image(tmp_path / "full.png", 5, (128, 96)).read_bytes()
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
    normal = [write_image(root / "good" / f"g{i}.png", i) for i in range(2)]
    bad = write_image(root / "bad" / "b0.png", 7)
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


# ======================================================================================= issue 25, one case per item
# Each case failed on the code before issue 25 (d86b122); docs/reliability.md lists them.


# ---- fixtures and helpers of the issue 25 cases (benchmark tables, the runtime in process, the service)
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's seeded weights saved as a weights file (loads as 'pretrained': random_init False)."""
    import torch

    from zsad.backbone import ClipBackbone

    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=SIZE, device="cpu", seed=0)
    torch.save(bb.model.state_dict(), path)
    return path


def _weights_args(weights: Path) -> list[str]:
    return ["--backbone", "zsad-tiny", "--weights", str(weights), "--image-size", str(SIZE), "--device", "cpu"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MPDD in its published layout: 2 train/good, 2 test/good, 2 test/defect with masks."""
    from zsad.data import make_sample_images

    src = make_sample_images(tmp_path_factory.mktemp("src"), n_normal=4, n_anomalous=2, size=64, seed=3)
    root = tmp_path_factory.mktemp("data")
    base = root / "MPDD" / "metal_plate"
    good = sorted((src / "good").glob("*.png"))
    for folder, files in (("train/good", good[:2]), ("test/good", good[2:])):
        (base / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, base / folder / f.name)
    (base / "test" / "defect").mkdir(parents=True)
    (base / "ground_truth" / "defect").mkdir(parents=True)
    for f in sorted((src / "defect").glob("*.png")):
        shutil.copy(f, base / "test" / "defect" / f.name)
        shutil.copy(src / "ground_truth" / f.name, base / "ground_truth" / "defect" / f"{f.stem}_mask.png")
    return root


def _svg_texts(path: Path) -> list[ET.Element]:
    return [e for e in ET.parse(path).getroot().iter() if e.tag.endswith("text")]


def _folder(root: Path) -> list[str]:
    return ["--dataset", "folder", "--root", str(root), "--normal-dir", "good", "--abnormal-dir", "defect",
            "--mask-dir", "ground_truth", "--class-name", "washer"]  # fmt: skip


def _red_in_caption(panel: np.ndarray) -> int:
    """Pixels of the warning colour below the [input | overlay] body (the caption strip; the font is antialiased, so
    the text's core pixels are within a few levels of the colour, not equal to it)."""
    body_h = image_grid([np.zeros((SIZE, SIZE, 3), np.uint8)] * 2, ncols=2, pad=4).shape[0]
    diff = np.abs(panel[body_h:, :, :3].astype(int) - np.array(WARNING_COLOR))
    return int((diff.max(axis=-1) <= 40).sum())


def _uncompressed(folder: Path) -> Path:
    """Re-save every image without compression: equal dimensions then mean equal byte sizes (a size-only check
    would take a different image of the same size for a training image)."""
    for p in folder.rglob("*.png"):
        Image.open(p).save(p, compress_level=0)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from zsad.data import make_sample_images

    data = _uncompressed(make_sample_images(tmp_path_factory.mktemp("train"), n_normal=3, n_anomalous=3, size=64))
    ckpt = tmp_path_factory.mktemp("ck") / "sdp_plus"
    res = cli("train", "--method", "sdp+", *_folder(data), "--epochs", "1", "--batch-size", "6", "--out", ckpt, *TINY)
    assert res.exit_code == 0, res.output
    return data, ckpt


def _runtime(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``zsad detect --model ...`` in this process: (exit code, what it printed)."""
    from zsad.runtime.detect import run

    assert args[0] == "detect"
    code = run([str(a) for a in args[1:]])  # the entry point passes what follows `detect`
    return code, capsys.readouterr().out


def _files(paths: list[Path], names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = names or [p.name for p in paths]
    return [("images", (n, p.read_bytes(), "image/png")) for n, p in zip(names, paths, strict=True)]


# ---- issue 25.1: --out never adopts a folder zsad did not make for it (torch path, export, runtime)
def test_out_never_adopts_a_folder_zsad_did_not_make_for_it(tmp_path: Path) -> None:
    imgs = [write_image(tmp_path / "imgs" / f"p{i}.png", i) for i in range(3)]
    ckpt = tmp_path / "ckpt"
    res = cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", ckpt, *TINY)
    assert res.exit_code == 0, res.output
    before = snapshot(ckpt)
    line = one_line_error(cli("detect", imgs[0].parent, "--out", ckpt, *TINY), str(ckpt), "checkpoint")
    assert "manifest.json" in line and "model.safetensors" in line  # names what the folder holds
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\np0,0\np1,1\np2,0\n")
    eval_args = ["eval", "--dataset", "folder", "--root", tmp_path, "--image-dir", "imgs", "--labels-csv", labels]
    one_line_error(cli(*eval_args, "--out", ckpt, *TINY), "checkpoint")
    assert snapshot(ckpt) == before
    res = cli("detect", imgs[0].parent, "--method", "rwda", "--checkpoint", ckpt, "--out", tmp_path / "o", *TINY)
    assert res.exit_code == 0, res.output  # the checkpoint still loads

    other = tmp_path / "other_method"  # a checkpoint of another method is never trained over
    shutil.copytree(ckpt, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "method": "sdp+"}))
    before = snapshot(other)
    one_line_error(cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", other, *TINY), "method 'sdp+'")
    assert snapshot(other) == before

    run = tmp_path / "run"
    assert cli("detect", imgs[0].parent, "--out", run, *TINY).exit_code == 0
    before = snapshot(run)
    one_line_error(cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", run, *TINY), "zsad detect")
    one_line_error(cli(*eval_args, "--out", run, *TINY), "zsad detect")
    assert snapshot(run) == before

    own = tmp_path / "mine"
    own.mkdir()
    (own / "manifest.json").write_text('{"my": "data"}')
    (own / "notes.txt").write_text("x")
    line = one_line_error(cli("detect", imgs[0].parent, "--out", own, *TINY), "not made by zsad")
    assert "manifest.json" in line and "notes.txt" in line
    assert (own / "manifest.json").read_text() == '{"my": "data"}' and sorted(os.listdir(own)) == [
        "manifest.json",
        "notes.txt",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("detect", imgs[0], "--out", empty, "--no-overlays", *TINY).exit_code == 0  # an empty folder is fine


def test_out_inside_or_equal_to_the_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "line3"
    imgs = [write_image(folder / "cam" / f"p{i}.png", i) for i in range(4)]
    one_line_error(cli("detect", folder / "cam", "--out", folder / "cam", *TINY), "is also an input folder")
    assert sorted(p.name for p in (folder / "cam").iterdir()) == [p.name for p in imgs]
    out = folder / "results"  # inside the input folder: its overlays are never scored as products
    for _ in range(2):
        res = cli("detect", folder, "--recursive", "--out", out, *TINY)
        assert res.exit_code == 0, res.output
        assert_one_set_per_input(out, imgs, check_content=False)
    other = folder / "monday"  # another run's folder under the inputs is passed over, and said so
    res = cli("detect", folder, "--recursive", "--out", other, *TINY)
    assert res.exit_code == 0, res.output
    assert len(rows(other)) == 4 and "inside a zsad output folder" in res.output


@needs_onnxruntime
def test_export_out_refuses_other_folders_and_leaves_no_stale_model(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export --out`` on a detect folder or a checkpoint: one line, byte-identical; re-export in another format.

    Before: both were adopted and their manifest.json overwritten; an ONNX re-export of an IR folder left
    model.xml and model.bin beside the new model.onnx.
    """
    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method

    imgs = write_images(tmp_path / "imgs", 3)
    code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", sdp_model, "--out", tmp_path / "det")
    assert code == 0, text
    m = create_method("sdp+", ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0))
    m.build_parts(0)
    ckpt = m.save(tmp_path / "ck", {"note": "test"})
    for folder, what in ((tmp_path / "det", "a zsad detect run"), (ckpt, "a zsad checkpoint")):
        before = snapshot(folder)
        res = cli("export", "--method", "sdp", "--class-name", "tile", "--out", folder, *TINY)
        one_line_error(res, f"--out {folder}: holds", what, "use another --out")
        assert snapshot(folder) == before
    pytest.importorskip("openvino")
    out = tmp_path / "model"
    for fmt, files in (
        ("openvino", [".zsad-folder.json", "manifest.json", "model.bin", "model.xml"]),
        ("onnx", [".zsad-folder.json", "manifest.json", "model.onnx"]),
    ):
        res = cli("export", "--method", "sdp", "--class-name", "tile", "--format", fmt, "--out", out, *TINY)
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in out.iterdir()) == files, fmt
    code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", out, "--out", tmp_path / "det2")
    assert code == 0 and "3 images scored" in text, text


@needs_onnxruntime
def test_runtime_output_folder_as_the_torch_path(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``detect --model``: foreign and input folders refused before the model opens; the folder is locked.

    Before: a checkpoint, an export or a user's folder was adopted (its manifest.json overwritten), --out equal to
    the input folder was accepted, and two runs could write one folder at once.
    """
    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method
    from zsad.outputs import RunLock

    imgs = write_images(tmp_path / "imgs", 3)
    tampered = tmp_path / "tampered"  # opening it fails: a refusal naming --out proves the folder came first
    shutil.copytree(sdp_model, tampered)
    with (tampered / "model.onnx").open("ab") as f:
        f.write(b"\0")
    m = create_method("sdp+", ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0))
    m.build_parts(0)
    user = tmp_path / "user"
    user.mkdir()
    (user / "manifest.json").write_text('{"mine": 1}\n')
    foreign = {
        m.save(tmp_path / "ck", {"note": "test"}): "holds a zsad checkpoint",
        sdp_model: "holds a model made by zsad export",
        user: "not empty and not made by zsad (holds manifest.json)",
    }
    for folder, needle in foreign.items():
        before = snapshot(folder)
        code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", tampered, "--out", folder)
        assert code == 2, text
        error_line(text, f"--out {folder}: {needle}")
        assert snapshot(folder) == before
    before = snapshot(imgs[0].parent)
    code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", sdp_model, "--out", imgs[0].parent)
    assert code == 2, text
    error_line(text, f"--out {imgs[0].parent}: is also an input folder")
    assert snapshot(imgs[0].parent) == before
    out = tmp_path / "out"
    with RunLock(out):  # another run holds the folder
        code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", sdp_model, "--out", out)
    assert code == 2, text
    error_line(text, "another zsad run (PID", "is writing to this folder")
    assert not (out / "predictions.csv").exists()


# ---- issue 25.2: every input ends as one row or one error row (all-bad batches), the counts agree
def test_skip_bad_accounts_for_a_batch_of_only_unreadable_files(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    bad = []
    for i in range(8):
        bad.append(folder / f"a_{i}.png")
        bad[-1].parent.mkdir(parents=True, exist_ok=True)
        bad[-1].write_bytes(b"")  # sorted first: the whole first batch is unreadable
    good = [write_image(folder / f"b_{i}.png", i) for i in range(8)]
    out = tmp_path / "out"
    res = cli("detect", folder, "--out", out, "--skip-bad", "--batch-size", "8", *TINY)
    assert res.exit_code == 1, res.output
    assert_one_set_per_input(out, good, check_content=False)
    errors = rows(out, "errors.csv")
    assert sorted(r["image_path"] for r in errors) == sorted(map(str, bad))
    m = read_manifest(out)
    assert (m["num_images"], m["num_failed"]) == (8, 8)
    assert "8 images scored" in res.output and "8 files failed" in res.output

    for p in good:
        p.write_bytes(b"")
    out2 = tmp_path / "out2"
    line = one_line_error(cli("detect", folder, "--out", out2, "--skip-bad", "--batch-size", "8", *TINY))
    assert "16 failures are listed" in line
    assert len(rows(out2, "errors.csv")) == 16 and read_manifest(out2)["num_failed"] == 16


def test_skip_bad_set_level_batch_of_only_unreadable_files(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        (folder / f"a_{i}.png").write_bytes(b"")
    good = [write_image(folder / f"b_{i}.png", i) for i in range(4)]
    out = tmp_path / "out"
    res = cli("detect", folder, "--method", "dual-image", "--out", out, "--skip-bad", "--batch-size", "4", *TINY)
    assert res.exit_code == 1, res.output
    assert sorted(r["image_path"] for r in rows(out)) == sorted(map(str, good))
    assert len(rows(out, "errors.csv")) == 4 and read_manifest(out)["num_failed"] == 4


@needs_onnxruntime
def test_runtime_counts_an_unreadable_batch_and_passed_over_files(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 zero-byte + 8 good files, batch 8, --skip-bad: each input one row or one error row, counts agree.

    Before: the printed line said "8 images scored" and nothing of the 8 failures, nor of the files the folder
    listing passed over (a .txt, a dangling symlink).
    """
    folder = tmp_path / "imgs"
    good = write_images(folder, 8)
    bad = []
    for i in range(8):  # sorted first: the whole first batch of 8 is unreadable
        (folder / f"a_{i}.png").write_bytes(b"")
        bad.append(folder / f"a_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    out = tmp_path / "out"
    code, text = _runtime(capsys, "detect", folder, "--model", sdp_model, "--out", out, "--batch-size", 8, "--skip-bad")
    assert code == 1, text
    scored, errors = rows(out), rows(out, "errors.csv")
    assert sorted(r["image_path"] for r in scored) == sorted(map(str, good))
    assert sorted(r["image_path"] for r in errors) == sorted(map(str, bad))
    assert all("cannot read image" in r["error"] for r in errors)
    man = json.loads((out / "manifest.json").read_text())
    assert man["num_images"] == 8 and man["num_failed"] == 8
    assert man["inputs_skipped"] == {"not an image type": 1, "dangling symlink": 1}
    last = text.splitlines()[-1]
    assert last.startswith("8 images scored, ") and "8 files failed, listed in" in last, text
    assert "passed over in the input folders: " in last
    assert "1 not an image type (notes.txt)" in last and "1 dangling symlink (gone.png)" in last


# ---- issue 25.3: serve restarts on the same --out keep every model described
def test_restart_with_the_same_settings_keeps_every_model_described(samples: list[Path], tmp_path: Path) -> None:
    from zsad.runs import read_predictions

    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    a = service_detect(svc, uploads(samples[:3]), class_name="washer")
    svc.close()
    svc = Service(ServeConfig(backbone=BB, out=out, max_batch=4))  # limits are not what decides the scores
    b = service_detect(svc, uploads(samples[3:4]), class_name="screw")
    c = service_detect(svc, uploads(samples[4:5]), method="dual-image", class_name="screw")
    svc.close()
    rows = read_predictions(out)
    assert [r["image_id"] for r in rows] == [r["image_id"] for x in (a, b, c) for r in x["results"]]
    m = read_manifest(out)
    ids = {r["model_id"] for r in rows}
    assert len(ids) == 3 and ids <= set(m["models"]), (ids, sorted(m["models"]))
    assert m["models"][a["model_id"]]["class_name"] == "washer" and m["models"][c["model_id"]]["method"] == "dual-image"
    assert m["num_images"] == 5
    sessions = m["sessions"]
    assert [s["images_scored"] for s in sessions] == [3, 2] and [s["rows_before"] for s in sessions] == [0, 3]
    assert all(s["started"] and s["stopped"] for s in sessions)
    assert sessions[0]["models"] == [a["model_id"]]
    assert sorted(sessions[1]["models"]) == sorted([b["model_id"], c["model_id"]])
    assert m["run_key"]["backbone"]["image_size"] == 96 and m["run_key"]["backbone"]["seed"] == 0


def test_folder_of_the_first_serve_format_is_adopted(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    a = service_detect(svc, uploads(samples[:1]), class_name="washer")
    b = service_detect(svc, uploads(samples[1:2]), class_name="screw")
    svc.close()
    # as the first format left it: that key, no marker, a manifest of the last session's models only, no sessions
    (out / "run_key.json").write_text(json.dumps({"command": "serve", "format": 1}))
    (out / ".zsad-folder.json").unlink(missing_ok=True)
    old = read_manifest(out)
    old["models"].pop(a["model_id"])
    for k in ("sessions", "run_key"):
        old.pop(k, None)
    (out / "manifest.json").write_text(json.dumps(old))
    svc = Service(ServeConfig(backbone=BB, out=out))
    c = service_detect(svc, uploads(samples[2:3]), class_name="washer")
    svc.close()
    key = json.loads((out / "run_key.json").read_text())
    assert key["format"] == 2 and key["backbone"]["image_size"] == 96  # upgraded
    m = read_manifest(out)
    assert b["model_id"] in m["models"] and c["model_id"] in m["models"]  # the old manifest's model kept
    assert m["undescribed_model_ids"] == [a["model_id"]] and "earlier zsad serve" in m["adopted"]
    assert len(m["sessions"]) == 2 and m["sessions"][0]["started"] is None and m["num_images"] == 3


# ---- issue 25.4: a folder that lost inputs reruns; their rows are kept, marked and left out of the threshold
def test_a_folder_that_lost_images_reruns(tmp_path: Path) -> None:
    from zsad.thresholds import choose_threshold

    folder = tmp_path / "imgs"
    imgs = [write_image(folder / f"p{i}.png", i) for i in range(6)]
    out = tmp_path / "out"
    assert cli("detect", folder, "--out", out, *TINY).exit_code == 0
    first = {r["image_path"]: r for r in rows(out)}
    for p in imgs[:2]:
        p.unlink()
    for flags in ([], ["--skip-bad"]):
        res = cli("detect", folder, "--out", out, *flags, *TINY)
        assert res.exit_code == 0, res.output
        assert "4 images scored" in res.output and "2 more rows kept" in res.output
        got = {r["image_path"]: r for r in rows(out)}
        assert got.keys() == first.keys()  # no result was lost
        gone = {str(p) for p in imgs[:2]}
        assert {k for k, r in got.items() if r["input_missing"] == "1"} == gone
        current = np.array([float(r["pred_score"]) for k, r in got.items() if k not in gone])
        thr = choose_threshold(current)
        assert float(got[str(imgs[3])]["threshold"]) == pytest.approx(thr.value, rel=1e-6)
        for k in gone:  # kept as scored, labelled by the same threshold, their overlay kept
            assert got[k]["pred_score"] == first[k]["pred_score"]
            assert got[k]["pred_label"] == str(int(float(got[k]["pred_score"]) > thr.value))
            assert (out / got[k]["overlay_path"]).is_file()
        assert read_manifest(out)["num_missing_inputs"] == 2


@needs_onnxruntime
def test_runtime_keeps_rows_of_vanished_inputs_out_of_the_threshold(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 images scored, 2 deleted, rerun: 5 rows, 2 marked input_missing, the threshold fitted to the 3 left.

    Before: the rerun refitted robust_outlier over all 5 rows (the deleted ones included) and said "5 scored".
    """
    imgs = write_images(tmp_path / "imgs", 5)
    args = ["detect", imgs[0].parent, "--model", sdp_model, "--out", tmp_path / "out"]
    code, text = _runtime(capsys, *args)
    assert code == 0, text
    for p in imgs[3:]:
        p.unlink()
    code, text = _runtime(capsys, *args)
    assert code == 0, text
    got = {r["image_path"]: r for r in rows(tmp_path / "out")}
    assert len(got) == 5 and {p for p, r in got.items() if r["input_missing"] == "0"} == set(map(str, imgs[:3]))
    left = np.array([float(got[str(p)]["pred_score"]) for p in imgs[:3]])  # robust_outlier by hand
    med = np.median(left)
    want = med + 3 * 1.4826 * np.median(np.abs(left - med))
    assert all(float(r["threshold"]) == pytest.approx(want, rel=1e-6) for r in got.values())
    assert "3 images scored" in text and "2 more rows kept from earlier runs whose input files are gone" in text
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["num_images"] == 5 and man["num_missing_inputs"] == 2


# ---- issue 25.5: one image is not a population; a set of one says what it falls back on
def test_one_image_is_not_a_population(tmp_path: Path) -> None:
    img = write_image(tmp_path / "one.png", 1)
    out = tmp_path / "out"
    res = cli("detect", img, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    (r,) = rows(out)
    assert (r["pred_label"], r["threshold"], r["threshold_source"]) == ("", "", "none")
    assert "needs at least 3 images" in res.output and "no labels" in res.output
    assert "needs at least 3 images" in read_manifest(out)["threshold"]["note"]
    res = cli("detect", img, "--out", tmp_path / "manual", "--threshold", "0.0", *TINY)
    assert rows(tmp_path / "manual")[0]["pred_label"] == "1"  # a basis given: a decision


@pytest.mark.parametrize("method", ["dual-image", "musc"])
def test_a_set_of_one_says_what_it_falls_back_on(tmp_path: Path, method: str) -> None:
    img = write_image(tmp_path / "one.png", 1)
    out = tmp_path / "out"
    res = cli("detect", img, "--method", method, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert "a set of 1 image" in res.output, res.output
    assert any("a set of 1 image" in n for n in read_manifest(out)["notes"])


@needs_onnxruntime
def test_runtime_decides_nothing_below_min_images(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 images, no recorded threshold: no threshold, empty labels, and the note says how many the rule needs.

    Before: robust_outlier labelled them (of two images it can never flag either).
    """
    few = write_images(tmp_path / "few", 2, seed=50)
    code, text = _runtime(capsys, "detect", few[0].parent, "--model", sdp_model, "--out", tmp_path / "out")
    assert code == 0, text
    for r in rows(tmp_path / "out"):
        assert r["pred_label"] == r["threshold"] == "" and r["threshold_source"] == "none"
        assert r["pixel_threshold"] == "" and r["pixel_threshold_source"] == "none"
    assert "robust_outlier needs at least 3 images to decide and there are 2" in text
    assert text.splitlines()[-1].startswith("2 images scored, no labels: robust_outlier needs at least 3")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["threshold"]["source"] == "none"


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_images_get_no_label_and_say_why(samples: list[Path], tmp_path: Path, n: int) -> None:
    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    try:
        ans = service_detect(svc, uploads(samples[:n]), class_name="washer")
        three = service_detect(svc, uploads(samples[:3]), class_name="washer")
    finally:
        svc.close()
    thr = ans["threshold"]
    assert thr["value"] is None and thr["source"] == "none", thr
    assert "needs at least 3 images" in thr["note"] and f"there {'is' if n == 1 else 'are'} {n}" in thr["note"]
    assert [r["pred_label"] for r in ans["results"]] == [None] * n
    assert {r["threshold_source"] for r in ans["results"]} == {"none"}
    rows = csv_rows(out / "predictions.csv")[:n]
    assert [(r["pred_label"], r["threshold"], r["threshold_source"]) for r in rows] == [("", "", "none")] * n
    s = np.array([r["pred_score"] for r in three["results"]], dtype=np.float64)  # three images: robust outlier
    med = np.median(s)
    assert three["threshold"]["source"] == "robust_outlier"
    assert three["threshold"]["value"] == pytest.approx(med + 3 * 1.4826 * np.median(np.abs(s - med)), rel=1e-9)


@pytest.mark.parametrize(("method", "needle"), [("musc", "musc: a set of 1 image"), ("dual-image", "no partner")])
def test_set_level_method_on_one_image_says_its_fallback(samples: list[Path], method: str, needle: str) -> None:
    svc = Service(ServeConfig(backbone=BB))
    try:
        one = service_detect(svc, uploads(samples[:1]), method=method, class_name="washer")
        five = service_detect(svc, uploads(samples[:5]), method=method, class_name="washer")
    finally:
        svc.close()
    assert len(one["notes"]) == 1 and needle in one["notes"][0], one["notes"]
    assert five["notes"] == []  # a set large enough for the method says nothing


def test_overlay_of_an_undecided_image_says_no_label_and_random_weights(samples: list[Path]) -> None:
    from zsad.runs.detect import overlay_panel
    from zsad.thresholds import Threshold

    svc = Service(ServeConfig(backbone=BB))
    try:
        c = TestClient(create_app(svc))
        res = c.post("/v1/detect", files=_files(samples[:1]), data={"class_name": "washer"}).json()["results"][0]
        served = np.asarray(Image.open(io.BytesIO(c.get(res["overlay_url"]).content)).convert("RGB"))
        amap = np.load(io.BytesIO(c.get(res["anomaly_map_npy_url"]).content))
    finally:
        svc.close()
    image = Image.open(samples[0]).convert("RGB")
    none = Threshold(float("nan"), "none")
    rng = (res["map_min"], res["map_max"])

    def panel(label: bool | None, random_weights: bool) -> np.ndarray:
        return overlay_panel(image, amap, rng, none, res["pred_score"], label, "request", random_weights=random_weights)

    want = panel(None, True)
    assert served.shape == want.shape and np.abs(served.astype(int) - want).max() <= 1
    for wrong in (panel(False, True), panel(None, False)):  # "normal" instead of "no label"; the mark missing
        assert wrong.shape != served.shape or np.abs(served.astype(int) - wrong).max() > 50


# ---- issue 25.6: every table and overlay says what produced it
def test_benchmark_table_names_backbone_weights_and_random(data_root: Path, tmp_path: Path) -> None:
    """Before: table.md/json/svg named neither the backbone nor the weights, and never said RANDOM WEIGHTS."""
    out = tmp_path / "bench"
    res = cli("benchmark", "--suite", "industrial", "--dataset", "mpdd", "--root", data_root, "--method", "sdp",
              "--out", out, *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    # the evaluation's own title line (zsad eval's metrics.md) is the reference the table must repeat
    own = (out / "mpdd" / "sdp" / "metrics.md").read_text().splitlines()[0].strip("*")
    assert "zsad-tiny @ 96px" in own and "SEEDED RANDOM" in own and "k_shot=0" in own
    md = (out / "table.md").read_text()
    head = md.split("| dataset |")[0]  # everything above the table
    assert "**RANDOM WEIGHTS" in head and f"zsad {zsad.__version__}" in head and "k-shot 0" in head
    assert f"- {own}" in head and "backbone (every method): zsad-tiny @ 96px, SEEDED RANDOM" in head
    table = json.loads((out / "table.json").read_text())
    made = table["produced_by"]
    assert table["random_weights"] is True and made["zsad_version"] == zsad.__version__ and made["k_shot"] == 0
    sdp = made["methods"]["sdp"]
    assert sdp["title"] == own and sdp["random_weights"] is True
    assert sdp["backbone"]["model_name"] == "zsad-tiny" and sdp["backbone"]["image_size"] == SIZE
    assert sdp["backbone"]["pretrained"] == "none" and sdp["backbone"]["weights"] is None
    texts = _svg_texts(out / "table.svg")
    banner = [e for e in texts if (e.text or "").startswith("RANDOM WEIGHTS")]
    assert len(banner) == 1 and banner[0].get("fill") == "#c80000" and "sdp" in (banner[0].text or "")
    assert any(e.text == own for e in texts)


def test_benchmark_table_names_a_weights_file_by_sha256(data_root: Path, tiny_weights: Path, tmp_path: Path) -> None:
    """Before: a weights file was named nowhere in the table; now by file name and sha256, and no RANDOM banner."""
    out = tmp_path / "bench"
    res = cli("benchmark", "--suite", "industrial", "--dataset", "mpdd", "--root", data_root, "--method", "sdp",
              "--out", out, *_weights_args(tiny_weights))  # fmt: skip
    assert res.exit_code == 0, res.output
    digest = _sha256(tiny_weights)
    md = (out / "table.md").read_text()
    assert f"tiny.pt sha256:{digest[:16]}" in md and "RANDOM" not in md
    table = json.loads((out / "table.json").read_text())
    assert table["random_weights"] is False
    assert table["produced_by"]["methods"]["sdp"]["backbone"]["weights"]["sha256"] == digest
    svg = (out / "table.svg").read_text()
    assert digest[:16] in svg and "RANDOM" not in svg


def test_benchmark_table_names_each_backbone_when_they_differ(tiny_weights: Path, tmp_path: Path) -> None:
    """Methods on different backbones: each method's line names its own (write_table, no model load)."""
    from zsad.runs.benchmark import BenchmarkResult, producer, write_table
    from zsad.runs.build import BackboneSpec, MethodSpec

    rnd = BackboneSpec("zsad-tiny", "none", image_size=SIZE, device="cpu")
    own = BackboneSpec("zsad-tiny", "openai", weights=tiny_weights, image_size=128, device="cpu")
    result = BenchmarkResult("industrial", k_shot=0)
    result.producers = {
        "winclip": producer(MethodSpec("winclip", rnd).validate(), 0),
        "sdp": producer(MethodSpec("sdp", own).validate(), 0),
    }
    write_table(result, ["winclip", "sdp"], tmp_path, tmp_path)
    md = (tmp_path / "table.md").read_text()
    assert "backbones differ between methods" in md and "backbone (every method)" not in md
    assert "- winclip | zsad-tiny @ 96px | SEEDED RANDOM weights" in md
    assert f"- sdp | zsad-tiny @ 128px | tiny.pt sha256:{_sha256(tiny_weights)[:16]} | k_shot=0" in md
    assert "RANDOM WEIGHTS: winclip ran on" in md  # the banner names only the random one
    texts = [e.text or "" for e in _svg_texts(tmp_path / "table.svg")]
    assert any("zsad-tiny @ 128px" in t for t in texts) and any("zsad-tiny @ 96px" in t for t in texts)
    got = json.loads((tmp_path / "table.json").read_text())["produced_by"]["methods"]
    assert got["winclip"]["random_weights"] is True and got["sdp"]["random_weights"] is False
    assert got["sdp"]["backbone"]["image_size"] == 128


def test_eval_overlays_say_random_weights(tiny_weights: Path, tmp_path: Path) -> None:
    """Before: an eval overlay made with random weights looked like any other; now its caption says so in red."""
    from zsad.data import make_sample_images

    data = make_sample_images(tmp_path / "d", n_normal=2, n_anomalous=2, size=64, seed=4)
    # a render without a warning has no red caption pixels (the weights-file run must look like it)
    plain = render_prediction(np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((SIZE, SIZE)), 0.0, 1.0, score=0.5,
                              label=True)  # fmt: skip
    assert _red_in_caption(plain) == 0
    for name, args, random in (("rnd", TINY, True), ("own", _weights_args(tiny_weights), False)):
        out = tmp_path / name
        res = cli("eval", *_folder(data), "--method", "sdp", "--out", out, *args)
        assert res.exit_code == 0, res.output
        pngs = sorted((out / "overlays").rglob("*.png"))
        assert len(pngs) == 4
        for p in pngs:
            red = _red_in_caption(np.asarray(Image.open(p).convert("RGB")))
            assert (red > 20) if random else (red == 0), (p, red)
    # the measure itself: a render with the warning has many
    from zsad.viz.overlay import RANDOM_WEIGHTS_MARK

    warned = render_prediction(np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((SIZE, SIZE)), 0.0, 1.0, score=0.5,
                               label=True, warning=RANDOM_WEIGHTS_MARK)  # fmt: skip
    assert _red_in_caption(warned) > 20


# ---- issue 25.7: one pixel threshold: the export's, as the torch path's
@needs_onnxruntime
def test_exported_pixel_threshold_is_the_torch_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same export with references: ``detect --model`` and torch ``detect`` write the same image and pixel thresholds.

    Before: the runtime fitted robust_outlier to the run's map maxima (0.635 where torch wrote 0.329).
    """
    refs = write_images(tmp_path / "refs", 5, seed=100)
    imgs = write_images(tmp_path / "imgs", 4)
    model = tmp_path / "model"
    common = ["--method", "winclip", "--class-name", "tile", "--reference-dir", refs[0].parent, "--k-shot", "2"]
    res = cli("export", *common, "--out", model, *TINY)
    assert res.exit_code == 0, res.output
    man = json.loads((model / "manifest.json").read_text())
    assert man["pixel_threshold"]["source"] == man["threshold"]["source"] == "normal_quantile"
    ref = cli("detect", imgs[0].parent, *common, "--out", tmp_path / "torch", "--no-overlays", *TINY)
    assert ref.exit_code == 0, ref.output
    code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", model, "--out", tmp_path / "rt")
    assert code == 0, text
    want = {r["image_path"]: r for r in rows(tmp_path / "torch")}
    got = {r["image_path"]: r for r in rows(tmp_path / "rt")}
    assert want.keys() == got.keys() and len(got) == 4
    for path, w in want.items():
        g = got[path]
        assert g["threshold_source"] == w["threshold_source"] == "normal_quantile"
        assert g["pixel_threshold_source"] == w["pixel_threshold_source"] == "normal_quantile"
        assert float(g["threshold"]) == pytest.approx(float(w["threshold"]), rel=1e-6)
        assert float(g["pixel_threshold"]) == pytest.approx(float(w["pixel_threshold"]), rel=1e-6)
        assert float(g["pixel_threshold"]) == pytest.approx(man["pixel_threshold"]["value"], rel=1e-7)
        assert g["pred_label"] == w["pred_label"]
    rt_man = json.loads((tmp_path / "rt" / "manifest.json").read_text())
    assert rt_man["pixel_threshold"]["source"] == "normal_quantile"
    # the rule the runtime used before (robust_outlier over this run's map maxima) gives another number here
    maxima = np.array([float(r["map_max"]) for r in got.values()])
    med = np.median(maxima)
    robust = med + 3 * 1.4826 * np.median(np.abs(maxima - med))
    assert abs(robust - man["pixel_threshold"]["value"]) > 1e-6


# ---- issue 25.9: one line, not a traceback (devices, unwritable overlays and maps)
@pytest.mark.parametrize(("device", "needle"), [("tpu", "unknown device"), ("cuda", "no CUDA GPU")])
def test_devices_this_machine_lacks(tmp_path: Path, device: str, needle: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    img = write_image(tmp_path / "one.png", 1)
    args = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", device]
    one_line_error(cli("detect", img, "--out", tmp_path / "out", *args), f"--device {device}", needle)
    assert not (tmp_path / "out").exists()


def test_an_overlay_that_cannot_be_written_is_not_an_error_row(tmp_path: Path) -> None:
    from zsad.outputs import OutputNames

    imgs = [write_image(tmp_path / "imgs" / f"p{i}.png", i) for i in range(3)]
    out = tmp_path / "out"
    assert cli("detect", imgs[0].parent, "--out", out, "--no-overlays", *TINY).exit_code == 0
    blocker = out / "overlays" / f"{OutputNames().name(imgs[1])}.png"
    blocker.mkdir(parents=True)  # a folder where the overlay must go
    res = cli("detect", imgs[0].parent, "--out", out, "--skip-bad", *TINY)
    assert res.exit_code == 1, res.output
    assert len(rows(out)) == 3 and not (out / "errors.csv").exists()  # scored: a row each, no error row
    assert [r["overlay_path"] == "" for r in rows(out)] == [False, True, False]
    m = read_manifest(out)
    assert m["num_failed"] == 0 and [e["image_path"] for e in m["overlay_errors"]] == [str(imgs[1])]
    assert "3 images scored" in res.output and "1 overlays could not be written" in res.output
    blocker.rmdir()
    res = cli("detect", imgs[0].parent, "--out", out, "--skip-bad", *TINY)  # drawn on the next run
    assert res.exit_code == 0, res.output
    assert_one_set_per_input(out, imgs)


@needs_onnxruntime
def test_runtime_unwritable_map_in_one_line(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A map that cannot be written (a folder in its place): one line naming it; with --skip-bad an error row.

    Before: an OSError traceback. (A full disk takes the same path: ``atomic_write`` names the file and reason.)
    """
    from zsad.outputs import OutputNames

    imgs = write_images(tmp_path / "imgs", 3)
    args = ["detect", imgs[0].parent, "--model", sdp_model, "--out", tmp_path / "out"]
    code, text = _runtime(capsys, *args)
    assert code == 0, text
    new = write_images(imgs[0].parent, 1, seed=60)[0]
    stem = OutputNames().name(new)
    (tmp_path / "out" / "maps" / f"{stem}.npy").mkdir()
    code, text = _runtime(capsys, *args)
    assert code == 2, text
    error_line(text, f"maps/{stem}.npy: Is a directory", "the 3 images scored so far are kept")
    code, text = _runtime(capsys, *args, "--skip-bad")
    assert code == 1, text
    errors = rows(tmp_path / "out", "errors.csv")
    assert [r["image_path"] for r in errors] == [str(new)] and f"cannot write maps/{stem}.npy" in errors[0]["error"]
    assert len(rows(tmp_path / "out")) == 3 and "3 images scored" in text and "1 files failed" in text
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["num_failed"] == 1


# ---- issue 25.10: silent ignores get one line (--k-shot without references, files passed over)
def test_k_shot_without_references_is_refused(tmp_path: Path) -> None:
    img = write_image(tmp_path / "one.png", 1)
    one_line_error(
        cli("detect", img, "--k-shot", "4", "--out", tmp_path / "out", *TINY), "--k-shot 4", "--reference-dir"
    )


def test_files_passed_over_are_counted(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = [write_image(folder / f"p{i}.png", i) for i in range(3)]
    (folder / "notes.txt").write_text("x")
    (folder / "scores.csv").write_text("x")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "out"
    res = cli("detect", folder, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert_one_set_per_input(out, imgs, check_content=False)
    assert "2 not an image type (notes.txt, scores.csv)" in res.output and "1 dangling symlink (gone.png)" in res.output
    assert read_manifest(out)["inputs_skipped"] == {"not an image type": 2, "dangling symlink": 1}
    res = cli("detect", folder, "--recursive", "--out", tmp_path / "out2", *TINY)
    assert "1 dangling symlink (gone.png)" in res.output and len(rows(tmp_path / "out2")) == 3


@needs_onnxruntime
def test_export_k_shot_without_reference_dir_is_refused(tmp_path: Path) -> None:
    """Before: ``zsad export --k-shot 2`` without ``--reference-dir`` exported a zero-shot model, exit 0."""
    out = tmp_path / "model"
    res = cli("export", "--method", "winclip", "--class-name", "tile", "--k-shot", "2", "--out", out, *TINY)
    one_line_error(res, "--k-shot 2: needs --reference-dir, the folder of normal images to take them from")
    assert "RANDOM" not in res.output and not out.exists()  # before any model loads


# ---- issue 25.11: CSV cells are spreadsheet-safe
def test_csv_cells_are_spreadsheet_safe(tmp_path: Path) -> None:
    import csv

    from zsad.outputs import CsvLog

    values = ['=HYPERLINK("http://x","y")', "+1+2", "-x", "@SUM(A1)", "\tcmd", "\rcmd", "'quoted", "-0.5", "1e-3"]
    path = tmp_path / "t.csv"
    log = CsvLog(path, ["v"])
    log.append([{"v": v} for v in values])
    with path.open(newline="") as f:
        cells = [r["v"] for r in csv.DictReader(f)]
    for v, c in zip(values, cells, strict=True):
        numeric = v in ("-0.5", "1e-3")
        assert c == (v if numeric else "'" + v), (v, c)
    assert [r["v"] for r in CsvLog(path, ["v"]).rows] == values  # read back exactly

    cat = '=HYPERLINK("evil.example","open")'
    imgs = [write_image(tmp_path / "set" / f"p{i}.png", i) for i in range(3)]
    labels = tmp_path / "set" / "labels.csv"
    labels.write_text("id,label\np0,0\np1,1\np2,0\n")
    args = ["eval", "--dataset", "folder", "--root", imgs[0].parent, "--image-dir", ".", "--labels-csv", labels]
    out = tmp_path / "out"
    assert cli(*args, "--category", cat, "--out", out, "--overlays", "0", *TINY).exit_code == 0
    with (out / "predictions.csv").open(newline="") as f:
        assert {r["category"] for r in csv.DictReader(f)} == {"'" + cat}  # what a spreadsheet opens: text
    res = cli(*args, "--category", cat, "--out", out, "--overlays", "0", *TINY)  # read back: the run resumes as is
    assert res.exit_code == 0 and len(rows(out)) == 3


def test_formula_file_name_is_escaped_in_predictions_csv(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = [FORMULA, "-1.5", "+cmd|' /C calc'!A0.png", "@SUM(A1).png"]
    svc = Service(ServeConfig(backbone=BB, out=out))
    try:
        ans = service_detect(svc, uploads([samples[0]] * 4, names))
    finally:
        svc.close()
    assert [r["file_name"] for r in ans["results"]] == names  # the answer carries the name as sent
    raw = csv_rows(out / "predictions.csv")
    assert [r["file_name"] for r in raw] == ["'" + FORMULA, "-1.5", "'+cmd|' /C calc'!A0.png", "'@SUM(A1).png"]
    assert all(not r["pred_score"].startswith("'") for r in raw)
    from zsad.outputs import read_csv
    from zsad.runs import read_predictions

    assert [r["file_name"] for r in read_csv(out / "predictions.csv")] == names  # read back exactly
    assert [r["file_name"] for r in read_predictions(out)] == names


# ---- issue 25.12: the service treats class names and uploads as input
def test_class_names_are_length_limited_and_models_counted(samples: list[Path]) -> None:
    svc = Service(ServeConfig(backbone=BB, max_models=1))
    try:
        c = TestClient(create_app(svc))
        long = "x" * 5000
        for route in ("/v1/detect", "/v1/references"):
            r = c.post(route, files=_files(samples[:1]), data={"class_name": long})
            assert r.status_code == 422 and r.json()["detail"].startswith("class_name: 5000 characters; at most 200")
        assert c.get("/v1/methods").json()["limits"]["max_class_name"] == 200
        assert c.post("/v1/detect", files=_files(samples[:1]), data={"class_name": "y" * 201}).status_code == 422
        for name in ("z" * 200, "washer", "screw", "washer"):
            assert c.post("/v1/detect", files=_files(samples[:1]), data={"class_name": name}).status_code == 200
        st = c.get("/v1/stats").json()
        assert (st["models_built"], st["models_evicted"], st["models_kept"]) == (4, 3, 1)  # washer rebuilt
    finally:
        svc.close()


def test_skip_bad_scores_the_readable_images_and_lists_the_rest(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    try:
        c = TestClient(create_app(svc))
        files = [*_files(samples[:2]), ("images", ("empty.png", b"", "image/png")),
                 ("images", ("junk.png", b"not an image", "image/png"))]  # fmt: skip
        r = c.post("/v1/detect", files=files, data={"class_name": "washer"})
        assert r.status_code == 422 and "empty.png: cannot read image: empty file" in r.json()["detail"]
        r = c.post("/v1/detect", files=files, data={"class_name": "washer", "skip_bad": "true"})
        assert r.status_code == 200, r.text
        ans = r.json()
        assert [x["file_name"] for x in ans["results"]] == [p.name for p in samples[:2]]
        assert [e["file_name"] for e in ans["errors"]] == ["empty.png", "junk.png"]
        assert "empty file" in ans["errors"][0]["error"] and "junk.png: cannot read" in ans["errors"][1]["error"]
        alone = c.post("/v1/detect", files=_files(samples[:2]), data={"class_name": "washer"}).json()
        assert [x["pred_score"] for x in ans["results"]] == pytest.approx([x["pred_score"] for x in alone["results"]])
        r = c.post("/v1/detect", files=files[2:], data={"class_name": "washer", "skip_bad": "true"})
        detail = r.json()["detail"]
        assert r.status_code == 422 and "no readable image among the 2 sent" in detail and "junk.png" in detail
        assert c.get("/v1/stats").json()["images_failed"] == 2
    finally:
        svc.close()
    assert len(csv_rows(out / "predictions.csv")) == 4  # the two requests that answered 200; the 422s wrote nothing
    assert [(e["file_name"], e["request_id"]) for e in csv_rows(out / "errors.csv")] == [
        ("empty.png", ans["request_id"]),
        ("junk.png", ans["request_id"]),
    ]
    m = read_manifest(out)
    assert m["num_images"] == 4 and m["num_failed"] == 2


# ---- issue 25.13: exactly what happens to a file found unreadable while scoring; the leakage guard compares content
def test_a_file_found_unreadable_while_scoring_says_what_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = [write_image(folder / f"p{i}.png", i) for i in range(4)]
    full = imgs[3].read_bytes()
    imgs[3].write_bytes(full[: len(full) // 2])  # truncated: its header reads fine, its pixels do not
    out = tmp_path / "out"
    line = one_line_error(cli("detect", folder, "--out", out, "--batch-size", "1", *TINY), str(imgs[3]))
    assert "3 images scored so far are kept" in line and "run the same command again to resume" in line
    assert len(rows(out)) == 3 and all(r["pred_label"] == "" for r in rows(out))  # no labels until the run ends
    imgs[3].write_bytes(full)
    res = cli("detect", folder, "--out", out, "--batch-size", "1", *TINY)
    assert res.exit_code == 0 and "resuming: 3 of 4" in res.output
    assert_one_set_per_input(out, imgs)


def test_checkpoint_records_training_images_by_content(trained: tuple[Path, Path]) -> None:
    data, ckpt = trained
    lines = (ckpt / "training_images.sha256.tsv").read_text().splitlines()
    assert lines[0] == "sha256\tbytes\tpath" and len(lines) == 1 + 6
    want = {
        str(p.resolve()): (_sha256(p), p.stat().st_size) for p in data.rglob("*.png") if p.parent.name != "ground_truth"
    }
    got = {path: (digest, int(size)) for digest, size, path in (ln.split("\t") for ln in lines[1:])}
    assert got == want
    assert len((ckpt / "training_images.txt").read_text().split()) == 6  # the old list, as older versions read it


def test_leakage_guard_sees_a_copy_of_the_training_folder(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Before: a copy of the training folder (other paths, same bytes) was evaluated as zero-shot, exit 0."""
    data, ckpt = trained
    copy = shutil.copytree(data, tmp_path / "copy")
    args = ["eval", *_folder(copy), "--method", "sdp+", "--checkpoint", ckpt, *TINY]
    line = one_line_error(cli(*args, "--out", tmp_path / "x"), "6 of 6 images were used to train", "6 of them copies")
    assert "--allow-seen" in line and not (tmp_path / "x" / "predictions.csv").exists()
    res = cli(*args, "--out", tmp_path / "y", "--allow-seen")
    assert res.exit_code == 0, res.output
    assert "6 of 6 images were in the training data (NOT zero-shot)" in (tmp_path / "y" / "metrics.md").read_text()
    # one image replaced by another of exactly the same byte size: compared by content, it is not seen
    victim = sorted((copy / "good").glob("*.png"))[0]
    before = victim.stat().st_size
    arr = np.asarray(Image.open(victim).convert("RGB")).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(victim, compress_level=0)
    assert victim.stat().st_size == before and _sha256(victim) != _sha256(data / "good" / victim.name)
    one_line_error(cli(*args, "--out", tmp_path / "z"), "5 of 6 images were used to train", "5 of them copies")


def test_old_checkpoint_without_hashes_is_still_guarded_by_path(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A checkpoint of an older version (paths only) keeps working: the training folder itself is refused.

    A guard against breaking old checkpoints, not a defect of the baseline (it passes there too)."""
    data, ckpt = trained
    old = shutil.copytree(ckpt, tmp_path / "old")
    (old / "training_images.sha256.tsv").unlink(missing_ok=True)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["training"].pop("images_hashes", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    res = cli("eval", *_folder(data), "--method", "sdp+", "--checkpoint", old, "--out", tmp_path / "x", *TINY)
    line = one_line_error(res, "6 of 6 images were used to train")
    assert "copies" not in line
