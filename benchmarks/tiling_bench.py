"""Tiled scoring: does it find a defect a few pixels wide on a large image, and what does it cost?

    .venv/bin/python benchmarks/tiling_bench.py small-defect --append-results
    .venv/bin/python benchmarks/tiling_bench.py cost --append-results

``small-defect``: real MPDD metal-plate images (normal ones, upscaled from 512 px to ``--side`` px, bicubic) form
a set; into one of them a ``--patch`` x ``--patch`` px piece of a foreign texture (a crop of a real Magnetic Tile
image) is pasted at a seeded place. MuSc (mutual nearest-patch scoring across the set: on random weights it is a
texture-difference detector) scores the set untiled (each image squashed to the input) and tiled (``--tiles``,
tile (i, j) of each image against tile (i, j) of the others). Reported for both: where the map's maximum is
(inside the pasted square or how far from it) and the pixel AUROC of the square against every other pixel of
that image, at full resolution. Seeded RANDOM weights of a real architecture: this shows that tiling lets a
texture difference of that size through, not how well pretrained CLIP finds real defects. Not tuned on itself.

``cost``: one image of 2,048 and of 8,000 px, each scored untiled and with 2x2 and 4x4 grids by a per-image method,
each setting in its own process (its own peak RSS); time, tiles per second, and the 4x4 time against 16 untiled
forwards of the same process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import datetime

import numpy as np

from _results import add_results_args, assets_dir, emit, machine


def _method(name: str, backbone: str, image_size: int, **options: object):  # noqa: ANN202
    from zsad.runs import BackboneSpec, MethodSpec

    m = MethodSpec(name, BackboneSpec(backbone, "none", None, image_size, "cpu", 0), dict(options)).build()
    return m


def small_defect(args: argparse.Namespace) -> str:
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from zsad.runs import score_tiled_set
    from zsad.tiling import TileSpec

    good = sorted((assets_dir() / "mpdd_metal_plate" / "good").glob("*.png"))[: args.images]
    if len(good) < args.images:
        raise SystemExit(f"{assets_dir()}/mpdd_metal_plate/good: fewer than {args.images} images")
    side, k = args.side, args.patch
    images = [Image.open(p).convert("RGB").resize((side, side), Image.Resampling.BICUBIC) for p in good]
    tex_src = sorted((assets_dir() / "magnetic_tile").rglob("*.jpg"))[0]
    tex = Image.open(tex_src).convert("RGB")
    rng = np.random.default_rng(args.seed)
    tx, ty = int(rng.integers(0, tex.width - k)), int(rng.integers(0, tex.height - k))
    patch = tex.crop((tx, ty, tx + k, ty + k))
    y, x = (int(v) for v in rng.integers(side // 8, side - side // 8 - k, 2))
    target = images[0].copy()
    target.paste(patch, (x, y))
    images[0] = target
    mask = np.zeros((side, side), dtype=bool)
    mask[y : y + k, x : x + k] = True
    method = _method("musc", args.backbone, args.image_size)
    method.setup(None)
    rows = []
    for label, spec in (
        ("untiled (squashed to the input)", TileSpec((1, 1))),
        (
            f"tiled {args.tiles}" + (f", {args.tile_size} px tiles" if args.tile_size else ""),
            TileSpec.parse(args.tiles, tile_size=args.tile_size),
        ),
    ):
        assert spec is not None
        t0 = time.perf_counter()
        res = score_tiled_set(method, images, spec, batch_size=args.batch, max_map_size=side)
        secs = time.perf_counter() - t0
        amap = res[0].anomaly_map
        assert amap.shape == (side, side)
        auroc = roc_auc_score(mask.ravel(), amap.ravel())
        py, px = np.unravel_index(int(np.argmax(amap)), amap.shape)
        inside = bool(mask[py, px])
        dist = 0.0 if inside else float(np.hypot(py - (y + k / 2), px - (x + k / 2)))
        rank = [r.score for r in res]
        rows.append(
            f"| {label} | {res[0].plan.count} | {auroc:.4f} | {'yes' if inside else f'no ({dist:.0f} px away)'} "
            f"| {rank[0]:.4f} vs {max(rank[1:]):.4f} | {secs:.0f} |"
        )
        print(rows[-1], flush=True)
    lines = [
        f"### Tiling: a {k} x {k} px defect on {side} px images ({datetime.now():%Y-%m-%d})",
        "",
        f"Command: `.venv/bin/python benchmarks/tiling_bench.py small-defect --side {side} --patch {k} --images "
        f"{args.images} --tiles {args.tiles}{f' --tile-size {args.tile_size}' if args.tile_size else ''} "
        f"--backbone {args.backbone} --image-size {args.image_size}`",
        "",
        f"{args.images} normal MPDD metal-plate images (512 px, upscaled to {side} px) as one set; into the first, a "
        f"{k} x {k} px crop of a Magnetic Tile image pasted at ({x}, {y}) (seed {args.seed}). MuSc on "
        f"`{args.backbone}` at {args.image_size} px with seeded RANDOM weights: its mutual nearest-patch scoring is "
        "a texture-difference detector here, so this shows whether the defect's pixels reach the model at all, not "
        "how well pretrained CLIP finds real defects. Pixel AUROC: the pasted square against every other pixel of "
        f"that image, on the map at full resolution. Not tuned on this check (defaults, one run). {machine()}.",
        "",
        "| scoring | forwards per image | pixel AUROC of the square | map maximum inside the square | image score: "
        "defective vs best normal | s |",
        "|---|---:|---:|---|---|---:|",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def one(args: argparse.Namespace) -> None:
    """One setting in this process: print its time and this process's peak RSS as JSON."""
    from PIL import Image

    from zsad.runs import score_tiled
    from zsad.tiling import TileSpec

    method = _method(args.method, args.backbone, args.image_size)
    method.setup("plate")
    src = sorted((assets_dir() / "mpdd_metal_plate" / "good").glob("*.png"))[0]
    img = Image.open(src).convert("RGB").resize((args.side, args.side), Image.Resampling.BICUBIC)
    spec = TileSpec.parse(args.grid)
    assert spec is not None
    score_tiled(method, img, TileSpec((1, 1)), args.batch)  # warm-up: model, text features
    t0 = time.perf_counter()
    untiled = [score_tiled(method, img, TileSpec((1, 1)), args.batch) for _ in range(2)]
    single = (time.perf_counter() - t0) / len(untiled)
    t0 = time.perf_counter()
    res = score_tiled(method, img, spec, args.batch, max_map_size=1024)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"secs": secs, "tiles": res.plan.count, "single": single, "peak_mib": peak}))


def cost(args: argparse.Namespace) -> str:
    rows = []
    for side in (2048, 8000):
        for grid in ("1x1", "2x2", "4x4"):
            cmd = [sys.executable, __file__, "one", "--side", str(side), "--grid", grid, "--method", args.method,
                   "--backbone", args.backbone, "--image-size", str(args.image_size),
                   "--batch", str(args.batch)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            vs = r["secs"] / (r["tiles"] * r["single"])
            rows.append(
                f"| {side} | {grid} | {r['tiles']} | {r['secs']:.2f} | {r['tiles'] / r['secs']:.1f} | "
                f"{vs:.2f} | {r['peak_mib']:.0f} |"
            )
            print(rows[-1], flush=True)
    lines = [
        f"### Tiling cost ({datetime.now():%Y-%m-%d}, {args.method} on {args.backbone} at {args.image_size} px)",
        "",
        f"Command: `.venv/bin/python benchmarks/tiling_bench.py cost --method {args.method} --backbone {args.backbone} "
        f"--image-size {args.image_size} --batch {args.batch}`",
        "",
        f"One MPDD metal-plate image upscaled to 2,048 and 8,000 px, scored by `zsad.runs.score_tiled` ({args.method}, "
        f"seeded RANDOM weights of `{args.backbone}`, tiles in batches of {args.batch}, map capped at 1,024 px), "
        'each setting in its own process after a warm-up. "x untiled": the time over as many untiled '
        "single-image scorings (decode, squash, forward, map) of the same process: the cost of a tile beyond one "
        f"forward (cropping, stitching). Peak RSS: the process's (model included). {machine()}.",
        "",
        "| image px | grid | forwards | s | tiles/s | x untiled | peak RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def radius(args: argparse.Namespace) -> str:
    """Position-aware mutual scoring: time of ``mutual_scores`` for several radii on one MuSc-sized set."""
    import torch

    from zsad.mutual import mutual_scores

    n, gh, c = args.images, args.grid_side, args.dim
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(n, gh * gh, c, generator=g), dim=-1)
    rows = []
    base = None
    for r in (None, 0, 1, 2, 4, 8):
        mutual_scores(feats[:2], torch.arange(2), feats, n, radius=r, grid=(gh, gh))  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            mutual_scores(feats, torch.arange(n), feats, n, radius=r, grid=(gh, gh))
        secs = (time.perf_counter() - t0) / args.repeats
        base = base or secs
        rows.append(f"| {'none (every patch)' if r is None else r} | {secs * 1000:.0f} | {secs / base:.2f} |")
        print(rows[-1], flush=True)
    lines = [
        f"### Position-aware mutual scoring: cost against the radius ({datetime.now():%Y-%m-%d})",
        "",
        f"Command: `.venv/bin/python benchmarks/tiling_bench.py radius --images {n} --grid-side {gh} --dim {c}`",
        "",
        f"`zsad.mutual.mutual_scores` of a set of {n} images of {gh} x {gh} patches ({c}-dim unit features, seeded "
        f"random: timing only), every image against the others, the mean of {args.repeats} runs after a "
        f"warm-up. {machine()}.",
        "",
        "| radius (patches) | ms per set | x none |",
        "|---|---:|---:|",
        *rows,
        "",
        "The radius is a mask on the same patch-to-patch similarities, so it costs about what scoring every patch "
        "costs (plus the mask), whatever the radius: it changes what a patch is compared with, not how many "
        "similarities are computed.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["small-defect", "cost", "one", "radius"])
    ap.add_argument("--grid-side", type=int, default=37)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="sdp")
    ap.add_argument("--backbone", default="ViT-B-16")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--patch", type=int, default=6)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--tiles", default="auto")
    ap.add_argument("--grid", default="1x1")
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    add_results_args(ap)
    args = ap.parse_args()
    if args.part == "one":
        one(args)
        return
    run = {"small-defect": small_defect, "cost": cost, "radius": radius}[args.part]
    emit(run(args), args)


if __name__ == "__main__":
    main()
