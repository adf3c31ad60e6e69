"""Metrics of the field: image AUROC/AP/F1-max, pixel AUROC/AP/F1-max/AUPRO (two variants), per category + mean."""

from __future__ import annotations

import math

import numpy as np
import torch

from zsad.metrics.aupro import aupro, aupro_cflow, aupro_cflow_sorted, aupro_sorted
from zsad.metrics.classification import (
    Curve,
    ap_from_curve,
    as_numpy,
    auroc_from_curve,
    binary_curve,
    curve_from_order,
    curve_from_sorted,
    f1_adaptive_threshold,
    f1_max,
    f1max_from_curve,
    image_ap,
    image_auroc,
    normal_quantile_threshold,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
)
from zsad.metrics.pixels import SortedPixels, label_regions, sort_pixels

Array = np.ndarray | torch.Tensor


def compute_metrics(
    pred_scores: Array,
    gt_labels: Array,
    anomaly_maps: Array | None = None,
    gt_masks: Array | None = None,
    has_mask: Array | None = None,
) -> dict[str, float]:
    """All metrics of one category. Pixel metrics only for images whose mask is known (``has_mask``).

    Image metrics are NaN when the labels hold one class; pixel metrics are omitted without positive pixels.
    """
    c = binary_curve(pred_scores, gt_labels)
    f1, _ = f1max_from_curve(c)
    out = {"image_AUROC": auroc_from_curve(c), "image_AP": ap_from_curve(c), "image_F1max": f1}
    if anomaly_maps is None or gt_masks is None:
        return out
    maps = anomaly_maps.detach().cpu().numpy() if isinstance(anomaly_maps, torch.Tensor) else np.asarray(anomaly_maps)
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float32)
    masks = as_numpy(gt_masks, np.int64) > 0
    if has_mask is not None:
        keep = as_numpy(has_mask, np.int64) > 0
        maps, masks = maps[keep], masks[keep]
    if not masks.any():
        return out
    sp = sort_pixels(maps.astype(np.float32) if maps.dtype == np.float16 else maps, masks)  # one shared sort
    pc = curve_from_sorted(sp.scores, sp.regions > 0)
    out["pixel_AUROC"] = auroc_from_curve(pc)
    out["pixel_AP"] = ap_from_curve(pc)
    out["pixel_F1max"] = f1max_from_curve(pc)[0]
    out["pixel_AUPRO"] = aupro_sorted(sp)
    out["pixel_AUPRO_cflow"] = aupro_cflow_sorted(sp)
    return out


def mean_over_categories(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """NaN-aware mean of each metric over the categories that report it."""
    keys = dict.fromkeys(k for m in per_category.values() for k in m)
    out = {}
    for k in keys:
        vals = [m[k] for m in per_category.values() if k in m and not math.isnan(m[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


__all__ = [
    "Curve",
    "ap_from_curve",
    "aupro",
    "aupro_cflow",
    "auroc_from_curve",
    "binary_curve",
    "compute_metrics",
    "curve_from_order",
    "f1_adaptive_threshold",
    "f1_max",
    "image_ap",
    "image_auroc",
    "label_regions",
    "SortedPixels",
    "sort_pixels",
    "aupro_sorted",
    "aupro_cflow_sorted",
    "curve_from_sorted",
    "mean_over_categories",
    "normal_quantile_threshold",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
]
