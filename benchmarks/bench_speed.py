"""Speed of each method as a ratio to the bare backbone forward on the same images, in the same run.

Example (CPU, this machine):
    python benchmarks/bench_speed.py --methods winclip --batch-size 4 --repeats 3
Full size on a GPU:
    python benchmarks/bench_speed.py --device cuda --backbone ViT-L-14-336 --image-size 518 --batch-size 8
Reduced precision (the method's backbone cast; the bare forward stays the fp32 open_clip/zsad forward):
    python benchmarks/bench_speed.py --methods sdp --precision bf16

Weights are seeded random (speed does not depend on weight values); images are real asset images when
ZSAD_ASSETS is present, else seeded noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from zsad.backbone import ClipBackbone
from zsad.methods import create_method, get_method_class
from zsad.sysinfo import hardware


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def paired(bare: Callable[[], object], method: Callable[[], object], repeats: int, device: str) -> tuple[float, ...]:
    """Alternate bare / method calls so drifting machine speed hits both alike.

    Returns (median bare s, median method s, median of the per-pair ratios).
    """
    bare(), method()
    _sync(device)
    tb, tm = [], []
    for _ in range(repeats):
        for fn, acc in ((bare, tb), (method, tm)):
            t = time.perf_counter()
            fn()
            _sync(device)
            acc.append(time.perf_counter() - t)
    return statistics.median(tb), statistics.median(tm), statistics.median(m / b for b, m in zip(tb, tm, strict=True))


def load_images(n: int, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    assets = Path(os.environ.get("ZSAD_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
    folder = assets / "magnetic_tile" / "MT_Crack" / "Imgs"
    if folder.is_dir():
        from zsad.data import ImageList

        ds = ImageList([str(folder / "*.jpg")], image_size=size, mean=mean, std=std)
        return torch.stack([ds[i % len(ds)]["image"] for i in range(n)])
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["winclip"])
    ap.add_argument("--backbone", default=None, help="default: each method's own")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--option", action="append", default=[], help="METHOD:KEY=JSON, e.g. winclip:window_stride=2")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or fp16 (ClipBackbone.set_precision)")
    args = ap.parse_args()

    rows = []
    backbones: dict[tuple[Any, ...], ClipBackbone] = {}
    for name in args.methods:
        cfg = get_method_class(name).config_cls()
        key = (args.backbone or cfg.backbone, args.image_size or cfg.image_size)
        if key not in backbones:
            backbones[key] = ClipBackbone.from_pretrained(key[0], "none", image_size=key[1], device=args.device, seed=0)
        bb = backbones[key]
        if args.precision != "fp32":  # the method gets its own cast copy; the bare forward keeps fp32
            lkey = (*key, args.precision)
            if lkey not in backbones:
                backbones[lkey] = ClipBackbone.from_pretrained(
                    key[0], "none", image_size=key[1], device=args.device, seed=0
                ).set_precision(args.precision)
            mbb = backbones[lkey]
        else:
            mbb = bb
        opts = {}
        for o in args.option:
            meth, _, kv = o.partition(":")
            if meth == name:
                k, _, v = kv.partition("=")
                opts[k] = json.loads(v)
        if get_method_class(name).trainable and "checkpoint" not in opts:
            # speed does not depend on the values: its seeded untrained parts, through a real checkpoint
            ckpt = Path(tempfile.mkdtemp(prefix="zsad-bench-"))
            create_method(name, bb, **opts).save(ckpt, {"note": "untrained, speed benchmark"})
            opts["checkpoint"] = str(ckpt)
        method = create_method(name, mbb, **opts)
        method.setup("object")
        x = load_images(args.batch_size, bb.image_size, bb.mean, bb.std).to(args.device)
        with torch.no_grad():
            # open_clip's own forward where it can run (native size); at other sizes the wrapper's plain forward
            # (same computation, tested equal to open_clip's at native size) with interpolated positions.
            native = bb.image_size == bb.native_image_size
            bare_fn = (
                (lambda bb=bb, x=x: bb.model.encode_image(x)) if native else (lambda bb=bb, x=x: bb.encode_image(x))
            )
            bare, t, ratio = paired(bare_fn, lambda m=method, x=x: m.predict(x), args.repeats, args.device)
        rows.append(
            {
                "method": name,
                "options": {k: v for k, v in opts.items() if k != "checkpoint"},
                "backbone": bb.model_name,
                "image_size": bb.image_size,
                "batch": args.batch_size,
                "precision": args.precision,
                "bare": "open_clip" if native else "zsad plain forward",
                "bare_s": bare,
                "method_s": t,
                "ratio": ratio,  # median of per-pair ratios (alternating calls)
            }
        )
    print(
        f"hardware: {hardware(args.device)}; seeded random weights; {args.repeats} alternating bare/method pairs "
        "after warm-up: median times and median per-pair ratio"
    )
    print(
        "| method | options | backbone @ px | precision | batch | bare fp32 forward (s) [which] | method (s) | "
        "images/s | ratio |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['options'] or '-'} | {r['backbone']} @ {r['image_size']} | {r['precision']} | "
            f"{r['batch']} | {r['bare_s']:.3f} [{r['bare']}] | {r['method_s']:.3f} | "
            f"{r['batch'] / r['method_s']:.1f} | {r['ratio']:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps({"hardware": hardware(args.device), "rows": rows}, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
