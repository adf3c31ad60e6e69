"""Helpers of the eval tests: recompute a run's metrics from its own outputs with scikit-learn, not with zsad.

``recompute_metrics`` reads ``predictions.csv`` (scores, labels, the saved ``.npy`` maps) and the ground-truth masks
named there, so a wrong number in ``metrics.json`` (a mix-up of rows, maps or masks, a wrong formula) is caught.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

# Keys recomputed here; AUPRO has its own reference tests (tests/unit/test_metrics.py).
RECOMPUTED = ("image_AUROC", "image_AP", "image_F1max", "pixel_AUROC", "pixel_AP", "pixel_F1max")


def _f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    return float(np.max(np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)))


def squash_mask(path: str, size: int) -> np.ndarray:
    """A mask file as the evaluation sees it: any non-zero pixel is defect, bilinear to size x size, keep >= 0.5."""
    arr = np.asarray(Image.open(path))
    if arr.ndim == 3:
        arr = arr.any(axis=-1)
    binary = Image.fromarray(np.where(arr != 0, 255, 0).astype(np.uint8))
    resized = np.asarray(binary.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return resized >= 0.5


def recompute_metrics(out: Path, category: str | None = None) -> dict[str, float]:
    """Image and pixel AUROC / AP / F1-max of one category of a run folder, from its predictions and masks.

    Pixel metrics use the images whose mask is known: a mask file, or a normal image of a dataset with masks
    (an all-zero mask); they are absent when no mask was given.
    """
    with (out / "predictions.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if category is None or r["category"] == category]
    labels = np.array([int(r["gt_label"]) for r in rows])
    scores = np.array([float(r["pred_score"]) for r in rows])
    assert len(rows) > 0 and set(labels) == {0, 1}
    res = {
        "image_AUROC": float(roc_auc_score(labels, scores)),
        "image_AP": float(average_precision_score(labels, scores)),
        "image_F1max": _f1max(labels, scores),
    }
    if not any(r["mask_path"] for r in rows):
        return res
    known = [r for r in rows if r["mask_path"] or r["gt_label"] == "0"]
    maps = np.stack([np.load(out / r["anomaly_map_path"]) for r in known])
    size = maps.shape[-1]
    assert maps.shape[1:] == (size, size)
    empty = np.zeros((size, size), dtype=bool)
    masks = np.stack([squash_mask(r["mask_path"], size) if r["mask_path"] else empty for r in known])
    pix, gt = maps.ravel().astype(np.float64), masks.ravel()
    assert gt.any() and not gt.all()
    res.update(
        pixel_AUROC=float(roc_auc_score(gt, pix)),
        pixel_AP=float(average_precision_score(gt, pix)),
        pixel_F1max=_f1max(gt, pix),
    )
    return res


def assert_metrics_match(out: Path, reported: dict[str, Any], category: str | None = None) -> dict[str, float]:
    """Every recomputable key of ``reported`` equals its recomputation (1e-6); the other keys are finite numbers."""
    expected = recompute_metrics(out, category)
    for key in RECOMPUTED:
        if key in expected:
            assert key in reported, key
            assert reported[key] == pytest.approx(expected[key], abs=1e-6), key
        else:
            assert key not in reported, key
    for key, value in reported.items():
        assert isinstance(value, float) and math.isfinite(value), key
    return expected
