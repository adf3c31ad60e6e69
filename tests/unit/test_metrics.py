"""Metrics against scikit-learn and against slow, literal references of both AUPRO definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from zsad.metrics import (
    IMAGE_KEYS,
    PIXEL_KEYS,
    aupro,
    aupro_cflow,
    cflow_thresholds,
    compute_metrics,
    f1_adaptive_threshold,
    f1_max,
    image_ap,
    image_auroc,
    label_regions,
    mean_over_categories,
    normal_quantile_threshold,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pixel_metrics,
)

EIGHT = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------- references


def sk_f1_max(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    p, r, t = precision_recall_curve(y, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * p * r / (p + r)
    f = np.nan_to_num(f[:-1], nan=0.0)  # the last PR point (P=1, R=0) has no threshold
    best = int(np.argmax(f))
    return float(f[best]), float(t[best])


def slow_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Every distinct threshold, regions labelled per image, PRO and FPR counted literally, curve cut at ``limit``."""
    masks = masks > 0
    regions = []
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=EIGHT)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        pro = np.mean([flagged[i][reg].sum() / reg.sum() for i, reg in regions])
        points.append(((flagged & normal).sum() / normal.sum(), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_cut = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_cut) / 2
    return area / limit


def repo_cal_pro_score(masks: np.ndarray, amaps: np.ndarray, max_step: int = 200, expect_fpr: float = 0.3) -> float:
    """cflow-ad's ``cal_pro_score`` written out literally (scipy's 8-connected labels in place of skimage's)."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks, strict=True):
            lab, n = ndimage.label(mask, structure=EIGHT)
            for k in range(1, n + 1):
                region = lab == k
                pro.append(binary_amap[region].sum() / region.sum())
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        fprs.append(fp_pixels / inverse_masks.sum())
        pros.append(np.array(pro).mean())
    pros, fprs = np.array(pros), np.array(fprs)
    idxes = fprs < expect_fpr
    fprs = fprs[idxes]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros[idxes]))


# ---------------------------------------------------------------- data


def hand_masks() -> np.ndarray:
    """Several regions per image, a defect-free image, diagonal contacts (one region under 8-connectivity)."""
    m = np.zeros((4, 12, 12), dtype=np.int64)
    m[0, 1:4, 1:4] = 1
    m[0, 7:11, 6:8] = 1
    m[0, 9, 1] = 1  # single-pixel region
    # image 1: no defect
    m[2, 2:4, 2:4] = 1
    m[2, 4:6, 4:6] = 1  # touches the block above only at a corner
    m[2, 0, 11] = 1
    m[2, 1, 10] = 1  # diagonal pair
    m[3, 5:9, 3:10] = 1
    return m


def blob_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    m = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, 1.5, 1.5)) > 0.56
    m[rng.random(n) < 0.3] = False  # some images without defects
    m[0, 2:5, 2:5] = True  # at least one region
    return m.astype(np.int64)


def scored(rng: np.random.Generator, masks: np.ndarray, decimals: int, dtype: type) -> np.ndarray:
    maps = rng.random(masks.shape) + 0.4 * masks * rng.random(masks.shape)
    return np.round(maps / 1.4, decimals).astype(dtype)  # rounding makes many ties


# ---------------------------------------------------------------- image metrics


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_image_metrics_equal_sklearn_with_ties(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    s = (np.round(rng.normal(size=n), int(rng.integers(0, 3)))).astype(dtype)
    y = (rng.random(n) < rng.uniform(0.05, 0.9)).astype(int)
    y[:2] = [0, 1]
    assert image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert image_ap(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    f1, thr = f1_max(s, y)
    sk_f1, sk_thr = sk_f1_max(y, s)
    assert f1 == pytest.approx(sk_f1, abs=1e-6)
    assert thr == sk_thr  # same point, same tie rule
    pred = s >= thr  # the threshold reproduces its F1
    tp = int((pred & (y == 1)).sum())
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(f1, abs=1e-12)
    assert f1_adaptive_threshold(s, y) == thr


def test_signed_zeros_tie_and_torch_inputs() -> None:
    s = np.array([-0.0, 0.0, 0.0, -0.0, -1.5, 2.0, -0.0, 0.0], dtype=np.float32)
    y = np.array([1, 0, 1, 0, 0, 1, 0, 1])
    assert image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_ap(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert image_auroc(torch.from_numpy(s), torch.from_numpy(y)) == image_auroc(s, y)
    assert f1_max(torch.from_numpy(s).to(torch.bfloat16), torch.from_numpy(y)) == f1_max(s, y)


def test_single_class_and_invalid_scores() -> None:
    s = np.array([0.1, 0.4, 0.3])
    assert math.isnan(image_auroc(s, np.ones(3)))
    assert math.isnan(image_auroc(s, np.zeros(3)))
    assert math.isnan(image_ap(s, np.zeros(3)))
    assert all(math.isnan(v) for v in f1_max(s, np.zeros(3)))
    assert image_ap(s, np.ones(3)) == 1.0  # defined (sklearn agrees); compute_metrics still reports NaN
    with pytest.raises(ValueError, match="finite"):
        image_auroc(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError):
        image_auroc(s, np.array([0, 1]))


def test_thresholds() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=1000)
    thr = normal_quantile_threshold(s, q=0.95, margin=0.1)
    assert thr == pytest.approx(float(np.quantile(s, 0.95)) + 0.1)
    assert (s > normal_quantile_threshold(s, q=0.99)).mean() == pytest.approx(0.01, abs=0.002)
    assert normal_quantile_threshold(torch.tensor([1.0, 2.0, 3.0]), q=0.5) == 2.0
    with pytest.raises(ValueError):
        normal_quantile_threshold(np.zeros(0))


# ---------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_pixel_metrics_equal_sklearn_on_flattened(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 5, 24)
    maps = scored(rng, masks, 2, dtype)
    y, s = masks.ravel(), maps.ravel()
    got = pixel_metrics(maps, masks)
    assert got["pixel_AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert got["pixel_AP"] == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert got["pixel_F1max"] == pytest.approx(sk_f1_max(y, s)[0], abs=1e-6)
    assert pixel_auroc(maps, masks) == got["pixel_AUROC"]
    assert pixel_ap(torch.from_numpy(maps), torch.from_numpy(masks)) == got["pixel_AP"]
    f1, thr = pixel_f1_max(maps, masks)
    assert f1 == got["pixel_F1max"]
    pred = maps >= thr
    assert 2 * (pred & (masks == 1)).sum() / (pred.sum() + masks.sum()) == pytest.approx(f1, abs=1e-12)


def test_float32_and_float64_maps_agree() -> None:
    """float32 maps, the same values as float64, and float64 shifted off float32 (order kept): same numbers."""
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 4, 20)
    maps32 = scored(rng, masks, 3, np.float32)
    a = pixel_metrics(maps32, masks)
    assert pixel_metrics(maps32.astype(np.float64), masks) == a
    # + 2**-30 is exact in float64 and keeps every order and tie.
    shifted = maps32.astype(np.float64) + 2.0**-30
    assert not np.array_equal(shifted.astype(np.float32), shifted)
    c = pixel_metrics(shifted, masks)
    for k in ("pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO"):  # cflow's thresholds move with the shift
        assert a[k] == pytest.approx(c[k], abs=1e-12), k


# ---------------------------------------------------------------- AUPRO, anomalib definition


def test_label_regions_is_per_image_eight_connected() -> None:
    m = hand_masks() > 0
    regions, n = label_regions(m)
    per_image = sum(ndimage.label(x, structure=EIGHT)[1] for x in m)
    assert n == per_image == 6
    assert len(np.unique(regions[2])) - 1 == 2  # corner-touching blocks and the diagonal pair: one region each
    stacked = np.ones((2, 3, 3), dtype=bool)  # a region never spans two images
    assert label_regions(stacked)[1] == 2


@pytest.mark.parametrize("decimals", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_aupro_equals_slow_reference_on_hand_masks(decimals: int, dtype: type) -> None:
    rng = np.random.default_rng(decimals)
    masks = hand_masks()
    maps = scored(rng, masks, decimals, dtype)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(slow_aupro(maps, masks, limit), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_equals_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    masks = blob_masks(rng, 4, 20)
    maps = scored(rng, masks, 2, np.float32)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=1e-9)


def test_aupro_hand_computed() -> None:
    # Region of 2 pixels scored 0.9 and 0.4; normals 0.7, 0.3, 0.1. Curve: (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1)
    maps = np.array([[[0.9, 0.4, 0.7, 0.3, 0.1]]])
    masks = np.array([[[1, 1, 0, 0, 0]]])
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx(2 / 3, abs=1e-12)  # (1/6 + 1/6) / 0.5
    assert aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)  # 0.5 * 0.3 / 0.3
    # Anomaly tied with two of five normals: (0,0) -> (0.4, 1); cut at 0.3 gives PRO 0.75; 0.3 * 0.75 / 2 / 0.3
    maps = np.array([[[0.5, 0.5, 0.5, 0.1, 0.1, 0.1]]])
    masks = np.array([[[1, 0, 0, 0, 0, 0]]])
    assert aupro(maps, masks) == pytest.approx(0.375, abs=1e-12)
    # 8-connectivity: pixel (0,0) and block (1,1)-(1,2) are ONE region of 3 (4-connectivity would give 0.5).
    masks = np.zeros((1, 3, 3), dtype=int)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = 1
    maps = np.where(masks == 1, 0.1, 0.5)
    maps[0, 0, 0] = 0.9
    assert aupro(maps, masks) == pytest.approx(1 / 3, abs=1e-12)


def test_aupro_perfect_constant_and_degenerate() -> None:
    masks = hand_masks()
    perfect = masks * 2.0 + np.random.default_rng(0).random(masks.shape)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(np.full(masks.shape, 0.7), masks) == pytest.approx(0.15, abs=1e-12)  # documented: limit / 2
    assert aupro(np.full(masks.shape, 0.7), masks, fpr_limit=0.5) == pytest.approx(0.25, abs=1e-12)
    assert math.isnan(aupro(perfect, np.zeros_like(masks)))  # no region
    assert math.isnan(aupro(perfect, np.ones_like(masks)))  # no normal pixel
    with pytest.raises(ValueError):
        aupro(perfect, masks, fpr_limit=0.0)


# ---------------------------------------------------------------- AUPRO, cflow / repos definition


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_aupro_cflow_equals_literal_repo_code(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(200 + seed)
    masks = hand_masks() if seed == 0 else blob_masks(rng, 3, 16)
    maps = scored(rng, masks, 3 if seed % 2 else 2, dtype)
    assert aupro_cflow(maps, masks) == pytest.approx(repo_cal_pro_score(masks, maps), abs=1e-9)
    assert aupro_cflow(torch.from_numpy(maps), torch.from_numpy(masks)) == aupro_cflow(maps, masks)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_aupro_cflow_strict_comparison_on_scores_equal_to_thresholds(dtype: type) -> None:
    """Integer scores 0..200 make every threshold 0, 1, ..., 199 a score value: ``>`` versus ``>=`` shows."""
    rng = np.random.default_rng(3)
    masks = hand_masks()
    maps = (rng.integers(0, 140, masks.shape) + 60 * masks).astype(dtype)
    maps.flat[0], maps.flat[1] = 0, 200
    assert np.array_equal(cflow_thresholds(maps.min(), maps.max(), maps.dtype), np.arange(200))
    assert aupro_cflow(maps, masks) == pytest.approx(repo_cal_pro_score(masks, maps), abs=1e-9)


def test_aupro_cflow_keeps_the_201st_threshold() -> None:
    """np.arange sometimes yields 201 thresholds; the extra one must count like in the repos."""
    masks = hand_masks()
    rng = np.random.default_rng(5)
    found = 0
    for _ in range(40):
        lo, hi = np.sort(rng.random(2)).astype(np.float32)
        maps = (lo + (hi - lo) * rng.random(masks.shape)).astype(np.float32)
        maps.flat[0], maps.flat[1] = lo, hi
        n_th = cflow_thresholds(maps.min(), maps.max(), maps.dtype).size
        if n_th == 201:
            found += 1
            assert aupro_cflow(maps, masks) == pytest.approx(repo_cal_pro_score(masks, maps), abs=1e-9)
    assert found > 0


def test_aupro_cflow_other_settings_and_degenerate() -> None:
    rng = np.random.default_rng(9)
    masks = hand_masks()
    maps = scored(rng, masks, 2, np.float64)
    got = aupro_cflow(maps, masks, num_thresholds=50, fpr_limit=0.5)
    assert got == pytest.approx(repo_cal_pro_score(masks, maps, max_step=50, expect_fpr=0.5), abs=1e-9)
    assert math.isnan(aupro_cflow(np.full(masks.shape, 0.3), masks))  # constant map: no thresholds
    assert math.isnan(aupro_cflow(maps, np.zeros_like(masks)))


# ---------------------------------------------------------------- compute_metrics, mean


def test_compute_metrics_keys_values_and_nan() -> None:
    rng = np.random.default_rng(11)
    masks = hand_masks()
    maps = scored(rng, masks, 2, np.float32)
    labels = (masks.reshape(4, -1).max(1) > 0).astype(int)
    scores = maps.reshape(4, -1).max(1)
    m = compute_metrics(scores, labels, maps, masks)
    assert tuple(m) == IMAGE_KEYS + PIXEL_KEYS
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in m.values())
    assert m["pixel_AUPRO"] == pytest.approx(slow_aupro(maps, masks), abs=1e-9)
    assert m["pixel_AUPRO_cflow"] == pytest.approx(repo_cal_pro_score(masks, maps), abs=1e-9)
    assert m["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)

    assert tuple(compute_metrics(scores, labels)) == IMAGE_KEYS
    assert tuple(compute_metrics(scores, labels, maps, np.zeros_like(masks))) == IMAGE_KEYS
    one_class = compute_metrics(scores, np.ones(4), maps, masks)
    assert all(math.isnan(one_class[k]) for k in IMAGE_KEYS)
    assert one_class["pixel_AUROC"] == m["pixel_AUROC"]

    t = compute_metrics(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(maps), masks)
    assert t == m


def test_compute_metrics_has_mask_excludes_images() -> None:
    rng = np.random.default_rng(12)
    masks = hand_masks()
    maps = scored(rng, masks, 2, np.float32)
    scores, labels = np.array([0.9, 0.1, 0.8, 0.7]), np.array([1, 0, 1, 1])
    has = np.array([True, True, False, True])
    m = compute_metrics(scores, labels, maps, masks, has_mask=has)
    ref = pixel_metrics(maps[has], masks[has])
    assert {k: m[k] for k in PIXEL_KEYS} == ref
    assert m["image_AUROC"] == 1.0  # image metrics still use every image
    assert tuple(compute_metrics(scores, labels, maps, masks, has_mask=np.zeros(4, bool))) == IMAGE_KEYS
    with pytest.raises(ValueError):
        compute_metrics(scores, labels, maps, masks, has_mask=np.ones(3, bool))


def test_mean_over_categories_is_nan_aware() -> None:
    nan = float("nan")
    per = {
        "a": {"image_AUROC": 0.8, "pixel_AUROC": 0.6},
        "b": {"image_AUROC": nan, "pixel_AUROC": 0.9},
        "c": {"image_AUROC": 0.6},
        "d": {"image_AUROC": 0.7, "pixel_AUPRO": nan},
    }
    m = mean_over_categories(per)
    assert list(m) == ["image_AUROC", "pixel_AUROC", "pixel_AUPRO"]
    assert m["image_AUROC"] == pytest.approx(0.7)
    assert m["pixel_AUROC"] == pytest.approx(0.75)
    assert math.isnan(m["pixel_AUPRO"])
    assert mean_over_categories({}) == {}
