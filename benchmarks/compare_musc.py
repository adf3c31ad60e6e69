"""zsad's MuSc against the official MuSc modules (xrli-U/MuSc), run side by side on the same tokens.

The official `_LNAMD.py`, `_MSM.py` and `_RsCIN.py` are imported from a checkout given with `--official-root`
(never copied here) and fed the very tokens zsad's backbone gives for the same real images and the same seeded
random weights; their outputs are compared with `zsad.mutual` and the `musc` method stage by stage. zsad's method
runs with `bank_dtype=float32` here so both sides see the same fp32 tokens (the default stores float16).
The official image encoder (its modified open_clip) is not run: the taps are zsad's.

    git clone https://github.com/xrli-U/MuSc /work/ref/musc
    .venv/bin/python benchmarks/compare_musc.py --official-root /work/ref/musc --images 8 --append-results

Random weights: fidelity only, NOT detection quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _results import add_results_args, emit

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-root", type=Path, required=True)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--image-size", type=int, default=240)
    add_results_args(ap)
    args = ap.parse_args()

    from zsad.backbone import ClipBackbone
    from zsad.data import load_image, squash_image
    from zsad.methods import create_method
    from zsad.mutual import lnamd, mutual_scores, rscin

    mods = args.official_root / "models" / "modules"
    off_lnamd = load(mods / "_LNAMD.py", "official_lnamd")
    off_msm = load(mods / "_MSM.py", "official_msm")
    off_rscin = load(mods / "_RsCIN.py", "official_rscin")

    assets = Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets")) / "magnetic_tile"
    half = args.images // 2
    files = sorted((assets / "MT_Free" / "Imgs").glob("*.jpg"))[:half]
    files += sorted((assets / "MT_Crack" / "Imgs").glob("*.jpg"))[: args.images - half]
    bb = ClipBackbone.from_pretrained(args.backbone, "none", image_size=args.image_size, device="cpu", seed=0)
    pre = bb.preprocess
    x = torch.stack([squash_image(load_image(p), pre.image_size, pre.mean, pre.std) for p in files])
    m = create_method("musc", bb, bank_dtype="float32")
    m.setup(None)
    with torch.no_grad():
        feats = bb.encode_image(x, layers=m.layers)
    grid = bb.grid_size()
    n = len(files)
    rows: list[tuple[str, float]] = []
    total_off = torch.zeros(n, grid[0] * grid[1], dtype=torch.float64)
    tokens = [feats.tokens[t] for t in m.layers]  # (B, 1+N, C), CLS first, as the official LNAMD expects
    for r in (1, 3, 5):
        official = off_lnamd.LNAMD(device="cpu", r=r, feature_dim=tokens[0].shape[-1], feature_layer=list(m.layers))
        with torch.no_grad():
            z_off = official._embed([t.float() for t in tokens])
            z_off = z_off / z_off.norm(dim=-1, keepdim=True)  # (B, N, layers, C), as musc.py normalises
        per_layer = []
        for li, t in enumerate(tokens):
            z = lnamd(t[:, 1:], grid, r)
            rows.append((f"LNAMD r={r}, layer {m.layers[li]}", float((z - z_off[:, :, li]).abs().max())))
            s_off = off_msm.MSM(Z=z_off[:, :, li].contiguous(), device="cpu", topmin_min=0, topmin_max=0.3)
            s = mutual_scores(z, torch.arange(n), z, n, 0.0, 0.3)
            rows.append((f"MSM r={r}, layer {m.layers[li]}", float((s.double() - s_off.double()).abs().max())))
            per_layer.append(s_off)
        total_off += torch.stack(per_layer).mean(0).double()
    patch = (total_off / 3).float().reshape(n, 1, *grid)
    maps_off = F.interpolate(patch, size=(args.image_size, args.image_size), mode="bilinear", align_corners=True)[:, 0]
    raw_off = maps_off.flatten(1).amax(1).double().numpy()
    glob = F.normalize(feats.embedding, dim=-1)
    scores_off = off_rscin.RsCIN(raw_off, glob.numpy(), k_list=[1, 2, 3])
    pred = m.predict(x)
    plain = create_method("musc", bb, bank_dtype="float32", rscin=False)
    plain.setup(None)
    rows.append(("anomaly map (whole method)", float((pred.anomaly_map - maps_off).abs().max())))
    rows.append(
        ("image score, map max (rscin=false)", float(np.abs(plain.predict(x).pred_score.numpy() - raw_off).max()))
    )
    rows.append(("image score with RsCIN k (1, 2, 3)", float(np.abs(pred.pred_score.numpy() - scores_off).max())))
    rows.append(
        (
            "RsCIN alone on the same scores",
            float(np.abs(rscin(torch.from_numpy(raw_off), glob, (1, 2, 3)).numpy() - scores_off).max()),
        )
    )
    small = create_method("musc", bb, bank_dtype="float32")
    small.setup(None)
    s4 = small.predict(x[:4]).pred_score
    z4 = off_lnamd.LNAMD(device="cpu", r=1, feature_dim=tokens[0].shape[-1], feature_layer=list(m.layers))._embed(
        [t[:4].float() for t in tokens]
    )
    z4 = z4 / z4.norm(dim=-1, keepdim=True)
    nan_official = bool(torch.isnan(off_msm.MSM(Z=z4[:, :, 0].contiguous(), device="cpu")).any())

    lines = [
        f"### MuSc: zsad vs the official modules ({time.strftime('%Y-%m-%d')}, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/compare_musc.py {' '.join(sys.argv[1:])}` (official: xrli-U/MuSc, "
        "`models/modules/_LNAMD.py`, `_MSM.py`, `_RsCIN.py`, unmodified).",
        "",
        f"Label: **seeded random weights, {args.backbone} at {args.image_size} px: fidelity only, NOT detection "
        f"quality**. {n} Magnetic Tile images ({half} MT_Free, {n - half} MT_Crack); zsad's taps {list(m.layers)} "
        "fed to both sides in fp32 (`bank_dtype=float32`).",
        "",
        "| stage | max abs difference |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {v:.2e} |" for name, v in rows]
    lines += [
        "",
        f"A set of 4 images: the official MSM gives NaN: {nan_official}; zsad gives finite scores: "
        f"{bool(torch.isfinite(s4).all())} (the single nearest other image, documented).",
    ]
    text = "\n".join(lines) + "\n"
    emit(text, args)


if __name__ == "__main__":
    main()
