"""`zsad detect --engine local` vs `--engine ray` (1 and 2 actors) on the same real images, in one run.

Each configuration scores the same Magnetic Tile images (jpg) into a fresh output folder, through the public
entry points (`zsad.runs.detect` and `zsad.engines.ray_data.detect_ray`), timed from the call to the finished
folder, model build included on both sides (the Ray actors build their own). A local Ray is started once
(`ray.init(num_cpus=...)`), before the timings. Per-image scores are compared across the configurations.
Random weights: speed and plumbing only, never detection quality.

    .venv/bin/python benchmarks/bench_ray.py --images 200 --append-results
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import add_results_args, emit

ROOT = Path(__file__).resolve().parents[1]


def scores(out: Path) -> dict[str, float]:
    with (out / "predictions.csv").open(newline="") as f:
        return {r["image_path"]: float(r["pred_score"]) for r in csv.DictReader(f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="sdp")
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--image-size", type=int, default=240)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    add_results_args(ap)
    args = ap.parse_args()

    import ray

    from zsad import runs
    from zsad.engines.ray_data import RayOptions, detect_ray
    from zsad.runs.build import BackboneSpec

    assets = Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets")) / "magnetic_tile"
    images = sorted(assets.glob("*/Imgs/*.jpg"))[: args.images]
    if len(images) < args.images:
        raise SystemExit(f"need {args.images} Magnetic Tile images under {assets} (set ZSAD_ASSETS)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    listing = tmp / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    bb = BackboneSpec(args.backbone, "none", None, args.image_size, "cpu", 0)
    job = {"class_name": "magnetic tile", "list_file": listing, "batch_size": args.batch_size}

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    results: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    runs.detect([], tmp / "local", method=args.method, backbone=bb, overlays=False, **job)
    results.append(("local (`zsad detect`, overlays off)", time.perf_counter() - t0))
    for n in [int(a) for a in args.actors.split(",")]:
        t0 = time.perf_counter()
        spec = runs.MethodSpec(args.method, bb)
        detect_ray(spec, runs.DetectJob([], tmp / f"ray{n}", **job), RayOptions(actors=n))
        results.append((f"ray, {n} actor(s)", time.perf_counter() - t0))
        print(results[-1], flush=True)
    ray.shutdown()

    local = scores(tmp / "local")
    worst = max(
        max(abs(scores(tmp / f"ray{n}")[k] - v) for k, v in local.items()) for n in [1, 2] if (tmp / f"ray{n}").exists()
    )
    base = results[0][1]
    lines = [
        f"### `--engine local` vs `--engine ray` ({time.strftime('%Y-%m-%d')}, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_ray.py {' '.join(sys.argv[1:])}`",
        "",
        f"Label: **seeded random weights, {args.backbone} at {args.image_size} px, method {args.method}: speed and "
        f"plumbing only, NOT detection quality**. Images: the first {len(images)} Magnetic Tile jpg images (sorted "
        f"paths), batch {args.batch_size}. Each row: a fresh output folder, timed from the call to the finished "
        "folder, model build included (the local run builds one model; each Ray actor builds its own). Local Ray "
        f"started once before the timings with `num_cpus={args.num_cpus}`. Hardware: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, torch "
        f"threads {torch.get_num_threads()} in the local run and (node CPUs / actors) in each actor, Ray "
        f"{ray.__version__}.",
        "",
        "| configuration | seconds | images/s | time vs local |",
        "|---|---:|---:|---:|",
    ]
    for name, sec in results:
        lines.append(f"| {name} | {sec:.1f} | {len(images) / sec:.2f} | {sec / base:.2f}x |")
    lines += ["", f"Max |score difference| Ray vs local over the {len(local)} images: {worst:.2e}."]
    text = "\n".join(lines) + "\n"
    emit(text, args)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
