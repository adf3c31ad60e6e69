"""Image-level transductive scoring on REAL CLIP features: MVTec AD test images, ViT-L/14-336 global embeddings.

`../shared/assets/mvtec_clip_features/` holds the L2-normalised image embedding of every MVTec AD test image (1,725
in 15 classes) with its label. Each scorer below sees only the embeddings of one class's test set (no labels, no
per-class setting: one configuration for all 15 classes), and is scored by image AUROC against the labels. Then the
unlabelled threshold rule of `zsad.thresholds` (robust outlier) is applied to each scorer's scores and its F1 is
compared with the best F1 any threshold could reach on that class (F1-max, which needs the labels).

    .venv/bin/python benchmarks/real_features.py --append-results

Real features, real quality: these numbers are measurements of image-level steps only (no text, no patch tokens).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from _results import add_results_args, emit
from zsad.metrics import f1_max, image_auroc
from zsad.mutual import mutual_scores, rscin
from zsad.thresholds import UNLABELLED_RULES, choose_threshold

ROOT = Path(__file__).resolve().parents[1]
FILE = "mvtec_clip_features/mvtec_ad_test_clip_vitl14_336_cls.npz"


def knn(f: np.ndarray, k: int) -> np.ndarray:
    """Minus the mean cosine similarity to the k most similar other images (the README's check uses k = 5)."""
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    return -np.sort(s, 1)[:, ::-1][:, :k].mean(1)


def msm(f: np.ndarray, high: float) -> np.ndarray:
    """MuSc's mutual scoring at image level: each image one 'patch', mean of its lowest `high` distances."""
    z = torch.from_numpy(f)[:, None, :]
    return mutual_scores(z, torch.arange(len(f)), z, len(f), 0.0, high)[:, 0].numpy()


def with_rscin(base: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """RsCIN (k 1, 2, 3, as MuSc publishes for MVTec AD) over a base scorer's scores."""
    return lambda f: rscin(torch.from_numpy(base(f)), torch.from_numpy(f), (1, 2, 3)).numpy()


SCORERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "kNN k=5 (the assets README's check)": lambda f: knn(f, 5),
    "kNN k=3": lambda f: knn(f, 3),
    "kNN k=3 + RsCIN": with_rscin(lambda f: knn(f, 3)),
    "kNN k=5 + RsCIN": with_rscin(lambda f: knn(f, 5)),
    "MSM image-level, interval (0, 0.05)": lambda f: msm(f, 0.05),
    "MSM image-level, interval (0, 0.3) (MuSc's patch setting)": lambda f: msm(f, 0.3),
    "MSM image-level (0, 0.05) + RsCIN": with_rscin(lambda f: msm(f, 0.05)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_args(ap)
    args = ap.parse_args()
    path = Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets")) / FILE
    if not path.is_file():
        raise SystemExit(f"{path}: not found (set ZSAD_ASSETS)")
    data = np.load(path, allow_pickle=False)
    classes = sorted({k.split("/")[0] for k in data.files})
    auroc: dict[str, list[float]] = {name: [] for name in SCORERS}
    f1_rule: dict[tuple[str, str], list[float]] = {(n, r): [] for n in SCORERS for r in UNLABELLED_RULES}
    flagged: dict[tuple[str, str], list[float]] = {(n, r): [] for n in SCORERS for r in UNLABELLED_RULES}
    f1_best: dict[str, list[float]] = {name: [] for name in SCORERS}
    t0 = time.perf_counter()
    for c in classes:
        f = data[f"{c}/features"].astype(np.float64)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        y = data[f"{c}/label"].astype(int)
        for name, scorer in SCORERS.items():
            s = scorer(f)
            auroc[name].append(100 * image_auroc(s, y))
            for rule in UNLABELLED_RULES:  # no labels: each rule fitted to the class's scores alone
                pred = choose_threshold(s, unlabelled=rule).apply(s)
                tp = int((pred & (y == 1)).sum())
                prec = tp / max(1, int(pred.sum()))
                rec = tp / max(1, int((y == 1).sum()))
                f1_rule[name, rule].append(100 * (2 * prec * rec / (prec + rec) if prec + rec else 0.0))
                flagged[name, rule].append(100 * pred.mean())
            f1_best[name].append(100 * f1_max(s, y)[0])
    elapsed = time.perf_counter() - t0
    head = "| scorer | " + " | ".join(classes) + " | mean |"
    lines = [
        f"### Image-level scoring on real CLIP features ({time.strftime('%Y-%m-%d')})",
        "",
        "Command: `.venv/bin/python benchmarks/real_features.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`",
        "",
        "Data: REAL OpenAI CLIP ViT-L/14-336 global embeddings of all 1,725 MVTec AD test images (`"
        + FILE
        + "`); each class's test set scored on its own, without labels, one setting for every class. Image AUROC "
        "(%), then the F1 (%) of each unlabelled threshold rule of `zsad.thresholds` beside F1-max (the best "
        f"threshold, chosen with the labels). CPU, {elapsed:.1f} s for everything.",
        "",
        "Image AUROC:",
        "",
        head,
        "|---|" + "---:|" * (len(classes) + 1),
    ]
    for name in SCORERS:
        vals = auroc[name]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | **{np.mean(vals):.1f}** |")
    share = 100 * np.mean([data[f"{c}/label"].mean() for c in classes])
    lines += [
        "",
        "Unlabelled threshold rules: F1 at the rule's threshold, and the share of images it flags, beside F1-max "
        f"(means over the classes; {share:.0f} % of the test images are anomalous):",
        "",
    ]
    cols = " | ".join(f"F1 {r} | flagged {r}" for r in UNLABELLED_RULES)
    lines += [f"| scorer | {cols} | F1-max |", "|---|" + "---:|" * (2 * len(UNLABELLED_RULES) + 1)]
    for name in SCORERS:
        vals = " | ".join(
            f"{np.mean(f1_rule[name, r]):.1f} | {np.mean(flagged[name, r]):.0f} %" for r in UNLABELLED_RULES
        )
        lines.append(f"| {name} | {vals} | {np.mean(f1_best[name]):.1f} |")
    text = "\n".join(lines) + "\n"
    emit(text, args)


if __name__ == "__main__":
    main()
