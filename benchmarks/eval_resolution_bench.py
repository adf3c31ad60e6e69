"""What pixel metrics cost at model resolution and at native resolution (``zsad eval --eval-resolution``).

    .venv/bin/python benchmarks/eval_resolution_bench.py                   # print the section
    .venv/bin/python benchmarks/eval_resolution_bench.py --append-results  # and append it to RESULTS.md

An MVTec-size category, synthetic and seeded: 150 images, about 20 % of them defective with 1 to 3 elliptic
defects each (radii 0.5 % to 6 % of the side), maps of smooth noise raised a little inside the defects (float32,
as methods return them). Timed: the pixel part of ``compute_metrics`` (one sort of every pixel; pixel AUROC, AP,
F1-max, both AUPROs), given maps and masks as ``zsad eval`` gives them:

- ``model``: one (N, 518, 518) stack, masks squashed to 518 px (the papers' protocol);
- ``native``: a list of per-image (1024, 1024) maps and masks, the normal images' masks free views of ``False``
  (what ``--eval-resolution native`` passes; images of a category may differ in size);
- ``native-stack``: the same 1024 px pixels as one stack, for comparison.

Each setting runs in its own process after its data is made: time is the median of ``--repeats`` calls, and peak
RSS is the process's high-water mark during the calls over what it held before them, read from ``/proc/self/status``
after resetting the mark; the RSS the maps and masks add is given too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import date

import numpy as np

from _results import add_results_args, emit, machine

SETTINGS = {"model": (518, "stack"), "native": (1024, "list"), "native-stack": (1024, "stack")}


def synthetic(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(scores, labels, maps, masks) image by image, so making them holds one image's temporaries at a time."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(np.int64)
    yy, xx = np.ogrid[0:size, 0:size]
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros((size, size), dtype=bool)
        if labels[i]:
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.uniform(0.005, 0.06, 2) * size
                mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        amap = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), sigma=size / 90)
        amap = (amap - amap.mean()) * np.float32(0.15 / amap.std()) + np.float32(0.5)  # spread: many distinct values
        amap += 0.1 * ndimage.gaussian_filter(mask.astype(np.float32), sigma=size / 250)
        maps.append(amap)
        masks.append(mask)
    scores = np.array([float(m.max()) for m in maps]) + 0.01 * rng.standard_normal(n)
    return scores, labels, maps, masks


def _status(field: str) -> int:
    """A /proc/self/status size in bytes (VmRSS: now, VmHWM: the high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def one(args: argparse.Namespace) -> None:
    """One setting in this process: make the data, time ``compute_metrics``, print a JSON line."""
    from zsad.metrics import PIXEL_KEYS, compute_metrics

    size, form = SETTINGS[args.setting]
    start = _status("VmRSS")  # the interpreter, numpy, torch (zsad.metrics takes tensors too)
    scores, labels, maps, masks = synthetic(args.images, size, args.seed)
    if form == "stack":
        maps_in, masks_in = np.stack(maps), np.stack(masks)
        del maps, masks
    else:
        maps_in = maps
        masks_in = [g if g.any() else np.broadcast_to(np.False_, g.shape) for g in masks]
        del masks
    data = _status("VmRSS") - start
    times, extra, result = [], 0, {}
    for _ in range(args.repeats):
        _reset_peak()
        before = _status("VmRSS")
        t0 = time.perf_counter()
        result = compute_metrics(scores, labels, maps_in, masks_in)
        times.append(time.perf_counter() - t0)
        extra = max(extra, _status("VmHWM") - before)
    pixels = sum(int(np.prod(m.shape[-2:])) for m in maps_in)
    print(json.dumps({
        "setting": args.setting, "size": size, "pixels": pixels, "s": statistics.median(times), "times": times,
        "data_mib": data / 2**20, "extra_mib": extra / 2**20, "metrics": {k: result[k] for k in PIXEL_KEYS},
        "anomalous": int(labels.sum()),
    }))  # fmt: skip


def table(args: argparse.Namespace) -> str:
    runs = []
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--one", setting, "--images", str(args.images), "--seed", str(args.seed)]
        out = subprocess.run([*cmd, "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = runs[0]["s"]
    lines = [
        f"### Pixel metrics at model and native resolution ({date.today().isoformat()})",
        "",
        f"Command: `.venv/bin/python benchmarks/eval_resolution_bench.py --images {args.images} "
        f"--repeats {args.repeats}`",
        "",
        f"Synthetic, seeded ({args.seed}): {args.images} images, {runs[0]['anomalous']} defective with 1 to 3 "
        "elliptic defects each, smooth float32 noise maps raised inside the defects (the numbers below are about "
        "cost, not quality). Timed: `compute_metrics`' pixel part (one sort of every pixel; AUROC, AP, F1-max, "
        "both AUPROs), median of the calls, each setting in its own process. Peak RSS: the high-water mark during "
        f"the calls over what the process held before them; data: the RSS its maps and masks add. {machine()}.",
        "",
        "| setting | maps given as | pixels (M) | s | x model | data MiB | peak RSS over the data MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    form = {"stack": "one (N, S, S) stack", "list": "per-image list"}
    for r in runs:
        size, how = SETTINGS[r["setting"]]
        lines.append(
            f"| {r['setting']} ({size} px) | {form[how]} | {r['pixels'] / 1e6:.1f} | {r['s']:.2f} | "
            f"{r['s'] / base:.1f} | {r['data_mib']:.0f} | {r['extra_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--one", dest="setting", choices=list(SETTINGS), help=argparse.SUPPRESS)
    add_results_args(ap)
    args = ap.parse_args()
    if args.setting:
        one(args)
        return
    emit(table(args), args)


if __name__ == "__main__":
    main()
