"""Pixel metrics on per-image maps and masks of different sizes (evaluation at native resolution).

A list of (H_i, W_i) arrays must pool every pixel exactly as a stack does: scikit-learn on the concatenated
pixels, the stacked path itself when the sizes agree, and a literal per-region PRO reference for AUPRO.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.metrics import (
    PIXEL_KEYS,
    aupro,
    aupro_cflow,
    compute_metrics,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pixel_metrics,
    rank_pixels,
)

EIGHT = np.ones((3, 3), dtype=bool)
SIZES = [(23, 31), (40, 17), (23, 31), (12, 12), (33, 45)]


def blob_case(seed: int, sizes: list[tuple[int, int]], decimals: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-image float32 maps (rounded: many ties) and 0/1 masks with a few blobs, one image defect-free."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i, (h, w) in enumerate(sizes):
        m = ndimage.gaussian_filter(rng.random((h, w)), sigma=1.5) > 0.56
        m[:3, :3] = i != 1  # image 1 is defect-free, every other has a region
        if i == 1:
            m[:] = False
        s = rng.random((h, w)) + 0.4 * m * rng.random((h, w))
        maps.append(np.round(s / 1.4, decimals).astype(np.float32))
        masks.append(m.astype(np.uint8))
    return maps, masks


def slow_aupro_list(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> float:
    """Every distinct threshold, regions labelled image by image, PRO and FPR counted literally per image."""
    regions = []
    for i, g in enumerate(masks):
        lab, n = ndimage.label(g > 0, structure=EIGHT)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    n_normal = sum(int((g == 0).sum()) for g in masks)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        flagged = [m >= t for m in maps]
        pro = np.mean([flagged[i][reg].sum() / reg.sum() for i, reg in regions])
        fp = sum(int((f & (g == 0)).sum()) for f, g in zip(flagged, masks, strict=True))
        points.append((fp / n_normal, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            area += (limit - x0) * (y0 + y0 + (y1 - y0) * (limit - x0) / (x1 - x0)) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(4))
def test_list_of_sizes_equals_sklearn_on_the_concatenated_pixels(seed: int) -> None:
    maps, masks = blob_case(seed, SIZES)
    s = np.concatenate([m.ravel() for m in maps])
    y = np.concatenate([g.ravel() for g in masks])
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    # the same pixels as one flat "image": the pooled curve does not depend on how pixels are split into images
    got = pixel_metrics(maps, masks, aupro=False)
    flat = pixel_metrics(s[None, None, :], y[None, None, :], aupro=False)
    assert got == flat


@pytest.mark.parametrize("seed", range(4))
def test_list_equals_the_stack_when_sizes_agree(seed: int) -> None:
    maps, masks = blob_case(seed, [(26, 26)] * 6)
    stacked = pixel_metrics(np.stack(maps), np.stack(masks))
    listed = pixel_metrics(maps, masks)
    assert set(listed) == set(PIXEL_KEYS)
    assert listed == stacked  # exactly: same sort, same region ids, same sums in the same order
    r_list, r_stack = rank_pixels(maps, masks), rank_pixels(np.stack(maps), np.stack(masks))
    assert np.array_equal(r_list.anomalous_regions, r_stack.anomalous_regions)
    assert np.array_equal(r_list.region_sizes, r_stack.region_sizes)
    assert pixel_f1_max(maps, masks) == pixel_f1_max(np.stack(maps), np.stack(masks))
    # tensors and (1, H, W) items are accepted, as in a stack
    tensors = [torch.from_numpy(m)[None] for m in maps]
    assert pixel_metrics(tensors, [g[None] for g in masks]) == stacked


@pytest.mark.parametrize("seed", range(3))
def test_aupro_on_a_list_equals_a_literal_per_region_reference(seed: int) -> None:
    maps, masks = blob_case(seed, SIZES, decimals=2)
    assert aupro(maps, masks) == pytest.approx(slow_aupro_list(maps, masks), abs=1e-9)
    assert np.isfinite(aupro_cflow(maps, masks))


def test_aupro_on_a_hand_built_list() -> None:
    """Two images of other sizes: region 1 (4 px) all at 1, region 2 (2 px) half at 1, every normal pixel at 0.

    At t = 1 PRO is the mean over the two regions, (1 + 0.5) / 2 = 0.75, at FPR 0; at t = 0 everything is
    flagged (FPR 1, PRO 1). Up to FPR 0.3 the area is 0.3 (0.75 + 0.825) / 2, normalised by 0.3: 0.7875.
    """
    a, ga = np.zeros((4, 6), np.float32), np.zeros((4, 6), bool)
    ga[1:3, 2:4] = True
    a[ga] = 1.0
    b, gb = np.zeros((5, 3), np.float32), np.zeros((5, 3), bool)
    gb[2, 0:2] = True
    b[2, 0] = 1.0
    assert aupro([a, b], [ga, gb]) == pytest.approx(0.7875, abs=1e-12)
    assert rank_pixels([a, b], [ga, gb]).region_sizes.tolist() == [4, 2]


def test_compute_metrics_on_lists_filters_unknown_masks_like_the_stack() -> None:
    maps, masks = blob_case(7, [(20, 20)] * 6)
    scores = np.array([float(m.max()) for m in maps])
    labels = np.array([int(g.any()) for g in masks])
    known = np.array([1, 1, 0, 1, 1, 0], dtype=bool)
    stacked = compute_metrics(scores, labels, np.stack(maps), np.stack(masks), has_mask=known)
    assert compute_metrics(scores, labels, maps, masks, has_mask=known) == stacked
    # with different sizes: the kept images' pixels only
    maps, masks = blob_case(7, SIZES)
    scores, labels = np.array([float(m.max()) for m in maps]), np.array([int(g.any()) for g in masks])
    keep = np.array([1, 1, 0, 1, 1], dtype=bool)
    got = compute_metrics(scores, labels, maps, masks, has_mask=keep)
    kept = [i for i in range(len(maps)) if keep[i]]
    s = np.concatenate([maps[i].ravel() for i in kept])
    y = np.concatenate([masks[i].ravel() for i in kept])
    assert got["pixel_AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    # no anomalous pixel among the kept images: no pixel metrics, as for a stack
    empty = compute_metrics(scores, labels, maps, [np.zeros_like(g) for g in masks])
    assert not set(PIXEL_KEYS) & set(empty)


def test_list_refuses_a_map_and_mask_of_other_sizes() -> None:
    maps, masks = blob_case(0, SIZES[:2])
    with pytest.raises(ValueError, match="image 1"):
        rank_pixels(maps, [masks[0], masks[0]])
    with pytest.raises(ValueError, match="2 maps but 1 masks"):
        rank_pixels(maps, masks[:1])
