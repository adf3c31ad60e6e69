"""Issue 25 (reliability II), `zsad serve`: each case failed on the code before the issue.

Restarts on the same --out (item 3), no decision below three images and the set-level notes (5), the console's
random-weights warning (10), spreadsheet-safe file names in predictions.csv and the page's CSV (11), class names
and unreadable uploads as input (12), and --device cuda without a GPU (9).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import TINY, free_port, serving

from zsad import client
from zsad.errors import ZsadInputError
from zsad.runs.build import BackboneSpec
from zsad.serve.app import create_app
from zsad.serve.service import ServeConfig, Service, Upload

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
FORMULA = '=HYPERLINK("http://x","y").png'
FORMULA_PAGE = "=HYPERLINK('http://x').png"  # browsers send a double quote in a file name as %22


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from zsad.data import make_sample_images

    root = make_sample_images(tmp_path_factory.mktemp("samples"), n_normal=3, n_anomalous=2, size=64, seed=3)
    return sorted((root / "good").glob("*.png")) + sorted((root / "defect").glob("*.png"))


def _up(paths: list[Path], names: list[str] | None = None) -> list[Upload]:
    return [Upload(n, p.read_bytes()) for n, p in zip(names or [p.name for p in paths], paths, strict=True)]


def _detect(svc: Service, uploads: list[Upload], **kw: object) -> dict:
    return asyncio.run(svc.detect(uploads, **kw))  # type: ignore[arg-type]


def _files(paths: list[Path], names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = names or [p.name for p in paths]
    return [("images", (n, p.read_bytes(), "image/png")) for n, p in zip(names, paths, strict=True)]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``zsad ARGS`` as a process; a server that starts instead of refusing is killed at ``timeout`` (a failure)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "zsad", *args], capture_output=True, text=True, timeout=timeout, env=os.environ
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"zsad {' '.join(args)}: still running after {timeout} s (it served instead of refusing)")


# ------------------------------------------------------------------------------------------- 3. restarts
def test_restart_with_other_settings_is_refused_naming_the_difference(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    _detect(svc, _up(samples[:2]), class_name="washer")
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


def test_restart_with_the_same_settings_keeps_every_model_described(samples: list[Path], tmp_path: Path) -> None:
    from zsad.runs import read_predictions

    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    a = _detect(svc, _up(samples[:3]), class_name="washer")
    svc.close()
    svc = Service(ServeConfig(backbone=BB, out=out, max_batch=4))  # limits are not what decides the scores
    b = _detect(svc, _up(samples[3:4]), class_name="screw")
    c = _detect(svc, _up(samples[4:5]), method="dual-image", class_name="screw")
    svc.close()
    rows = read_predictions(out)
    assert [r["image_id"] for r in rows] == [r["image_id"] for x in (a, b, c) for r in x["results"]]
    m = _manifest(out)
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
    a = _detect(svc, _up(samples[:1]), class_name="washer")
    b = _detect(svc, _up(samples[1:2]), class_name="screw")
    svc.close()
    # as the first format left it: that key, no marker, a manifest of the last session's models only, no sessions
    (out / "run_key.json").write_text(json.dumps({"command": "serve", "format": 1}))
    (out / ".zsad-folder.json").unlink(missing_ok=True)
    old = _manifest(out)
    old["models"].pop(a["model_id"])
    for k in ("sessions", "run_key"):
        old.pop(k, None)
    (out / "manifest.json").write_text(json.dumps(old))
    svc = Service(ServeConfig(backbone=BB, out=out))
    c = _detect(svc, _up(samples[2:3]), class_name="washer")
    svc.close()
    key = json.loads((out / "run_key.json").read_text())
    assert key["format"] == 2 and key["backbone"]["image_size"] == 96  # upgraded
    m = _manifest(out)
    assert b["model_id"] in m["models"] and c["model_id"] in m["models"]  # the old manifest's model kept
    assert m["undescribed_model_ids"] == [a["model_id"]] and "earlier zsad serve" in m["adopted"]
    assert len(m["sessions"]) == 2 and m["sessions"][0]["started"] is None and m["num_images"] == 3


# ------------------------------------------------------------------------------------------- 5. one image
@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_images_get_no_label_and_say_why(samples: list[Path], tmp_path: Path, n: int) -> None:
    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    try:
        ans = _detect(svc, _up(samples[:n]), class_name="washer")
        three = _detect(svc, _up(samples[:3]), class_name="washer")
    finally:
        svc.close()
    thr = ans["threshold"]
    assert thr["value"] is None and thr["source"] == "none", thr
    assert "needs at least 3 images" in thr["note"] and f"there {'is' if n == 1 else 'are'} {n}" in thr["note"]
    assert [r["pred_label"] for r in ans["results"]] == [None] * n
    assert {r["threshold_source"] for r in ans["results"]} == {"none"}
    rows = _rows(out / "predictions.csv")[:n]
    assert [(r["pred_label"], r["threshold"], r["threshold_source"]) for r in rows] == [("", "", "none")] * n
    s = np.array([r["pred_score"] for r in three["results"]], dtype=np.float64)  # three images: robust outlier
    med = np.median(s)
    assert three["threshold"]["source"] == "robust_outlier"
    assert three["threshold"]["value"] == pytest.approx(med + 3 * 1.4826 * np.median(np.abs(s - med)), rel=1e-9)


@pytest.mark.parametrize(("method", "needle"), [("musc", "musc: a set of 1 image"), ("dual-image", "no partner")])
def test_set_level_method_on_one_image_says_its_fallback(samples: list[Path], method: str, needle: str) -> None:
    svc = Service(ServeConfig(backbone=BB))
    try:
        one = _detect(svc, _up(samples[:1]), method=method, class_name="washer")
        five = _detect(svc, _up(samples[:5]), method=method, class_name="washer")
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


# ------------------------------------------------------------------------------------------- 11. formulas
def test_formula_file_name_is_escaped_in_predictions_csv(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = [FORMULA, "-1.5", "+cmd|' /C calc'!A0.png", "@SUM(A1).png"]
    svc = Service(ServeConfig(backbone=BB, out=out))
    try:
        ans = _detect(svc, _up([samples[0]] * 4, names))
    finally:
        svc.close()
    assert [r["file_name"] for r in ans["results"]] == names  # the answer carries the name as sent
    raw = _rows(out / "predictions.csv")
    assert [r["file_name"] for r in raw] == ["'" + FORMULA, "-1.5", "'+cmd|' /C calc'!A0.png", "'@SUM(A1).png"]
    assert all(not r["pred_score"].startswith("'") for r in raw)
    from zsad.outputs import read_csv
    from zsad.runs import read_predictions

    assert [r["file_name"] for r in read_csv(out / "predictions.csv")] == names  # read back exactly
    assert [r["file_name"] for r in read_predictions(out)] == names


# ------------------------------------------------------------------------------------------- 12. class names, bad files
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
    assert len(_rows(out / "predictions.csv")) == 4  # the two requests that answered 200; the 422s wrote nothing
    assert [(e["file_name"], e["request_id"]) for e in _rows(out / "errors.csv")] == [
        ("empty.png", ans["request_id"]),
        ("junk.png", ans["request_id"]),
    ]
    m = _manifest(out)
    assert m["num_images"] == 4 and m["num_failed"] == 2


# ------------------------------------------------------------------------------------------- 10. console, client
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


# ------------------------------------------------------------------------------------------- 9. --device
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_serve_device_cuda_without_a_gpu_is_one_line() -> None:
    res = _run(["serve", "--port", str(free_port()), *TINY[:-2], "--device", "cuda"], timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: --device cuda: no CUDA GPU"), lines


# ------------------------------------------------------------------------------------------- the page (5, 11)
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("no chromium on PATH: apt-get install -y chromium (.ci/run installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


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
        assert float(table[0]["pred_score"]) == pytest.approx(float(_rows(out / "predictions.csv")[0]["pred_score"]))
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
