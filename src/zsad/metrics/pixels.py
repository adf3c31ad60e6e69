"""Pixel-level metrics: every pixel of a category pooled, sorted once, shared by AUROC/AP/F1-max and both AUPROs.

The sort gives the distinct scores; each anomalous pixel is then placed among them (its rank), which with its GT
region id is all that the pooled TP/FP curve and both AUPROs need. Normal pixels are never touched again.
"""

from __future__ import annotations

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


def rank_pixels(maps: ArrayLike, masks: ArrayLike) -> PixelRanking:
    """Label GT regions, sort all pixel scores once, place the anomalous pixels on the distinct scores."""
    m, g = as_image_stack(maps, masks)
    regions, n = label_regions(g)
    values, n_at_least = distinct_descending(m)
    anomalous = np.flatnonzero(regions)
    a_scores = m.ravel()[anomalous]
    a_regions = regions.ravel()[anomalous].astype(np.int64) - 1
    a_ranks = rank_of(values, a_scores)
    return PixelRanking(
        curve=curve_from_ranks(values, n_at_least, a_ranks),
        anomalous_scores=a_scores,
        anomalous_ranks=a_ranks,
        anomalous_regions=a_regions,
        region_sizes=np.bincount(a_regions, minlength=n),
        dtype=m.dtype,
    )


def pixel_auroc(maps: ArrayLike, masks: ArrayLike) -> float:
    """ROC AUC over all pixels pooled; NaN unless both normal and anomalous pixels occur."""
    return auroc_from_curve(rank_pixels(maps, masks).curve)


def pixel_ap(maps: ArrayLike, masks: ArrayLike) -> float:
    """Average precision over all pixels pooled; NaN without anomalous pixels."""
    return ap_from_curve(rank_pixels(maps, masks).curve)


def pixel_f1_max(maps: ArrayLike, masks: ArrayLike) -> tuple[float, float]:
    """(best pixel F1, its threshold on the map values), as :func:`zsad.metrics.f1_max` on all pixels pooled."""
    return f1_max_from_curve(rank_pixels(maps, masks).curve)
