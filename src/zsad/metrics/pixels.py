"""Pixel-level metrics: every pixel of a category pooled, sorted once, shared by AUROC/AP/F1-max and both AUPROs.

The sort gives the distinct scores; each anomalous pixel is then placed among them (its rank), which with its GT
region id is all that the pooled TP/FP curve and both AUPROs need. Normal pixels are never touched again.

Maps and masks come either as one (N, H, W) stack (every image at model resolution) or as a list of per-image
(H_i, W_i) arrays whose sizes may differ (native resolution: the images of a category need not share a size). Both
give the same numbers when the sizes agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from zsad.metrics.classification import (
    ArrayLike,
    BinaryCurve,
    ap_from_curve,
    as_binary,
    as_scores,
    auroc_from_curve,
    curve_from_ranks,
    distinct_descending,
    f1_max_from_curve,
    rank_of,
)

# Connectivity inside an image only: 8 neighbours in the (H, W) plane, nothing across the image axis.
_EIGHT_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_IN_PLANE[1] = True
_EIGHT = np.ones((3, 3), dtype=bool)

PixelMaps = ArrayLike | Sequence[ArrayLike]  # an (N, H, W) stack, or per-image (H_i, W_i) arrays


def is_image_list(x: object) -> bool:
    """Whether maps or masks come as per-image arrays (a list or tuple) rather than one stack."""
    return isinstance(x, list | tuple)


def as_image_stack(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(…, H, W) maps and masks -> (N, H, W) float scores and bool masks; (N, 1, H, W) and (H, W) are accepted."""
    m = as_scores(maps)
    g = as_binary(masks)
    if m.size != g.size:
        raise ValueError(f"maps {m.shape} and masks {g.shape} hold different numbers of pixels")
    if m.ndim < 2:
        raise ValueError(f"maps need at least 2 dimensions (H, W), got {m.shape}")
    h, w = m.shape[-2:]
    return m.reshape(-1, h, w), g.reshape(-1, h, w)


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected GT regions of a (N, H, W) bool stack: ids 1..R numbered across images (8-connected), 0 = normal.

    One ``ndimage.label`` call over the stack, with a structure that links pixels within an image only, equals
    labelling each image with a 3x3 structure of ones (skimage's 2-D default, used by the reference repos).
    """
    labels, n = ndimage.label(masks, structure=_EIGHT_IN_PLANE)
    return labels, int(n)


@dataclass(frozen=True)
class PixelRanking:
    """Everything the pixel metrics need from the one sort of a category's pixels.

    ``curve``: pooled TP (anomalous) / FP (normal) counts at each distinct score, highest first. Per anomalous pixel
    (in no particular order): ``anomalous_scores``, ``anomalous_ranks`` (index of its score in
    ``curve.thresholds``) and ``anomalous_regions`` (0-based region id). ``region_sizes``: pixels per region.
    ``dtype``: the maps' dtype, in which the cflow thresholds are computed.
    """

    curve: BinaryCurve
    anomalous_scores: np.ndarray
    anomalous_ranks: np.ndarray
    anomalous_regions: np.ndarray
    region_sizes: np.ndarray
    dtype: np.dtype

    @property
    def n_regions(self) -> int:
        """Number of connected GT regions over all images (PRO averages over them)."""
        return int(self.region_sizes.size)

    @property
    def n_normal(self) -> int:
        """Number of normal pixels, the denominator of every FPR."""
        return self.curve.n_neg


def rank_pixels(maps: PixelMaps, masks: PixelMaps) -> PixelRanking:
    """Label GT regions, sort all pixel scores once, place the anomalous pixels on the distinct scores.

    ``maps`` and ``masks``: one (N, H, W) stack, or lists of per-image arrays of any sizes (see the module doc).
    """
    if is_image_list(maps) or is_image_list(masks):
        return _rank_image_list(maps, masks)
    m, g = as_image_stack(maps, masks)  # type: ignore[arg-type]
    regions, n = label_regions(g)
    values, n_at_least = distinct_descending(m)
    anomalous = np.flatnonzero(regions)
    a_scores = m.ravel()[anomalous]
    a_regions = regions.ravel()[anomalous].astype(np.int64) - 1
    return _ranking(values, n_at_least, a_scores, a_regions, n, m.dtype)


def _ranking(
    values: np.ndarray, n_at_least: np.ndarray, a_scores: np.ndarray, a_regions: np.ndarray, n: int, dtype: np.dtype
) -> PixelRanking:
    a_ranks = rank_of(values, a_scores)
    return PixelRanking(
        curve=curve_from_ranks(values, n_at_least, a_ranks),
        anomalous_scores=a_scores,
        anomalous_ranks=a_ranks,
        anomalous_regions=a_regions,
        region_sizes=np.bincount(a_regions, minlength=n),
        dtype=dtype,
    )


def _rank_image_list(maps: PixelMaps, masks: PixelMaps) -> PixelRanking:
    """``rank_pixels`` of per-image arrays of any sizes: regions labelled image by image, ids running on.

    All scores are copied once into one flat buffer of the maps' common dtype, which is then sorted in place; a mask
    is made boolean and labelled one image at a time, so beyond the maps only the anomalous pixels are held.
    """
    ms = [as_scores(m) for m in maps]  # an (N, H, W) stack iterates as its N images
    gs = list(masks)
    if len(ms) != len(gs):
        raise ValueError(f"{len(ms)} maps but {len(gs)} masks")
    for i, m in enumerate(ms):
        if m.ndim < 2:
            raise ValueError(f"image {i}: a map needs at least 2 dimensions (H, W), got {m.shape}")
    dtype = np.result_type(*(m.dtype for m in ms)) if ms else np.dtype(np.float64)
    flat = np.empty(sum(m.size for m in ms), dtype=dtype)
    a_scores: list[np.ndarray] = []
    a_regions: list[np.ndarray] = []
    start, n = 0, 0
    for i, (m, mask) in enumerate(zip(ms, gs, strict=True)):
        h, w = m.shape[-2:]
        g = as_binary(mask)
        if m.size != h * w or g.size != m.size:
            raise ValueError(f"image {i}: map {m.shape} and mask {g.shape} are not one (H, W) image of one size")
        scores = m.reshape(-1)
        flat[start : start + scores.size] = scores
        start += scores.size
        if g.any():
            labels, k = ndimage.label(g.reshape(h, w), structure=_EIGHT)
            idx = np.flatnonzero(labels)
            a_scores.append(scores[idx].astype(dtype, copy=False))
            a_regions.append(labels.ravel()[idx].astype(np.int64) + (n - 1))
            n += int(k)
    values, n_at_least = distinct_descending(flat, overwrite=True)
    del flat
    a_s = np.concatenate(a_scores) if a_scores else np.zeros(0, dtype=dtype)
    a_r = np.concatenate(a_regions) if a_regions else np.zeros(0, dtype=np.int64)
    return _ranking(values, n_at_least, a_s, a_r, n, dtype)


def pixel_auroc(maps: PixelMaps, masks: PixelMaps) -> float:
    """ROC AUC over all pixels pooled; NaN unless both normal and anomalous pixels occur."""
    return auroc_from_curve(rank_pixels(maps, masks).curve)


def pixel_ap(maps: PixelMaps, masks: PixelMaps) -> float:
    """Average precision over all pixels pooled; NaN without anomalous pixels."""
    return ap_from_curve(rank_pixels(maps, masks).curve)


def pixel_f1_max(maps: PixelMaps, masks: PixelMaps) -> tuple[float, float]:
    """(best pixel F1, its threshold on the map values), as :func:`zsad.metrics.f1_max` on all pixels pooled."""
    return f1_max_from_curve(rank_pixels(maps, masks).curve)
