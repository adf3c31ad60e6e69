"""zsad WinCLIP side by side with anomalib's ``WinClipModel``: same weights, same images, same process.

anomalib is NOT a zsad dependency; run this in a separate environment that has both (see RESULTS.md):
    python3 -m venv /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib "open-clip-torch>=2.23,<2.26.1"
    /tmp/anomalib-venv/bin/pip install -e . --no-deps && /tmp/anomalib-venv/bin/pip install typer rich safetensors
    /tmp/anomalib-venv/bin/python benchmarks/compare_anomalib_winclip.py

Both wrap the SAME open_clip ``ViT-B-16-plus-240`` object with seeded random weights (no hub access here), so any
difference is the implementation's. Reports the max |difference| of image scores and 240x240 maps for zsad's
``compat="anomalib"`` mode, for each deliberate fix alone, and for the default; then speed ratios to the bare
open_clip forward.
"""

from __future__ import annotations

import argparse
import datetime
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import open_clip
import torch

from bench_speed import hardware, timeit
from zsad.backbone import ClipBackbone
from zsad.data import Folder
from zsad.methods import create_method

MODEL = "ViT-B-16-plus-240"
VARIANTS: dict[str, dict[str, Any]] = {
    "compat=anomalib": {"compat": "anomalib"},
    "fix: mean of normalised text embeddings only": {"prompt_set": "winclip-anomalib", "text_aggregation": "mean"},
    "fix: de-duplicated 'jpeg corrupted' template only": {"prompt_set": "winclip", "text_aggregation": "raw_mean"},
    "zsad default (both fixes)": {},
}


def build_anomalib(model: torch.nn.Module, class_name: str) -> torch.nn.Module:
    """anomalib's WinClipModel around our model: its constructor's download is replaced by our object."""
    from anomalib.models.image.winclip import torch_model

    original = open_clip.create_model_and_transforms
    open_clip.create_model_and_transforms = lambda *a, **k: (model, None, None)
    try:
        return torch_model.WinClipModel(class_name=class_name).eval()
    finally:
        open_clip.create_model_and_transforms = original


def load_images(n_test: int, k_shot: int, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    assets = Path(os.environ.get("ZSAD_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
    root = assets / "magnetic_tile"
    ds = Folder(
        root,
        normal_dir="MT_Free/Imgs",
        abnormal_dir="MT_Crack/Imgs",
        mask_dir="MT_Crack/Imgs",
        image_glob="*.jpg",
        image_size=size,
    )
    normal = [i for i, s in enumerate(ds.samples) if s.label == 0]
    anomalous = [i for i, s in enumerate(ds.samples) if s.label == 1]
    test = normal[: n_test // 2] + anomalous[: n_test - n_test // 2]
    refs = normal[n_test // 2 : n_test // 2 + k_shot]
    x = torch.stack([ds[i]["image"] for i in test])
    r = torch.stack([ds[i]["image"] for i in refs])
    return x, r, [ds.samples[i].image_path.name for i in test]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--k-shot", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--class-name", default="magnetic tile")
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    torch.manual_seed(args.seed)
    model = open_clip.create_model(MODEL, pretrained=None).eval()
    bb = ClipBackbone.from_model(model, MODEL, "none")
    x, refs, _ = load_images(args.n_test, args.k_shot, bb.image_size)
    ano = build_anomalib(model, args.class_name)

    lines = [
        f"Weights: seeded random `{MODEL}` (seed {args.seed}), one object shared by both. Images: {len(x)} "
        f"Magnetic Tile images (half MT_Free, half MT_Crack) squashed to 240 px; few-shot references: "
        f"{len(refs)} other MT_Free images. open_clip {version('open_clip_torch')}, torch {torch.__version__}, "
        f"anomalib {version('anomalib')}.",
        "",
        "| mode | zsad variant | max abs diff pred_score | max abs diff anomaly_map |",
        "|---|---|---:|---:|",
    ]
    for mode, ref_imgs in (("zero-shot", None), (f"few-shot k={len(refs)}", refs)):
        ano.setup(args.class_name, ref_imgs)
        a = ano(x)
        for name, opts in VARIANTS.items():
            z = create_method("winclip", bb, **opts)
            z.setup(args.class_name, ref_imgs)
            p = z.predict(x)
            ds = (p.pred_score - a.pred_score).abs().max().item()
            dm = (p.anomaly_map - a.anomaly_map).abs().max().item()
            lines.append(f"| {mode} | {name} | {ds:.2e} | {dm:.2e} |")

    # Speed, zero-shot, same batch. anomalib registers one more forward hook per call: measured as it is after
    # `repeats + 1` calls, and with its hooks cleared before every call.
    ano.setup(args.class_name, None)
    ano.k_shot = 0
    zs = create_method("winclip", bb)
    zs.setup(args.class_name)
    hooks = model.visual.patch_dropout._forward_hooks

    def ano_clean() -> Any:
        hooks.clear()
        return ano(x)

    bare = timeit(lambda: model.encode_image(x), args.repeats, "cpu")
    t_ano = timeit(lambda: ano(x), args.repeats, "cpu")
    t_ano_clean = timeit(ano_clean, args.repeats, "cpu")
    t_zsad = timeit(lambda: zs.predict(x), args.repeats, "cpu")
    hooks.clear()
    lines += [
        "",
        f"Speed, zero-shot, batch {len(x)} at 240 px, {hardware('cpu')}, median of {args.repeats} after "
        "warm-up, same run:",
        "",
        "| pipeline | seconds | ratio to bare forward |",
        "|---|---:|---:|",
    ]
    for name, t in (
        ("bare open_clip encode_image", bare),
        ("anomalib WinClipModel (as shipped, hooks pile up)", t_ano),
        ("anomalib WinClipModel (hooks cleared each call)", t_ano_clean),
        ("zsad winclip", t_zsad),
    ):
        lines.append(f"| {name} | {t:.2f} | {t / bare:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.append_results:
        results = Path(__file__).with_name("RESULTS.md")
        cmd = "python benchmarks/compare_anomalib_winclip.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "append_results"
        )
        with results.open("a") as f:
            f.write(
                f"\n## WinCLIP: zsad vs anomalib {datetime.date.today()}\n\nCommand (in an environment with "
                f"anomalib, see the script's docstring): `{cmd}`\n\nSEEDED RANDOM WEIGHTS: this checks fidelity "
                f"and speed, not detection quality.\n\n{text}\n"
            )


if __name__ == "__main__":
    main()
