"""The CLI end to end on generated images with the tiny seeded backbone: outputs, resume, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from metrics_check import assert_metrics_match
from typer.testing import CliRunner

from zsad.cli.main import app

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zsad.data import make_sample_images

    return make_sample_images(tmp_path_factory.mktemp("samples"), n_normal=4, n_anomalous=4, size=128, seed=0)


def _run(*args: str) -> object:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_methods_lists_winclip() -> None:
    res = _run("methods")
    assert res.exit_code == 0 and "winclip" in res.output


def test_detect_writes_everything_and_resumes(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _run(
        "detect",
        str(samples / "good"),
        str(samples / "defect"),
        "--out",
        str(out),
        "--class-name",
        "tile",
        "--batch-size",
        "3",
        *TINY,
    )
    assert res.exit_code == 0, res.output
    assert "RANDOM" in res.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 8
    for r in rows:
        amap = np.load(out / r["anomaly_map_path"])
        assert amap.shape == (128, 128) and np.isfinite(amap).all()
        assert (out / r["overlay_path"]).is_file()
        assert r["pred_label"] in ("0", "1") and r["threshold_source"] == "robust_outlier"
        assert float(r["map_max"]) == pytest.approx(float(amap.max()), rel=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"]["random_init"] is True and manifest["num_images"] == 8

    # Simulate an interruption: drop 3 rows; the rerun scores only those and gives the same numbers.
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:5])
    res = _run(
        "detect", str(samples / "good"), str(samples / "defect"), "--out", str(out), "--class-name", "tile", *TINY
    )
    assert res.exit_code == 0 and "resuming: 5 of 8" in res.output
    again = {r["image_path"]: float(r["pred_score"]) for r in _rows(out / "predictions.csv")}
    assert again == pytest.approx({r["image_path"]: float(r["pred_score"]) for r in rows}, rel=1e-5)


def test_detect_refuses_to_mix_runs(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run("detect", str(samples / "good"), "--out", str(out), "--no-overlays", *TINY).exit_code == 0
    res = _run("detect", str(samples / "good"), "--out", str(out), "--class-name", "other", *TINY)
    assert res.exit_code == 2 and "other settings" in res.output


def test_detect_with_references_calibrates(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _run(
        "detect",
        str(samples / "defect"),
        "--reference-dir",
        str(samples / "good"),
        "--k-shot",
        "2",
        "--out",
        str(out),
        "--no-overlays",
        *TINY,
    )
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    assert {r["threshold_source"] for r in rows} == {"normal_quantile"}
    assert json.loads((out / "manifest.json").read_text())["k_shot"] == 2


def test_eval_folder_writes_metrics(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    res = _run(
        "eval",
        "--dataset",
        "folder",
        "--root",
        str(samples),
        "--normal-dir",
        "good",
        "--abnormal-dir",
        "defect",
        "--mask-dir",
        "ground_truth",
        "--class-name",
        "tile",
        "--out",
        str(out),
        *TINY,
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["random_weights"] is True
    (name, cat), *others = metrics["categories"].items()
    assert not others and set(cat) == {
        "image_AUROC",
        "image_AP",
        "image_F1max",
        "pixel_AUROC",
        "pixel_AP",
        "pixel_F1max",
        "pixel_AUPRO",
        "pixel_AUPRO_cflow",
    }
    # metrics.json must agree with a scikit-learn recomputation from predictions.csv, the .npy maps and the masks
    # (image and pixel AUROC / AP / F1-max); the AUPROs, checked against references in test_metrics.py, are finite
    assert_metrics_match(out, cat, name)
    md = (out / "metrics.md").read_text()
    assert "RANDOM" in md and "mean" in md


def test_eval_resumes_only_the_same_settings(samples: Path, tmp_path: Path) -> None:
    """Rows of a run with other options must not be mixed into a resumed evaluation."""
    out = tmp_path / "eval"

    def run(class_name: str = "tile", *extra: str) -> object:
        data = ["--dataset", "folder", "--root", str(samples), "--normal-dir", "good", "--abnormal-dir", "defect"]
        return _run("eval", *data, "--class-name", class_name, "--out", str(out), "--overlays", "0", *extra, *TINY)

    assert run().exit_code == 0
    rows = _rows(out / "predictions.csv")
    res = run()  # same settings: every row is kept, nothing rescored
    assert res.exit_code == 0 and _rows(out / "predictions.csv") == rows
    res = run("tile", "-o", "window_stride=2")
    assert res.exit_code == 2 and "other settings (config.window_stride: 1 there, 2 now)" in res.output
    res = run("plate")
    assert res.exit_code == 2 and "data.class_name: 'tile' there, 'plate' now" in res.output
    (out / "run_key.json").unlink()  # a folder written by an older zsad: no key to compare
    res = run()
    assert res.exit_code == 2 and "no run_key.json" in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["detect", "/nonexistent/dir"], "/nonexistent/dir"),
        (["detect", "{samples}/good", "--method", "nope"], "unknown method"),
        (["eval", "--dataset", "mvtec", "--root", "/nonexistent"], "/nonexistent"),
        (["eval", "--dataset", "folder", "--root", "{samples}", "--normal-dir", "missing_dir"], "missing_dir"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(samples: Path, args: list[str], needle: str) -> None:
    res = _run(*[a.replace("{samples}", str(samples)) for a in args], *TINY)
    assert res.exit_code == 2
    err_lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and needle in err_lines[0], res.output


def test_corrupt_image_stops_with_name_or_is_skipped(samples: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((samples / "good").iterdir())[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    res = _run("detect", str(folder), "--out", str(tmp_path / "a"), "--no-overlays", *TINY)
    assert res.exit_code == 2 and "broken.png" in res.output
    res = _run("detect", str(folder), "--out", str(tmp_path / "b"), "--no-overlays", "--skip-bad", *TINY)
    assert res.exit_code == 1
    assert len(_rows(tmp_path / "b" / "predictions.csv")) == 2
    assert "broken.png" in (tmp_path / "b" / "errors.csv").read_text()


def test_detect_two_mode_threshold(samples: Path, tmp_path: Path) -> None:
    from zsad.thresholds import otsu_threshold

    out = tmp_path / "out"
    res = _run(
        "detect",
        str(samples),
        "--recursive",
        "--out",
        str(out),
        "--class-name",
        "tile",
        "--threshold-rule",
        "two_mode",
        "--no-overlays",
        *TINY,
    )
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    scores = np.array([float(r["pred_score"]) for r in rows])
    thr = otsu_threshold(scores)
    for r, s in zip(rows, scores, strict=True):
        assert r["threshold_source"] == "two_mode" and float(r["threshold"]) == pytest.approx(thr, rel=1e-6)
        assert r["pred_label"] == str(int(s > thr))
    bad = _run("detect", str(samples), "--out", str(tmp_path / "o2"), "--threshold-rule", "otsu", *TINY)
    assert bad.exit_code == 2 and "--threshold-rule 'otsu'" in bad.output


def test_detect_musc_on_a_dinov2_backbone(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    dino = ["--backbone", "timm:vit_small_patch14_dinov2.lvd142m", "--pretrained", "none", "--image-size", "56"]
    folders = [str(samples / "good"), str(samples / "defect")]
    res = _run("detect", *folders, "--method", "musc", "--out", str(out), "--no-overlays", *dino)
    assert res.exit_code == 0, res.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 8 and all(np.isfinite(float(r["pred_score"])) for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "timm:vit_small_patch14_dinov2.lvd142m" in json.dumps(manifest)
    bad = _run("detect", str(samples), "--method", "winclip", "--out", str(tmp_path / "o2"), *dino)
    assert bad.exit_code == 2 and "vision-only" in bad.output
