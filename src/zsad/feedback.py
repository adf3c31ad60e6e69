"""Operator feedback on decisions: which images a reviewer sees first, and the threshold the reviews support.

The inspection station (issue 27) records every inspection of a profile with its score, and operators mark some of
them ``normal`` or ``defect`` (or skip them). Two questions follow, answered here without any labels but the
reviews and without torch (this is a bottom module: numpy, stdlib and ``zsad.errors`` only):

- :func:`review_order`: which image should the page show next? The flagged ones first, then the unflagged ones
  nearest below the threshold (see its docstring for why).
- :func:`refit_threshold`: which image threshold do the reviews support? The one with the best F1 on the reviewed
  images, placed midway in the gap between the reviewed scores on either side of the best cut, with the effect on
  the whole history (flags before and after) so the page can show what the change would do before it is applied.

Decisions are ``score > threshold``, as :meth:`zsad.thresholds.Threshold.apply` decides for every rule a profile
can hold (manual, normal_quantile, robust_outlier, two_mode); that is how ``flags_before`` counts the current
threshold. A refit threshold always lies strictly between two distinct scores of the history (or beyond all of
them), so ``score >= threshold`` (the PR-curve convention of F1-max) gives the same decisions on every score seen.
Review codes are those of ``zsad.store``: -2 not reviewed, -1 skipped, 0 normal, 1 defect.

Measured on real CLIP features of MVTec AD (``benchmarks/feedback_real.py``, results in ``benchmarks/RESULTS.md``):
on the reviewed stream itself the refit reaches F1-max after 10-20 reviews (the rule alone: 60 % of it); on unseen
images it does no better than the unlabelled rule while only one or two defects have been confirmed, whatever the
placement in the gap, so the placement is the plain midpoint, with nothing to tune.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError

NOT_REVIEWED, SKIPPED, NORMAL, DEFECT = -2, -1, 0, 1
REVIEW_CODES = (NOT_REVIEWED, SKIPPED, NORMAL, DEFECT)
GAPS = ("mid", "low", "high")
TIES = ("nearest", "lowest", "highest")


@dataclass(frozen=True)
class Refit:
    """What a refit would do: the new threshold, its F1 on the reviewed images, and the flags before and after.

    ``threshold`` is NaN only when there is nothing to decide with (no reviews and no current threshold);
    ``f1_reviewed`` is NaN when no defect was reviewed (F1 needs one). ``case`` names the branch taken (``f1``,
    ``no_reviews``, ``only_normals``, ``only_defects``), ``changed`` whether the threshold moved, and ``note`` says
    why in one line the page can show. ``gap_low``/``gap_high`` bound the gap the threshold was placed in (NaN when
    the threshold was kept, infinite on a side with no score): any threshold strictly inside decides every reviewed
    image the same way, so the page can show how far it may move on the same evidence.
    """

    threshold: float
    f1_reviewed: float
    flags_before: int
    flags_after: int
    n_reviewed: int
    n_defects: int
    n_normals: int
    note: str
    n_skipped: int = 0
    case: str = "f1"
    changed: bool = False
    gap_low: float = math.nan
    gap_high: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None (JSON has no NaN)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def review_order(scores: np.ndarray, flagged: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """Indices of the images not reviewed yet, in the order the page shows them: flagged first, then the rest.

    Each group runs from the highest score down. Why: the flagged images are the decisions that act (a rejected
    part), so a false alarm among them costs now and a confirmed defect is the evidence a refit needs; the highest
    unflagged scores come next because they are the borderline ones just below the threshold, where missed defects
    hide. Low scores come last: a normal confirmed far below every defect moves no F1-optimal cut. With a single
    threshold this is simply the history by descending score, so the reviewed images are its top, and a cut inside
    them decides every unreviewed image the same way (all lie below it). Pass ``reviewed = review != -2`` so that
    skipped images are not offered again. Non-finite scores come last, in history order.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    f = np.asarray(flagged, dtype=bool).ravel()
    r = np.asarray(reviewed, dtype=bool).ravel()
    if not s.size == f.size == r.size:
        raise ZsadInputError(f"review_order: {s.size} scores, {f.size} flags and {r.size} reviewed marks differ")
    todo = np.flatnonzero(~r)
    finite = np.isfinite(s[todo])
    key = np.where(finite, -s[todo], 0.0)
    # lexsort: last key first; stable, so equal scores keep history order
    order = np.lexsort((key, ~f[todo], ~finite))
    return todo[order]


def decide(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Boolean flags ``score > threshold``; no threshold (None or NaN) flags nothing, as a profile without one does."""
    s = np.asarray(scores, dtype=np.float64)
    if threshold is None or not math.isfinite(threshold):
        return np.zeros(s.shape, dtype=bool)
    return s > threshold


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> float:
    """F1 of the decisions ``score > threshold`` against ``labels`` (> 0 is a defect); NaN without any defect."""
    y = np.asarray(labels).ravel() > 0
    pred = decide(np.asarray(scores).ravel(), threshold)
    if y.size != pred.size:
        raise ZsadInputError(f"f1_at: {pred.size} scores but {y.size} labels")
    pos = int(y.sum())
    if pos == 0:
        return float("nan")
    tp = int((pred & y).sum())
    return 2 * tp / (int(pred.sum()) + pos)


def refit_threshold(
    scores: np.ndarray,
    review: np.ndarray,
    current: float | None,
    *,
    gap: str = "mid",
    ties: str = "nearest",
) -> Refit:
    """The image threshold the reviews support, and its effect on the flags of the whole history.

    Args:
        scores: Every score of the profile's history under the current scoring (comparable scores).
        review: Per score: -2 not reviewed, -1 skipped, 0 reviewed normal, 1 reviewed defect.
        current: The profile's threshold now (None or NaN: it has none).
        gap: Where in the optimal gap the threshold goes: ``mid`` (the station's setting), ``low`` (just above the
            reviewed score below the cut) or ``high`` (just below the cut's lowest flagged score). The other two
            exist for the benchmark's ablation.
        ties: Which of equally good cuts wins: ``nearest`` the current threshold (the station's setting),
            ``lowest`` or ``highest``; also for the ablation.

    Returns:
        The refit. With defects and normals reviewed: the F1-optimal cut on the reviewed images (see
        :func:`_best_cut` for ties and the placement in the gap). The degenerate cases keep the current
        threshold unless a review contradicts it: no reviews keep it; only normals move it just above the highest
        confirmed normal if the current one flags that normal; only defects move it just below the lowest confirmed
        defect if the current one misses that defect. Skipped and non-finite scores are ignored.
    """
    if gap not in GAPS or ties not in TIES:
        raise ZsadInputError(f"refit_threshold: gap {gap!r}, ties {ties!r}: use one of {GAPS} and one of {TIES}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    rv = np.asarray(review).ravel()
    if s.size != rv.size:
        raise ZsadInputError(f"refit_threshold: {s.size} scores but {rv.size} review codes")
    if rv.size and not np.isin(rv, REVIEW_CODES).all():
        bad = sorted({int(v) for v in rv[~np.isin(rv, REVIEW_CODES)]})
        raise ZsadInputError(f"refit_threshold: review codes {bad}: use -2 (not reviewed), -1 (skip), 0, 1")
    cur = float(current) if current is not None and math.isfinite(float(current)) else None
    finite = np.isfinite(s)
    hist = s[finite]  # the history the flags are counted on
    codes = rv[finite]
    normals = hist[codes == NORMAL]
    defects = hist[codes == DEFECT]
    n_skipped = int((rv == SKIPPED).sum())
    base = {
        "flags_before": int(decide(hist, cur).sum()),
        "n_reviewed": int(normals.size + defects.size),
        "n_defects": int(defects.size),
        "n_normals": int(normals.size),
        "n_skipped": n_skipped,
    }
    keep = cur if cur is not None else float("nan")

    def done(
        threshold: float, f1: float, case: str, note: str, gap: tuple[float, float] = (math.nan, math.nan)
    ) -> Refit:
        changed = not (threshold == keep or (math.isnan(threshold) and math.isnan(keep)))
        flags_after = int(decide(hist, threshold).sum())
        return Refit(
            threshold,
            f1,
            flags_after=flags_after,
            note=note,
            case=case,
            changed=changed,
            gap_low=gap[0],
            gap_high=gap[1],
            **base,
        )

    if defects.size == 0 and normals.size == 0:
        what = f"threshold kept at {_fmt(keep)}" if cur is not None else "no threshold yet"
        return done(keep, float("nan"), "no_reviews", f"no reviews yet: {what}")
    if defects.size == 0:
        top = float(normals.max())
        if cur is not None and not top > cur:
            return done(
                keep,
                float("nan"),
                "only_normals",
                f"{normals.size} normal(s) confirmed and no defect yet; the threshold {_fmt(cur)} already passes the "
                f"highest confirmed normal ({_fmt(top)}): kept",
            )
        above = _next_above(hist, top)
        thr = _between(top, above)
        return done(
            thr,
            float("nan"),
            "only_normals",
            f"{normals.size} normal(s) confirmed and no defect yet: threshold moved just above the highest confirmed "
            f"normal ({_fmt(top)})",
            (top, above),
        )
    if normals.size == 0:
        low = float(defects.min())
        if cur is not None and low > cur:
            return done(
                keep,
                1.0,
                "only_defects",
                f"{defects.size} defect(s) confirmed and no normal yet; the threshold {_fmt(cur)} already flags them "
                "all: kept",
            )
        below = _next_below(hist, low)
        thr = _between(below, low)
        return done(
            thr,
            1.0,
            "only_defects",
            f"{defects.size} defect(s) confirmed and no normal yet: threshold moved just below the lowest confirmed "
            f"defect ({_fmt(low)})",
            (below, low),
        )
    thr, f1, lo, hi = _best_cut(hist, codes, cur, gap, ties)
    n_flag = int(decide(np.concatenate([normals, defects]), thr).sum())
    return done(
        thr,
        f1,
        "f1",
        f"F1-optimal on {base['n_reviewed']} reviews ({defects.size} defect(s), {normals.size} normal(s)): F1 "
        f"{f1:.3f} flagging {n_flag} of them; threshold {_fmt(thr)}, in the gap between {_fmt(lo)} and {_fmt(hi)}",
        (lo, hi),
    )


def _best_cut(
    hist: np.ndarray, codes: np.ndarray, current: float | None, gap: str, ties: str
) -> tuple[float, float, float, float]:
    """(threshold, F1, gap low, gap high) of the F1-optimal cut among the reviewed scores (both classes present).

    The candidate cuts lie between distinct reviewed scores (equal scores are decided together, as on a PR curve);
    cutting below the group at rank i flags groups 0..i, with F1 = 2 TP / (TP + FP + P). Equal F1 values are exact
    ties (equal fractions give the same correctly rounded float): among them the cut nearest the current threshold
    wins, as the reviews cannot tell them apart and the smaller move keeps the decisions operators already know
    (without a current threshold, the lowest cut, F1-max's convention). The gap runs from the cut's lowest flagged
    score down to the next reviewed score below it, or, below the lowest reviewed score, to the next score of the
    whole history (so no unreviewed image below is flagged on no evidence); the threshold is its midpoint, the
    choice that favours neither side when nothing is known between them.
    """
    rev = codes >= NORMAL
    r = hist[rev]
    y = (codes[rev] == DEFECT).astype(np.float64)
    neg, inverse = np.unique(-r, return_inverse=True)  # distinct reviewed scores, highest first
    values = -neg
    tp = np.cumsum(np.bincount(inverse.ravel(), weights=y, minlength=values.size))
    n = np.cumsum(np.bincount(inverse.ravel(), minlength=values.size))
    f1 = 2 * tp / (n + y.sum())
    best = float(f1.max())
    cand = np.flatnonzero(f1 == best)
    lows = np.append(values[1:], _next_below(hist, float(values[-1])))
    mids = np.array([_place(float(lows[i]), float(values[i]), gap) for i in cand])
    if ties == "nearest" and current is not None:
        pick = int(np.argmin(np.abs(mids - current)))  # argmin: the first (highest) of two equally near
    elif ties == "highest":
        pick = 0
    else:
        pick = len(cand) - 1
    i = int(cand[pick])
    return float(mids[pick]), best, float(lows[i]), float(values[i])


def _place(lo: float, hi: float, gap: str) -> float:
    """The threshold in the gap (lo, hi): its midpoint, or one float step inside from either end."""
    if gap == "low" and math.isfinite(lo):
        return _between(lo, math.inf)
    if gap == "high":
        return _between(-math.inf, hi)
    return _between(lo, hi)


def _next_above(hist: np.ndarray, v: float) -> float:
    above = hist[hist > v]
    return float(above.min()) if above.size else math.inf


def _next_below(hist: np.ndarray, v: float) -> float:
    below = hist[hist < v]
    return float(below.max()) if below.size else -math.inf


def _between(lo: float, hi: float) -> float:
    """A threshold with ``lo`` below it and ``hi`` above: the midpoint, or one float step past a missing side.

    When ``lo`` and ``hi`` are adjacent floats nothing lies strictly between them: ``lo`` is returned, which still
    decides both right under ``score > threshold``.
    """
    if math.isinf(lo) and math.isinf(hi):
        return math.nan
    if math.isinf(lo):
        return float(np.nextafter(hi, -math.inf))
    if math.isinf(hi):
        return float(np.nextafter(lo, math.inf))
    mid = lo + (hi - lo) / 2
    return mid if lo < mid < hi else lo


def _fmt(v: float) -> str:
    return "none" if not math.isfinite(v) else f"{v:.6g}"
