"""Metrics against scikit-learn and against slow, literal references of both AUPRO definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from zsad.metrics import (
    aupro,
    aupro_cflow,
    compute_metrics,
    f1_adaptive_threshold,
    f1_max,
    image_ap,
    image_auroc,
    mean_over_categories,
)

EIGHT = np.ones((3, 3), dtype=bool)


def _sk_f1max(y: np.ndarray, s: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * p * r / (p + r)
    return float(np.max(f[np.isfinite(f)]))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_image_metrics_equal_sklearn_with_ties(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    s = np.round(rng.random(300), 2).astype(dtype)  # many ties
    y = (rng.random(300) < 0.3).astype(int)
    assert image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert image_ap(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    f1, thr = f1_max(s, y)
    assert f1 == pytest.approx(_sk_f1max(y, s), abs=1e-6)
    pred = s >= thr  # the returned threshold reproduces the F1
    tp = (pred & (y == 1)).sum()
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(f1, abs=1e-9)
    assert f1_adaptive_threshold(s, y) == thr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_metrics_equal_sklearn(dtype: type) -> None:
    rng = np.random.default_rng(3)
    maps = np.round(rng.random((6, 20, 20)), 3).astype(dtype)
    masks = np.zeros((6, 20, 20), dtype=np.uint8)
    masks[1, 3:9, 4:10] = 1
    masks[4, 10:15, 2:6] = 1
    maps[masks == 1] += 0.3
    m = compute_metrics(np.arange(6.0), np.array([0, 1, 0, 0, 1, 0]), maps, masks)
    y, s = masks.ravel(), maps.ravel()
    assert m["pixel_AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert m["pixel_AP"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert m["pixel_F1max"] == pytest.approx(_sk_f1max(y, s), abs=1e-6)


def _slow_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Literal definition: every distinct threshold, regions by scipy, interpolate at the limit, normalise."""
    regions = []
    for m, gt in zip(maps, masks, strict=True):
        lab, n = ndimage.label(gt, structure=EIGHT)
        regions += [(m, lab == k) for k in range(1, n + 1)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for th in sorted(np.unique(maps), reverse=True):
        fprs.append(float(((maps >= th) & normal).sum() / normal.sum()))
        pros.append(float(np.mean([(m[r] >= th).mean() for m, r in regions])))
    fprs, pros = np.array(fprs), np.array(pros)
    xs, ys = [0.0], [0.0]
    for i in range(1, len(fprs)):
        if fprs[i] <= limit:
            xs.append(fprs[i])
            ys.append(pros[i])
        else:
            if xs[-1] < limit:
                t = (limit - fprs[i - 1]) / (fprs[i] - fprs[i - 1])
                xs.append(limit)
                ys.append(pros[i - 1] + t * (pros[i] - pros[i - 1]))
            break
    return float(np.trapezoid(ys, xs) / limit)


def _slow_cflow(maps: np.ndarray, masks: np.ndarray, steps: int = 200, limit: float = 0.3) -> float:
    """The repos' cal_pro_score, written out literally (scipy labels instead of skimage, same 8-connectivity)."""
    max_th, min_th = maps.max(), maps.min()
    delta = (max_th - min_th) / steps
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary = (maps > th).astype(np.uint8)
        pro = []
        for b, gt in zip(binary, masks, strict=True):
            lab, n = ndimage.label(gt, structure=EIGHT)
            for k in range(1, n + 1):
                region = lab == k
                pro.append(b[region].sum() / region.sum())
        inv = 1 - masks
        fprs.append(np.logical_and(inv, binary).sum() / inv.sum())
        pros.append(np.array(pro).mean())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < limit
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return float(auc(f, pros[keep]))


def _hand_masks() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    masks = np.zeros((4, 16, 16), dtype=np.uint8)
    masks[0, 2:5, 2:5] = 1  # two regions in one image
    masks[0, 10:14, 9:15] = 1
    masks[1, 4, 4] = masks[1, 5, 5] = 1  # touching diagonally: ONE region under 8-connectivity
    masks[2, 0:16, 7] = 1  # thin region crossing the image; image 3 has no defect
    maps = np.round(rng.random((4, 16, 16)) * 0.6, 2)  # ties
    maps[masks == 1] += np.round(rng.random(int(masks.sum())) * 0.5, 2)
    return maps, masks


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_aupro_equals_slow_reference(dtype: type) -> None:
    maps, masks = _hand_masks()
    maps = maps.astype(dtype)
    assert aupro(maps, masks) == pytest.approx(_slow_aupro(maps, masks), abs=1e-9)
    for limit in (0.05, 0.3, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(_slow_aupro(maps, masks, limit), abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_aupro_cflow_equals_literal_repo_code(dtype: type) -> None:
    maps, masks = _hand_masks()
    maps = maps.astype(dtype)
    assert aupro_cflow(maps, masks) == pytest.approx(_slow_cflow(maps, masks), abs=1e-9)


def test_aupro_hand_computed_and_edge_cases() -> None:
    # One image, one 2-pixel region scored 0.9 and 0.5; 2 normal pixels scored 0.7 and 0.1.
    maps = np.array([[[0.9, 0.5, 0.7, 0.1]]])
    masks = np.array([[[1, 1, 0, 0]]])
    # Curve: (0,0) -> th .9: (0, .5) -> th .7: (.5, .5) -> th .5: (.5, 1) -> th .1: (1, 1).
    # Area on [0, 1]: 0.5 * 0.5 + 0.5 * 1 = 0.75; on [0, 0.3]: 0.3 * 0.5 = 0.15 -> 0.5 after normalising.
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.75)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.5)
    perfect = np.where(_hand_masks()[1] == 1, 1.0, 0.0)
    assert aupro(perfect, _hand_masks()[1]) == pytest.approx(1.0)
    # A constant map: one threshold flags every pixel: the curve is the diagonal (0,0)-(1,1), linearly
    # interpolated, so the normalised area below FPR 0.3 is 0.3 / 2 = 0.15 (a random scorer's value).
    assert aupro(np.zeros((1, 4, 4)), np.pad(np.ones((1, 2, 2)), ((0, 0), (1, 1), (1, 1)))) == pytest.approx(0.15)
    assert math.isnan(aupro(np.random.rand(2, 4, 4), np.zeros((2, 4, 4))))


def test_compute_metrics_keys_and_nan_behaviour() -> None:
    maps, masks = _hand_masks()
    labels = np.array([1, 1, 1, 0])
    m = compute_metrics(np.array([0.9, 0.8, 0.3, 0.1]), labels, maps, masks)
    assert set(m) == {
        "image_AUROC",
        "image_AP",
        "image_F1max",
        "pixel_AUROC",
        "pixel_AP",
        "pixel_F1max",
        "pixel_AUPRO",
        "pixel_AUPRO_cflow",
    }
    assert m["image_AUROC"] == 1.0
    one_class = compute_metrics(np.array([0.1, 0.2]), np.array([0, 0]))
    assert set(one_class) == {"image_AUROC", "image_AP", "image_F1max"} and math.isnan(one_class["image_AUROC"])
    # Images whose mask is unknown are excluded from pixel metrics.
    known = np.array([True, True, False, True])
    m2 = compute_metrics(np.arange(4.0), labels, maps, masks, has_mask=known)
    assert m2["pixel_AUROC"] == pytest.approx(roc_auc_score(masks[known].ravel(), maps[known].ravel()))


def test_mean_over_categories_ignores_nan() -> None:
    out = mean_over_categories({"a": {"x": 0.5, "y": float("nan")}, "b": {"x": 1.0, "y": 0.2}})
    assert out == {"x": 0.75, "y": 0.2}
