"""``zsad train``: fit a method's learnable parts on annotated auxiliary data (the test split, as the field does)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console

from zsad.cli.evaluate import EvalSpec, _datasets
from zsad.errors import ZsadInputError
from zsad.methods.base import Method


def run_train(method: Method, spec: EvalSpec, out: Path, overrides: dict[str, Any], *, console: Console) -> Path:
    if not method.trainable:
        raise ZsadInputError(f"--method {method.name}: has nothing to train (trainable methods have `zsad train`)")
    bb = method.backbone
    kw = {"image_size": method.image_size, "mean": bb.mean, "std": bb.std}
    pairs = [(cat, ds) for cat, ds, _ in _datasets(spec, kw)]
    cfg = dataclasses.replace(method.default_train_config(), **overrides)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ZsadInputError("--epochs and --batch-size must be >= 1")
    data_info = {
        "dataset": spec.dataset,
        "root": str(spec.root.resolve()),
        "folder_options": {
            k: v
            for k, v in vars(spec).items()
            if k in ("normal_dir", "abnormal_dir", "mask_dir", "image_dir", "labels_csv", "image_glob") and v
        },
    }
    names = {cat: spec.class_name for cat, _ in pairs} if spec.class_name else None
    if bb.random_init:
        console.print("[bold red]training on a SEEDED RANDOM backbone: plumbing only, not a usable detector[/]")
    console.print(
        f"{method.name}: training on {sum(len(d) for _, d in pairs)} images from {spec.dataset} "
        f"({', '.join(c for c, _ in pairs)}), {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}"
    )
    return method.fit(pairs, cfg, out, data_info=data_info, class_names=names)
