"""How a yes/no decision is made from scores, with its source recorded next to every label.

Rules, in order of preference:
- ``manual``: the user's number.
- ``f1_adaptive``: labels with both classes exist: the threshold maximising F1 (anomalib's F1AdaptiveThreshold).
- ``normal_quantile``: known-normal reference scores exist: their ``q``-quantile (default 0.99).
- ``robust_outlier``: nothing is known: assume most images are normal and flag scores above
  median + k * 1.4826 * MAD (k = 3, i.e. three robust standard deviations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Threshold:
    """A decision threshold and the rule that chose it (``source``), which also decides ``>=`` or ``>``."""

    value: float
    source: str

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Boolean decisions; F1-adaptive uses >= (the PR-curve convention), the others a strict >."""
        s = np.asarray(scores)
        return s >= self.value if self.source == "f1_adaptive" else s > self.value


def choose_threshold(
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    normal_scores: np.ndarray | None = None,
    manual: float | None = None,
    q: float = 0.99,
    k: float = 3.0,
) -> Threshold:
    """The threshold of the most informed rule the inputs allow (see the module notes for the order).

    Args:
        scores: The scores to decide on; the robust-outlier rule is fitted to them.
        labels: Per-score labels, -1 where unknown; used when the known ones hold both classes.
        normal_scores: Scores of known-normal reference images.
        manual: A user-given threshold, which wins over every rule.
        q: Quantile of ``normal_scores`` for the normal-quantile rule.
        k: Robust standard deviations above the median for the robust-outlier rule.

    Returns:
        The threshold; NaN with source ``none`` when no rule applies (no scores at all).
    """
    if manual is not None:
        return Threshold(float(manual), "manual")
    scores = np.asarray(scores, dtype=np.float64)
    if labels is not None:
        labels = np.asarray(labels)
        known = labels >= 0
        if known.any() and len(np.unique(labels[known])) == 2:
            from zsad.metrics import f1_adaptive_threshold

            return Threshold(float(f1_adaptive_threshold(scores[known], labels[known])), "f1_adaptive")
    if normal_scores is not None and len(normal_scores) >= 1:
        return Threshold(float(np.quantile(np.asarray(normal_scores, dtype=np.float64), q)), "normal_quantile")
    if len(scores) == 0:
        return Threshold(float("nan"), "none")
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med)))
    return Threshold(med + k * 1.4826 * mad, "robust_outlier")
