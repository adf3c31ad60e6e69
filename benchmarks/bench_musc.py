"""Cost of MuSc's mutual scoring: time and peak memory for sets of N images (random weights, real architecture).

Each N runs in a fresh process (so peak RSS is that run's): N Magnetic Tile images (cycled when the assets hold
fewer) through `zsad.runs.predict_set` with method `musc`; the bare backbone forward over the same images is timed
in the same process for the ratio. Random weights: speed and memory only, never quality.

    .venv/bin/python benchmarks/bench_musc.py --sizes 50,200 --append-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _results import add_results_args, emit

ROOT = Path(__file__).resolve().parents[1]


def one(n: int, backbone: str, image_size: int, block_mb: int) -> dict:
    import torch

    from zsad import runs
    from zsad.backbone import ClipBackbone
    from zsad.data import load_image, squash_image
    from zsad.methods import create_method

    assets = Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets")) / "magnetic_tile"
    files = sorted(assets.glob("*/Imgs/*.jpg"))
    bb = ClipBackbone.from_pretrained(backbone, "none", image_size=image_size, device="cpu", seed=0)
    pre = bb.preprocess
    x = torch.stack(
        [squash_image(load_image(files[i % len(files)]), pre.image_size, pre.mean, pre.std) for i in range(n)]
    )
    m = create_method("musc", bb, block_mb=block_mb)
    m.setup(None)
    with torch.no_grad():
        bb.encode_image(x[:2], layers=m.layers)  # warm-up (first-call allocations), not timed
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, 8):
            bb.encode_image(x[s : s + 8], pooled_only=True)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = runs.predict_set(m, x, batch_size=8)
    total = time.perf_counter() - t0
    scores = pred.pred_score if hasattr(pred, "pred_score") else pred
    return {
        "n": n,
        "seconds": total,
        "bare_seconds": bare,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "finite": bool(torch.isfinite(torch.as_tensor(scores)).all()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,200,1000")
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--image-size", type=int, default=240)
    ap.add_argument("--block-mb", type=int, default=256)
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    add_results_args(ap)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.backbone, args.image_size, args.block_mb)))
        return
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(n), "--backbone", args.backbone,
               "--image-size", str(args.image_size), "--block-mb", str(args.block_mb)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(rows[-1], flush=True)
    lines = [
        f"### MuSc cost ({time.strftime('%Y-%m-%d')}, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_musc.py {' '.join(sys.argv[1:])}`",
        "",
        f"Label: **seeded random weights, {args.backbone} at {args.image_size} px: time and memory only, NOT "
        f"quality**. `zsad.runs.predict_set` with `musc` defaults (degrees 1/3/5, quarter taps, RsCIN), block "
        f"{args.block_mb} MiB, one fresh process per N. Hardware: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores.",
        "",
        "| images N | seconds | per image (s) | bare forward (s) | ratio to bare | peak RSS (GiB) | finite |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['seconds']:.1f} | {r['seconds'] / r['n']:.2f} | {r['bare_seconds']:.1f} | "
            f"{r['seconds'] / r['bare_seconds']:.1f}x | {r['peak_rss_gib']:.2f} | {r['finite']} |"
        )
    text = "\n".join(lines) + "\n"
    emit(text, args)


if __name__ == "__main__":
    main()
