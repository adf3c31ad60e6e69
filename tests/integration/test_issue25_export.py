"""Issue 25 cases of ``zsad export`` and the torch-free ``zsad detect --model`` (one per item, each failed before).

The runtime is called in this process (``runtime_detect.run``: its stdout is the user's screen); the torch-free
property itself is tested where torch is hidden (``NO_TORCH_CLI``: a child process that cannot import torch).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from outputs_check import TINY, cli, one_line_error, rows
from PIL import Image

pytest.importorskip("onnxruntime", reason="pip install 'zsad[export]'")

NO_TORCH_CLI = (
    "import sys, importlib.abc\n"
    "class NoTorch(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r} (hidden in this test)', name=name)\n"
    "sys.meta_path.insert(0, NoTorch())\n"
    "from zsad.cli.entry import main\nmain(sys.argv[1:])\n"
)


def _images(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (40, 56)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        arr = np.random.default_rng(seed + i).integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img_{seed + i:03d}.png")
        out.append(folder / f"img_{seed + i:03d}.png")
    return out


def _tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` by relative path -> sha256 (what "left byte-identical" compares)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _runtime(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``zsad detect --model ...`` in this process: (exit code, what it printed)."""
    from zsad.cli.runtime_detect import run

    assert args[0] == "detect"
    code = run([str(a) for a in args[1:]])  # the entry point passes what follows `detect`
    return code, capsys.readouterr().out


def _error_line(text: str, *needles: str) -> str:
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, text
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def sdp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SDP export with no references: no recorded thresholds (the runtime fits them per run)."""
    out = tmp_path_factory.mktemp("export") / "sdp"
    res = cli("export", "--method", "sdp", "--class-name", "tile", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out


# ------------------------------------------------------------------------------------------------ item 7
def test_exported_pixel_threshold_is_the_torch_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same export with references: ``detect --model`` and torch ``detect`` write the same image and pixel thresholds.

    Before: the runtime fitted robust_outlier to the run's map maxima (0.635 where torch wrote 0.329).
    """
    refs = _images(tmp_path / "refs", 5, seed=100)
    imgs = _images(tmp_path / "imgs", 4)
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


# ------------------------------------------------------------------------------------------------ item 9
def test_hand_edited_manifest_and_torch_free_help_in_one_line(sdp_model: Path, tmp_path: Path) -> None:
    """A bad manifest field is named with its value; ``zsad --help`` without torch says what works. No tracebacks.

    Before: ``"threshold": {"value": "high"}`` gave a ValueError traceback; ``zsad --help`` an import traceback.
    """
    imgs = _images(tmp_path / "imgs", 3)
    edits = {
        "threshold": ("threshold", {"value": "high", "source": "manual"}, 'threshold.value is "high"'),
        "pixel": ("pixel_threshold", {"value": [1], "source": "manual"}, "pixel_threshold.value is [1]"),
        "mean": ("preprocess", "mean", "preprocess.mean is"),
        "size": ("preprocess", "size", 'preprocess.image_size is "96"'),
    }
    for name, (field, value, needle) in edits.items():
        folder = tmp_path / name
        shutil.copytree(sdp_model, folder)
        man = json.loads((folder / "manifest.json").read_text())
        if value == "mean":
            man["preprocess"]["mean"] = [0.5, "a", 0.5]
        elif value == "size":
            man["preprocess"]["image_size"] = "96"
        else:
            man[field] = value
        (folder / "manifest.json").write_text(json.dumps(man))
        args = ["detect", imgs[0].parent, "--model", folder, "--out", tmp_path / f"out_{name}"]
        done = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        _error_line(done.stdout, f"{folder / 'manifest.json'}: {needle}", "must be")
        assert not (tmp_path / f"out_{name}").exists()  # refused before anything was written
    # the torch-free install: help for --help and no arguments, one line for a command that needs torch
    for args in (["--help"], []):
        done = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "zsad detect PATHS... --model DIR" in done.stdout and "torch is not installed" in done.stdout
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CLI, "eval", "--dataset", "x"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    _error_line(done.stdout, "zsad eval needs the full install (torch is not installed here): pip install zsad")


# ------------------------------------------------------------------------------------------------ item 10
def test_export_k_shot_without_reference_dir_is_refused(tmp_path: Path) -> None:
    """Before: ``zsad export --k-shot 2`` without ``--reference-dir`` exported a zero-shot model, exit 0."""
    out = tmp_path / "model"
    res = cli("export", "--method", "winclip", "--class-name", "tile", "--k-shot", "2", "--out", out, *TINY)
    one_line_error(res, "--k-shot 2: needs --reference-dir, the folder of normal images to take them from")
    assert "RANDOM" not in res.output and not out.exists()  # before any model loads


# ------------------------------------------------------------------------------------------------ item 1
def test_export_out_refuses_other_folders_and_leaves_no_stale_model(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export --out`` on a detect folder or a checkpoint: one line, byte-identical; re-export in another format.

    Before: both were adopted and their manifest.json overwritten; an ONNX re-export of an IR folder left
    model.xml and model.bin beside the new model.onnx.
    """
    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method

    imgs = _images(tmp_path / "imgs", 3)
    code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", sdp_model, "--out", tmp_path / "det")
    assert code == 0, text
    m = create_method("sdp+", ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0))
    m.build_parts(0)
    ckpt = m.save(tmp_path / "ck", {"note": "test"})
    for folder, what in ((tmp_path / "det", "a zsad detect run"), (ckpt, "a zsad checkpoint")):
        before = _tree(folder)
        res = cli("export", "--method", "sdp", "--class-name", "tile", "--out", folder, *TINY)
        one_line_error(res, f"--out {folder}: holds", what, "use another --out")
        assert _tree(folder) == before
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


# ------------------------------------------------------------------------------------------------ items 1, 2, 4, 5, 10
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

    imgs = _images(tmp_path / "imgs", 3)
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
        before = _tree(folder)
        code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", tampered, "--out", folder)
        assert code == 2, text
        _error_line(text, f"--out {folder}: {needle}")
        assert _tree(folder) == before
    before = _tree(imgs[0].parent)
    code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", sdp_model, "--out", imgs[0].parent)
    assert code == 2, text
    _error_line(text, f"--out {imgs[0].parent}: is also an input folder")
    assert _tree(imgs[0].parent) == before
    out = tmp_path / "out"
    with RunLock(out):  # another run holds the folder
        code, text = _runtime(capsys, "detect", imgs[0].parent, "--model", sdp_model, "--out", out)
    assert code == 2, text
    _error_line(text, "another zsad run (PID", "is writing to this folder")
    assert not (out / "predictions.csv").exists()


def test_runtime_counts_an_unreadable_batch_and_passed_over_files(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 zero-byte + 8 good files, batch 8, --skip-bad: each input one row or one error row, counts agree.

    Before: the printed line said "8 images scored" and nothing of the 8 failures, nor of the files the folder
    listing passed over (a .txt, a dangling symlink).
    """
    folder = tmp_path / "imgs"
    good = _images(folder, 8)
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


def test_runtime_keeps_rows_of_vanished_inputs_out_of_the_threshold(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 images scored, 2 deleted, rerun: 5 rows, 2 marked input_missing, the threshold fitted to the 3 left.

    Before: the rerun refitted robust_outlier over all 5 rows (the deleted ones included) and said "5 scored".
    """
    imgs = _images(tmp_path / "imgs", 5)
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


def test_runtime_decides_nothing_below_min_images(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 images, no recorded threshold: no threshold, empty labels, and the note says how many the rule needs.

    Before: robust_outlier labelled them (of two images it can never flag either).
    """
    few = _images(tmp_path / "few", 2, seed=50)
    code, text = _runtime(capsys, "detect", few[0].parent, "--model", sdp_model, "--out", tmp_path / "out")
    assert code == 0, text
    for r in rows(tmp_path / "out"):
        assert r["pred_label"] == r["threshold"] == "" and r["threshold_source"] == "none"
        assert r["pixel_threshold"] == "" and r["pixel_threshold_source"] == "none"
    assert "robust_outlier needs at least 3 images to decide and there are 2" in text
    assert text.splitlines()[-1].startswith("2 images scored, no labels: robust_outlier needs at least 3")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["threshold"]["source"] == "none"


def test_runtime_unwritable_map_in_one_line(
    sdp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A map that cannot be written (a folder in its place): one line naming it; with --skip-bad an error row.

    Before: an OSError traceback. (A full disk takes the same path: ``atomic_write`` names the file and reason.)
    """
    from zsad.outputs import OutputNames

    imgs = _images(tmp_path / "imgs", 3)
    args = ["detect", imgs[0].parent, "--model", sdp_model, "--out", tmp_path / "out"]
    code, text = _runtime(capsys, *args)
    assert code == 0, text
    new = _images(imgs[0].parent, 1, seed=60)[0]
    stem = OutputNames().name(new)
    (tmp_path / "out" / "maps" / f"{stem}.npy").mkdir()
    code, text = _runtime(capsys, *args)
    assert code == 2, text
    _error_line(text, f"maps/{stem}.npy: Is a directory", "the 3 images scored so far are kept")
    code, text = _runtime(capsys, *args, "--skip-bad")
    assert code == 1, text
    errors = rows(tmp_path / "out", "errors.csv")
    assert [r["image_path"] for r in errors] == [str(new)] and f"cannot write maps/{stem}.npy" in errors[0]["error"]
    assert len(rows(tmp_path / "out")) == 3 and "3 images scored" in text and "1 files failed" in text
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["num_failed"] == 1
