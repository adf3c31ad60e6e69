"""AUROC, AP and F1-max from one sort, with scikit-learn's tie handling (sklearn is the reference in tests).

Pixel metrics pool millions of pixels, so every curve here is computed from one descending sort that the pixel
metrics share (``curve_from_order``) instead of sorting once per metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def as_numpy(x: np.ndarray | torch.Tensor, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass(frozen=True)
class Curve:
    """Cumulative false/true positives at each distinct score, scores descending (score >= threshold)."""

    fps: np.ndarray
    tps: np.ndarray
    thresholds: np.ndarray


def descending_order(scores: np.ndarray) -> np.ndarray:
    # Order inside a group of tied scores is irrelevant: counts are read at the end of each group.
    return np.argsort(-scores, kind="quicksort")


def curve_from_order(scores: np.ndarray, labels: np.ndarray, order: np.ndarray) -> Curve:
    return curve_from_sorted(scores[order], labels[order])


def curve_from_sorted(s: np.ndarray, y: np.ndarray) -> Curve:
    """Curve from scores sorted descending and their labels in the same order."""
    last = np.flatnonzero(np.diff(s))
    idx = np.append(last, s.size - 1)
    tps = np.cumsum(y, dtype=np.float64)[idx]
    return Curve(fps=(idx + 1) - tps, tps=tps, thresholds=s[idx])


def binary_curve(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> Curve:
    s = as_numpy(scores).ravel()
    y = as_numpy(labels, np.int64).ravel()
    return curve_from_order(s, y, descending_order(s))


def auroc_from_curve(c: Curve) -> float:
    if c.tps.size == 0 or c.tps[-1] == 0 or c.fps[-1] == 0:
        return float("nan")
    tpr = np.concatenate([[0.0], c.tps / c.tps[-1]])
    fpr = np.concatenate([[0.0], c.fps / c.fps[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def ap_from_curve(c: Curve) -> float:
    """Step-wise average precision, sum of (R_n - R_{n-1}) P_n: sklearn's ``average_precision_score``."""
    if c.tps.size == 0 or c.tps[-1] == 0:
        return float("nan")
    precision = c.tps / (c.tps + c.fps)
    recall = c.tps / c.tps[-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def f1max_from_curve(c: Curve) -> tuple[float, float]:
    """Best F1 over the PR curve (up to full recall, as sklearn truncates) and its threshold (use ``>=``)."""
    if c.tps.size == 0 or c.tps[-1] == 0:
        return float("nan"), float("nan")
    stop = int(np.searchsorted(c.tps, c.tps[-1])) + 1  # first point reaching full recall
    tps, fps = c.tps[:stop], c.fps[:stop]
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    f1 = np.where(np.isfinite(f1), f1, 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(c.thresholds[best])


def image_auroc(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    return auroc_from_curve(binary_curve(scores, labels))


def image_ap(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    return ap_from_curve(binary_curve(scores, labels))


def f1_max(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[float, float]:
    return f1max_from_curve(binary_curve(scores, labels))


def f1_adaptive_threshold(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """The threshold maximising F1 (anomalib's F1AdaptiveThreshold); decide with ``score >= threshold``."""
    return f1_max(scores, labels)[1]


def normal_quantile_threshold(scores: np.ndarray | torch.Tensor, q: float = 0.99, margin: float = 0.0) -> float:
    """For unlabeled data: the ``q``-quantile of scores believed normal, plus ``margin``."""
    return float(np.quantile(as_numpy(scores), q)) + margin


def pixel_auroc(maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> float:
    return image_auroc(maps, masks)


def pixel_ap(maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> float:
    return image_ap(maps, masks)


def pixel_f1_max(maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> float:
    return f1_max(maps, masks)[0]
