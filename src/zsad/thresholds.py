"""How a yes/no decision is made from scores, with its source recorded next to every label.

Rules, in order of preference:
- ``manual``: the user's number.
- ``f1_adaptive``: labels with both classes exist: the threshold maximising F1 (anomalib's F1AdaptiveThreshold).
- ``normal_quantile``: known-normal reference scores exist: their ``q``-quantile (default 0.99).
- nothing is known, ``unlabelled`` picks the rule:
  - ``robust_outlier`` (default): assume most images are normal and flag scores above median + k * 1.4826 * MAD
    (k = 3, i.e. three robust standard deviations). It flags few images, so it fails on sets that are mostly
    anomalous (on MVTec AD's test sets, 72 % anomalous, it reaches F1 13 where the best threshold reaches 92).
  - ``two_mode``: Otsu's split of the scores into two groups (the threshold maximising the between-group
    variance). It assumes nothing about which group is larger, so it suits sets of unknown defect rate, at the
    price of flagging a share of a clean set's tail (benchmarks/RESULTS.md, "Threshold rules on real scores").
  - Both need ``MIN_IMAGES`` scores. Below that their outcome is fixed by the count, not by the scores: one
    image is its own median (never flagged); of two, robust_outlier can never flag either (the larger is exactly
    one MAD above the median) and two_mode always flags the larger. So fewer images get no threshold (source
    ``none``, with a note saying how many the rule needs) and no label, rather than a decision without a basis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsad.errors import ZsadInputError

UNLABELLED_RULES = ("robust_outlier", "two_mode")
MIN_IMAGES = 3  # the fewest scores an unlabelled rule decides on (see the module notes)


@dataclass(frozen=True)
class Threshold:
    """A decision threshold and the rule that chose it (``source``), which also decides ``>=`` or ``>``.

    ``note`` says why there is none (``source`` none), e.g. how many images the rule needs.
    """

    value: float
    source: str
    note: str = ""

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
    unlabelled: str = "robust_outlier",
) -> Threshold:
    """The threshold of the most informed rule the inputs allow (see the module notes for the order).

    Args:
        scores: The scores to decide on; the robust-outlier rule is fitted to them.
        labels: Per-score labels, -1 where unknown; used when the known ones hold both classes.
        normal_scores: Scores of known-normal reference images.
        manual: A user-given threshold, which wins over every rule.
        q: Quantile of ``normal_scores`` for the normal-quantile rule.
        k: Robust standard deviations above the median for the robust-outlier rule.
        unlabelled: The rule when nothing is known: ``robust_outlier`` or ``two_mode``.

    Returns:
        The threshold; NaN with source ``none`` (and a ``note`` saying why) when no rule applies: no manual value,
        no labels or references, and fewer than ``MIN_IMAGES`` scores.
    """
    if unlabelled not in UNLABELLED_RULES:
        raise ZsadInputError(f"--threshold-rule {unlabelled!r}: use one of {', '.join(UNLABELLED_RULES)}")
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
    if len(scores) < MIN_IMAGES:
        return Threshold(
            float("nan"),
            "none",
            f"{unlabelled} needs at least {MIN_IMAGES} images to decide and there {'is' if len(scores) == 1 else 'are'}"
            f" {len(scores)}: no label (set a threshold, or give normal reference images to calibrate one)",
        )
    if unlabelled == "two_mode":
        return Threshold(otsu_threshold(scores), "two_mode")
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med)))
    return Threshold(med + k * 1.4826 * mad, "robust_outlier")


def otsu_threshold(scores: np.ndarray) -> float:
    """Otsu's threshold on raw scores: the split maximising the between-group variance, exact over every cut.

    Returns the midpoint between the two scores at the best cut (so the strict ``>`` of ``apply`` flags the upper
    group); with fewer than two distinct scores nothing can be split and the maximum is returned (flags nothing).
    """
    x = np.sort(np.asarray(scores, dtype=np.float64))
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 2 or x[0] == x[-1]:
        return float(x[-1]) if n else float("nan")
    i = np.arange(1, n)  # cut after the i lowest scores
    c = np.cumsum(x)
    m0 = c[:-1] / i
    m1 = (c[-1] - c[:-1]) / (n - i)
    between = (i / n) * (1 - i / n) * (m0 - m1) ** 2
    between[x[1:] == x[:-1]] = -1.0  # a cut between equal scores is not a cut
    best = int(np.argmax(between))
    return float((x[best] + x[best + 1]) / 2)
