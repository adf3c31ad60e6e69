"""Anomaly detection metrics: image AUROC/AP/F1-max, pixel AUROC/AP/F1-max, AUPRO in two definitions.

Pure, vectorised numpy functions; inputs may be numpy arrays or torch tensors. Ties are handled as scikit-learn
does, and all pixel metrics of a category share one sort. See :mod:`zsad.metrics.aupro` for why there are two
AUPROs.
"""

from __future__ import annotations

from zsad.metrics.aupro import (
    aupro,
    aupro_cflow,
    aupro_cflow_from_ranking,
    aupro_from_ranking,
    cflow_thresholds,
    pro_curve,
)
from zsad.metrics.classification import (
    BinaryCurve,
    ap_from_curve,
    auroc_from_curve,
    binary_curve,
    curve_from_ranks,
    distinct_descending,
    f1_adaptive_threshold,
    f1_max,
    f1_max_from_curve,
    image_ap,
    image_auroc,
    normal_quantile_threshold,
    rank_of,
)
from zsad.metrics.pixels import (
    PixelMaps,
    PixelRanking,
    label_regions,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    rank_pixels,
)
from zsad.metrics.summary import (
    IMAGE_KEYS,
    PIXEL_KEYS,
    compute_metrics,
    image_metrics,
    mean_over_categories,
    pixel_metrics,
)

__all__ = [
    "IMAGE_KEYS",
    "PIXEL_KEYS",
    "BinaryCurve",
    "PixelMaps",
    "PixelRanking",
    "ap_from_curve",
    "aupro",
    "aupro_cflow",
    "aupro_cflow_from_ranking",
    "aupro_from_ranking",
    "auroc_from_curve",
    "binary_curve",
    "cflow_thresholds",
    "compute_metrics",
    "curve_from_ranks",
    "distinct_descending",
    "f1_adaptive_threshold",
    "f1_max",
    "f1_max_from_curve",
    "image_ap",
    "image_auroc",
    "image_metrics",
    "label_regions",
    "mean_over_categories",
    "normal_quantile_threshold",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_metrics",
    "pro_curve",
    "rank_of",
    "rank_pixels",
]
