"""Faults with real processes: SIGKILL and Ctrl-C mid-run then resume, two runs into one folder, file modes.

Each run is ``python -m zsad`` in a child process on the tiny seeded model; afterwards the folder must hold exactly
one row, map and overlay per input, with the same bytes as a run that was never interrupted.

Then issue 25's cases that need real processes, one section per numbered item of the issue: a `zsad serve`
restart refused, files deleted during a run, a full disk (a small tmpfs), a hand-edited export manifest and the
help of the torch-free install (a child that cannot import torch), `serve --device cuda`, the console's RANDOM
weights warning, the page in a real browser, and `zsad detect --engine ray` on a local Ray. Tests that need
something this machine may lack (Ray, onnxruntime, chromium, the assets, root for the tmpfs) skip one by one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from outputs_check import (
    BB,
    NO_TORCH_CLI,
    TINY,
    assert_one_set_per_input,
    cli,
    csv_rows,
    error_line,
    needs_onnxruntime,
    needs_permissions,
    one_line_error,
    read_manifest,
    rows,
    service_detect,
    snapshot,
    subprocess_cli,
    uploads,
    write_image,
    write_images,
)
from serve_helpers import free_port, serving

from zsad import client, runs
from zsad.errors import ZsadInputError
from zsad.serve.service import ServeConfig, Service

# Ray Data binds its console log handler to sys.stderr when first imported: import it here, not inside a CliRunner
# invocation whose stream is closed afterwards (later invocations would then print "Logging error" tracebacks)
with contextlib.suppress(ImportError):
    import ray.data  # noqa: F401

needs_ray = pytest.mark.skipif(
    sys.modules.get("ray.data") is None, reason="Ray Data is not installed (pip install 'zsad[ray]')"
)

N = 40


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("many"), N)


@pytest.fixture(scope="module")
def uninterrupted(many: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    res = cli("detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY)
    assert res.exit_code == 0, res.output
    return out


def _wait_rows(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until ``predictions.csv`` holds at least ``n`` rows (the child is mid-run)."""
    end = time.monotonic() + timeout
    path = out / "predictions.csv"
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if path.exists() and path.read_text().count("\n") > n:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not get going")


def _same_as(out: Path, ref: Path) -> None:
    """Row for row and map for map, the values of a run that was never interrupted (batch size 1: bit-identical)."""
    got = {r["image_path"]: r for r in rows(out)}
    want = {r["image_path"]: r for r in rows(ref)}
    assert got.keys() == want.keys()
    for path, r in want.items():
        for field in ("pred_score", "pred_label", "threshold", "map_min", "map_max", "anomaly_map_path"):
            assert got[path][field] == r[field], (path, field)
        got_map = np.load(out / got[path]["anomaly_map_path"])
        np.testing.assert_array_equal(got_map, np.load(ref / r["anomaly_map_path"]))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_mid_run_then_resume(
    many: list[Path], uninterrupted: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGKILL leaves what was fsync'd; Ctrl-C ends in one line and exit 130. Either way the rerun completes."""
    out = tmp_path / "out"
    args = ["detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY]
    proc = subprocess_cli(*args, wait=False)
    assert isinstance(proc, subprocess.Popen)
    _wait_rows(out, 5, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
        assert len(lines) == 1 and "run the same command again to resume" in lines[0], err
    n_before = len(rows(out))
    assert 5 <= n_before < N
    res = subprocess_cli(*args)
    assert isinstance(res, subprocess.CompletedProcess)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {n_before} of {N}" in res.stderr
    assert_one_set_per_input(out, many, check_content=False)
    _same_as(out, uninterrupted)


def test_second_run_into_a_busy_folder_is_refused(many: list[Path], uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess_cli("detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY, wait=False)
    assert isinstance(proc, subprocess.Popen)
    _wait_rows(out, 2, proc)
    line = one_line_error(cli("detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY), "another zsad run")
    assert f"PID {proc.pid}" in line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_one_set_per_input(out, many, check_content=False)
    _same_as(out, uninterrupted)


def test_unreadable_image_and_read_only_output(many: list[Path], tmp_path: Path) -> None:
    """chmod 000 input: named and skipped; a read-only --out: one line, before any model loads."""
    needs_permissions()
    folder = tmp_path / "imgs"
    folder.mkdir(mode=0o755)
    for p in many[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    locked = folder / many[1].name
    locked.chmod(0o000)
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess_cli("detect", folder, "--out", out, *TINY, drop_dac=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"error: {locked}: cannot read image: Permission denied" in res.stderr
    res = subprocess_cli("detect", folder, "--out", out, "--skip-bad", *TINY, drop_dac=True)
    assert res.returncode == 1, res.stderr
    assert_one_set_per_input(out, [folder / many[0].name, folder / many[2].name], check_content=False)
    assert "Permission denied" in (out / "errors.csv").read_text()

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    for target in (read_only, read_only / "sub"):
        res = subprocess_cli("detect", folder, "--out", target, "--skip-bad", *TINY, drop_dac=True)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "permission denied, cannot write here" in errors[0], res.stderr
        assert "RANDOM" not in res.stderr  # refused before the model was built
    assert os.listdir(read_only) == []


# ---- issue 25.3: a serve restart with other settings is refused in one line
def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``zsad ARGS`` as a process; a server that starts instead of refusing is killed at ``timeout`` (a failure)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "zsad", *args], capture_output=True, text=True, timeout=timeout, env=os.environ
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"zsad {' '.join(args)}: still running after {timeout} s (it served instead of refusing)")


def test_restart_with_other_settings_is_refused_naming_the_difference(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    service_detect(svc, uploads(samples[:2]), class_name="washer")
    svc.close()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".zsad.lock"}
    for other, needle in (
        (ServeConfig(backbone=replace(BB, image_size=128), out=out), "backbone.image_size: 96 there, 128 now"),
        (ServeConfig(backbone=replace(BB, seed=7), out=out), "backbone.seed: 0 there, 7 now"),
        (ServeConfig(backbone=replace(BB, precision="bf16"), out=out), "backbone.precision: 'fp32' there, 'bf16' now"),
        (ServeConfig(backbone=BB, options={"winclip": {"temperature": 0.05}}, out=out), "options.winclip.temperature"),
    ):
        with pytest.raises(ZsadInputError) as e:
            Service(other)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".zsad.lock"}
    assert after == before  # the refused servers wrote nothing
    res = _run(["serve", "--port", str(free_port()), *TINY[:-4], "--image-size", "128", "--device", "cpu",
                "--out", str(out)])  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "backbone.image_size: 96 there, 128 now" in lines[0], res.stderr


# ---- issue 25.4: files deleted during a run are each accounted for
def test_files_deleted_during_a_run_are_each_accounted_for(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    imgs = [write_image(folder / f"img_{i:03d}.png", i, (56, 40)) for i in range(40)]
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
    m = read_manifest(out)
    assert (m["num_images"], m["num_failed"], m["num_missing_inputs"]) == (len(scored), len(failed), len(missing))


# ---- issue 25.9: one line, not a traceback (a full disk, a hand-edited export manifest, torch-free help, serve cuda)
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
    imgs = [write_image(folder / f"p{i:02d}.png", i, (120, 90)) for i in range(24)]
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


@needs_onnxruntime
def test_hand_edited_manifest_and_torch_free_help_in_one_line(sdp_model: Path, tmp_path: Path) -> None:
    """A bad manifest field is named with its value; ``zsad --help`` without torch says what works. No tracebacks.

    Before: ``"threshold": {"value": "high"}`` gave a ValueError traceback; ``zsad --help`` an import traceback.
    """
    imgs = write_images(tmp_path / "imgs", 3)
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
        error_line(done.stdout, f"{folder / 'manifest.json'}: {needle}", "must be")
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
    error_line(done.stdout, "zsad eval needs the full install (torch is not installed here): pip install 'zsad[full]'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_serve_device_cuda_without_a_gpu_is_one_line() -> None:
    res = _run(["serve", "--port", str(free_port()), *TINY[:-2], "--device", "cuda"], timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: --device cuda: no CUDA GPU"), lines


# ---- issue 25.10: serve --pretrained none says RANDOM weights on the console
def test_serve_says_random_weights_on_the_console_before_it_listens(samples: list[Path], tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serving(*TINY, log=log) as url:
        text = log.read_text()  # the server answers: what it said before listening is in the log
        warning = [ln for ln in text.splitlines() if "SEEDED RANDOM weights" in ln]
        assert len(warning) == 1 and "--pretrained none" in warning[0], text
        assert text.index("SEEDED RANDOM") < text.index("Uvicorn running on"), text
        ans = client.detect(url, [samples[0], ("bad.png", b"nope")], class_name="washer", skip_bad=True)
    assert serving.returncode == 0, log.read_text()  # type: ignore[attr-defined]
    assert len(ans["results"]) == 1 and [e["file_name"] for e in ans["errors"]] == ["bad.png"]


# ---- issue 25.5, 11: the page in a real browser: its CSV is spreadsheet-safe, it shows the notes
FORMULA_PAGE = "=HYPERLINK('http://x').png"  # browsers send a double quote in a file name as %22


def test_page_csv_is_spreadsheet_safe_and_page_shows_the_notes(browser, samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serving(*TINY, "--out", str(out), log=tmp_path / "serve.log") as url:
        page = browser.new_page(accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#method').options.length > 1")
        page.fill("#class-name", "washer")
        page.set_input_files(
            "#file-input", [{"name": FORMULA_PAGE, "mimeType": "image/png", "buffer": samples[0].read_bytes()}]
        )
        page.click("#score-btn")
        page.locator("#results-table tbody tr.result-row").first.wait_for(timeout=120_000)
        with page.expect_download() as dl:
            page.click("#csv-btn")
        text = Path(dl.value.path()).read_text()
        assert text.splitlines()[1].startswith("'=HYPERLINK('http://x').png,"), text
        table = list(csv.DictReader(io.StringIO(text)))
        assert table[0]["file_name"] == "'" + FORMULA_PAGE and table[0]["pred_label"] == ""
        assert float(table[0]["pred_score"]) == pytest.approx(float(csv_rows(out / "predictions.csv")[0]["pred_score"]))
        assert page.locator("#threshold-note").is_visible()
        assert "needs at least 3 images" in page.inner_text("#threshold-note")
        assert page.locator("#set-notes").is_hidden()
        from zsad.outputs import csv_cell  # the page's escaping equals zsad's own on formulas, numbers, plain text

        cells = ["=1+1", "+x", "-x", "@x", "\tx", "\rx", "'x", "-1.5", "+3", "-inf", "1e-3", "x=1", "", "-", "nan"]
        assert page.evaluate("xs => xs.map(csvCell)", cells) == [csv_cell(x) for x in cells]
        assert page.evaluate("() => csvCell(-0.25)") == "-0.25"
        page.select_option("#method", "musc")
        page.click("#score-btn")
        page.wait_for_function("!document.querySelector('#set-notes').hidden", timeout=120_000)
        assert "musc: a set of 1 image" in page.inner_text("#set-notes")
        assert not errors, errors
        page.close()


# ---- issue 25 on `zsad detect --engine ray`: a local Ray (2 CPUs, shared by the module's Ray tests) with the tiny
# model and real Magnetic Tile images; references are the local engine's files and hand-computed values.
MAP_BOUND = 1e-4  # docs/ray.md: a Ray map is within this fraction of the map's range of the local engine's map


@pytest.fixture(scope="module")
def tiles(assets_dir: Path) -> list[Path]:
    """Real Magnetic Tile images (jpg): 6 free of defects, then 3 with cracks."""
    root = assets_dir / "magnetic_tile"
    free = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))[:6]
    return free + sorted((root / "MT_Crack" / "Imgs").glob("*.jpg"))[:3]


def _copy(srcs: list[Path], folder: Path, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(srcs):
        dst = folder / f"{prefix}{i:02d}.jpg"
        dst.write_bytes(p.read_bytes())
        out.append(dst)
    return out


def _ray(*args: object) -> object:
    return cli("detect", *args, *TINY, "--engine", "ray")


def _robust_outlier(scores: list[float]) -> float:
    """By hand: median + 3 * 1.4826 * MAD (docs/thresholds)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    med = float(np.median(s))
    return med + 3 * 1.4826 * float(np.median(np.abs(s - med)))


# ---- issue 25.8, 11, 4 (Ray): maps match the local engine's, CSV cells are safe, a vanished input is marked
@needs_ray
@pytest.mark.assets
def test_maps_match_local_csv_cells_are_safe_and_a_vanished_input_is_marked(
    local_ray: None, tiles: list[Path], tmp_path: Path
) -> None:
    files = _copy(tiles[:6], tmp_path / "parts")
    groups = ['=HYPERLINK("http://evil.example","open")', "-2+3", "+cmd|' /C calc'!A0"]
    listing = tmp_path / "parts.csv"

    def write_list(keep: list[Path]) -> None:
        lines = ["image_path,product"] + [f'parts/{p.name},"{groups[i % 3].replace(chr(34), chr(34) * 2)}"'
                                          for i, p in enumerate(files) if p in keep]  # fmt: skip
        listing.write_text("\n".join(lines) + "\n")

    write_list(files)
    runs.detect([str(p) for p in files], tmp_path / "local", method="winclip", backbone=BB, class_name="tile",
                overlays=False)  # fmt: skip
    out = tmp_path / "ray"
    args = ["--list", listing, "--group-by", "csv:product", "--class-name", "tile", "--batch-size", "4", "--out", out]
    res = _ray(*args)
    assert res.exit_code == 0, res.output

    # 8: every map within MAP_BOUND of its range of the local engine's .npy map (float16 of absolute values: 1.5 %)
    local = {r["image_path"]: r for r in runs.read_predictions(tmp_path / "local")}
    worst = 0.0
    for r in runs.read_predictions(out):
        want = np.load(tmp_path / "local" / local[r["image_path"]]["anomaly_map_path"])
        got = runs.load_map(out, r)
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max() / (want.max() - want.min())))
    print(f"worst Ray-vs-local map difference: {worst:.3g} of the map's range")
    assert worst <= MAP_BOUND, worst

    # 11: a group named like a formula is escaped for spreadsheets, and read back exactly
    raw = {r["image_path"]: r["group"] for r in csv_rows(out / "predictions.csv")}
    assert all(g.startswith("'") for g in raw.values()), raw
    back = {r["image_path"]: r["group"] for r in runs.read_predictions(out)}
    assert back == {str(p): groups[i % 3] for i, p in enumerate(files)}

    # 4: a local input deleted before a rerun keeps its row, marked, labelled, and out of the threshold's fit
    gone = files[2]
    gone.unlink()
    write_list([p for p in files if p != gone])
    again = _ray(*args)
    assert again.exit_code == 0, again.output
    rows = {r["image_path"]: r for r in runs.read_predictions(out)}
    assert len(rows) == 6
    assert {k for k, r in rows.items() if r["input_missing"] == "1"} == {str(gone)}
    current = [float(r["pred_score"]) for k, r in rows.items() if k != str(gone)]
    thr = _robust_outlier(current)
    assert float(rows[str(gone)]["threshold"]) == pytest.approx(thr, rel=1e-6)
    for r in rows.values():
        assert r["pred_label"] == str(int(float(r["pred_score"]) > thr)) and r["threshold_source"] == "robust_outlier"
        assert r["pixel_threshold_source"] == "robust_outlier"
    m = read_manifest(out)
    assert m["num_images"] == 6 and m["num_missing_inputs"] == 1 and m["num_failed"] == 0
    text = " ".join(again.output.split())
    assert "5 images scored," in text and "input_missing" in text  # the summary counts the gone input apart


# ---- issue 25.5 (Ray): a set of 1, and too few images to decide
@needs_ray
@pytest.mark.assets
def test_a_set_of_one_gets_its_fallback_and_a_message(local_ray: None, tiles: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "line"
    _copy(tiles[:1], root / "one")
    _copy(tiles[1:4], root / "three")
    out = tmp_path / "musc"
    res = _ray(root, "--recursive", "--method", "musc", "--group-by", "parent", "--out", out)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("musc: a set of 1 image") == 1, res.output  # said once, naming its group
    assert f"(group {root / 'one'})" in text
    rows = {Path(r["image_path"]).parent.name + "/" + Path(r["image_path"]).name: r for r in runs.read_predictions(out)}
    assert float(rows["one/img00.jpg"]["pred_score"]) == 0.0  # the documented fallback
    notes = read_manifest(out)["notes"]  # the set of 3 has its own note (its interval holds no image)
    ones = [n for n in notes if n.startswith("musc: a set of 1 image")]
    assert len(ones) == 1 and ones[0].endswith(f"(group {root / 'one'})")
    assert all(" ".join(n.split()) in text for n in notes)  # each recorded note was said

    single = tmp_path / "single"
    _copy(tiles[4:5], single)
    out = tmp_path / "dual"
    res = _ray(single, "--method", "dual-image", "--group-by", "parent", "--out", out)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("dual-image: a set of 1 image") == 1, res.output
    assert "needs at least 3 images" in text and "no labels" in text
    (row,) = runs.read_predictions(out)
    assert row["pred_label"] == "" and row["threshold"] == "" and row["threshold_source"] == "none"
    m = read_manifest(out)
    assert m["threshold"]["source"] == "none" and "3 images" in m["threshold"]["note"]
    assert len(m["notes"]) == 1 and m["notes"][0].startswith("dual-image: a set of 1 image")


@needs_ray
@pytest.mark.assets
def test_two_images_are_not_a_population(local_ray: None, tiles: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "two"
    _copy(tiles[6:8], folder)
    out = tmp_path / "o"
    res = _ray(folder, "--out", out)
    assert res.exit_code == 0, res.output
    assert "needs at least 3 images to decide and there are 2" in " ".join(res.output.split())
    rows = runs.read_predictions(out)
    assert len(rows) == 2
    assert all(r["pred_label"] == "" and r["threshold"] == "" and r["threshold_source"] == "none" for r in rows)
    assert read_manifest(out)["threshold"]["source"] == "none"


# ---- issue 25.2 (Ray): every input one row or one error row
@needs_ray
@pytest.mark.assets
def test_an_all_bad_batch_and_an_all_bad_run_are_counted(local_ray: None, tiles: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(8):
        (folder / f"a{i}.png").write_bytes(b"")  # sorted first: the first batch of 8 holds only unreadable files
    good = _copy([tiles[i % len(tiles)] for i in range(8)], folder, prefix="b")
    out = tmp_path / "o"
    res = _ray(folder, "--batch-size", "8", "--out", out)
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "8 images scored this run" in text and "8 failed" in text
    assert "8 images scored," in text and "8 files failed" in text
    rows, errors = csv_rows(out / "predictions.csv"), csv_rows(out / "errors.csv")
    assert sorted(r["image_path"] for r in rows) == sorted(map(str, good))
    assert sorted(Path(r["image_path"]).name for r in errors) == [f"a{i}.png" for i in range(8)]
    m = read_manifest(out)
    assert (m["num_images"], m["num_failed"]) == (8, 8)

    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"z{i}.png").write_bytes(b"")
    out = tmp_path / "b"
    one_line_error(_ray(bad, "--out", out), "no image could be scored", "3 failures", "errors.csv")
    assert len(csv_rows(out / "errors.csv")) == 3 and csv_rows(out / "predictions.csv") == []
    m = read_manifest(out)
    assert (m["num_images"], m["num_failed"]) == (0, 3)


# ---- issue 25.1 (Ray): --out never adopts a folder
@needs_ray
@pytest.mark.assets
def test_ray_out_never_adopts_a_checkpoint_or_a_users_folder(tiles: list[Path], tmp_path: Path) -> None:
    imgs = _copy(tiles[:3], tmp_path / "imgs")
    ckpt = tmp_path / "ckpt"
    res = cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", ckpt, *TINY)
    assert res.exit_code == 0, res.output
    before = snapshot(ckpt)
    one_line_error(_ray(imgs[0].parent, "--out", ckpt), str(ckpt), "checkpoint")
    assert snapshot(ckpt) == before

    own = tmp_path / "mine"
    own.mkdir()
    (own / "manifest.json").write_text('{"my": "data"}')
    (own / "notes.txt").write_text("x")
    one_line_error(_ray(imgs[0].parent, "--out", own), "not made by zsad", "manifest.json")
    assert sorted(os.listdir(own)) == ["manifest.json", "notes.txt"]
    assert (own / "manifest.json").read_text() == '{"my": "data"}'

    before = snapshot(imgs[0].parent)
    one_line_error(_ray(imgs[0].parent, "--out", imgs[0].parent), "is also an input folder")
    assert snapshot(imgs[0].parent) == before
