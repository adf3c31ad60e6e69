"""What keeping history costs a server: scoring throughput with the station on vs ``--out`` only.

The same requests (K real Magnetic Tile images each, WinCLIP, seeded random weights) go through the service's own
request path (``Service.detect``: decode, score, decide, overlays, files, then either ``predictions.csv`` or one
database transaction) in alternating rounds, so drift of the machine falls on both alike. In the same run the
bare backbone forward of the same images gives the ratio every speed number here is reported against.

    .venv/bin/python benchmarks/station_overhead.py --append-results
    .venv/bin/python benchmarks/station_overhead.py --backbone ViT-B-16 --image-size 224 --append-results

Random weights: speed only. The tiny backbone is the worst case for the relative overhead (the model's share of
each request is smallest there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import add_results_args, emit
from zsad.runs import BackboneSpec
from zsad.serve.service import ServeConfig, Service, Upload

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="zsad-tiny")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--images", type=int, default=8, help="images per request")
    ap.add_argument("--requests", type=int, default=10, help="requests per round and setting")
    ap.add_argument("--rounds", type=int, default=3)
    add_results_args(ap)
    args = ap.parse_args()
    assets = Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets"))
    files = sorted((assets / "magnetic_tile").rglob("*.jpg"))[: args.images]
    if len(files) < args.images:
        raise SystemExit(f"{assets}/magnetic_tile: fewer than {args.images} images (set ZSAD_ASSETS)")
    uploads = [Upload(p.name, p.read_bytes()) for p in files]
    bb = BackboneSpec(args.backbone, "none", None, args.image_size, "cpu", 0)
    with tempfile.TemporaryDirectory() as tmp:
        services = {
            "--out only": Service(ServeConfig(backbone=bb, out=Path(tmp) / "csv", max_images=args.images)),
            "--out --station (SQLite)": Service(
                ServeConfig(backbone=bb, out=Path(tmp) / "db", station=True, max_images=args.images)
            ),
        }
        try:
            for svc in services.values():  # warm: model built, text features cached
                asyncio.run(svc.detect(uploads, class_name="tile"))
            times: dict[str, list[float]] = {k: [] for k in services}
            for _ in range(args.rounds):
                for name, svc in services.items():
                    t0 = time.perf_counter()
                    for _ in range(args.requests):
                        asyncio.run(svc.detect(uploads, class_name="tile"))
                    times[name].append(time.perf_counter() - t0)
            svc = services["--out only"]
            served = next(iter(svc.pool._models.values()))
            images = svc._tensors(svc._decode(uploads)[0], served)
            backbone = served.method.backbone
            with torch.inference_mode():
                backbone.encode_image(images)
                t0 = time.perf_counter()
                for _ in range(args.requests):
                    backbone.encode_image(images)
                bare = (time.perf_counter() - t0) / args.requests
        finally:
            for svc in services.values():
                svc.close()
    n = args.requests * args.images
    rows = []
    base = statistics.median(times["--out only"])
    for name, ts in times.items():
        med = statistics.median(ts)
        per_request = med / args.requests
        rows.append(
            f"| {name} | {n / med:.1f} | {per_request * 1000:.0f} | {per_request / bare:.2f} | "
            f"{100 * (med / base - 1):+.1f} % |"
        )
    text = "\n".join(
        [
            f"### Station overhead: scoring with history vs --out only ({time.strftime('%Y-%m-%d')})",
            "",
            "Command: `.venv/bin/python benchmarks/station_overhead.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`",
            "",
            f"Service request path in-process (`Service.detect`: decode, score, decide, overlays, files, then "
            f"predictions.csv or one SQLite transaction), WinCLIP on `{args.backbone}` at {args.image_size} px with "
            f"seeded RANDOM weights (speed only), {args.images} real Magnetic Tile images per request, "
            f"{args.requests} requests per round, {args.rounds} alternating rounds (median). Bare forward: the "
            f"backbone's image encoder on the same batch, same run. CPU: {platform.processor() or platform.machine()},"
            f" {os.cpu_count()} cores, torch {torch.__version__}.",
            "",
            "| setting | images/s | ms per request | x bare forward | vs --out only |",
            "|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    emit(text + "\n", args)


if __name__ == "__main__":
    main()
