"""zsad WinCLIP side by side with anomalib's ``WinClipModel``: same weights, same images, same process.

anomalib is NOT a zsad dependency. Run this in a separate environment that has both, with open_clip < 2.26.1
(anomalib's pin: from 2.26.1 on open_clip's transformer is batch-first and anomalib's window forward silently
mixes tokens across the batch):

    python3 -m venv ../anomalib-venv
    ../anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    ../anomalib-venv/bin/pip install anomalib "open-clip-torch>=2.23.0,<2.26.1"
    ../anomalib-venv/bin/pip install -e . --no-deps
    ../anomalib-venv/bin/pip install typer rich safetensors scikit-learn scipy Pillow
    ../anomalib-venv/bin/python benchmarks/compare_anomalib_winclip.py [--device cuda] [--append-results]

On an offline GPU machine that already has torch (how the cuda rows of RESULTS.md were made): ``pip download
--no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64`` anomalib==2.7.0,
open-clip-torch==2.24.0 and whichever of anomalib's imports that machine lacks into an ignored folder, carry it
there, ``pip install --no-deps --no-index --target site`` those wheels, and run with
``PYTHONPATH=site:../src`` from ``benchmarks/`` (``ZSAD_ASSETS`` pointing at a copy of the Magnetic Tile images).

No pretrained weights can be downloaded here: both sides get the same seeded random ``ViT-B-16-plus-240`` (or the
state dict of ``--weights FILE``), loaded into two separate open_clip objects, so any difference is the
implementations'. anomalib's constructor download is replaced by that model (no hub access). Reports the max |diff|
of ``pred_score`` and of the 240x240 maps, zero-shot and few-shot, for zsad's ``compat="anomalib"`` mode, for each
deliberate fix alone and for zsad's default; the same for intermediates (text, image, window and patch embeddings,
per-scale maps) so a mismatch is located; then the speed of both against the bare open_clip forward.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from zsad.sysinfo import hardware

MODEL = "ViT-B-16-plus-240"
LABEL = "seeded random weights, ViT-B-16-plus-240 — plumbing/fidelity/speed only, NOT detection quality"
SECTION = "## WinCLIP vs anomalib"
SECTION_INTRO = (
    "`benchmarks/compare_anomalib_winclip.py`: zsad's WinCLIP and anomalib's `WinClipModel` on the same weights and\n"
    "images in one process. Seeded random weights: fidelity and speed only, NOT detection quality."
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# zsad WinCLIP options of each compared variant (keys of ``WinClipConfig``).
VARIANTS: dict[str, dict[str, Any]] = {
    'compat="anomalib"': {"compat": "anomalib"},
    "fix alone: mean of normalised text embeddings": {"prompt_set": "winclip-anomalib", "text_aggregation": "mean"},
    "fix alone: paper's 'jpeg corrupted photo of a' template": {
        "prompt_set": "winclip",
        "text_aggregation": "raw_mean",
    },
    "zsad default (both fixes)": {},
}


# ----------------------------------------------------------------------------------------------------- set-up
def build_models(seed: int, weights: Path | None, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two separate open_clip objects with identical weights: one for anomalib, one for zsad and the bare forward."""
    torch.manual_seed(seed)
    model_a = open_clip.create_model(MODEL, pretrained=None)
    if weights is not None:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model_a.load_state_dict(state)
    model_z = open_clip.create_model(MODEL, pretrained=None)
    model_z.load_state_dict(model_a.state_dict())
    return model_a.eval().to(device), model_z.eval().to(device)


def build_anomalib(model: torch.nn.Module, class_name: str, device: str) -> Any:
    """anomalib's WinClipModel around ``model``: its ``create_model_and_transforms`` download returns our object."""
    from anomalib.models.image.winclip import torch_model

    transform = open_clip.image_transform(model.visual.image_size, is_train=False)
    oc = torch_model.open_clip
    original = oc.create_model_and_transforms
    oc.create_model_and_transforms = lambda *a, **k: (model, None, transform)
    try:
        ano = torch_model.WinClipModel(class_name=class_name)
    finally:
        oc.create_model_and_transforms = original
    ano = ano.eval().to(device)
    ano.setup(class_name)  # text embeddings again, now on the device
    return ano


def load_images(batch: int, k_shot: int, size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``batch`` test images (half MT_Free, half MT_Crack) and ``k_shot`` other MT_Free images, squashed to size."""
    default = Path(__file__).resolve().parents[2] / "shared" / "assets"  # ../shared/assets beside the checkout
    assets = Path(os.environ.get("ZSAD_ASSETS", default)) / "magnetic_tile"
    free = sorted((assets / "MT_Free" / "Imgs").glob("*.jpg"))
    crack = sorted((assets / "MT_Crack" / "Imgs").glob("*.jpg"))
    n_free = batch // 2
    test, refs = free[:n_free] + crack[: batch - n_free], free[n_free : n_free + k_shot]
    if len(test) < batch or len(refs) < k_shot:
        raise SystemExit(f"not enough Magnetic Tile images under {assets} (set ZSAD_ASSETS)")
    try:
        from zsad.data import load_image, squash_image

        def load(p: Path) -> torch.Tensor:
            return squash_image(load_image(p), size, CLIP_MEAN, CLIP_STD)

        how = "zsad.data.squash_image (bicubic squash + CLIP mean/std)"
    except ImportError:
        import numpy as np
        from PIL import Image

        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)

        def load(p: Path) -> torch.Tensor:
            img = Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            return (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1) - mean) / std

        how = "PIL bicubic squash + CLIP mean/std"
    return torch.stack([load(p) for p in test]), torch.stack([load(p) for p in refs]), how


def median_time(fn: Callable[[], object], repeats: int, device: str, before: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call; ``before`` runs untimed."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    for i in range(repeats + 1):
        if before is not None:
            before()
        sync()
        t = time.perf_counter()
        fn()
        sync()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:  # e.g. zsad from a source tree on PYTHONPATH
        return getattr(__import__(dist), "__version__", "unknown")


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------ fidelity
def reset_anomalib(ano: Any, class_name: str, reference: torch.Tensor | None) -> None:
    """anomalib's ``setup(name, None)`` keeps earlier reference images (and k_shot): drop them for zero-shot."""
    ano.reference_images, ano.k_shot = None, 0
    ano.setup(class_name, reference)
    assert ano.k_shot == (0 if reference is None else len(reference))


def stage_diffs(ano: Any, zs: Any, x: torch.Tensor, few_shot: bool) -> list[tuple[str, float]]:
    """Max |diff| of each intermediate between anomalib and zsad's compat mode, in pipeline order.

    Uses anomalib's public helpers and zsad's WinCLIP internals (``text``, ``windows``, ``reference``, ``_encode``).
    """
    from anomalib.models.image.winclip import utils as au

    from zsad.methods import winclip as zw

    t = ano.temperature
    out = [
        ("text embeddings (L2-normalised), normal and anomalous", maxdiff(F.normalize(ano.text_embeddings), zs.text))
    ]
    img_a, wins_a, patch_a = ano.encode_image(x)
    img_z, patch_z, wins_z = zs._encode(x, final_tokens=True)
    out.append(("image embedding (pooled CLS, proj)", maxdiff(img_a, img_z)))
    out.append(
        (
            "image score softmax(cos/T)[1]",
            maxdiff(au.class_scores(img_a, ano.text_embeddings, t, 1), zw.class_scores(img_z, zs.text, t)),
        )
    )
    for s, wa, wz, mask, (_, member) in zip(ano.scales, wins_a, wins_z, ano.masks, zs.windows, strict=True):
        out.append((f"window embeddings {s}x{s} ({wa.shape[1]} windows)", maxdiff(wa, wz)))
        sa = au.harmonic_aggregation(au.class_scores(wa, ano.text_embeddings, t, 1), ano.grid_size, mask)
        sz = zw.harmonic_aggregation(zw.class_scores(wz, zs.text, t), member)
        out.append((f"zero-shot harmonic map {s}x{s}", maxdiff(sa.flatten(1), sz)))
    if few_shot:
        out.append(("patch tokens (last block, ln_post, no proj)", maxdiff(patch_a, patch_z)))
        ref_patch, ref_wins = zs.reference
        out.append(("reference patch tokens", maxdiff(ano.patch_embeddings.flatten(0, 1), ref_patch)))
        va = au.visual_association_score(patch_a, ano.patch_embeddings)
        out.append(("few-shot patch association", maxdiff(va, zw.association_scores(patch_z, ref_patch))))
        for s, wa, wz, ra, rz in zip(ano.scales, wins_a, wins_z, ano.visual_embeddings, ref_wins, strict=True):
            out.append((f"reference window embeddings {s}x{s}", maxdiff(ra.flatten(0, 1), rz)))
            va = au.visual_association_score(wa, ra)
            out.append((f"few-shot window association {s}x{s}", maxdiff(va, zw.association_scores(wz, rz))))
    return out


def fidelity(ano: Any, bb: Any, x: torch.Tensor, refs: torch.Tensor, cls: str) -> tuple[list[str], list[str]]:
    from zsad.methods import create_method

    table = ["| mode | zsad variant | max abs diff pred_score | max abs diff anomaly_map |", "|---|---|---:|---:|"]
    stages = ['| mode | stage (zsad `compat="anomalib"` vs anomalib) | max abs diff |', "|---|---|---:|"]
    for mode, ref in (("zero-shot", None), (f"few-shot k={len(refs)}", refs)):
        reset_anomalib(ano, cls, ref)
        a = ano(x)
        for name, opts in VARIANTS.items():
            zs = create_method("winclip", bb, **opts)
            zs.setup(class_name=cls, reference_images=ref)
            p = zs.predict(x)
            table.append(
                f"| {mode} | {name} | {maxdiff(p.pred_score, a.pred_score):.2e} | "
                f"{maxdiff(p.anomaly_map, a.anomaly_map):.2e} |"
            )
            if opts.get("compat") == "anomalib":
                try:
                    stages += [f"| {mode} | {s} | {d:.2e} |" for s, d in stage_diffs(ano, zs, x, ref is not None)]
                except (AttributeError, TypeError, ValueError) as e:  # zsad internals moved: say so, go on
                    stages.append(f"| {mode} | (intermediates unavailable: {type(e).__name__}: {e}) | |")
    return table, stages


# --------------------------------------------------------------------------------------------------- speed
def speed(ano: Any, bb: Any, model_z: Any, x: torch.Tensor, refs: torch.Tensor, args: Any) -> list[str]:
    from zsad.methods import create_method

    cls, dev, n = args.class_name, args.device, args.repeats
    hooks = ano.clip.visual.patch_dropout._forward_hooks
    rows: list[tuple[str, float]] = [
        ("bare open_clip `encode_image`", median_time(lambda: model_z.encode_image(x), n, dev))
    ]
    modes = [("zero-shot", None)] + ([(f"few-shot k={len(refs)}", refs)] if args.few_shot_speed else [])
    for mode, ref in modes:
        reset_anomalib(ano, cls, ref)
        hooks.clear()
        t = median_time(lambda: ano(x), n, dev)
        rows.append((f"anomalib WinClipModel, {mode}, as shipped ({len(hooks)} hooks left after {n + 1} calls)", t))
        rows.append(
            (
                f"anomalib WinClipModel, {mode}, hooks cleared before each call",
                median_time(lambda: ano(x), n, dev, before=hooks.clear),
            )
        )
        for label, opts in (("default", {}), ('compat="anomalib"', {"compat": "anomalib"})):
            zs = create_method("winclip", bb, **opts)
            zs.setup(class_name=cls, reference_images=ref)
            rows.append((f"zsad winclip {label}, {mode}", median_time(lambda zs=zs: zs.predict(x), n, dev)))
    bare = rows[0][1]
    return ["| pipeline | seconds (median) | ratio to bare forward |", "|---|---:|---:|"] + [
        f"| {name} | {t:.3f} | {t / bare:.2f}x |" for name, t in rows
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch-size", type=int, default=8, help="test images: half MT_Free, half MT_Crack")
    ap.add_argument("--k-shot", type=int, default=2, help="MT_Free reference images not in the test set")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=None, help="state dict (.pt/.safetensors) instead of random")
    ap.add_argument("--class-name", default="magnetic tile")
    ap.add_argument("--few-shot-speed", action="store_true", help="also time the few-shot forward")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-fidelity", action="store_true", help="speed only")
    ap.add_argument(
        "--append-results",
        nargs="?",
        type=Path,
        const=Path(__file__).with_name("RESULTS.md"),
        default=None,
        metavar="FILE",
        help="append a '## WinCLIP vs anomalib' section to FILE (default benchmarks/RESULTS.md)",
    )
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from zsad.backbone import ClipBackbone

    model_a, model_z = build_models(args.seed, args.weights, args.device)
    bb = ClipBackbone.from_model(model_z, model_name=MODEL, pretrained="random" if args.weights is None else "file")
    x, refs, how = load_images(args.batch_size, args.k_shot, bb.image_size)
    x, refs = x.to(args.device), refs.to(args.device)
    ano = build_anomalib(model_a, args.class_name, args.device)

    weights = f"seed {args.seed}" if args.weights is None else f"from `{args.weights.name}`"
    head = [
        f"Label: **{LABEL}**.",
        "",
        f"Weights: `{MODEL}` {weights}, two open_clip objects with the same state dict. Images: {len(x)} Magnetic Tile "
        f"images ({len(x) // 2} MT_Free, {len(x) - len(x) // 2} MT_Crack) and {len(refs)} other MT_Free references, "
        f'loaded with {how} to {bb.image_size} px; the same tensor goes to both. Class name "{args.class_name}". '
        f"Versions: anomalib {_version('anomalib')}, open_clip {_version('open_clip_torch')}, torch "
        f"{torch.__version__}, zsad {_version('zsad')}. Hardware: {hardware(args.device)}.",
    ]
    lines = list(head)
    if not args.skip_fidelity:
        table, stages = fidelity(ano, bb, x, refs, args.class_name)
        lines += ["", "Final outputs (max abs diff, anomalib vs zsad):", "", *table, ""]
        lines += ["Where they differ (intermediates, compat mode):", "", *stages]
    if not args.skip_speed:
        lines += [
            "",
            f"Speed, batch {len(x)} at {bb.image_size} px, `--device {args.device}`, median of "
            f"{args.repeats} calls after 1 warm-up, same process, default torch threads:",
            "",
            *speed(ano, bb, model_z, x, refs, args),
        ]
    text = "\n".join(lines)
    print(text)
    if args.append_results is not None:
        argv = [a for a in sys.argv[1:] if a != "--append-results" and Path(a) != args.append_results]
        cmd = "python benchmarks/compare_anomalib_winclip.py " + shlex.join([*argv, "--append-results"])
        f = args.append_results
        previous = f.read_text() if f.exists() else ""
        headers = [ln for ln in previous.splitlines() if ln.startswith("## ")]
        section = "" if headers[-1:] == [SECTION] else f"\n{SECTION}\n\n{SECTION_INTRO}\n"
        with f.open("a") as out:
            out.write(
                f"{section}\n### {datetime.date.today()}, `--device {args.device}`, batch {len(x)}\n\nCommand (in the "
                f"anomalib environment described in the script's docstring): `{cmd}`\n\n{text}\n"
            )


if __name__ == "__main__":
    main()
