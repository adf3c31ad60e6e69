"""RWDA on the real Magnetic Tile images: RWDA, RWDA+CLIP and the WinCLIP prompt baseline, known/unknown object.

Test split of ``asset_methods.py`` (MT_Free 1..40 + all MT_Crack). Settings:
- known object: the prompts name the object ("magnetic tile"): WinCLIP with that class name, RWDA with
  ``object_mode=known`` (its classifier is trained on prompts naming the object);
- unknown object: no class name anywhere: WinCLIP with "object", RWDA category-agnostic (``object_mode=unknown``).
Then the N_p sweep: category-agnostic RWDA trained on N_p prompt pairs, with its held-out prompt accuracy and the
time to build and train it (text encoding dominates on CPU).

Every classifier is trained on the fly through ``zsad eval`` and cached in ``--work``/cache (re-runs reuse it).
With ``--pretrained none`` (the default here) the weights are SEEDED RANDOM: plumbing only, NOT detection quality.

    python benchmarks/rwda_assets.py [--sweep 1000 10000 50000] [--append-results]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asset_methods import build_split, publish_section, weights_line  # noqa: E402
from dual_image_ablation import METRICS, eval_variant  # noqa: E402
from zsad.sysinfo import hardware  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def score_range(out: Path) -> str:
    """min and max image score of a run: shows a classifier saturating on image embeddings (the modality gap)."""
    with open(out / "predictions.csv", newline="") as f:
        scores = [float(r["pred_score"]) for r in csv.DictReader(f)]
    return f"[{min(scores):.6g}, {max(scores):.6g}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("ZSAD_ASSETS", REPO.parent / "shared/assets")))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "zsad-rwda-assets")
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-pairs", type=int, default=10_000, help="N_p of the known/unknown table")
    ap.add_argument("--sweep", type=int, nargs="*", default=[1000, 10_000, 50_000])
    ap.add_argument("--window-stride", type=int, default=3, help="WinCLIP/RWDA windows (1 = the paper, ~10x slower)")
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args()

    _, test = build_split(args.assets, args.work, 40, 20)
    cache = args.work / "cache"
    base = ["--root", str(test), "--dataset", "folder", "--normal-dir", "good", "--abnormal-dir", "crack"]
    base += ["--mask-dir", "crack", "--image-glob", "*.jpg", "--backbone", args.backbone]
    base += ["--pretrained", args.pretrained, "--device", args.device]
    common = {"window_stride": args.window_stride}
    rwda = {**common, "cache_dir": str(cache), "n_pairs": args.n_pairs}
    log: list[str] = []
    rows: list[tuple[str, str, dict]] = []
    for setting, name in (("known object", "magnetic tile"), ("unknown object", "object")):
        cmd = [*base, "--class-name", name]
        mode = "known" if setting == "known object" else "unknown"
        runs = [
            ("winclip (CLIP prompts)", "winclip", common),
            ("rwda", "rwda", {**rwda, "object_mode": mode}),
            ("rwda+clip", "rwda", {**rwda, "object_mode": mode, "combine": "rwda+clip"}),
        ]
        if mode == "unknown":  # the modality-gap option: centred text and image embeddings
            centred = {**rwda, "object_mode": mode, "modality_gap": "center"}
            runs.append(("rwda, center", "rwda", centred))
            runs.append(("rwda+clip, center", "rwda", {**centred, "combine": "rwda+clip"}))
        for label, method, opts in runs:
            slug = label.replace("+", "_plus").replace(", ", "_").split()[0]
            out = args.work / f"{mode}_{slug}"
            mean = eval_variant(f"{setting}, {label}", opts, [*cmd, "--method", method], out, log)
            rows.append((setting, label, {**mean, "scores": score_range(out)}))

    sweep: list[tuple[int, dict, dict]] = []
    for n in args.sweep:
        out = args.work / f"sweep_{n}"
        t = time.perf_counter()
        opts = {**rwda, "n_pairs": n}
        mean = eval_variant(f"N_p={n}", opts, [*base, "--class-name", "object", "--method", "rwda"], out, log)
        manifest = json.loads((out / "manifest.json").read_text())
        key = manifest.get("rwda_classifier", {})
        sweep.append((n, mean, {**key, "eval_seconds": time.perf_counter() - t}))

    table = ["| setting | method | " + " | ".join(METRICS) + " | image scores [min, max] |"]
    table.append("|---|---|" + "---:|" * len(METRICS) + "---|")
    table += [
        f"| {s} | {m} | " + " | ".join(f"{100 * v[k]:.1f}" for k in METRICS) + f" | {v['scores']} |" for s, m, v in rows
    ]
    sweep_table = ["| N_p | held-out prompt accuracy | classifier training (s) | image_AUROC | pixel_AUROC |"]
    sweep_table.append("|---:|---:|---:|---:|---:|")
    for n, mean, info in sweep:
        acc = info.get("heldout_accuracy")
        shown = f"{100 * acc:.1f}%" if isinstance(acc, float) else "?"
        sweep_table.append(
            f"| {n} | {shown} | {info.get('seconds') or 0:.0f} | {100 * mean['image_AUROC']:.1f} | "
            f"{100 * mean['pixel_AUROC']:.1f} |"
        )
    section = [
        "",
        f"## RWDA on Magnetic Tile ({time.strftime('%Y-%m-%d')}, `--device {args.device}`)",
        "",
        f"Command: `python benchmarks/rwda_assets.py --device {args.device} --n-pairs {args.n_pairs} --sweep "
        + " ".join(map(str, args.sweep))
        + f" --window-stride {args.window_stride}`",
        weights_line(args.backbone, args.pretrained),
        f"Data: MT_Free 1..40 + all 57 MT_Crack; windows 2x2 and 3x3, each every min(scale, {args.window_stride}) "
        f"patches (`window_stride={args.window_stride}`); "
        f"{hardware(args.device)}. The RWDA classifiers never saw an image.",
        "",
        *table,
        "",
        "N_p sweep (category-agnostic RWDA; the held-out accuracy is on prompts of another generator seed):",
        "",
        *sweep_table,
        "",
        "Runs:",
        *log,
    ]
    publish_section(section, args.append_results)


if __name__ == "__main__":
    main()
