"""Exported graphs and reduced precision, per method, on real Magnetic Tile images: parity, drift, decisions, speed.

For every method asked for, on the same images (MT_Free normals + MT_Crack defects with their masks, squashed to
``--image-size``), against the method's own torch fp32 prediction:
- **parity**: ``zsad export`` ONNX (fp32) run by onnxruntime CPU and by OpenVINO CPU (fp32 inference), max |d|;
- **drift**: torch with ``--precision bf16`` (CPU) and the ``--precision fp16`` ONNX graph (onnxruntime CPU):
  max |d| of scores and maps, the score drift relative to the fp32 scores' spread (std), the change of image and
  pixel AUROC, and the decisions that flip: images whose label changes at the fp32 F1-optimal image threshold, and
  the share of pixels whose label changes at the fp32 F1-optimal pixel threshold;
- **speed**: seconds for all images (batch ``--batch-size``, after one warm-up batch), and the ratio of each path to
  the bare backbone forward (open_clip ``encode_image``, torch fp32) on the same images in the same run.

Methods that cannot be exported (adaclip, musc, dual-image) get the bf16 rows only. Trained parts (sdp+, adaclip,
anomalyclip, anomalyvfm) are seeded random parts saved as a checkpoint, as ``zsad train`` would write them.
AnomalyVFM's fresh adapters are the identity (B = 0, DoRA magnitudes = row norms), so its adapters are also shifted
by seeded noise (``PERTURBED``; its decoder and predictor keep their seeded init): otherwise the adapters, and their
precision, would not be measured at all.

Random backbone weights (no pretrained CLIP here): AUROC values are NOT quality, only how much precision moves them.

    python benchmarks/bench_export.py --backbone ViT-B-16 --image-size 224 --append-results

AnomalyVFM runs on the bench's backbone and size (its own default is ViT-L-14-336-quickgelu at 672 px).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _results import add_results_args, assets_dir, emit
from zsad.backbone import ClipBackbone
from zsad.data import load_image, squash_image
from zsad.export import export_method, refused
from zsad.methods import create_method, get_method_class
from zsad.metrics.classification import f1_max, image_auroc
from zsad.metrics.pixels import pixel_auroc, pixel_f1_max
from zsad.runs.sets import predict_set
from zsad.runtime import open_graph

PATHS = (("onnxruntime", "ONNX fp32 (noise floor)"), ("bf16", "torch bf16"), ("fp16", "ONNX fp16 (onnxruntime)"))
ALL = ["winclip", "winclip-2shot", "sdp", "sdp+", "rwda", "anomalyclip", "adaclip", "musc", "dual-image", "anomalyvfm"]
# {method: (prefix, std of lora_* tensors, std of the others)}: parameters under prefix get seeded noise before the
# checkpoint is saved. AnomalyVFM's fresh adapters are the identity, which would leave them out of the measurement.
PERTURBED = {"anomalyvfm": ("adapters.", 0.05, 0.1)}


def load_images(assets: Path, size: int, n_normal: int, n_defect: int, k_ref: int) -> dict[str, Any]:
    mt = assets / "magnetic_tile"
    free = sorted((mt / "MT_Free" / "Imgs").glob("*.jpg"))
    crack = sorted((mt / "MT_Crack" / "Imgs").glob("*.jpg"))[:n_defect]
    files = free[:n_normal] + crack
    images = torch.stack([squash_image(load_image(f), size) for f in files])
    masks = np.zeros((len(files), size, size), dtype=bool)
    for i, f in enumerate(files):
        m = f.with_suffix(".png")
        if m in [c.with_suffix(".png") for c in crack] and m.is_file():
            masks[i] = np.asarray(load_image(m).convert("L").resize((size, size), 0)) > 127
    labels = np.array([0] * n_normal + [1] * len(crack))
    refs = torch.stack([squash_image(load_image(f), size) for f in free[n_normal : n_normal + k_ref]])
    return {"images": images, "masks": masks, "labels": labels, "refs": refs}


def build(name: str, bb: ClipBackbone, ckdir: Path, refs: torch.Tensor) -> Any:
    method = name.removesuffix("-2shot")
    kwargs: dict[str, Any] = {"n_pairs": 2000} if method == "rwda" else {}
    cls = get_method_class(method)
    if cls.trainable and cls.requires_checkpoint:
        ck = ckdir / method
        if not ck.exists():
            m = create_method(method, bb, **kwargs)
            m.build_parts(0)
            if method in PERTURBED:
                perturb(m.parts, *PERTURBED[method])
            m.save(ck, {"note": "seeded random parts for bench_export"})
        kwargs["checkpoint"] = str(ck)
    m = create_method(method, bb, **kwargs)
    m.setup("tile", refs if name.endswith("-2shot") else None)
    return m


def perturb(parts: torch.nn.Module, prefix: str, lora_std: float, other_std: float, seed: int = 7) -> None:
    """Seeded Gaussian noise on parameters under ``prefix``: ``lora_std`` on low-rank tensors, else ``other_std``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in parts.named_parameters():
            if name.startswith(prefix):
                std = lora_std if "lora" in name else other_std
                p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * std)


def timed(fn: Any, reps: int) -> tuple[Any, float]:
    out = fn()  # warm-up (and the result)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return out, (time.perf_counter() - t0) / max(reps, 1)


def torch_run(m: Any, x: torch.Tensor, bs: int) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        p = predict_set(m, x, bs)
    return p.pred_score.float().numpy(), p.anomaly_map.float().numpy()


def graph_runner(folder: Path, runtime: str, bs: int) -> Any:
    """Open the graph once (not timed) with zsad's own opener; the returned function scores all images in batches."""
    graph = open_graph(folder / "model.onnx", runtime)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs = [graph.run(x[i : i + bs]) for i in range(0, len(x), bs)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    return run


def between(values: np.ndarray, t: float) -> float:
    """Halfway from ``t`` (an observed value, as F1-max returns) to the next lower value: no sample sits on it."""
    lower = values[values < t]
    return float((t + lower.max()) / 2) if lower.size else float(t)


def compare(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], data: dict[str, Any]) -> dict:
    (s0, m0), (s1, m1) = ref, got
    labels, masks = data["labels"], data["masks"]
    t_img = between(s0, f1_max(s0, labels)[1])
    t_pix = between(m0, pixel_f1_max(m0, masks)[1])
    return {
        "score": float(np.abs(s1 - s0).max()),
        "map": float(np.abs(m1 - m0).max()),
        "rel": float(np.abs(s1 - s0).max() / max(float(s0.std()), 1e-12)),
        "d_iauroc": 100 * (image_auroc(s1, labels) - image_auroc(s0, labels)),
        "d_pauroc": 100 * (pixel_auroc(m1, masks) - pixel_auroc(m0, masks)),
        "img_flips": int(((s0 >= t_img) != (s1 >= t_img)).sum()),
        "pix_flips": float(((m0 >= t_pix) != (m1 >= t_pix)).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-B-16")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--methods", nargs="+", default=ALL, choices=ALL)
    ap.add_argument("--n-normal", type=int, default=12)
    ap.add_argument("--n-defect", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=1, help="timed repetitions after the warm-up")
    ap.add_argument("--assets", type=Path, default=assets_dir(), help="default: $ZSAD_ASSETS, else ../shared/assets")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rows", type=Path, default=None, help="also write the measured rows as JSON to this file")
    ap.add_argument("--report-from", type=Path, default=None, help="only print the report of rows saved by --rows")
    add_results_args(ap)
    args = ap.parse_args()
    if args.report_from is not None:
        saved = json.loads(args.report_from.read_text())
        emit(report(saved["rows"], args, saved["n"]), args)
        return
    torch.set_num_threads(args.threads)
    data = load_images(args.assets, args.image_size, args.n_normal, args.n_defect, k_ref=2)
    x, bs = data["images"], args.batch_size
    work = Path(tempfile.mkdtemp(prefix="bench_export_"))

    def backbone(precision: str = "fp32") -> ClipBackbone:
        bb = ClipBackbone.from_pretrained(args.backbone, "none", image_size=args.image_size, seed=0)
        return bb.set_precision(precision)

    bb32 = backbone()

    def bare() -> list[Any]:
        with torch.no_grad():
            return [bb32.encode_image(x[i : i + bs], pooled_only=True) for i in range(0, len(x), bs)]

    rows: list[dict[str, Any]] = []
    xn = x.numpy()
    for name in args.methods:
        method = name.removesuffix("-2shot")
        print(f"== {name}", flush=True)
        m32 = build(name, bb32, work, data["refs"])
        _, t_bare = timed(bare, args.reps)  # beside each method: the same machine state as its own timings
        ref, t32 = timed(lambda m=m32: torch_run(m, x, bs), args.reps)
        row: dict[str, Any] = {"method": name, "bare_s": t_bare, "torch_fp32_s": t32}
        mbf = build(name, backbone("bf16"), work, data["refs"])
        got, row["torch_bf16_s"] = timed(lambda m=mbf: torch_run(m, x, bs), args.reps)
        row["bf16"] = compare(ref, got, data)
        if method not in refused():
            folder = work / f"{name}_fp32"
            t0 = time.perf_counter()
            export_method(m32, folder)
            row["export_s"] = time.perf_counter() - t0
            for runtime in ("onnxruntime", "openvino"):
                run = graph_runner(folder, runtime, bs)
                got, row[f"{runtime}_s"] = timed(lambda r=run, a=xn: r(a), args.reps)
                row[runtime] = compare(ref, got, data)
            m16 = build(name, backbone("fp16"), work, data["refs"])
            export_method(m16, work / f"{name}_fp16")
            run16 = graph_runner(work / f"{name}_fp16", "onnxruntime", bs)
            got, row["onnx_fp16_s"] = timed(lambda r=run16, a=xn: r(a), args.reps)
            row["fp16"] = compare(ref, got, data)
            del m16
        rows.append(row)
        print(row, flush=True)
        del m32, mbf
    if args.rows is not None:
        args.rows.write_text(json.dumps({"rows": rows, "n": len(x)}, indent=1))
    emit(report(rows, args, len(x)), args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, n: int) -> str:
    cpu = platform.processor() or platform.machine()
    head = (
        f"## Export parity, precision drift and runtime speed (issue 18, {time.strftime('%Y-%m-%d')}, CPU)\n\n"
        f"Command: `python benchmarks/bench_export.py --backbone {args.backbone} --image-size {args.image_size} "
        f"--methods {' '.join(args.methods)} --n-normal {args.n_normal} --n-defect {args.n_defect} --batch-size "
        f"{args.batch_size} --reps {args.reps}` ({cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        f"). {args.backbone} at {args.image_size} px with SEEDED RANDOM weights (seed 0); {n} real Magnetic Tile "
        f"images ({args.n_normal} MT_Free, {args.n_defect} MT_Crack with masks); trained parts are seeded random. "
        "AUROC values are NOT quality: only their change under another precision is read here.\n"
    )
    out = [head, "### Parity of the fp32 graph with torch fp32 (max |d|)\n"]
    out.append("| method | onnxruntime score | onnxruntime map | OpenVINO score | OpenVINO map |")
    out.append("|---|---:|---:|---:|---:|")
    for r in rows:
        if "onnxruntime" in r:
            o, v = r["onnxruntime"], r["openvino"]
            out.append(f"| {r['method']} | {o['score']:.1e} | {o['map']:.1e} | {v['score']:.1e} | {v['map']:.1e} |")
    out.append("\n### Drift against torch fp32\n")
    out.append(
        "Image flips: images labelled otherwise at the fp32 F1-optimal image threshold (of "
        f"{n}); pixel flips: share of pixels labelled otherwise at the fp32 F1-optimal pixel threshold; "
        "relative: max score drift over the std of the fp32 scores. The ONNX fp32 rows are the noise floor: with "
        "random weights many scores are near-ties, so even a 1e-7 difference can move an image across the "
        "threshold; a flip counts against a precision only where the floor shows none.\n"
    )
    out.append(
        "| method | path | max abs score | relative | max abs map | d image AUROC (pp) | d pixel AUROC (pp) | "
        "image flips | pixel flips |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        paths = (
            ("onnxruntime", "ONNX fp32 (noise floor)"),
            ("bf16", "torch bf16"),
            ("fp16", "ONNX fp16 (onnxruntime)"),
        )
        for key, label in paths:
            if key in r:
                d = r[key]
                out.append(
                    f"| {r['method']} | {label} | {d['score']:.1e} | {d['rel']:.3f} | {d['map']:.1e} | "
                    f"{d['d_iauroc']:+.2f} | {d['d_pauroc']:+.2f} | {d['img_flips']} | {100 * d['pix_flips']:.2f}% |"
                )
    out.append(
        f"\n### Speed ({n} images, seconds; x = ratio to the bare torch fp32 forward timed just before the method)\n"
    )
    out.append("| method | bare forward | torch fp32 | torch bf16 | onnxruntime fp32 | OpenVINO fp32 | "
               "onnxruntime fp16 | torch fp32 / onnxruntime |")  # fmt: skip
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")

    def cell(r: dict[str, Any], k: str) -> str:
        if k not in r:
            return "not exportable"
        return f"{r[k]:.2f} ({r[k] / r['bare_s']:.1f}x)" if "bare_s" in r else f"{r[k]:.2f}"

    for r in rows:
        ratio = f"{r['torch_fp32_s'] / r['onnxruntime_s']:.2f}" if "onnxruntime_s" in r else "-"
        bare = f"{r['bare_s']:.2f}" if "bare_s" in r else "(not timed beside it)"
        out.append(
            f"| {r['method']} | {bare} | {cell(r, 'torch_fp32_s')} | {cell(r, 'torch_bf16_s')} | "
            f"{cell(r, 'onnxruntime_s')} | {cell(r, 'openvino_s')} | {cell(r, 'onnx_fp16_s')} | {ratio} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
