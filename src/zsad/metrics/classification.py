"""Image-level AUROC, AP and F1-max built on one sort-based core, with scikit-learn's tie handling.

All curve metrics read cumulative true/false positive counts over whole groups of equal scores, which is how
scikit-learn treats ties. Pixel metrics reuse the same core (:mod:`zsad.metrics.pixels`), so the millions
of pixels of a category are sorted once for every metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def to_numpy(x: ArrayLike) -> np.ndarray:
    """Tensors and arrays to a numpy array on the CPU (bfloat16 has no numpy twin: widened to float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def as_scores(x: ArrayLike) -> np.ndarray:
    """Scores as a float array: float16/32/64 keep their dtype (ties and thresholds stay exact), rest -> float64."""
    a = to_numpy(x)
    if a.dtype not in (np.float16, np.float32, np.float64):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    return a


def as_binary(x: ArrayLike) -> np.ndarray:
    """Labels or masks to bool; any value > 0 is anomalous (masks saved as 0/255 work as they are)."""
    return to_numpy(x) > 0


@dataclass(frozen=True)
class BinaryCurve:
    """Counts at each distinct score, highest first: ``tps[i]``/``fps[i]`` positives/negatives with score >= it."""

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray

    @property
    def n_pos(self) -> int:
        """Number of positives: the TP count at the lowest score, where everything is flagged."""
        return int(self.tps[-1]) if self.tps.size else 0

    @property
    def n_neg(self) -> int:
        """Number of negatives: the FP count at the lowest score, where everything is flagged."""
        return int(self.fps[-1]) if self.fps.size else 0


def distinct_descending(scores: np.ndarray, *, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The one sort: distinct score values, highest first, and how many scores are >= each.

    Only the scores are sorted (numpy's SIMD ``sort``, ~10x faster than ``argsort`` on millions of pixels); labels
    and regions are attached afterwards by looking their scores up among the distinct values. ``overwrite``: sort
    a 1-D buffer the caller owns in place, sparing a copy of every pixel.
    """
    if overwrite and scores.ndim == 1:
        scores.sort()
        s = scores
    else:
        s = np.sort(scores.ravel())
    if not s.size:
        return s[:0], np.zeros(0, dtype=np.int64)
    starts = np.empty(s.size, dtype=bool)  # one flag per score: it starts a run of equal values
    starts[0] = True
    np.not_equal(s[1:], s[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    del starts
    return s[first][::-1], (s.size - first)[::-1]


def rank_of(values_desc: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Index into ``values_desc`` of each score (all of which must be among the values)."""
    return values_desc.size - 1 - np.searchsorted(values_desc[::-1], scores)


def curve_from_ranks(values_desc: np.ndarray, n_at_least: np.ndarray, positive_ranks: np.ndarray) -> BinaryCurve:
    """The shared core: TP at each distinct score = positives ranked at or above it (cumulative), FP = the rest."""
    tps = np.cumsum(np.bincount(positive_ranks, minlength=values_desc.size), dtype=np.int64)
    return BinaryCurve(thresholds=values_desc, tps=tps, fps=n_at_least - tps)


def binary_curve(scores: ArrayLike, labels: ArrayLike) -> BinaryCurve:
    """TP/FP counts at every distinct score of ``scores``; any label > 0 is positive."""
    s = as_scores(scores).ravel()
    y = as_binary(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    values, n_at_least = distinct_descending(s)
    return curve_from_ranks(values, n_at_least, rank_of(values, s[y]))


def auroc_from_curve(c: BinaryCurve) -> float:
    """Trapezoid ROC area from integer counts (exact sums), NaN without both classes."""
    p, n = c.n_pos, c.n_neg
    if p == 0 or n == 0:
        return float("nan")
    tps = np.concatenate([[0], c.tps]).astype(np.float64)
    dfp = np.diff(np.concatenate([[0], c.fps])).astype(np.float64)
    return float(np.sum(dfp * (tps[1:] + tps[:-1])) / (2.0 * p * n))


def ap_from_curve(c: BinaryCurve) -> float:
    """Step-wise AP, sum over thresholds of (recall gain) x precision: scikit-learn's ``average_precision_score``."""
    p = c.n_pos
    if p == 0:
        return float("nan")
    gain = np.diff(np.concatenate([[0], c.tps])) / p
    return float(np.sum(gain * (c.tps / (c.tps + c.fps))))


def f1_max_from_curve(c: BinaryCurve) -> tuple[float, float]:
    """Best 2PR/(P+R) over the PR points and the score giving it (predict ``score >= threshold``).

    Points with P + R = 0 count as F1 = 0. Among equal maxima the lowest threshold wins, as ``np.argmax`` over
    scikit-learn's ascending-threshold arrays would pick it.
    """
    if c.n_pos == 0:
        return float("nan"), float("nan")
    precision = c.tps / (c.tps + c.fps)
    recall = c.tps / c.n_pos
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = f1.size - 1 - int(np.argmax(f1[::-1]))
    return float(f1[best]), float(c.thresholds[best])


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC with scikit-learn's tie handling; NaN unless both classes occur."""
    return auroc_from_curve(binary_curve(scores, labels))


def image_ap(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision as scikit-learn's ``average_precision_score``; NaN without positives."""
    return ap_from_curve(binary_curve(scores, labels))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(best F1, its threshold); ``scores >= threshold`` reproduces that F1. NaN, NaN without positives."""
    return f1_max_from_curve(binary_curve(scores, labels))


def f1_adaptive_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """Decision threshold when labels exist: the one maximising F1 (anomalib's F1AdaptiveThreshold)."""
    return f1_max(scores, labels)[1]


def normal_quantile_threshold(scores: ArrayLike, q: float = 0.99, margin: float = 0.0) -> float:
    """Decision threshold for unlabeled data: the ``q``-quantile of the scores, plus ``margin``.

    Rule: the scores are assumed to come mostly from normal images, so flagging what lies above their ``q``-quantile
    (linear interpolation, ``np.quantile``'s default) accepts a false-alarm rate of about ``1 - q`` on normal data.
    ``margin`` shifts it by a fixed amount. This is what the CLI uses when no labels exist.
    """
    s = as_scores(scores).ravel().astype(np.float64)
    if s.size == 0:
        raise ValueError("no scores to take a quantile of")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    return float(np.quantile(s, q)) + float(margin)
