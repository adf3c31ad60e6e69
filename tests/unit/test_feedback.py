"""zsad.feedback: the page's review order and the threshold refit from operator reviews (-2 none, -1 skip, 0, 1)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from zsad.errors import ZsadInputError
from zsad.feedback import Refit, decide, f1_at, refit_threshold, review_order

S = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_review_order_flagged_first_then_the_rest_each_by_descending_score() -> None:
    s = np.array([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.4])
    flagged = s > 0.6
    reviewed = np.zeros(7, dtype=bool)
    reviewed[5] = True  # 0.8, already reviewed: not offered again
    assert review_order(s, flagged, reviewed).tolist() == [1, 3, 0, 6, 4, 2]
    # flags decided by an older threshold: a flagged 0.4 still comes before an unflagged 0.5
    flagged = np.array([False, True, False, False, False, False, True])
    assert review_order(s, flagged, np.zeros(7, dtype=bool)).tolist() == [1, 6, 5, 3, 0, 4, 2]


def test_review_order_ties_keep_history_order_and_nan_comes_last() -> None:
    s = np.array([0.5, np.nan, 0.5, 0.9, 0.5])
    order = review_order(s, np.zeros(5, dtype=bool), np.zeros(5, dtype=bool))
    assert order.tolist() == [3, 0, 2, 4, 1]
    assert review_order(s[:0], s[:0] > 0, s[:0] > 0).tolist() == []
    with pytest.raises(ZsadInputError, match="differ"):
        review_order(s, np.zeros(4, dtype=bool), np.zeros(5, dtype=bool))


def test_hand_computed_refit() -> None:
    # reviewed, highest first: 0.6 D, 0.5 N, 0.4 D, 0.3 N. Cuts flag the top 1..4: F1 = 2TP/(flags + 2) =
    # 2/3, 2/4, 4/5, 4/6 -> the third, in the gap (0.3, 0.4): midpoint 0.35.
    r = refit_threshold(S, np.array([-2, -2, 0, 1, 0, 1]), 0.45)
    assert r.case == "f1" and r.changed
    assert r.threshold == pytest.approx(0.35)
    assert r.f1_reviewed == pytest.approx(0.8)
    assert (r.flags_before, r.flags_after) == (2, 3)  # 0.5, 0.6 > 0.45; 0.4, 0.5, 0.6 > 0.35
    assert (r.n_reviewed, r.n_defects, r.n_normals, r.n_skipped) == (4, 2, 2, 0)
    assert (r.gap_low, r.gap_high) == (0.3, 0.4)
    assert "4 reviews" in r.note and "\n" not in r.note


def test_cut_below_every_reviewed_score_uses_the_next_history_score() -> None:
    # reviewed: 0.6 N on top, 0.5 D and 0.4 D below it: the best cut flags all three
    r = refit_threshold(S, np.array([-2, -2, -2, 1, 1, 0]), 0.55)
    assert r.f1_reviewed == pytest.approx(0.8)  # 4 / (3 + 2)
    assert r.threshold == pytest.approx(0.35)  # between 0.4 (lowest reviewed) and 0.3 (next unreviewed score below)
    assert r.flags_after == 3
    low = refit_threshold(S[3:], np.array([1, 1, 0]), 0.55)  # nothing below in the history: one float step down
    assert low.threshold == np.nextafter(0.4, -math.inf) and low.flags_after == 3
    assert low.gap_low == -math.inf and low.as_dict()["gap_low"] is None


def test_equal_f1_cuts_go_to_the_one_nearest_the_current_threshold() -> None:
    # highest first: 0.9 D, 0.8 N, 0.7 N, 0.6 D, 0.5 N: cut 1 gives 2/3 and cut 4 gives 4/6, an exact tie
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    rv = np.array([1, 0, 0, 1, 0])
    assert refit_threshold(s, rv, 0.6).threshold == pytest.approx(0.55)
    assert refit_threshold(s, rv, 0.9).threshold == pytest.approx(0.85)
    assert refit_threshold(s, rv, None).threshold == pytest.approx(0.55)  # lowest, F1-max's convention
    assert refit_threshold(s, rv, 0.9, ties="lowest").threshold == pytest.approx(0.55)
    assert refit_threshold(s, rv, 0.6, ties="highest").threshold == pytest.approx(0.85)
    assert refit_threshold(s, rv, 0.6).f1_reviewed == pytest.approx(2 / 3)


def test_gap_placements() -> None:
    rv = np.array([-2, -2, 0, 1, 0, 1])
    assert refit_threshold(S, rv, 0.45, gap="low").threshold == np.nextafter(0.3, math.inf)
    assert refit_threshold(S, rv, 0.45, gap="high").threshold == np.nextafter(0.4, -math.inf)
    with pytest.raises(ZsadInputError, match="gap"):
        refit_threshold(S, rv, 0.45, gap="middle")


def test_no_reviews_keep_the_current_threshold() -> None:
    rv = np.array([-2, -1, -2, -1, -2, -2])  # skips are no reviews
    r = refit_threshold(S, rv, 0.45)
    assert (r.case, r.threshold, r.changed, r.n_skipped) == ("no_reviews", 0.45, False, 2)
    assert math.isnan(r.f1_reviewed) and r.flags_before == r.flags_after == 2
    none = refit_threshold(S, rv, None)
    assert math.isnan(none.threshold) and none.flags_after == 0 and not none.changed
    d = none.as_dict()
    assert d["threshold"] is None and d["f1_reviewed"] is None and d["note"] == none.note
    assert set(d) >= {"threshold", "f1_reviewed", "flags_before", "flags_after", "n_reviewed", "n_defects"}
    assert refit_threshold(S[:0], S[:0].astype(int), 0.3).flags_before == 0


def test_only_normals_move_just_above_the_highest_flagged_normal() -> None:
    rv = np.array([-2, -2, -2, 0, -2, -2])  # 0.4 confirmed normal, flagged by 0.35
    r = refit_threshold(S, rv, 0.35)
    assert r.case == "only_normals" and r.changed
    assert r.threshold == pytest.approx(0.45)  # midway to the next history score above
    assert (r.flags_before, r.flags_after) == (3, 2)
    assert math.isnan(r.f1_reviewed)
    kept = refit_threshold(S, rv, 0.4)  # 0.4 is not flagged by 0.4 (score > threshold): nothing to fix
    assert kept.threshold == 0.4 and not kept.changed and kept.case == "only_normals"
    assert math.isnan(kept.gap_low) and (r.gap_low, r.gap_high) == (0.4, 0.5)
    top = refit_threshold(S, np.array([-2, -2, -2, -2, -2, 0]), 0.2)
    assert top.threshold == np.nextafter(0.6, math.inf) and top.flags_after == 0
    assert refit_threshold(S, rv, None).threshold == pytest.approx(0.45)  # no threshold yet: the same move


def test_only_defects_move_just_below_the_lowest_missed_defect() -> None:
    rv = np.array([-2, -2, 1, -2, 1, -2])
    r = refit_threshold(S, rv, 0.45)  # misses the 0.3 defect
    assert r.case == "only_defects" and r.threshold == pytest.approx(0.25) and r.f1_reviewed == 1.0
    assert (r.flags_before, r.flags_after) == (2, 4)
    kept = refit_threshold(S, rv, 0.25)
    assert kept.threshold == 0.25 and not kept.changed
    low = refit_threshold(S, np.array([1, -2, -2, -2, -2, -2]), 0.45)
    assert low.threshold == np.nextafter(0.1, -math.inf) and low.flags_after == 6


def test_tied_scores_are_decided_together() -> None:
    s = np.array([0.7, 0.5, 0.5, 0.5, 0.2])
    rv = np.array([1, 1, 0, -2, 0])
    # groups: 0.7 {D}, 0.5 {D, N}, 0.2 {N}: cut 1 F1 2/3, cut 2 F1 4/5 (flags D, D, N), cut 3 4/6
    r = refit_threshold(s, rv, 0.6)
    assert r.f1_reviewed == pytest.approx(0.8) and r.threshold == pytest.approx(0.35)
    assert r.flags_after == 4  # the unreviewed 0.5 goes with its group


def test_bad_input_is_refused_in_one_line() -> None:
    with pytest.raises(ZsadInputError, match=r"review codes \[2\]"):
        refit_threshold(S, np.array([0, 1, 2, -2, -2, -2]), 0.3)
    with pytest.raises(ZsadInputError, match="6 scores but 5"):
        refit_threshold(S, np.zeros(5, dtype=int), 0.3)


def test_non_finite_scores_are_ignored() -> None:
    s = np.array([np.nan, 0.2, 0.8, np.inf, 0.5])
    r = refit_threshold(s, np.array([1, 0, 1, 1, 0]), 0.9)
    assert r.n_defects == 1 and r.threshold == pytest.approx(0.65) and r.flags_after == 1


def test_f1_at_and_decide() -> None:
    y = np.array([0, 0, 1, 0, 1, 1])
    assert f1_at(S, y, 0.35) == pytest.approx(2 * 2 / (3 + 3))  # flags 0.4 (N), 0.5 and 0.6 (D): 2 TP of 3
    assert f1_at(S, y, None) == 0.0
    assert math.isnan(f1_at(S, np.zeros(6), 0.3))
    assert decide(S, 0.3).tolist() == [False, False, False, True, True, True]
    assert not decide(S, float("nan")).any()


@pytest.mark.parametrize("seed", range(40))
def test_randomized_refit_is_f1_optimal_on_the_reviewed_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
    y[:2] = (1, 0)  # both classes exist
    s = rng.normal(size=n) + 1.5 * y
    if seed % 2:
        s = np.round(s, 1)  # many ties
    codes = np.where(rng.random(n) < rng.uniform(0.2, 1.0), y, -2)
    codes[rng.random(n) < 0.1] = -1
    rev = codes >= 0
    if len(set(codes[rev].tolist())) < 2:
        codes[np.flatnonzero(y == 1)[:1]] = 1
        codes[np.flatnonzero(y == 0)[:1]] = 0
        rev = codes >= 0
    current = float(rng.normal()) if seed % 3 else None
    r = refit_threshold(s, codes, current)
    assert r.case == "f1"
    p, rc, _ = precision_recall_curve(codes[rev], s[rev])
    best = float(np.max(np.divide(2 * p * rc, p + rc, out=np.zeros_like(p), where=p + rc > 0)))
    assert r.f1_reviewed == pytest.approx(best, abs=1e-12)
    assert f1_at(s[rev], codes[rev], r.threshold) == pytest.approx(best, abs=1e-12)
    assert float(np.mean(s[rev] >= r.threshold)) == float(np.mean(s[rev] > r.threshold))  # never on a score
    assert r.flags_after == int((s > r.threshold).sum())
    assert r.flags_before == (int((s > current).sum()) if current is not None else 0)
    assert r.n_reviewed == int(rev.sum()) and r.n_defects == int((codes == 1).sum())
    assert isinstance(r, Refit)


def test_no_torch_at_import() -> None:
    code = "import sys, zsad.feedback; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
