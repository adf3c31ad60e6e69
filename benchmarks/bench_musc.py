"""Cost of MuSc's mutual scoring: time and peak memory for sets of N images (random weights, real architecture).

Each N runs in a fresh process (so peak RSS is that run's): N Magnetic Tile images (cycled when the assets hold
fewer) through `zsad.runs.predict_set` with method `musc`; the bare backbone forward over the same images is timed
in the same process for the ratio. Random weights: speed and memory only, never quality.

With `--official-root PATH` (a checkout of xrli-U/MuSc, imported at run time, never copied here) the official MuSc
is also timed on the very same N images, same backbone, image size and weights, each N in its own fresh process:
its `models/musc.py` `MuSc` class with zsad's seeded weights, and its `make_category_data` (encoder forward of all
images, LNAMD, MSM, maps, RsCIN) with only its dataset (the preloaded tensors) and its metrics (a no-op capture)
replaced, as in `compare_musc.py`. A failing official run (exception, killed, over `--official-timeout`) is
reported with its reason instead of numbers.

    .venv/bin/python benchmarks/bench_musc.py --sizes 50,200 --append-results
    .venv/bin/python benchmarks/bench_musc.py --sizes 50,200 --official-root ../ref/musc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from _results import add_results_args, emit

ROOT = Path(__file__).resolve().parents[1]


BATCH = 8  # images per encoder forward, both sides


def load_images(n: int, bb):
    """N Magnetic Tile images (cycled), normalised for `bb`; their paths and labels (MT_Free 0, else 1)."""
    import torch

    from zsad.data import load_image, squash_image

    assets = Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets")) / "magnetic_tile"
    files = sorted(assets.glob("*/Imgs/*.jpg"))
    files = [files[i % len(files)] for i in range(n)]
    pre = bb.preprocess
    x = torch.stack([squash_image(load_image(f), pre.image_size, pre.mean, pre.std) for f in files])
    return x, files, [int(f.parent.parent.name != "MT_Free") for f in files]


def one(n: int, backbone: str, image_size: int, block_mb: int) -> dict:
    import torch

    from zsad import runs
    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method

    bb = ClipBackbone.from_pretrained(backbone, "none", image_size=image_size, device="cpu", seed=0)
    x, _, _ = load_images(n, bb)
    m = create_method("musc", bb, block_mb=block_mb)
    m.setup(None)
    with torch.no_grad():
        bb.encode_image(x[:2], layers=m.layers)  # warm-up (first-call allocations), not timed
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, BATCH):
            bb.encode_image(x[s : s + BATCH], pooled_only=True)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = runs.predict_set(m, x, batch_size=BATCH)
    total = time.perf_counter() - t0
    scores = pred.pred_score if hasattr(pred, "pred_score") else pred
    return {
        "n": n,
        "seconds": total,
        "bare_seconds": bare,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "finite": bool(torch.isfinite(torch.as_tensor(scores)).all()),
        "layers": list(m.layers),
    }


def one_official(n: int, backbone: str, image_size: int, layers: tuple[int, ...], root: Path) -> dict:
    """The official MuSc on the same N images, weights and taps (zsad's `layers`); times `make_category_data` only.

    Its model is built first (its own random init) and moved to "meta" (memory freed), then zsad's seeded backbone
    is built and its tensors are assigned into the official model (no second copy), so the peak RSS holds one model,
    as on zsad's side.
    """
    import shutil
    import tempfile

    import numpy as np
    import torch

    from compare_musc import build_official, import_official_musc, load_weights, official_config, run_category
    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method

    mm, _ = import_official_musc(root)
    out_dir = tempfile.mkdtemp(prefix="official_musc_")
    try:
        off = build_official(mm, official_config(backbone, image_size, layers, out_dir, batch_size=BATCH))
        off.clip_model.to("meta")
        bb = ClipBackbone.from_pretrained(backbone, "none", image_size=image_size, device="cpu", seed=0)
        if tuple(create_method("musc", bb).layers) != tuple(off.features_list):
            raise SystemExit(f"taps differ: zsad {create_method('musc', bb).layers}, official {off.features_list}")
        x, files, labels = load_images(n, bb)
        load_weights(off.clip_model, bb.model.state_dict(), assign=True)
        del bb
        with torch.no_grad():
            off.clip_model.encode_image(x[:2], off.features_list)  # warm-up (first-call allocations), not timed
        t0 = time.perf_counter()
        got = run_category(mm, off, x, files, labels)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # MuSc.__init__ makes its output folders there
    return {
        "n": n,
        "seconds": total,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "finite": bool(np.isfinite(np.asarray(got["scores"], dtype=np.float64)).all()),
        "maps_finite": bool(np.isfinite(got["maps"]).all()),
    }


def run_official_child(cmd: list[str], timeout: float) -> dict:
    """One official child; its JSON, or {"error": one line} when it raises, is killed or runs out of time."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s (killed)"}
    if res.returncode == 0:
        lines = res.stdout.strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": f"no result on stdout: {(lines or [''])[-1][:200]!r}"}
    if res.returncode < 0:
        sig = signal.Signals(-res.returncode).name if -res.returncode in signal.valid_signals() else -res.returncode
        why = " (as the out-of-memory killer does)" if sig == "SIGKILL" else ""
        return {"error": f"killed by {sig}{why}"}
    last = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
    return {"error": f"exit {res.returncode}: {(last or ['no message'])[-1][:300]}"}


def official_cells(o: dict | None, zsad_seconds: float) -> str:
    if o is None:
        return ""
    if "error" in o:
        why = o["error"].replace("|", "/")
        return f" failed: {why} | — | — | — |"
    return (
        f" {o['seconds']:.1f} | {o['seconds'] / zsad_seconds:.2f}x | {o['peak_rss_gib']:.2f} | "
        f"{o['finite'] and o['maps_finite']} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50,200,1000")
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--image-size", type=int, default=240)
    ap.add_argument("--block-mb", type=int, default=256)
    ap.add_argument("--official-root", type=Path, help="also time the official MuSc (xrli-U/MuSc checkout)")
    ap.add_argument("--official-timeout", type=float, default=1800.0, help="seconds per official run (default 1800)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--one-official", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--layers", default="", help=argparse.SUPPRESS)
    add_results_args(ap)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.backbone, args.image_size, args.block_mb)))
        return
    if args.one_official:
        layers = tuple(int(v) for v in args.layers.split(","))
        print(json.dumps(one_official(args.one_official, args.backbone, args.image_size, layers, args.official_root)))
        return
    rows = []
    official: list[dict | None] = []
    for n in [int(v) for v in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(n), "--backbone", args.backbone,
               "--image-size", str(args.image_size), "--block-mb", str(args.block_mb)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(rows[-1], flush=True)
        if args.official_root is None:
            official.append(None)
            continue
        cmd = [sys.executable, __file__, "--one-official", str(n), "--backbone", args.backbone,
               "--image-size", str(args.image_size), "--official-root", str(args.official_root.resolve()),
               "--layers", ",".join(str(t) for t in rows[-1]["layers"])]  # fmt: skip
        official.append(run_official_child(cmd, args.official_timeout))
        print({"official": official[-1]}, flush=True)
    head = "| images N | seconds | per image (s) | bare forward (s) | ratio to bare | peak RSS (GiB) | finite |"
    rule = "|---:|---:|---:|---:|---:|---:|---|"
    label = (
        f"Label: **seeded random weights, {args.backbone} at {args.image_size} px: time and memory only, NOT "
        f"quality**. `zsad.runs.predict_set` with `musc` defaults (degrees 1/3/5, quarter taps, RsCIN), block "
        f"{args.block_mb} MiB, one fresh process per N. Hardware: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores."
    )
    if args.official_root is not None:
        head += " official seconds | official / zsad | official peak RSS (GiB) | official finite |"
        rule += "---:|---:|---:|---|"
        label += (
            " Official: xrli-U/MuSc from the checkout (imported, unmodified), on the same N images, weights (zsad's "
            "seeded backbone's tensors assigned into its model, every image-tower tensor checked) and taps "
            f"{rows[0]['layers']}, one fresh process per N, timeout {args.official_timeout:g} s: the time of its "
            f"`make_category_data` (its encoder forward in batches of {BATCH}, LNAMD r 1/3/5, MSM (0, 0.3), maps, "
            "RsCIN), with only its dataset (the preloaded tensors) and its metrics (a no-op capture) replaced; "
            "untimed: imports, model build, image loading, a 2-image warm-up forward. CPU fp32 on both sides "
            "(zsad's bank in its default float16). Official finite: its image scores and maps."
        )
    lines = [
        f"### MuSc cost ({time.strftime('%Y-%m-%d')}, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_musc.py {' '.join(sys.argv[1:])}`",
        "",
        label,
        "",
        head,
        rule,
    ]
    for r, o in zip(rows, official, strict=True):
        lines.append(
            f"| {r['n']} | {r['seconds']:.1f} | {r['seconds'] / r['n']:.2f} | {r['bare_seconds']:.1f} | "
            f"{r['seconds'] / r['bare_seconds']:.1f}x | {r['peak_rss_gib']:.2f} | {r['finite']} |"
            + official_cells(o, r["seconds"])
        )
    text = "\n".join(lines) + "\n"
    emit(text, args)


if __name__ == "__main__":
    main()
