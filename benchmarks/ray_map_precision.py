"""How far a ``--engine ray`` map is from the local engine's map of the same image, relative to the map's range.

Scores real Magnetic Tile images with ``zsad detect`` locally and on a local Ray (the default ``range16`` shards and
exact ``float32`` shards), and reports max |ray - local| / (local max - local min) per image: worst and median. It
also decodes the float32 shards as the absolute float16 that shards held before issue 25, to show what that cost.
The tiny seeded model (``zsad-tiny``, random weights): this measures storage and arithmetic, never detection.

    python benchmarks/ray_map_precision.py --free 16 --crack 8 --actors 2 --batch-size 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("ZSAD_ASSETS", REPO.parent / "shared/assets")))
    ap.add_argument("--free", type=int, default=16, help="MT_Free images")
    ap.add_argument("--crack", type=int, default=8, help="MT_Crack images")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()

    import ray

    from zsad import runs
    from zsad.engines.ray_data import RayOptions, detect_ray
    from zsad.runs.build import BackboneSpec
    from zsad.runs.scoring import resize_map
    from zsad.runs.shards import decode_map, shard_rows

    tiles = args.assets / "magnetic_tile"
    files = sorted((tiles / "MT_Free" / "Imgs").glob("*.jpg"))[: args.free]
    files += sorted((tiles / "MT_Crack" / "Imgs").glob("*.jpg"))[: args.crack]
    if not files:
        raise SystemExit(f"no Magnetic Tile images under {tiles}")
    bb = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
    spec = runs.MethodSpec("winclip", bb)
    paths = [str(f) for f in files]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        job = {"class_name": "tile", "batch_size": args.batch_size}
        runs.detect(files, d / "local", method="winclip", backbone=bb, overlays=False, **job)
        detect_ray(spec, runs.DetectJob(paths, d / "range16", **job), RayOptions(actors=args.actors))
        detect_ray(
            spec, runs.DetectJob(paths, d / "float32", **job), RayOptions(actors=args.actors, map_dtype="float32")
        )
        local = {r["image_path"]: r for r in runs.read_predictions(d / "local")}
        exact = {r["image_path"]: r for r in runs.read_predictions(d / "float32")}
        errors: dict[str, list[float]] = {"range16 (default)": [], "float32": [], "absolute float16 (before)": []}
        for row in runs.read_predictions(d / "range16"):
            path = row["image_path"]
            want = np.load(d / "local" / local[path]["anomaly_map_path"]).astype(np.float64)
            span = float(want.max() - want.min()) or 1.0
            errors["range16 (default)"].append(float(np.abs(runs.load_map(d / "range16", row) - want).max()) / span)
            errors["float32"].append(float(np.abs(runs.load_map(d / "float32", exact[path]) - want).max()) / span)
            shard = d / "float32" / exact[path]["anomaly_map_path"]
            blob = next(t for t in shard_rows(shard) if t["image_uri"] == path)["anomaly_map"]
            w, h = (int(v) for v in exact[path]["map_size"].split("x"))
            before = resize_map(decode_map(blob, "float32").astype(np.float16).astype(np.float32), (h, w))
            errors["absolute float16 (before)"].append(float(np.abs(before - want).max()) / span)
    ray.shutdown()
    n = len(files)
    print(f"{n} Magnetic Tile images ({args.free} MT_Free, {args.crack} MT_Crack), winclip, zsad-tiny at 96 px,")
    print(f"{args.actors} actors, batch {args.batch_size}: max |ray - local| / map range per image\n")
    print("| shard storage | worst | median |")
    print("|---|---:|---:|")
    for name, vals in errors.items():
        print(f"| {name} | {max(vals):.2g} | {float(np.median(vals)):.2g} |")


if __name__ == "__main__":
    main()
