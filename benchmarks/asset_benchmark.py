"""``zsad benchmark`` on the real asset datasets: the suite table the papers print, from real files.

Builds a data root of symbolic links under ``--work`` (nothing is copied):
- ``MPDD/metal_plate``: the asset's flattened MPDD metal_plate (good/defect/masks) in MPDD's published layout
  (``train/good`` = the first 20 good images by name, ``test/good`` the other 60, ``test/defect`` all 81, masks
  ``ground_truth/defect/<stem>_mask.png``);
- ``headct``: the asset's HeadCT as published (``labels.csv`` + ``head_ct/``);
ELPV comes from the installed ``elpv-dataset`` package (``pip install 'zsad[datasets]'``).

Then runs ``zsad benchmark`` for the ``industrial`` suite (MPDD, ELPV found) and the ``medical`` suite (HeadCT
found); the other datasets are listed as missing. With ``--pretrained none`` (no pretrained weights exist on our
machines) the numbers prove the pipeline on real files only: they are NOT detection quality.

    python benchmarks/asset_benchmark.py --methods sdp --backbone ViT-B-16 --image-size 224 --append-results
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import add_results_args, emit

REPO = Path(__file__).resolve().parents[1]


def build_root(assets: Path, root: Path) -> Path:
    src = assets / "mpdd_metal_plate"
    good = sorted((src / "good").glob("*.png"))
    base = root / "MPDD" / "metal_plate"
    parts = (
        ("train/good", good[:20]),
        ("test/good", good[20:]),
        ("test/defect", sorted((src / "defect").glob("*.png"))),
    )
    for folder, files in parts:
        (base / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (base / folder / f.name).exists():
                (base / folder / f.name).symlink_to(f.resolve())
    (base / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
    for m in sorted((src / "masks").glob("*.png")):
        link = base / "ground_truth" / "defect" / f"{m.stem}_mask.png"
        if not link.exists():
            link.symlink_to(m.resolve())
    if not (root / "headct").exists():
        (root / "headct").symlink_to((assets / "headct").resolve())
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["sdp"])
    ap.add_argument("--backbone", default="ViT-B-16")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--suites", nargs="+", default=["industrial", "medical"])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "zsad_asset_benchmark")
    ap.add_argument(
        "--assets", type=Path, default=Path(os.environ.get("ZSAD_ASSETS", REPO.parent / "shared" / "assets"))
    )
    add_results_args(ap)
    args = ap.parse_args()
    root = build_root(args.assets, args.work / "data")
    sections = []
    for suite in args.suites:
        out = args.work / f"bench_{suite}"
        methods = [a for m in args.methods for a in ("--method", m)]
        cmd = ["zsad", "benchmark", "--suite", suite, "--root", str(root), "--out", str(out), *methods,
               "--backbone", args.backbone, "--pretrained", "none", "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size), "--device", "cpu"]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "zsad", *cmd[1:]], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode not in (0, 1):
            sys.exit(f"{shlex.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        table = (out / "table.md").read_text().split("\n", 2)[2].strip()
        sections.append(f"`{shlex.join(cmd)}` ({seconds:.0f} s, exit {done.returncode}):\n\n{table}\n")
    text = (
        f"## zsad benchmark on the real asset datasets (issue 19, {time.strftime('%Y-%m-%d')}, CPU)\n\n"
        f"Data root built by `python benchmarks/asset_benchmark.py --methods {' '.join(args.methods)} --backbone "
        f"{args.backbone} --image-size {args.image_size}`: MPDD metal_plate in MPDD's published layout "
        "(symbolic links to the asset's flattened copy), HeadCT as published, ELPV from its pip package. "
        f"{args.backbone} at {args.image_size} px with SEEDED RANDOM weights: the numbers show that each dataset "
        "loads, scores and is measured end to end; they are NOT detection quality.\n\n" + "\n".join(sections)
    )
    emit(text, args)


if __name__ == "__main__":
    main()
