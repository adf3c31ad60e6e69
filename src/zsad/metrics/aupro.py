"""AUPRO in both variants the field uses, vectorised (the per-threshold region loops are the known bottleneck).

- ``aupro``: the exact PRO curve over every distinct score, integrated to FPR = ``fpr_limit`` (linear
  interpolation at the limit) and divided by it: the definition of MVTec's reference and anomalib's AUPRO.
- ``aupro_cflow``: the cflow-ad ``cal_pro_score`` the APRIL-GAN / CLIP-AD / AnomalyCLIP repos share: 200 evenly
  spaced thresholds, strict ``>``, keep FPR < limit, min-max rescale those FPRs, trapezoid. Expect 1-2 points off.

Regions are 8-connected components of each image's mask (skimage's and kornia's default in 2-D). PRO is the
mean over all regions of all images; FPR is pooled over all normal pixels. No regions -> NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from zsad.metrics.classification import as_numpy
from zsad.metrics.pixels import SortedPixels, sort_pixels


def _prepare(maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> SortedPixels:
    m = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if m.dtype not in (np.float32, np.float64):
        m = m.astype(np.float64)
    return sort_pixels(m, as_numpy(masks, np.int64).reshape(m.shape) > 0)


def aupro(maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Exact AUPRO up to ``fpr_limit``, normalised by it."""
    return aupro_sorted(_prepare(maps, masks), fpr_limit)


def aupro_sorted(sp: SortedPixels, fpr_limit: float = 0.3) -> float:
    n_normal = int(sp.sizes[0])
    if sp.n_regions == 0 or n_normal == 0:
        return float("nan")
    normal = sp.regions == 0
    # Each pixel adds 1 / (R |r|) to PRO, or 1 / N_normal to FPR, once the threshold passes it.
    region_w = np.concatenate([[0.0], 1.0 / (sp.n_regions * sp.sizes[1:].astype(np.float64))])
    ends = np.append(np.flatnonzero(np.diff(sp.scores)), sp.scores.size - 1)
    pro = np.concatenate([[0.0], np.cumsum(region_w[sp.regions])[ends]])
    fpr = np.concatenate([[0.0], np.cumsum(normal, dtype=np.float64)[ends] / n_normal])
    return _area_to_limit(fpr, pro, fpr_limit) / fpr_limit


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area of pro(fpr) on [0, limit]; fpr is non-decreasing; interpolate linearly at the limit."""
    k = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x, y = fpr[:k], pro[:k]
    if k < fpr.size and x[-1] < limit:
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        x, y = np.append(x, limit), np.append(y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def aupro_cflow(
    maps: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    num_thresholds: int = 200,
    fpr_limit: float = 0.3,
) -> float:
    """The repos' 200-threshold AUPRO, reproduced exactly but without per-threshold region loops."""
    return aupro_cflow_sorted(_prepare(maps, masks), num_thresholds, fpr_limit)


def aupro_cflow_sorted(sp: SortedPixels, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    n_normal = int(sp.sizes[0])
    if sp.n_regions == 0 or n_normal == 0:
        return float("nan")
    hi, lo = sp.scores[0], sp.scores[-1]
    delta = (hi - lo) / num_thresholds
    if not delta > 0:
        return float("nan")
    ths = np.arange(lo, hi, delta)  # as cflow: 200 or 201 values depending on rounding
    asc = sp.scores[::-1]
    positives = asc.size - np.searchsorted(asc, ths, side="right")  # pixels with score > th
    anom = sp.regions > 0
    a_scores, a_reg = sp.scores[anom], sp.regions[anom] - 1
    # Per region: pixels with score > ths[j]: histogram of c(v) = #{j: ths[j] < v}, reverse cumulative.
    t = ths.size
    c = np.searchsorted(ths, a_scores, side="left")
    hist = np.bincount(a_reg * (t + 1) + c, minlength=sp.n_regions * (t + 1)).reshape(sp.n_regions, t + 1)
    tp = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (R, t)
    pro = (tp / sp.sizes[1:, None]).mean(0)
    fpr = (positives - tp.sum(0)) / n_normal
    keep = fpr < fpr_limit
    f, p = fpr[keep], pro[keep]
    if f.size < 2 or f.max() == f.min():
        return float("nan")
    f = (f - f.min()) / (f.max() - f.min())
    dx = np.diff(f)
    direction = -1.0 if np.all(dx <= 0) else 1.0  # sklearn.metrics.auc's handling of decreasing x
    return float(direction * np.sum(dx * (p[1:] + p[:-1]) / 2.0))
