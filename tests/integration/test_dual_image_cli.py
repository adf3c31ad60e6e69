"""`zsad detect/eval --method dual-image`: the whole folder is the pairing set, across batches; resume; flags."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metrics_check import assert_metrics_match
from typer.testing import CliRunner

from zsad.cli.main import app

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zsad.data import make_sample_images

    return make_sample_images(tmp_path_factory.mktemp("samples"), n_normal=3, n_anomalous=4, size=96, seed=3)


def _run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_detect_pairs_the_whole_folder_across_batches(samples: Path, tmp_path: Path) -> None:
    """Batch size 2 on 7 images: the scores equal one batch of all 7 through the Python API (same pairing set)."""
    from zsad.backbone import ClipBackbone
    from zsad.data import ImageList
    from zsad.methods import create_method

    out = tmp_path / "out"
    opts = ["-o", "pairing=all", "-o", "bank_dtype=float32"]
    args = ["detect", str(samples / "good"), str(samples / "defect"), "--method", "dual-image", *opts]
    res = _run(*args, "--batch-size", "2", "--out", str(out), "--no-overlays", *TINY)
    assert res.exit_code == 0, res.output
    assert "TRANSDUCTIVE" in res.output and "pairing all" in res.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 7
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["transductive"] is True and manifest["config"]["pairing"] == "all"

    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method("dual-image", bb, pairing="all", bank_dtype="float32")
    m.setup(None)
    ds = ImageList([str(samples / "good"), str(samples / "defect")], image_size=96, mean=bb.mean, std=bb.std)
    pred = m.predict(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    by_path = {str(s.image_path): float(v) for s, v in zip(ds.samples, pred.pred_score, strict=True)}
    for r in rows:
        assert float(r["pred_score"]) == pytest.approx(by_path[r["image_path"]], abs=1e-5)
        parts = json.loads(r["score_parts"])
        assert parts["visual_max"] > 0 and float(r["pred_score"]) == pytest.approx(
            parts["text_prob"] + parts["map_max"], abs=1e-5
        )

    # resume: drop two rows, run again -> the same scores for them (the set is re-encoded, only they are scored)
    kept = rows[:5]
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    again = _run(*args, "--batch-size", "3", "--out", str(out), "--no-overlays", *TINY)
    assert again.exit_code == 0 and "resuming: 5 of 7" in again.output
    redone = {r["image_path"]: float(r["pred_score"]) for r in _rows(out / "predictions.csv")}
    for r in rows[5:]:
        assert redone[r["image_path"]] == pytest.approx(float(r["pred_score"]), abs=1e-5)


def test_eval_flags_dual_image_as_transductive(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    folder = ["--dataset", "folder", "--root", str(samples), "--normal-dir", "good", "--abnormal-dir", "defect"]
    folder += ["--mask-dir", "ground_truth", "--class-name", "tile"]
    res = _run("eval", *folder, "--method", "dual-image", "--out", str(out), "--batch-size", "3", *TINY)
    assert res.exit_code == 0, res.output
    md = (out / "metrics.md").read_text()
    assert "TRANSDUCTIVE" in md and "pairing nearest" in md
    metrics = json.loads((out / "metrics.json").read_text())
    (name, cat), *others = metrics["categories"].items()
    assert not others and "pixel_AUROC" in cat
    # the transductive (set-level) scores written to predictions.csv are the ones the metrics were computed on
    assert_metrics_match(out, cat, name)
    assert metrics["mean"] == pytest.approx(cat, abs=1e-12)  # one category: the mean is that category
    maps = sorted((out / "maps").rglob("*.npy"))
    assert len(maps) == 7 and np.isfinite(np.load(maps[0])).all()


def test_tta_flag(samples: Path, tmp_path: Path) -> None:
    imgs = [str(samples / "good"), str(samples / "defect")]
    small = ["-o", "tta_samples=4", "-o", "tta_epochs=1", "-o", "tta_images=3"]
    res = _run("detect", *imgs, "--method", "dual-image", "--tta", *small, "--out", str(tmp_path / "t"), *TINY)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["config"]["tta"] is True and manifest["tta"]["synthetic_images"] == 4
    assert "TTA" in res.output
    bad = _run("detect", *imgs, "--method", "winclip", "--tta", "--out", str(tmp_path / "w"), *TINY)
    assert bad.exit_code == 2 and "tta" in bad.output
