"""Training runs: the learnable parts of a method on annotated auxiliary data (or text, for RWDA), resumable.

``train`` reads as its steps: check the method and list the data (before any model loads), lock the checkpoint
folder, build the method, take the recipe, record the data, fit. ``prepare_method`` is the other half of a
self-training method (RWDA): its classifier is taken from the cache when one was trained before, and a classifier
trained during ``setup`` is written there, so methods themselves never write files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zsad.data.spec import DatasetSpec, open_datasets
from zsad.errors import ZsadInputError
from zsad.limits import BATCH_SIZE
from zsad.methods.base import Method
from zsad.methods.trainable import TrainableMethod
from zsad.outputs import RunLock, check_output_dir, mark_folder
from zsad.progress import Reporter, reporter, using
from zsad.runs.build import BackboneSpec, MethodSpec, as_options, as_path
from zsad.train import Training, fit
from zsad.train.checkpoint import list_training_images, training_record

Listed = list[tuple[str, Any, str]]  # (category key, dataset, prompt name)


def train(
    method: str | MethodSpec,
    data: Sequence[DatasetSpec],
    out: str | Path,
    *,
    options: dict[str, Any] | None = None,
    backbone: BackboneSpec | None = None,
    recipe: dict[str, Any] | None = None,
    class_name: str | None = None,
    reporter: Reporter | None = None,
) -> Path:
    """Train ``method`` on ``data`` (none for text-only methods) into the checkpoint folder ``out``.

    ``recipe`` overrides the method's published training recipe (``epochs``, ``batch_size``, ``lr``, ``seed``).
    An interrupted run resumes from its last finished epoch when given the same ``out`` and settings.
    """
    with using(reporter):
        out = as_path(out, "out")
        spec = MethodSpec.of(method, backbone=BackboneSpec.of(backbone))
        spec.options = {**as_options(options), **spec.options, "checkpoint": ""}
        _check_recipe(recipe or {})
        batch = (recipe or {}).get("batch_size")
        spec.validate(for_training=True, batch_size=int(batch) if batch is not None else 1)
        listed = list_training_data(spec.cls, list(data))
        check_output_dir(out, kind="checkpoint")
        _check_resumable(out, spec.cls)
        with RunLock(out):
            mark_folder(out, "checkpoint", "train")
            built = spec.build()
            assert isinstance(built, TrainableMethod)  # list_training_data refused the others
            return fit_method(built, list(data), listed, out, recipe or {}, class_name)


def _check_resumable(out: Path, cls: type[Method]) -> None:
    """A checkpoint folder is resumed only by a training of the same method.

    A finished checkpoint without its training state (an imported release, a copy) is never trained over; text-only
    training (RWDA) keeps no state and is cheap and seeded, so it is simply run again.
    """
    import json

    method = cls.name
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return
    try:
        made_for = json.loads(manifest.read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        made_for = None
    if made_for != method:
        raise ZsadInputError(
            f"--out {out}: holds a checkpoint for method {made_for!r}, not {method!r}; use another --out"
        )
    from zsad.train.loop import STATE_FILE

    if cls.needs_training_data and not (out / STATE_FILE).is_file():
        raise ZsadInputError(
            f"--out {out}: holds a finished {method} checkpoint without its training state (imported or copied), "
            "which training would overwrite; use another --out"
        )


def _check_recipe(recipe: dict[str, Any]) -> None:
    unknown = sorted(set(recipe) - {"epochs", "batch_size", "lr", "seed"})
    if unknown:
        raise ZsadInputError(
            f"training recipe: unknown field(s) {', '.join(unknown)}; use epochs, batch_size, lr, seed"
        )
    if "epochs" in recipe and int(recipe["epochs"]) < 1:
        raise ZsadInputError(f"--epochs {recipe['epochs']}: must be >= 1")
    if "batch_size" in recipe:
        BATCH_SIZE.check(recipe["batch_size"])
    lr = recipe.get("lr")
    if lr is not None and not (float(lr) > 0 and float(lr) != float("inf")):
        raise ZsadInputError(f"--lr {lr}: must be a finite number > 0")


def list_training_data(cls: type[Method], specs: list[DatasetSpec]) -> Listed:
    """(category key, dataset, prompt name) of every training category, checked before any model is built.

    Categories of several datasets are kept apart by a ``dataset:root-name:`` prefix.
    """
    if not cls.trainable:
        raise ZsadInputError(f"--method {cls.name}: has nothing to train (trainable methods have `zsad train`)")
    if cls.needs_training_data and not specs:
        raise ZsadInputError(f"--method {cls.name}: trains on annotated images; pass --dataset and --root")
    if not cls.needs_training_data and specs:
        raise ZsadInputError(f"--method {cls.name}: trains on text only; drop --dataset/--root")
    listed = []
    for spec in specs:
        for cat, ds, _ in open_datasets(spec):
            key = cat if len(specs) == 1 else f"{spec.dataset}:{spec.root.name}:{cat}"
            listed.append((key, ds, spec.class_name or cat.replace("_", " ")))
    return listed


def data_record(specs: Sequence[DatasetSpec]) -> dict[str, Any]:
    """The manifest's record of the training data: datasets, roots, categories and folder options."""
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
    return {"dataset": "+".join(s.dataset for s in specs) or "none (text only)", "sources": sources}


def fit_method(
    method: TrainableMethod,
    specs: list[DatasetSpec],
    listed: Listed,
    out: Path,
    recipe: dict[str, Any],
    class_name: str | None,
) -> Path:
    """Recipe, data record, the method's ``fit``, and its ``Training`` run into ``out`` (the caller holds its lock)."""
    say = reporter()
    pre = method.backbone.preprocess
    pairs = [(key, ds.with_preprocessing(pre)) for key, ds, _ in listed]
    names = {key: name for key, _, name in listed}
    cfg = dataclasses.replace(method.default_train_config(), **recipe)
    info = data_record(specs)
    if method.backbone.random_init:
        say.message("training on a SEEDED RANDOM backbone: plumbing only, not a usable detector", "alert")
    if not method.needs_training_data:
        say.message(f"{method.name}: training on text only, {cfg.epochs} epochs, batch {cfg.batch_size}")
        return run_training(method, method.fit([], cfg, class_names={"*": class_name} if class_name else {}), out, info)
    say.message(
        f"{method.name}: training on {sum(len(d) for _, d in pairs)} images from {info['dataset']} "
        f"({len(pairs)} categories), {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}"
    )
    return run_training(method, method.fit(pairs, cfg, class_names=names), out, info)


def run_training(method: TrainableMethod, training: Training, out: Path, data_info: dict[str, Any]) -> Path:
    """Run a method's ``Training`` with the bookkeeping methods never do, all in the checkpoint folder ``out``.

    It lists the training images, holds the loop's resume state, and gets the parts with a manifest recording
    ``data_info``, the images and the loss history (or the method's own record).
    """
    try:
        if training.images:
            list_training_images(out, training.images)
            if training.summary:
                reporter().message(f"{method.name}: {len(training.images)} training images, {training.summary}")
        state = out if training.resumable else None
        result = fit(training.module, training.data, training.step, training.cfg, state_dir=state,
                     description=training.description)  # fmt: skip
        training.module.eval()
        if training.record is not None:
            record = training.record(result)
        else:
            record = training_record(data_info, training.images, training.cfg, result.history)
        return method.save(out, record)
    finally:
        training.close()


# ---------------------------------------------------------------------------------------------- self-training
def cache_root(method: Any) -> Path:
    """Where self-trained parts are cached: the method's ``cache_dir``, else ``$ZSAD_CACHE`` or ~/.cache/zsad."""
    if getattr(method.config, "cache_dir", ""):
        return Path(method.config.cache_dir)
    base = os.environ.get("ZSAD_CACHE") or Path.home() / ".cache" / "zsad"
    return Path(base) / method.name


def prepare_method(method: Method, class_name: str | None, references: torch.Tensor | None = None) -> None:
    """``method.setup`` for a run: a self-training method first looks in the cache and afterwards fills it.

    The cache key covers the backbone weights and every setting that changes the trained parts, so a cached
    classifier is exactly the one training would give.
    """
    if not isinstance(method, TrainableMethod) or not method.self_training or method.config_checkpoint:
        method.setup(class_name, reference_images=references)
        return
    want = method.training_object(class_name if method.uses_class_name(method.config) else None)
    folder = cache_root(method) / method.cache_key(want)
    if method.trained_for != (want,) and (folder / "manifest.json").is_file():
        method.load(folder)
    method.setup(class_name, reference_images=references)
    if method.new_training is not None:
        with RunLock(folder, flag="cache folder"):
            method.save(folder, method.new_training)
        method.new_training = None
        reporter().message(f"{method.name}: trained parts cached in {folder}")
