"""Dual-Image ablation on the real Magnetic Tile images: language only, visual only, joint, joint + TTA, pairings.

Every variant runs through the CLI (`zsad eval --method dual-image -o ...`) on the test split of
``asset_methods.py`` (MT_Free 1..40 + all MT_Crack; the pairing set is that whole folder), beside other methods
on the same weights and images (``--baselines``; WinCLIP, SDP+ and AdaCLIP on this split are in the
``asset_methods.py`` table). Then each variant's cost is measured in-process as a ratio to the bare backbone
forward on the same set of ``--cost-images`` images (alternating calls; the set-level method encodes, pairs and,
with TTA, synthesises and trains on that set).

With ``--pretrained none`` (the default here) the weights are SEEDED RANDOM: the table proves the pipeline and the
ablation plumbing, NOT detection quality.

    python benchmarks/dual_image_ablation.py [--append-results]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asset_methods import build_split, publish_section, weights_line  # noqa: E402
from bench_speed import load_images, paired  # noqa: E402
from zsad.backbone import ClipBackbone  # noqa: E402
from zsad.methods import create_method  # noqa: E402
from zsad.sysinfo import hardware  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, object]] = {
    "language only": {"mode": "language"},
    "visual only (nearest, 3 partners)": {"mode": "visual"},
    "joint (nearest, 3 partners)": {},
    "joint (random, 3 partners)": {"pairing": "random"},
    "joint (all, mutual 0.3)": {"pairing": "all"},
    "joint + TTA (nearest, 3 partners)": {"tta": True},
}
METRICS = ("image_AUROC", "image_AP", "image_F1max", "pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")


def eval_variant(name: str, opts: dict[str, object], common: list[str], out: Path, log: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a measurement, not a resume: eval would keep rows of an older run
    cmd = [sys.executable, "-m", "zsad", "eval", *common, "--out", str(out), "--overlays", "0"]
    for k, v in opts.items():
        cmd += ["-o", f"{k}={json.dumps(v)}"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    dt = time.perf_counter() - t
    shown = ["python" if c == sys.executable else c for c in cmd]
    log.append(f"- {name}: `{shlex.join(shown)}` ({dt:.0f} s)")
    return json.loads((out / "metrics.json").read_text())["mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("ZSAD_ASSETS", REPO.parent / "shared/assets")))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "zsad-dual-image-ablation")
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--image-size", type=int, default=240)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cost-images", type=int, default=16, help="set size for the cost ratios")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baselines", nargs="*", default=["sdp"], help="other methods in the table (winclip: ~10 min)")
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args()

    _, test = build_split(args.assets, args.work, 40, 20)
    bb_args = ["--backbone", args.backbone, "--pretrained", args.pretrained, "--image-size", str(args.image_size)]
    bb_args += ["--device", args.device]
    common = ["--root", str(test), "--dataset", "folder", "--normal-dir", "good", "--abnormal-dir", "crack"]
    common += ["--mask-dir", "crack", "--image-glob", "*.jpg", "--class-name", "magnetic tile", *bb_args]
    log: list[str] = []
    rows: list[tuple[str, dict]] = []
    for base in args.baselines:
        rows.append((f"{base} (baseline)", eval_variant(base, {}, [*common, "--method", base], args.work / base, log)))
    for i, (name, opts) in enumerate(VARIANTS.items()):
        out = args.work / f"dual_image_{i}"
        rows.append((f"dual-image: {name}", eval_variant(name, opts, [*common, "--method", "dual-image"], out, log)))

    # cost: the same set of images for the bare forward and each variant, alternating
    bb = ClipBackbone.from_pretrained(
        args.backbone, args.pretrained, image_size=args.image_size, device=args.device, seed=0
    )
    x = load_images(args.cost_images, bb.image_size, bb.mean, bb.std).to(args.device)
    costs: dict[str, tuple[float, float, float]] = {}
    with torch.no_grad():
        for name, opts in VARIANTS.items():
            m = create_method("dual-image", bb, **opts)
            m.setup("magnetic tile")
            costs[name] = paired(lambda: bb.encode_image(x), lambda m=m: m.predict(x), args.repeats, args.device)

    head = "| variant | " + " | ".join(METRICS) + " | cost (x bare forward) |"
    lines = [head, "|---|" + "---:|" * (len(METRICS) + 1)]
    for name, mean in rows:
        short = name.removeprefix("dual-image: ")
        cost = f"{costs[short][2]:.2f}x" if short in costs else "see speed tables"
        lines.append(f"| {name} | " + " | ".join(f"{100 * mean[k]:.1f}" for k in METRICS) + f" | {cost} |")
    section = [
        "",
        f"## Dual-Image ablation on Magnetic Tile ({time.strftime('%Y-%m-%d')}, `--device {args.device}`)",
        "",
        f"Command: `python benchmarks/dual_image_ablation.py --device {args.device} --cost-images {args.cost_images}`",
        weights_line(args.backbone, args.pretrained, str(args.image_size)),
        "Data: MT_Free 1..40 (sorted names) + all 57 MT_Crack, one folder = one pairing set (TRANSDUCTIVE for every "
        "variant but language only). Metrics in %, mean over the one category. Cost: median per-pair ratio of "
        f"dual-image `predict` on a set of {args.cost_images} MT_Crack images to the bare forward on the same "
        f"images, {args.repeats} alternating pairs ({hardware(args.device)}); TTA's cost includes synthesising "
        "32 images, encoding them and training the adapter for 5 epochs, once per set.",
        "",
        *lines,
        "",
        "Runs:",
        *log,
    ]
    publish_section(section, args.append_results)


if __name__ == "__main__":
    main()
