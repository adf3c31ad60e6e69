"""Time ``compute_metrics`` (image + pixel metrics, both AUPRO variants) on a synthetic MVTec-size category.

    python benchmarks/bench_metrics.py                  # 100 images at 240x240, defects in about half of them
    python benchmarks/bench_metrics.py --dtype float64  # float64 maps that are not float32: the argsort path

Maps are seeded smooth noise (float32, as methods return them), raised inside seeded blob masks. The per-step rows
time the pieces ``compute_metrics`` is made of; the last row is one full ``compute_metrics`` call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from zsad.metrics import (
    ap_from_curve,
    aupro_cflow_from_ranking,
    aupro_from_ranking,
    auroc_from_curve,
    compute_metrics,
    f1_max_from_curve,
    image_metrics,
    label_regions,
    rank_pixels,
)


def synthetic_category(
    n: int, size: int, seed: int, dtype: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image scores, labels, maps, masks): smooth maps, 1-3 blob defects in about half of the images."""
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, 6, 6))
    labels = (rng.random(n) < 0.5).astype(np.int64)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in np.flatnonzero(labels):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(3, size / 10, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    maps = maps + 0.02 * ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 2, 2))
    maps = maps.astype(np.float32).astype(dtype)
    if dtype == "float64":
        maps += rng.random(maps.shape) * 1e-9  # leave float32: exercises the argsort fallback
    scores = maps.reshape(n, -1).max(axis=1) + 0.01 * rng.standard_normal(n)
    return scores, labels, maps, masks


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()

    scores, labels, maps, masks = synthetic_category(args.images, args.size, args.seed, args.dtype)
    r = rank_pixels(maps, masks)
    steps: dict[str, Callable[[], object]] = {
        "label GT regions (8-connected)": lambda: label_regions(masks),
        "rank pixels: regions + the one sort + TP/FP curve": lambda: rank_pixels(maps, masks),
        "pixel AUROC + AP + F1max from the curve": lambda: (
            auroc_from_curve(r.curve),
            ap_from_curve(r.curve),
            f1_max_from_curve(r.curve),
        ),
        "pixel AUPRO (exact, anomalib)": lambda: aupro_from_ranking(r),
        "pixel AUPRO cflow (200 thresholds)": lambda: aupro_cflow_from_ranking(r),
        "image AUROC + AP + F1max": lambda: image_metrics(scores, labels),
    }
    total = "compute_metrics, everything (total)"
    times = {k: median_time(fn, args.repeats) for k, fn in steps.items()}
    times[total] = median_time(lambda: compute_metrics(scores, labels, maps, masks), args.repeats)

    result = compute_metrics(scores, labels, maps, masks)
    print(
        f"{args.images} images x {args.size}x{args.size} = {maps.size / 1e6:.2f} M pixels ({args.dtype}), "
        f"{int(labels.sum())} defective images, {r.n_regions} regions, {int(masks.sum())} anomalous pixels; "
        f"median of {args.repeats} runs"
    )
    print("\n| step | seconds |\n|---|---:|")
    for k, v in times.items():
        print(f"| {'**' + k + '**' if k == total else k} | {v:.3f} |")
    print("\n" + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
