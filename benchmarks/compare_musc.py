"""zsad's MuSc against the official MuSc (xrli-U/MuSc), run side by side on the same weights and images.

The official code is imported from a checkout given with `--official-root` (never copied here), in two ways:

- its `_LNAMD.py`, `_MSM.py` and `_RsCIN.py` are fed the very tokens zsad's backbone gives, and compared with
  `zsad.mutual` and the `musc` method stage by stage;
- end to end: its `models/musc.py` `MuSc` class builds its own image encoder (its modified open_clip,
  `create_model_and_transforms(name, size, pretrained=None)`), which is loaded with zsad's seeded random weights
  (`load_state_dict` of zsad's open_clip state dict; missing/unexpected keys are reported, a missing image-tower key
  fails), and its `make_category_data` runs unmodified: its encoder taps, LNAMD per degree and layer, MSM, the map
  averaging and interpolation, the map-maximum image score and RsCIN. Only its dataset (`load_datasets`, replaced by
  the same images) and its metrics (`compute_metrics`, replaced by a capture) are bypassed, at run time.

Both sides get the same normalised tensor (zsad's `squash_image`), so preprocessing differences cannot hide encoder
differences; the official dataset's own transform is not compared. zsad's method runs with `bank_dtype=float32`
(the default stores float16). CPU, fp32: the official `torch.cuda.amp.autocast()` only affects CUDA ops.
Modules the official code imports but the venv lacks (cv2, openpyxl, skimage: unused on this path) are stubbed in
`sys.modules` inside this script only.

    git clone https://github.com/xrli-U/MuSc ../ref/musc   # commit b76b93d
    .venv/bin/python benchmarks/compare_musc.py --official-root ../ref/musc --images 8

(`--append-results` also appends the section to benchmarks/RESULTS.md.)

Random weights: fidelity only, NOT detection quality.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import types
import warnings
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


def import_official_musc(root: Path) -> tuple[types.ModuleType, list[str]]:
    """The official `models/musc.py`, imported as its own entry point does (checkout root first on sys.path).

    Modules it imports that the venv lacks and that this path never calls (cv2: a debug image write in
    `gt2attn`; openpyxl: the Excel output; skimage: `utils.metrics`, replaced below) become empty stubs.
    """
    stubbed = []
    for name in ("cv2", "openpyxl", "skimage"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            stubbed.append(name)
    if "openpyxl" in stubbed:
        sys.modules["openpyxl"].Workbook = None
    if "skimage" in stubbed:
        sys.modules["skimage.measure"] = sys.modules["skimage"].measure = types.ModuleType("skimage.measure")
    sys.path.insert(0, str(root))
    log = io.StringIO()
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its dinov2 import logs "xFormers not available"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            mod = importlib.import_module("models.musc")
    finally:
        logging.disable(quiet)
    return mod, stubbed


def official_config(backbone: str, image_size: int, layers, out_dir: str, batch_size: int = 4) -> dict:
    """The official MuSc config for zsad's 1-indexed `layers`, random init (weights loaded afterwards)."""
    return {
        "device": 0,
        "datasets": {
            "data_path": out_dir,
            "dataset_name": "mvtec_ad",  # RsCIN k (1, 2, 3), as for MVTec AD and BTAD
            "class_name": "magnetic_tile",
            "img_resize": image_size,
            "divide_num": 1,
        },
        "models": {
            "backbone_name": backbone,
            "pretrained": None,  # random init, replaced by zsad's weights
            "batch_size": batch_size,
            "feature_layers": [t - 1 for t in layers],  # musc.py adds 1: these are zsad's 1-indexed taps
            "r_list": [1, 3, 5],
        },
        "testing": {"output_dir": out_dir, "vis": False, "vis_type": "single_norm", "save_excel": False},
    }


def build_official(mm: types.ModuleType, cfg: dict):
    """The official `MuSc` object (its own random init, global RNG untouched), on the CPU."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = mm.MuSc(cfg, seed=0)
    off.device = torch.device("cpu")  # fp32 on CPU (autocast is CUDA only)
    return off


def load_weights(model: torch.nn.Module, state: dict, assign: bool = False) -> tuple[list[str], list[str], int]:
    """zsad's open_clip state dict into the official model; fails unless every image-tower tensor is loaded and equal.

    `assign=True` makes the model use zsad's tensors themselves (no second copy; for a model moved to "meta").
    Returns the missing and unexpected keys and the number of image-tower tensors.
    """
    res = model.load_state_dict(state, strict=False, assign=assign)
    missing, unexpected = list(res.missing_keys), list(res.unexpected_keys)
    if any(k.startswith("visual.") for k in missing):
        raise SystemExit(f"official model: image-tower weights not loaded: {[k for k in missing if 'visual.' in k]}")
    vis = model.visual.state_dict()
    same = all(torch.equal(v, state["visual." + k]) for k, v in vis.items())
    if not same:
        raise SystemExit("official model: image-tower weights differ from zsad's after loading")
    return missing, unexpected, len(vis)


def run_category(mm: types.ModuleType, off, x, files, labels) -> dict:
    """Its `make_category_data` on `x`, unmodified, with only its dataset (`x`) and metrics (a capture) replaced."""

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> dict:
            size = x.shape[-1]
            return {
                "image": x[i],
                "image_path": str(files[i]),
                "mask": torch.zeros(1, size, size),
                "is_anomaly": labels[i],
            }

    got: dict = {}
    rscin_official, metrics_official = mm.RsCIN, mm.compute_metrics

    def capture_rscin(scores_old, cls_tokens=None, k_list=(0,)):
        got["map_max"], got["class_tokens"], got["k"] = scores_old, np.array(cls_tokens), list(k_list)
        return rscin_official(scores_old, cls_tokens, k_list=k_list)

    def capture_metrics(gt_sp, pr_sp, gt_px, pr_px):
        got["scores"], got["maps"] = pr_sp, pr_px
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)

    off.load_datasets = lambda category, divide_num=1, divide_iter=0: Images()
    mm.RsCIN, mm.compute_metrics = capture_rscin, capture_metrics
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")  # as its entry point does (autocast/pin_memory notices without CUDA)
            off.make_category_data("magnetic_tile")
    except Exception:
        sys.stderr.write(log.getvalue())
        raise
    finally:
        mm.RsCIN, mm.compute_metrics = rscin_official, metrics_official
    return got


def run_official(mm: types.ModuleType, args: argparse.Namespace, x, files, labels, state, layers) -> dict:
    """The official MuSc on `x` with zsad's weights: its encoder taps and embedding, then `make_category_data`."""
    out_dir = tempfile.mkdtemp(prefix="official_musc_")
    try:
        off = build_official(mm, official_config(args.backbone, args.image_size, layers, out_dir))
        model = off.clip_model.to(off.device)  # left in train mode, as musc.py does (no dropout in this tower)
        missing, unexpected, n_visual = load_weights(model, state)
        with torch.no_grad():
            emb, toks = model.encode_image(x, off.features_list)  # exactly musc.py's call (clip branch)
        got = run_category(mm, off, x, files, labels)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # MuSc.__init__ makes its output folders there
    return {
        "tokens": [t.float() for t in toks],
        "embedding": emb.float(),
        "missing": missing,
        "unexpected": unexpected,
        "n_visual": n_visual,
        "features_list": list(off.features_list),
        **got,
    }


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
    pred_plain = plain.predict(x)
    rows.append(("anomaly map (whole method)", float((pred.anomaly_map - maps_off).abs().max())))
    rows.append(("image score, map max (rscin=false)", float(np.abs(pred_plain.pred_score.numpy() - raw_off).max())))
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

    # end to end: the official encoder (its modified open_clip, zsad's weights) and musc.py's make_category_data
    mm, stubbed = import_official_musc(args.official_root)
    labels = [0] * half + [1] * (n - half)
    state = {k: v.detach().cpu() for k, v in bb.model.state_dict().items()}
    o = run_official(mm, args, x, files, labels, state, m.layers)
    e2e: list[tuple[str, float]] = []
    for t, tok in zip(m.layers, o["tokens"], strict=True):
        e2e.append(
            (f"encoder: layer {t} patch tokens (CLS dropped)", float((tok[:, 1:] - feats.tokens[t][:, 1:]).abs().max()))
        )
    e2e.append(
        ("encoder: global embedding (before normalisation)", float((o["embedding"] - feats.embedding).abs().max()))
    )
    e2e.append(
        (
            "RsCIN input: unit class tokens vs zsad's unit embedding",
            float(np.abs(o["class_tokens"] - glob.numpy()).max()),
        )
    )
    maps_e2e = torch.from_numpy(o["maps"])[:, 0]  # (B, H, W) float64, as musc.py keeps them
    e2e.append(("anomaly map", float((pred.anomaly_map.double() - maps_e2e).abs().max())))
    e2e.append(
        ("image score, map max (rscin=false)", float(np.abs(pred_plain.pred_score.numpy() - o["map_max"]).max()))
    )
    e2e.append(
        (f"image score with RsCIN k {tuple(o['k'])}", float(np.abs(pred.pred_score.numpy() - o["scores"]).max()))
    )
    tok_scale = max(float(t[:, 1:].abs().max()) for t in o["tokens"])
    vis_missing = [k for k in o["missing"] if k.startswith("visual.")]

    lines = [
        f"### MuSc: zsad vs the official MuSc, modules and end to end ({time.strftime('%Y-%m-%d')}, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/compare_musc.py {' '.join(sys.argv[1:])}` (official: xrli-U/MuSc, "
        "`models/modules/_LNAMD.py`, `_MSM.py`, `_RsCIN.py`, `models/musc.py` and its modified open_clip under "
        "`models/backbone/`, unmodified, imported from the checkout).",
        "",
        f"Label: **seeded random weights, {args.backbone} at {args.image_size} px: fidelity only, NOT detection "
        f"quality**. {n} Magnetic Tile images ({half} MT_Free, {n - half} MT_Crack); zsad's taps {list(m.layers)}; "
        "fp32 on both sides (`bank_dtype=float32`).",
        "",
        "| stage | max abs difference |",
        "|---|---:|",
        "| *official modules fed zsad's tokens vs `zsad.mutual` and zsad's `musc`* | |",
    ]
    lines += [f"| {name} | {v:.2e} |" for name, v in rows]
    lines += ["| *end to end: official encoder + `models/musc.py` vs zsad's `musc` `.predict`* | |"]
    lines += [f"| {name} | {v:.2e} |" for name, v in e2e]
    lines += [
        "",
        f"A set of 4 images: the official MSM gives NaN: {nan_official}; zsad gives finite scores: "
        f"{bool(torch.isfinite(s4).all())} (the single nearest other image, documented).",
        "",
        "End to end: the official `MuSc` class (`models/musc.py`) builds its model with its modified open_clip "
        f"(`create_model_and_transforms({args.backbone!r}, {args.image_size}, pretrained=None)`), then "
        f"`load_state_dict(strict=False)` of zsad's open_clip state dict: {o['n_visual']} image-tower tensors, all "
        f"loaded and equal; missing {len(o['missing'])} ({len(vis_missing)} in the image tower) "
        f"{o['missing'][:6]}; unexpected {len(o['unexpected'])} {o['unexpected'][:6]}. Its taps "
        f"`features_list` {o['features_list']} (config `feature_layers` {[t - 1 for t in o['features_list']]}, "
        "+1 in musc.py: raw block outputs, no ln_post, CLS first) = zsad's 1-indexed layers. `make_category_data` "
        "runs unmodified (batch size 4, r (1, 3, 5), MSM (0, 0.3), maps averaged over layers then degrees in float64, "
        "bilinear with aligned corners, map maximum, RsCIN) with only its dataset (the same images) and its metrics "
        "(a capture) replaced at run time. Both sides get the same normalised tensor (zsad's `squash_image`), so "
        "preprocessing is not compared. CPU, fp32: musc.py's `torch.cuda.amp.autocast()` acts only on CUDA ops "
        f"(fp16 on a GPU, not here). Stubbed for the import only (absent from the venv, unused on this path): "
        f"{stubbed or 'none'}. Scale: official patch tokens up to {tok_scale:.1f} in absolute value, maps in "
        f"[{float(maps_e2e.min()):.4f}, {float(maps_e2e.max()):.4f}].",
    ]
    text = "\n".join(lines) + "\n"
    emit(text, args)


if __name__ == "__main__":
    main()
