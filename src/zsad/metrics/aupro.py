"""AUPRO, in the two definitions the literature mixes, both vectorised (no per-threshold Python loop).

PRO at a threshold is the mean over all GT regions (8-connected, per image, pooled over the images) of the
fraction of the region's pixels flagged; FPR is the fraction of all normal pixels flagged.

- :func:`aupro` ("anomalib"/MVTec definition): the exact curve over every distinct score (flag ``score >= t``),
  trapezoid area from FPR 0 to ``fpr_limit`` (curve interpolated linearly at the limit), divided by ``fpr_limit``.
  A perfect map gives 1.0; a constant map gives ``fpr_limit / 2`` (0.15), the straight line from (0, 0) to (1, 1).
- :func:`aupro_cflow`: cflow-ad's ``cal_pro_score`` as copied by APRIL-GAN / CLIP-AD / AnomalyCLIP: thresholds
  ``np.arange(min, max, (max - min) / 200)`` in the maps' dtype, flag ``score > t``, keep points with
  FPR < ``fpr_limit``, rescale those FPRs to [0, 1], trapezoid. Numbers differ from :func:`aupro` by a few points;
  report which one you quote. NaN where the repos' code would crash or give NaN: a constant map (no thresholds),
  or fewer than two distinct FPRs below the limit (e.g. every normal pixel at the minimum: each kept FPR is 0).

Both return NaN without any GT region or without any normal pixel (PRO or FPR undefined).
"""

from __future__ import annotations

import numpy as np

from zsad.metrics.pixels import PixelMaps, PixelRanking, rank_pixels


def aupro(maps: PixelMaps, masks: PixelMaps, fpr_limit: float = 0.3) -> float:
    """Exact normalised area under the PRO curve up to ``fpr_limit`` (anomalib / MVTec AD definition).

    ``maps``/``masks``: an (N, H, W) stack or per-image arrays of any sizes, regions labelled per image.
    """
    return aupro_from_ranking(rank_pixels(maps, masks), fpr_limit)


def pro_curve(r: PixelRanking) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at (0, 0) and then at every distinct score, highest first, so FPR is non-decreasing.

    An anomalous pixel of region ``k`` adds ``1 / (R |k|)`` to PRO once the threshold reaches its score, a normal
    pixel ``1 / N_normal`` to FPR. Summing the PRO weights per distinct score, then cumulatively, is the exact curve
    over all thresholds at once; the FPR side is the pooled curve's FP count.
    """
    c = r.curve
    weights = 1.0 / (r.n_regions * r.region_sizes.astype(np.float64))
    per_score = np.bincount(r.anomalous_ranks, weights=weights[r.anomalous_regions], minlength=c.thresholds.size)
    pro = np.concatenate([[0.0], np.cumsum(per_score)])
    fpr = np.concatenate([[0.0], c.fps / r.n_normal])
    return fpr, pro


def area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area of a curve with non-decreasing ``fpr`` on [0, limit], cut by linear interpolation."""
    k = int(np.searchsorted(fpr, limit, side="right"))  # points at or left of the limit
    x, y = fpr[:k], pro[:k]
    if k < fpr.size:
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        x = np.append(x, limit)
        y = np.append(y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def aupro_from_ranking(r: PixelRanking, fpr_limit: float = 0.3) -> float:
    """:func:`aupro` from pixels already ranked, so several pixel metrics can share one ranking."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if r.n_regions == 0 or r.n_normal == 0:
        return float("nan")
    fpr, pro = pro_curve(r)
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def aupro_cflow(maps: PixelMaps, masks: PixelMaps, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    """The reference repos' AUPRO (cflow-ad ``cal_pro_score``), value for value, without their threshold loop."""
    return aupro_cflow_from_ranking(rank_pixels(maps, masks), num_thresholds, fpr_limit)


def cflow_thresholds(lo: float, hi: float, dtype: np.dtype, num_thresholds: int = 200) -> np.ndarray:
    """``np.arange(min, max, (max - min) / n)`` with numpy scalars of the maps' dtype, as the repos compute it.

    Floating-point rounding makes that ``n`` or ``n + 1`` values, and the dtype decides which: kept as is.
    """
    min_th, max_th = dtype.type(lo), dtype.type(hi)
    delta = (max_th - min_th) / num_thresholds
    return np.arange(min_th, max_th, delta)


def aupro_cflow_from_ranking(r: PixelRanking, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    """:func:`aupro_cflow` from pixels already ranked, so several pixel metrics can share one ranking."""
    c = r.curve
    if r.n_regions == 0 or r.n_normal == 0 or c.thresholds[0] == c.thresholds[-1]:
        return float("nan")
    ths = cflow_thresholds(c.thresholds[-1], c.thresholds[0], r.dtype, num_thresholds)
    t = ths.size
    # Anomalous pixel v is flagged at threshold j iff ths[j] < v iff j < bin(v), bin(v) = #{j: ths[j] < v}.
    # Count pixels per (region, bin); a reverse cumulative sum over bins gives the flagged count per threshold.
    bins = np.searchsorted(ths, r.anomalous_scores, side="left")
    hist = np.bincount(r.anomalous_regions * (t + 1) + bins, minlength=r.n_regions * (t + 1))
    flagged = np.cumsum(hist.reshape(r.n_regions, t + 1)[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (R, t)
    pros = (flagged / r.region_sizes[:, None]).mean(axis=0)
    # Normal pixels flagged: read the pooled curve at the lowest distinct score still > ths[j].
    above = c.thresholds.size - np.searchsorted(c.thresholds[::-1], ths, side="right")  # distinct scores > th
    fp = np.where(above > 0, c.fps[np.maximum(above - 1, 0)], 0)
    fprs = fp / r.n_normal
    keep = fprs < fpr_limit
    f, p = fprs[keep], pros[keep]
    if f.size < 2 or f.max() == f.min():
        return float("nan")
    f = (f - f.min()) / (f.max() - f.min())
    return _sklearn_auc(f, p)


def _sklearn_auc(x: np.ndarray, y: np.ndarray) -> float:
    """``sklearn.metrics.auc``: trapezoid over x as given.

    The sign is flipped when x is non-increasing (FPR over rising thresholds).
    """
    dx = np.diff(x)
    direction = -1.0 if np.any(dx < 0) and np.all(dx <= 0) else 1.0
    if np.any(dx < 0) and np.any(dx > 0):
        raise ValueError("x is neither increasing nor decreasing")
    return float(direction * (dx * (y[1:] + y[:-1]) / 2.0).sum())
