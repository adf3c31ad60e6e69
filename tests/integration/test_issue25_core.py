"""Issue 25 (reliability II), local detect/eval/train: each case failed on the code before the issue."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from outputs_check import TINY, assert_one_set_per_input, cli, one_line_error, rows, subprocess_cli
from PIL import Image


def _img(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes (a refused run must leave it byte-identical)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------- 1. foreign --out
def test_out_never_adopts_a_folder_zsad_did_not_make_for_it(tmp_path: Path) -> None:
    imgs = [_img(tmp_path / "imgs" / f"p{i}.png", i) for i in range(3)]
    ckpt = tmp_path / "ckpt"
    res = cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", ckpt, *TINY)
    assert res.exit_code == 0, res.output
    before = _snapshot(ckpt)
    line = one_line_error(cli("detect", imgs[0].parent, "--out", ckpt, *TINY), str(ckpt), "checkpoint")
    assert "manifest.json" in line and "model.safetensors" in line  # names what the folder holds
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\np0,0\np1,1\np2,0\n")
    eval_args = ["eval", "--dataset", "folder", "--root", tmp_path, "--image-dir", "imgs", "--labels-csv", labels]
    one_line_error(cli(*eval_args, "--out", ckpt, *TINY), "checkpoint")
    assert _snapshot(ckpt) == before
    res = cli("detect", imgs[0].parent, "--method", "rwda", "--checkpoint", ckpt, "--out", tmp_path / "o", *TINY)
    assert res.exit_code == 0, res.output  # the checkpoint still loads

    other = tmp_path / "other_method"  # a checkpoint of another method is never trained over
    shutil.copytree(ckpt, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "method": "sdp+"}))
    before = _snapshot(other)
    one_line_error(cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", other, *TINY), "method 'sdp+'")
    assert _snapshot(other) == before

    run = tmp_path / "run"
    assert cli("detect", imgs[0].parent, "--out", run, *TINY).exit_code == 0
    before = _snapshot(run)
    one_line_error(cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", run, *TINY), "zsad detect")
    one_line_error(cli(*eval_args, "--out", run, *TINY), "zsad detect")
    assert _snapshot(run) == before

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
    imgs = [_img(folder / "cam" / f"p{i}.png", i) for i in range(4)]
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


# ------------------------------------------------------------------------------------------- 2. all-bad batches
def test_skip_bad_accounts_for_a_batch_of_only_unreadable_files(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    bad = []
    for i in range(8):
        bad.append(folder / f"a_{i}.png")
        bad[-1].parent.mkdir(parents=True, exist_ok=True)
        bad[-1].write_bytes(b"")  # sorted first: the whole first batch is unreadable
    good = [_img(folder / f"b_{i}.png", i) for i in range(8)]
    out = tmp_path / "out"
    res = cli("detect", folder, "--out", out, "--skip-bad", "--batch-size", "8", *TINY)
    assert res.exit_code == 1, res.output
    assert_one_set_per_input(out, good, check_content=False)
    errors = rows(out, "errors.csv")
    assert sorted(r["image_path"] for r in errors) == sorted(map(str, bad))
    m = _manifest(out)
    assert (m["num_images"], m["num_failed"]) == (8, 8)
    assert "8 images scored" in res.output and "8 files failed" in res.output

    for p in good:
        p.write_bytes(b"")
    out2 = tmp_path / "out2"
    line = one_line_error(cli("detect", folder, "--out", out2, "--skip-bad", "--batch-size", "8", *TINY))
    assert "16 failures are listed" in line
    assert len(rows(out2, "errors.csv")) == 16 and _manifest(out2)["num_failed"] == 16


def test_skip_bad_set_level_batch_of_only_unreadable_files(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        (folder / f"a_{i}.png").write_bytes(b"")
    good = [_img(folder / f"b_{i}.png", i) for i in range(4)]
    out = tmp_path / "out"
    res = cli("detect", folder, "--method", "dual-image", "--out", out, "--skip-bad", "--batch-size", "4", *TINY)
    assert res.exit_code == 1, res.output
    assert sorted(r["image_path"] for r in rows(out)) == sorted(map(str, good))
    assert len(rows(out, "errors.csv")) == 4 and _manifest(out)["num_failed"] == 4


# ------------------------------------------------------------------------------------------- 4. lost inputs
def test_a_folder_that_lost_images_reruns(tmp_path: Path) -> None:
    from zsad.thresholds import choose_threshold

    folder = tmp_path / "imgs"
    imgs = [_img(folder / f"p{i}.png", i) for i in range(6)]
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
        assert _manifest(out)["num_missing_inputs"] == 2


def test_files_deleted_during_a_run_are_each_accounted_for(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = [_img(folder / f"img_{i:03d}.png", i, (56, 40)) for i in range(40)]
    out = tmp_path / "out"
    args = ["detect", folder, "--out", out, "--batch-size", "1", "--skip-bad", *TINY]
    proc = subprocess_cli(*args, wait=False)
    assert isinstance(proc, subprocess.Popen)
    end = time.monotonic() + 120
    while time.monotonic() < end and not (
        (out / "predictions.csv").exists() and (out / "predictions.csv").read_text().count("\n") > 3
    ):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    deleted = imgs[::2]  # some scored already, most not yet
    for p in deleted:
        p.unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    scored = {r["image_path"] for r in rows(out)}
    failed = {r["image_path"] for r in rows(out, "errors.csv")}
    assert not scored & failed and scored | failed == {str(p) for p in imgs}  # each input exactly once
    assert failed <= {str(p) for p in deleted}
    missing = {r["image_path"] for r in rows(out) if r["input_missing"] == "1"}
    assert missing == scored & {str(p) for p in deleted}
    m = _manifest(out)
    assert (m["num_images"], m["num_failed"], m["num_missing_inputs"]) == (len(scored), len(failed), len(missing))


# ------------------------------------------------------------------------------------------- 5. no basis, no decision
def test_one_image_is_not_a_population(tmp_path: Path) -> None:
    img = _img(tmp_path / "one.png", 1)
    out = tmp_path / "out"
    res = cli("detect", img, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    (r,) = rows(out)
    assert (r["pred_label"], r["threshold"], r["threshold_source"]) == ("", "", "none")
    assert "needs at least 3 images" in res.output and "no labels" in res.output
    assert "needs at least 3 images" in _manifest(out)["threshold"]["note"]
    res = cli("detect", img, "--out", tmp_path / "manual", "--threshold", "0.0", *TINY)
    assert rows(tmp_path / "manual")[0]["pred_label"] == "1"  # a basis given: a decision


@pytest.mark.parametrize("method", ["dual-image", "musc"])
def test_a_set_of_one_says_what_it_falls_back_on(tmp_path: Path, method: str) -> None:
    img = _img(tmp_path / "one.png", 1)
    out = tmp_path / "out"
    res = cli("detect", img, "--method", method, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert "a set of 1 image" in res.output, res.output
    assert any("a set of 1 image" in n for n in _manifest(out)["notes"])


# ------------------------------------------------------------------------------------------- 9. one line
@pytest.mark.parametrize(("device", "needle"), [("tpu", "unknown device"), ("cuda", "no CUDA GPU")])
def test_devices_this_machine_lacks(tmp_path: Path, device: str, needle: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    img = _img(tmp_path / "one.png", 1)
    args = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", device]
    one_line_error(cli("detect", img, "--out", tmp_path / "out", *args), f"--device {device}", needle)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    """A 160 KiB tmpfs (a real full disk); skipped where mounting is not permitted."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(where)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_named(tmp_path: Path, small_disk: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = [_img(folder / f"p{i:02d}.png", i, (120, 90)) for i in range(24)]
    out = small_disk / "out"
    res = subprocess_cli("detect", folder, "--out", out, *TINY)
    assert isinstance(res, subprocess.CompletedProcess)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(out) in lines[0], res.stderr
    shutil.rmtree(out)
    res = subprocess_cli("detect", folder, "--out", out, "--skip-bad", *TINY)
    assert isinstance(res, subprocess.CompletedProcess)
    assert "Traceback" not in res.stderr, res.stderr
    if (out / "predictions.csv").exists() and (out / "errors.csv").exists():  # what was recorded is never counted twice
        scored = {r["image_path"] for r in rows(out)}
        failed = {r["image_path"] for r in rows(out, "errors.csv")}
        assert not scored & failed and scored | failed <= {str(p) for p in imgs}


def test_an_overlay_that_cannot_be_written_is_not_an_error_row(tmp_path: Path) -> None:
    from zsad.outputs import OutputNames

    imgs = [_img(tmp_path / "imgs" / f"p{i}.png", i) for i in range(3)]
    out = tmp_path / "out"
    assert cli("detect", imgs[0].parent, "--out", out, "--no-overlays", *TINY).exit_code == 0
    blocker = out / "overlays" / f"{OutputNames().name(imgs[1])}.png"
    blocker.mkdir(parents=True)  # a folder where the overlay must go
    res = cli("detect", imgs[0].parent, "--out", out, "--skip-bad", *TINY)
    assert res.exit_code == 1, res.output
    assert len(rows(out)) == 3 and not (out / "errors.csv").exists()  # scored: a row each, no error row
    assert [r["overlay_path"] == "" for r in rows(out)] == [False, True, False]
    m = _manifest(out)
    assert m["num_failed"] == 0 and [e["image_path"] for e in m["overlay_errors"]] == [str(imgs[1])]
    assert "3 images scored" in res.output and "1 overlays could not be written" in res.output
    blocker.rmdir()
    res = cli("detect", imgs[0].parent, "--out", out, "--skip-bad", *TINY)  # drawn on the next run
    assert res.exit_code == 0, res.output
    assert_one_set_per_input(out, imgs)


# ------------------------------------------------------------------------------------------- 10. silent ignores
def test_k_shot_without_references_is_refused(tmp_path: Path) -> None:
    img = _img(tmp_path / "one.png", 1)
    one_line_error(cli("detect", img, "--k-shot", "4", "--out", tmp_path / "out", *TINY), "--k-shot 4", "--reference-dir")


def test_files_passed_over_are_counted(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = [_img(folder / f"p{i}.png", i) for i in range(3)]
    (folder / "notes.txt").write_text("x")
    (folder / "scores.csv").write_text("x")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "out"
    res = cli("detect", folder, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert_one_set_per_input(out, imgs, check_content=False)
    assert "2 not an image type (notes.txt, scores.csv)" in res.output and "1 dangling symlink (gone.png)" in res.output
    assert _manifest(out)["inputs_skipped"] == {"not an image type": 2, "dangling symlink": 1}
    res = cli("detect", folder, "--recursive", "--out", tmp_path / "out2", *TINY)
    assert "1 dangling symlink (gone.png)" in res.output and len(rows(tmp_path / "out2")) == 3


# ------------------------------------------------------------------------------------------- 11. CSV injection
def test_csv_cells_are_spreadsheet_safe(tmp_path: Path) -> None:
    import csv

    from zsad.outputs import CsvLog

    values = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-x", "@SUM(A1)", "\tcmd", "\rcmd", "'quoted", "-0.5", "1e-3"]
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
    imgs = [_img(tmp_path / "set" / f"p{i}.png", i) for i in range(3)]
    labels = tmp_path / "set" / "labels.csv"
    labels.write_text("id,label\np0,0\np1,1\np2,0\n")
    args = ["eval", "--dataset", "folder", "--root", imgs[0].parent, "--image-dir", ".", "--labels-csv", labels]
    out = tmp_path / "out"
    assert cli(*args, "--category", cat, "--out", out, "--overlays", "0", *TINY).exit_code == 0
    with (out / "predictions.csv").open(newline="") as f:
        assert {r["category"] for r in csv.DictReader(f)} == {"'" + cat}  # what a spreadsheet opens: text
    res = cli(*args, "--category", cat, "--out", out, "--overlays", "0", *TINY)  # read back: the run resumes as is
    assert res.exit_code == 0 and len(rows(out)) == 3


# ------------------------------------------------------------------------------------------- 13. exactly what happens
def test_a_file_found_unreadable_while_scoring_says_what_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = [_img(folder / f"p{i}.png", i) for i in range(4)]
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
