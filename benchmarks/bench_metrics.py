"""Time ``compute_metrics`` (image + pixel metrics, both AUPRO variants) on an MVTec-size category.

    python benchmarks/bench_metrics.py            # 100 images at 240 px, ~half with defects

Seeded synthetic maps (smooth noise, defects scored higher) and blob masks; float32 maps as methods return them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage

from zsad.metrics import aupro_cflow_sorted, aupro_sorted, compute_metrics, curve_from_sorted, sort_pixels


def category(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, 4, 4)).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    labels = (np.arange(n) % 2).astype(int)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(20, size - 20, 2).tolist() + [int(rng.integers(4, 20))]
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    maps = maps + 0.05 * masks
    return rng.random(n) + 0.3 * labels, labels, maps, masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    scores, labels, maps, masks = category(args.images, args.size)

    def t(fn) -> float:
        fn()
        out = []
        for _ in range(args.repeats):
            s = time.perf_counter()
            fn()
            out.append(time.perf_counter() - s)
        return statistics.median(out)

    sp = sort_pixels(maps, masks)
    parts = {
        "sort all pixels once (+ label regions)": t(lambda: sort_pixels(maps, masks)),
        "pixel AUROC + AP + F1max from the sort": t(lambda: curve_from_sorted(sp.scores, sp.regions > 0)),
        "AUPRO exact (anomalib definition)": t(lambda: aupro_sorted(sp)),
        "AUPRO cflow (200 thresholds)": t(lambda: aupro_cflow_sorted(sp)),
        "compute_metrics total (all of the above + image metrics)": t(
            lambda: compute_metrics(scores, labels, maps, masks)
        ),
    }
    print(
        f"{args.images} images x {args.size}x{args.size} px = {maps.size / 1e6:.2f} M pixels, median of {args.repeats}"
    )
    print("| step | seconds |\n|---|---:|")
    for k, v in parts.items():
        print(f"| {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
