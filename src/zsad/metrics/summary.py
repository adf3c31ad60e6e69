"""The metric table of one category, and the mean over categories, as ``zsad eval`` reports them."""

from __future__ import annotations

import math

import numpy as np

from zsad.metrics.aupro import aupro_cflow_from_ranking, aupro_from_ranking
from zsad.metrics.classification import (
    ArrayLike,
    ap_from_curve,
    as_binary,
    auroc_from_curve,
    binary_curve,
    f1_max_from_curve,
)
from zsad.metrics.pixels import PixelMaps, as_image_stack, is_image_list, rank_pixels

IMAGE_KEYS = ("image_AUROC", "image_AP", "image_F1max")
PIXEL_KEYS = ("pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO", "pixel_AUPRO_cflow")


def image_metrics(pred_scores: ArrayLike, gt_labels: ArrayLike) -> dict[str, float]:
    """Image AUROC / AP / F1-max from one sort; all NaN when the labels hold a single class (nothing to rank)."""
    c = binary_curve(pred_scores, gt_labels)
    if c.n_pos == 0 or c.n_neg == 0:
        return dict.fromkeys(IMAGE_KEYS, float("nan"))
    return {"image_AUROC": auroc_from_curve(c), "image_AP": ap_from_curve(c), "image_F1max": f1_max_from_curve(c)[0]}


def pixel_metrics(
    anomaly_maps: PixelMaps,
    gt_masks: PixelMaps,
    *,
    aupro: bool = True,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
) -> dict[str, float]:
    """Pixel AUROC / AP / F1-max (and both AUPROs unless ``aupro=False``) from a single sort of all pixels.

    Maps and masks: one (N, H, W) stack, or per-image (H_i, W_i) arrays of any sizes (``rank_pixels``).
    """
    r = rank_pixels(anomaly_maps, gt_masks)
    out = {
        "pixel_AUROC": auroc_from_curve(r.curve),
        "pixel_AP": ap_from_curve(r.curve),
        "pixel_F1max": f1_max_from_curve(r.curve)[0],
    }
    if aupro:
        out["pixel_AUPRO"] = aupro_from_ranking(r, fpr_limit)
        out["pixel_AUPRO_cflow"] = aupro_cflow_from_ranking(r, num_thresholds, fpr_limit)
    return out


def compute_metrics(
    pred_scores: ArrayLike,
    gt_labels: ArrayLike,
    anomaly_maps: PixelMaps | None = None,
    gt_masks: PixelMaps | None = None,
    has_mask: ArrayLike | None = None,
) -> dict[str, float]:
    """All metrics of one category, as floats in [0, 1] (NaN where undefined).

    Image metrics always (NaN when the labels are one class). Pixel metrics, with ``pixel_AUPRO`` the exact
    anomalib definition and ``pixel_AUPRO_cflow`` the repos' 200-threshold one, only when maps and masks are
    given and some mask has an anomalous pixel. ``has_mask`` (bool per image) leaves out of the pixel metrics the
    images whose mask is unknown, e.g. defective images of a dataset that ships no masks for them. Maps and masks
    may be lists of per-image arrays of different sizes (native resolution), pooled like a stack.
    """
    out = image_metrics(pred_scores, gt_labels)
    if anomaly_maps is None or gt_masks is None:
        return out
    if is_image_list(anomaly_maps) or is_image_list(gt_masks):
        return {**out, **_list_pixel_metrics(list(anomaly_maps), list(gt_masks), has_mask)}
    maps, masks = as_image_stack(anomaly_maps, gt_masks)  # type: ignore[arg-type]
    if has_mask is not None:
        keep = as_binary(has_mask).ravel()
        if keep.size != maps.shape[0]:
            raise ValueError(f"has_mask has {keep.size} entries for {maps.shape[0]} images")
        maps, masks = maps[keep], masks[keep]
    if not masks.any():
        return out
    out.update(pixel_metrics(maps, masks))
    return out


def _list_pixel_metrics(maps: list[ArrayLike], masks: list[ArrayLike], has_mask: ArrayLike | None) -> dict[str, float]:
    """``compute_metrics``' pixel part for per-image arrays: the same filtering, no stacking."""
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    if has_mask is not None:
        keep = as_binary(has_mask).ravel()
        if keep.size != len(maps):
            raise ValueError(f"has_mask has {keep.size} entries for {len(maps)} images")
        maps = [m for m, k in zip(maps, keep, strict=True) if k]
        masks = [g for g, k in zip(masks, keep, strict=True) if k]
    if not any(as_binary(g).any() for g in masks):
        return {}
    return pixel_metrics(maps, masks)


def mean_over_categories(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per metric, the mean over the categories where it is a number; NaN if no category has it.

    NaN or absent values are skipped, as a category without masks has no pixel metrics.
    """
    keys = dict.fromkeys(k for metrics in per_category.values() for k in metrics)
    out: dict[str, float] = {}
    for k in keys:
        vals = [float(m[k]) for m in per_category.values() if k in m and not math.isnan(float(m[k]))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out
