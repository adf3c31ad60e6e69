"""A fingerprint of every registered method's predictions, to show a refactor changed no number.

Each method is built on the tiny seeded backbone (``zsad-tiny``, random weights: plumbing only, NOT quality), set up
for class "tile" (few-shot methods get two reference images; trainable ones their seeded untrained parts through a
real checkpoint; RWDA trains its small classifier), and scores six real Magnetic Tile images. One line per method:
its name, the sha256 (16 hex digits) of the scores' and maps' bytes, and the sum of the scores.

Run it on two trees and compare the output, e.g. before and after a change:

    PYTHONPATH=../before/src python benchmarks/method_identity.py > before.txt
    python benchmarks/method_identity.py > after.txt && diff before.txt after.txt && echo identical
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("ZSAD_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
    ap.add_argument("--assets", type=Path, default=default)
    args = ap.parse_args()

    from zsad import create_method, list_methods
    from zsad.backbone import ClipBackbone
    from zsad.data import ImageList

    tiles = args.assets / "magnetic_tile"
    files = (
        sorted((tiles / "MT_Free" / "Imgs").glob("*.jpg"))[:3] + sorted((tiles / "MT_Crack" / "Imgs").glob("*.jpg"))[:3]
    )
    if len(files) < 6:
        raise SystemExit(f"no Magnetic Tile images under {tiles}")
    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", seed=0)
    pre = bb.preprocess
    ds = ImageList(files, image_size=pre.image_size, mean=pre.mean, std=pre.std)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    for name in list_methods():
        tmp = Path(tempfile.mkdtemp())
        probe = create_method(name, bb)
        opts: dict[str, object] = {}
        if probe.trainable and not probe.requires_checkpoint:
            opts = {"n_pairs": 200, "epochs": 2, "cache_dir": str(tmp / "cache")}
        elif probe.trainable:
            torch.manual_seed(1)
            opts = {"checkpoint": str(create_method(name, bb).save(tmp / "ckpt", {"note": "identity"}))}
        torch.manual_seed(2)
        method = create_method(name, bb, **opts)
        method.setup("tile", images[:2] if method.supports_few_shot else None)
        with torch.no_grad():
            pred = method.predict(images)
        blob = pred.pred_score.numpy().tobytes() + pred.anomaly_map.numpy().tobytes()
        print(name, hashlib.sha256(blob).hexdigest()[:16], float(pred.pred_score.sum()))


if __name__ == "__main__":
    main()
