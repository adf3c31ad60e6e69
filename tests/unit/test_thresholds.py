"""Threshold rules against hand-computed cases and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from zsad.errors import ZsadInputError
from zsad.thresholds import choose_threshold, otsu_threshold


def brute_otsu(x: np.ndarray) -> float:
    """Every cut between distinct sorted scores, between-group variance from its definition."""
    xs = np.sort(x)
    best, thr = -1.0, float("nan")
    for i in range(1, len(xs)):
        if xs[i] == xs[i - 1]:
            continue
        lo, hi = xs[:i], xs[i:]
        v = len(lo) * len(hi) / len(xs) ** 2 * (lo.mean() - hi.mean()) ** 2
        if v > best:
            best, thr = v, (xs[i - 1] + xs[i]) / 2
    return thr


def test_otsu_hand_case() -> None:
    # two clear groups: the cut lies between 2 and 10
    assert otsu_threshold(np.array([1.0, 2.0, 1.5, 10.0, 11.0])) == pytest.approx(6.0)


@pytest.mark.parametrize("seed", range(5))
def test_otsu_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, 30), rng.normal(3, 1, 60)]).round(1)  # ties included
    assert otsu_threshold(x) == pytest.approx(brute_otsu(x))


def test_otsu_flags_a_majority_group() -> None:
    # 80 % of the scores form the upper group: robust_outlier flags none of them, two_mode flags them all
    x = np.concatenate([np.full(20, 0.1), np.linspace(0.5, 0.6, 80)])
    assert choose_threshold(x, unlabelled="two_mode").apply(x).sum() == 80
    assert choose_threshold(x).apply(x).sum() < 10


def test_otsu_degenerate() -> None:
    assert otsu_threshold(np.array([2.0, 2.0])) == 2.0
    assert np.isnan(otsu_threshold(np.array([])))
    t = choose_threshold(np.array([0.3, 0.3, 0.3]), unlabelled="two_mode")
    assert t.source == "two_mode" and not t.apply(np.array([0.3])).any()


@pytest.mark.parametrize("rule", ["robust_outlier", "two_mode"])
def test_too_few_images_get_no_threshold(rule: str) -> None:
    """Below MIN_IMAGES the outcome would be fixed by the count: one image is its own median, of two robust_outlier
    can never flag either and two_mode always flags the larger. So: no threshold, and a note saying how many."""
    from zsad.thresholds import MIN_IMAGES

    assert MIN_IMAGES == 3
    for n in (0, 1, 2):
        t = choose_threshold(np.arange(n, dtype=float), unlabelled=rule)
        assert t.source == "none" and np.isnan(t.value), (rule, n)
        assert f"{rule} needs at least 3 images" in t.note and f" {n}:" in t.note
    # the proof behind 2: robust_outlier's threshold lies above both of any two distinct scores
    pair = np.array([0.1, 0.9])
    med = np.median(pair)
    assert med + 3 * 1.4826 * np.median(np.abs(pair - med)) > pair.max()
    # a manual value or references still decide for one image
    assert choose_threshold(np.array([0.5]), manual=0.4).apply(np.array([0.5])).all()
    assert choose_threshold(np.array([0.5]), normal_scores=np.array([0.1, 0.2])).source == "normal_quantile"
    three = choose_threshold(np.array([0.1, 0.1, 0.9]), unlabelled=rule)
    assert three.source == rule and three.apply(np.array([0.9])).all()


def test_rule_order_and_robust_outlier() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, MAD 1 -> 3 + 3 * 1.4826
    assert choose_threshold(x).value == pytest.approx(3 + 3 * 1.4826)
    assert choose_threshold(x, manual=0.5, unlabelled="two_mode").source == "manual"
    assert choose_threshold(x, normal_scores=np.array([1.0, 2.0]), unlabelled="two_mode").source == "normal_quantile"
    with pytest.raises(ZsadInputError, match="threshold-rule 'otsu'"):
        choose_threshold(x, unlabelled="otsu")
