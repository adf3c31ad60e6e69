"""Does operator feedback make the station's decisions better? Measured on REAL CLIP features of MVTec AD.

For each class a plant-like stream is simulated: ALL its normal test images plus anomalies drawn to a 5 % defect
rate (round(0.05 / 0.95 * normals), at least 1), 10 seeded draws. Each stream is scored by zsad's image-level
mutual scorer (kNN k=3 over the stream's own embeddings, ``real_features.knn``) and decided by the default
unlabelled rule (``choose_threshold(scores, unlabelled="robust_outlier")``). A simulated operator then reviews N
images (10, 20, 50) in ``zsad.feedback.review_order`` (flagged first, then the rest by score), giving the true
labels, and ``zsad.feedback.refit_threshold`` (the function the station's page calls) refits the threshold. F1 over
the whole stream before (the rule's threshold) and after (the refit one) is compared with F1-max (every label, same
stream). One setting for every class; nothing is tuned per class.

Held out, so the number is not only in-sample: each draw's stream (here with at least 2 anomalies, so that both
halves hold one) is split in two stratified random halves; scores come from the full stream; the operator reviews
and refits on one half's decisions, and the refit threshold is measured on the other half against that half's
F1-max; both directions count.

    .venv/bin/python benchmarks/feedback_real.py [--features NPZ] [--append-results]

The last line printed is ``feedback: F1 before B, after 20 reviews A, F1-max M`` (means over classes, %).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from _results import add_results_args, emit
from real_features import FILE, knn
from zsad.feedback import GAPS, TIES, Refit, f1_at, refit_threshold, review_order
from zsad.metrics import f1_max, image_auroc
from zsad.thresholds import choose_threshold

ROOT = Path(__file__).resolve().parents[1]
RATE = 0.05  # defect rate of the simulated stream
DRAWS = 10
BUDGETS = (10, 20, 50)
MAIN = 20  # the budget of the goal and of the last line
K = 3  # kNN neighbours: today's best image-level scorer in real_features.py
SETTING = ("mid", "nearest")  # refit_threshold's defaults, the station's setting
KERNEL = ("kernel-smoothed F1 (exploration)", "nearest")


@dataclass
class ClassResult:
    """Per-draw values of one class, in % (lists over draws, or over draws x 2 directions for held-out)."""

    n_normal: int = 0
    n_anomalous: int = 0
    auroc: list[float] = field(default_factory=list)
    f1max: list[float] = field(default_factory=list)
    before: list[float] = field(default_factory=list)
    flagged_before: list[float] = field(default_factory=list)
    after: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in BUDGETS})
    flagged_after: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in BUDGETS})
    ho_f1max: list[float] = field(default_factory=list)
    ho_before: list[float] = field(default_factory=list)
    ho_after: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in BUDGETS})
    ablation: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    ho_ablation: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def draw_stream(y: np.ndarray, rng: np.random.Generator, min_anomalous: int) -> np.ndarray:
    """Indices of one stream: every normal image and round(RATE / (1 - RATE) * normals) anomalies (a minimum)."""
    normal = np.flatnonzero(y == 0)
    anomalous = np.flatnonzero(y == 1)
    k = min(anomalous.size, max(min_anomalous, round(RATE / (1 - RATE) * normal.size)))
    return np.concatenate([normal, rng.choice(anomalous, k, replace=False)])


def review(scores: np.ndarray, y: np.ndarray, flagged: np.ndarray, n: int) -> np.ndarray:
    """The operator: the first n images of the page's order get their true label (store codes: -2 = not reviewed)."""
    codes = np.full(scores.size, -2, dtype=np.int8)
    seen = review_order(scores, flagged, np.zeros(scores.size, dtype=bool))[:n]
    codes[seen] = y[seen]
    return codes


def kernel_in_gap(scores: np.ndarray, codes: np.ndarray, refit: Refit) -> float:
    """Exploration, not in zsad.feedback: the point of the refit's gap with the best kernel-smoothed F1.

    Each reviewed score is spread by a Gaussian of Silverman's bandwidth (over the reviewed scores), so that F1 is
    read as expected TP / flags under that spread, on 199 points inside the gap. Falls back to the refit's
    threshold where the gap is open on a side or the refit kept the threshold.
    """
    lo, hi = refit.gap_low, refit.gap_high
    if refit.case != "f1" or not (np.isfinite(lo) and np.isfinite(hi)):
        return refit.threshold
    rev = codes >= 0
    r, y = scores[rev], codes[rev] == 1
    q75, q25 = np.percentile(r, [75, 25])
    spread = min(float(r.std()), float(q75 - q25) / 1.34) or float(r.std())
    h = 0.9 * spread * r.size**-0.2
    grid = np.linspace(lo, hi, 201)[1:-1]
    tp = ndtr((r[y][None] - grid[:, None]) / h).sum(1)
    flags = ndtr((r[None] - grid[:, None]) / h).sum(1)
    return float(grid[np.argmax(2 * tp / (flags + y.sum()))])


def halves(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random split stratified by label; an odd count's extra image goes to a random half."""
    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = idx.size // 2 + (idx.size % 2) * int(rng.integers(2))
        a.append(idx[:cut])
        b.append(idx[cut:])
    return np.concatenate(a), np.concatenate(b)


def run_class(f: np.ndarray, y: np.ndarray, seed: int) -> ClassResult:
    res = ClassResult(n_normal=int((y == 0).sum()))
    for d in range(DRAWS):
        rng = np.random.default_rng([seed, d])
        idx = draw_stream(y, rng, 1)
        ys = y[idx]
        res.n_anomalous = int(ys.sum())
        s = knn(f[idx], K)
        thr = choose_threshold(s, unlabelled="robust_outlier")
        flagged = thr.apply(s)
        res.auroc.append(100 * image_auroc(s, ys))
        res.f1max.append(100 * f1_max(s, ys)[0])
        res.before.append(100 * f1_at(s, ys, thr.value))
        res.flagged_before.append(100 * flagged.mean())
        for n in BUDGETS:
            t = refit_threshold(s, review(s, ys, flagged, n), thr.value).threshold
            res.after[n].append(100 * f1_at(s, ys, t))
            res.flagged_after[n].append(100 * float((s > t).mean()))
        codes = review(s, ys, flagged, MAIN)
        for gap in GAPS:
            for ties in TIES:
                t = refit_threshold(s, codes, thr.value, gap=gap, ties=ties).threshold
                res.ablation.setdefault((gap, ties), []).append(100 * f1_at(s, ys, t))
        t = kernel_in_gap(s, codes, refit_threshold(s, codes, thr.value))
        res.ablation.setdefault(KERNEL, []).append(100 * f1_at(s, ys, t))

        # held out: a stream with an anomaly for each half, scored whole, refit on one half, measured on the other
        idx = draw_stream(y, rng, 2)
        ys = y[idx]
        s = knn(f[idx], K)
        thr = choose_threshold(s, unlabelled="robust_outlier")
        flagged = thr.apply(s)
        a, b = halves(ys, rng)
        for fit, test in ((a, b), (b, a)):
            res.ho_f1max.append(100 * f1_max(s[test], ys[test])[0])
            res.ho_before.append(100 * f1_at(s[test], ys[test], thr.value))
            for n in BUDGETS:
                t = refit_threshold(s[fit], review(s[fit], ys[fit], flagged[fit], n), thr.value).threshold
                res.ho_after[n].append(100 * f1_at(s[test], ys[test], t))
            codes = review(s[fit], ys[fit], flagged[fit], MAIN)
            for gap in GAPS:
                for ties in TIES:
                    t = refit_threshold(s[fit], codes, thr.value, gap=gap, ties=ties).threshold
                    res.ho_ablation.setdefault((gap, ties), []).append(100 * f1_at(s[test], ys[test], t))
            t = kernel_in_gap(s[fit], codes, refit_threshold(s[fit], codes, thr.value))
            res.ho_ablation.setdefault(KERNEL, []).append(100 * f1_at(s[test], ys[test], t))
    return res


def mean(xs: list[float]) -> float:
    return float(np.mean(xs))


def reached(results: dict[str, ClassResult], get: str, n: int | None = None, held_out: bool = False) -> int:
    """Classes whose mean F1 (over draws) is at least 90 % of their mean F1-max."""
    count = 0
    for r in results.values():
        vals = getattr(r, get) if n is None else getattr(r, get)[n]
        best = r.ho_f1max if held_out else r.f1max
        count += int(mean(vals) >= 0.9 * mean(best))
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, default=None, help="the npz (default: $ZSAD_ASSETS/" + FILE + ")")
    add_results_args(ap)
    args = ap.parse_args()
    path = args.features or Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets")) / FILE
    if not path.is_file():
        raise SystemExit(f"{path}: not found (give --features, or set ZSAD_ASSETS)")
    data = np.load(path, allow_pickle=False)
    classes = sorted({k.split("/")[0] for k in data.files if k.endswith("/features")})
    t0 = time.perf_counter()
    results: dict[str, ClassResult] = {}
    for ci, c in enumerate(classes):
        f = data[f"{c}/features"].astype(np.float64)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        y = (data[f"{c}/label"] > 0).astype(np.int64)
        if y.sum() == 0 or (y == 0).sum() <= K:
            print(f"{c}: skipped ({int(y.sum())} anomalous, {int((y == 0).sum())} normal images)", file=sys.stderr)
            continue
        results[c] = run_class(f, y, ci)
    elapsed = time.perf_counter() - t0
    rs = list(results.values())

    def m(get: str, n: int | None = None) -> float:
        return mean([mean(getattr(r, get) if n is None else getattr(r, get)[n]) for r in rs])

    nc = len(rs)
    before, best, after = m("before"), m("f1max"), {n: m("after", n) for n in BUDGETS}
    ho_before, ho_best, ho_after = m("ho_before"), m("ho_f1max"), {n: m("ho_after", n) for n in BUDGETS}
    share = mean([100 * r.n_anomalous / (r.n_anomalous + r.n_normal) for r in rs])
    cmd = ".venv/bin/python benchmarks/feedback_real.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = [
        f"### Operator feedback on real CLIP features: refit after N reviews ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `{cmd}`",
        "",
        "Data: REAL OpenAI CLIP ViT-L/14-336 global embeddings of the MVTec AD test images (`"
        + FILE
        + f"`), {nc} classes. Per class, {DRAWS} seeded plant-like streams: all normal test images plus anomalies "
        f"drawn to a {100 * RATE:.0f} % defect rate (round(0.05/0.95 x normals), at least 1; {share:.1f} % anomalous "
        f"on average). Scored by kNN k={K} over the stream's own embeddings (image AUROC {m('auroc'):.1f}), decided "
        "by `choose_threshold(scores, unlabelled='robust_outlier')` (before). Reviews: a simulated operator labels the "
        "first N images of `zsad.feedback.review_order` (the flagged ones highest score first, then the unflagged ones "
        "highest score first) with their true labels; `zsad.feedback.refit_threshold` (what the station's page calls; "
        "F1-optimal cut on the reviewed images, threshold at the midpoint of the gap, ties to the cut nearest the "
        "current threshold) gives the after threshold. F1 (%) over the whole stream, decisions `score > threshold`; "
        "F1-max uses every label of the same stream. Means over classes of the means over draws. "
        f"Machine: {platform.machine()} CPU ({os.cpu_count()} cores, no GPU), Python {platform.python_version()}, "
        f"{elapsed:.1f} s for everything.",
        "",
        "| | F1 | of F1-max | classes >= 90 % of F1-max | flagged |",
        "|---|---:|---:|---:|---:|",
        f"| before (robust_outlier) | {before:.1f} | {100 * before / best:.0f} % | {reached(results, 'before')}/{nc} "
        f"| {m('flagged_before'):.1f} % |",
    ]
    for n in BUDGETS:
        lines.append(
            f"| after {n} reviews | {after[n]:.1f} | {100 * after[n] / best:.0f} % | "
            f"{reached(results, 'after', n)}/{nc} | {m('flagged_after', n):.1f} % |"
        )
    lines += [f"| F1-max (all labels) | {best:.1f} | 100 % | | |", ""]
    lines += [
        "Held out: each draw's stream (at least 2 anomalies here, so both halves hold one) split in two stratified "
        "random halves; scores and the rule's threshold from the full stream; reviews and refit on one half, F1 of "
        "the refit threshold on the other half against that half's F1-max; both directions, so 20 values per class.",
        "",
        "| held out | F1 | of F1-max | classes >= 90 % of F1-max |",
        "|---|---:|---:|---:|",
        f"| before (robust_outlier) | {ho_before:.1f} | {100 * ho_before / ho_best:.0f} % | "
        f"{reached(results, 'ho_before', held_out=True)}/{nc} |",
    ]
    for n in BUDGETS:
        lines.append(
            f"| after {n} reviews of the other half | {ho_after[n]:.1f} | {100 * ho_after[n] / ho_best:.0f} % | "
            f"{reached(results, 'ho_after', n, held_out=True)}/{nc} |"
        )
    lines += [f"| F1-max of the half | {ho_best:.1f} | 100 % | |", ""]
    diff = [mean(r.ho_after[MAIN]) - mean(r.ho_before) for r in rs]
    se = float(np.std(diff, ddof=1) / np.sqrt(nc)) if nc > 1 else float("nan")
    lines += [
        f"Held-out change after {MAIN} reviews, after minus before: {mean(diff):+.1f} points (standard error over "
        f"the {nc} class means {se:.1f}).",
        "",
    ]
    lines += [
        f"Refit variants after {MAIN} reviews (where in the optimal gap the threshold goes x which of equally good "
        "cuts wins), mean F1 in-sample and held out; the station's setting in bold:",
        "",
        "| gap | ties | F1 in-sample | F1 held out |",
        "|---|---|---:|---:|",
    ]
    for gap, ties in [(g, t) for g in GAPS for t in TIES] + [KERNEL]:
        ins = mean([mean(r.ablation[gap, ties]) for r in rs])
        ho = mean([mean(r.ho_ablation[gap, ties]) for r in rs])
        b = "**" if (gap, ties) == SETTING else ""
        lines.append(f"| {b}{gap}{b} | {b}{ties}{b} | {b}{ins:.1f}{b} | {b}{ho:.1f}{b} |")
    lines += [
        "",
        "Per class (means over draws; held-out columns: the other half, after 20 reviews):",
        "",
        "| class | normals | anomalies | AUROC | F1-max | before | after 10 | after 20 | after 50 | flagged before "
        "| flagged after 20 | held-out before | held-out after 20 | held-out F1-max |",
        "|---|" + "---:|" * 13,
    ]
    for c, r in results.items():
        lines.append(
            f"| {c} | {r.n_normal} | {r.n_anomalous} | {mean(r.auroc):.1f} | {mean(r.f1max):.1f} | "
            f"{mean(r.before):.1f} | "
            + " | ".join(f"{mean(r.after[n]):.1f}" for n in BUDGETS)
            + f" | {mean(r.flagged_before):.1f} % | {mean(r.flagged_after[MAIN]):.1f} % | {mean(r.ho_before):.1f} | "
            f"{mean(r.ho_after[MAIN]):.1f} | {mean(r.ho_f1max):.1f} |"
        )
    lines.append(
        f"| **mean** | | | {m('auroc'):.1f} | {best:.1f} | {before:.1f} | "
        + " | ".join(f"{after[n]:.1f}" for n in BUDGETS)
        + f" | {m('flagged_before'):.1f} % | {m('flagged_after', MAIN):.1f} % | {ho_before:.1f} | "
        f"{ho_after[MAIN]:.1f} | {ho_best:.1f} |"
    )
    emit("\n".join(lines) + "\n", args)
    print(f"feedback: F1 before {before:.1f}, after {MAIN} reviews {after[MAIN]:.1f}, F1-max {best:.1f}")


if __name__ == "__main__":
    main()
