"""Where AdaCLIP's inference time goes: each part as a ratio to the bare forward, measured in alternation.

    python benchmarks/profile_adaclip.py [--backbone ViT-L-14-336 --image-size 518 --batch-size 2 --pairs 2]

Seeded random weights and untrained prompts (the cost does not depend on the values). Prints, per part, the ratio of
each alternating (bare forward, part) pair.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zsad.backbone import ClipBackbone
from zsad.methods import create_method


def seconds(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    bb = ClipBackbone.from_pretrained(args.backbone, "none", image_size=args.image_size, device=args.device, seed=0)
    ckpt = Path(tempfile.mkdtemp(prefix="zsad-prof-"))
    create_method("adaclip", bb).save(ckpt, {"note": "untrained, profile"})
    m = create_method("adaclip", bb, checkpoint=str(ckpt))
    m.setup("object")
    x = torch.randn(args.batch_size, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(bb.device)
    vis, txt = m._prompts(bb.encode_image(x, pooled_only=True).embedding)
    parts: dict[str, Callable[[], object]] = {
        "frozen pass (pooled only)": lambda: bb.encode_image(x, pooled_only=True),
        "prompted pass": lambda: bb.encode_image(x, layers=m.config.layers, visual_prompts=vis),
        "text with per-image prompts": lambda: m._text(txt, x.shape[0]),
        "whole predict": lambda: m.predict(x),
    }
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)
    for name, fn in parts.items():
        fn()
        ratios = []
        for _ in range(args.pairs):
            b = seconds(lambda: (bb.encode_image(x), sync()))
            ratios.append(seconds(lambda fn=fn: (fn(), sync())) / b)
        print(f"{name}: " + ", ".join(f"{r:.3f}x" for r in ratios), flush=True)


if __name__ == "__main__":
    main()
