"""``zsad train``: fit a method's learnable parts on annotated auxiliary data (the test split, as the field does)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console

from zsad.cli.evaluate import EvalSpec, _datasets
from zsad.errors import ZsadInputError
from zsad.methods.base import Method


def prepare_training(cls: type[Method], specs: list[EvalSpec]) -> list[tuple[str, Any, str]]:
    """(category key, dataset, prompt name) of every training category, checked before any model is built.

    Categories of several datasets are kept apart by a dataset prefix.
    """
    if not cls.trainable:
        raise ZsadInputError(f"--method {cls.name}: has nothing to train (trainable methods have `zsad train`)")
    if cls.needs_training_data and not specs:
        raise ZsadInputError(f"--method {cls.name}: trains on annotated images; pass --dataset and --root")
    if not cls.needs_training_data and specs:
        raise ZsadInputError(f"--method {cls.name}: trains on text only; drop --dataset/--root")
    listed = []
    for spec in specs:
        for cat, ds, _ in _datasets(spec):
            key = cat if len(specs) == 1 else f"{spec.dataset}:{spec.root.name}:{cat}"
            listed.append((key, ds, spec.class_name or cat.replace("_", " ")))
    return listed


def run_train(
    method: Method,
    specs: list[EvalSpec],
    out: Path,
    overrides: dict[str, Any],
    *,
    console: Console,
    class_name: str | None = None,
    listed: list[tuple[str, Any, str]] | None = None,
) -> Path:
    """Train on one dataset or a list (the caller holds ``out``'s lock)."""
    listed = listed if listed is not None else prepare_training(type(method), specs)
    bb = method.backbone
    pairs = [(key, ds.with_preprocessing(method.image_size, bb.mean, bb.std)) for key, ds, _ in listed]
    names = {key: name for key, _, name in listed}
    cfg = dataclasses.replace(method.default_train_config(), **overrides)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ZsadInputError("--epochs and --batch-size must be >= 1")
    folder_keys = ("normal_dir", "abnormal_dir", "mask_dir", "image_dir", "labels_csv", "image_glob")
    sources = [
        {
            "dataset": spec.dataset,
            "root": str(spec.root.resolve()),
            "categories": spec.categories,
            "folder_options": {k: v for k, v in vars(spec).items() if k in folder_keys and v}
            if spec.dataset == "folder"
            else {},
        }
        for spec in specs
    ]
    data_info = {"dataset": "+".join(s.dataset for s in specs) or "none (text only)", "sources": sources}
    if bb.random_init:
        console.print("[bold red]training on a SEEDED RANDOM backbone: plumbing only, not a usable detector[/]")
    if not method.needs_training_data:
        console.print(f"{method.name}: training on text only, {cfg.epochs} epochs, batch {cfg.batch_size}")
        return method.fit([], cfg, out, data_info=data_info, class_names={"*": class_name} if class_name else {})
    console.print(
        f"{method.name}: training on {sum(len(d) for _, d in pairs)} images from {data_info['dataset']} "
        f"({len(pairs)} categories), {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}"
    )
    return method.fit(pairs, cfg, out, data_info=data_info, class_names=names)
