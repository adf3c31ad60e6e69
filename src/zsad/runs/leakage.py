"""The leakage guard: results on images a checkpoint was trained on are refused, or flagged NOT zero-shot.

Two checks: the exact training images (resolved paths listed beside the checkpoint), and, for the named benchmarks
(``zsad.data.benchmarks``), the category itself (another copy of the dataset has other paths but the same objects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsad.errors import ZsadInputError
from zsad.methods.base import Method

ALL = "*"  # every category of a dataset (released checkpoints trained on a whole benchmark)


def training_images(method: Method) -> set[str]:
    """Resolved paths of the images a method's checkpoint was trained on (empty for training-free methods)."""
    manifest = getattr(method, "training_manifest", None)
    ckpt = getattr(method.config, "checkpoint", "")
    if not manifest or not ckpt:
        return set()
    listed = manifest.get("training", {}).get("images_list")
    folder = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent
    if not listed or not (folder / listed).is_file():
        return set()
    return {line.strip() for line in (folder / listed).read_text().splitlines() if line.strip()}


def _named() -> set[str]:
    from zsad.data.benchmarks import BENCHMARKS

    return set(BENCHMARKS)


def seen_categories(method: Method) -> set[tuple[str, str]]:
    """(dataset, category) pairs of the named benchmark datasets a checkpoint was trained on."""
    training = (getattr(method, "training_manifest", None) or {}).get("training", {})
    out = set()
    named = _named()
    if "categories" not in training and training.get("dataset") in named:
        return {(training["dataset"], ALL)}  # an imported release names its dataset only: every category is seen
    for cat in training.get("categories", []):
        parts = str(cat).split(":")
        if len(parts) == 3 and parts[0] in named:  # list training: dataset:root-name:category
            out.add((parts[0], parts[2]))
        elif training.get("dataset") in named:
            out.add((training["dataset"], str(cat)))
    return out


def check_unseen(method: Method, cat: str, ds: Any, seen: set[str], allow: bool, dataset: str = "") -> int:
    """Refuse to report images used in training as zero-shot; returns how many were seen.

    Two checks: the exact training images (paths), and, for MVTec AD / VisA, the category itself (another copy of
    the dataset has other paths but the same objects).
    """
    cats = seen_categories(method)
    category_seen = (dataset, cat) in cats or (dataset, ALL) in cats
    if category_seen and not allow:
        raise ZsadInputError(
            f"{cat}: this {method.name} checkpoint was trained on {dataset} {cat}, so results would not be zero-shot; "
            "evaluate on another dataset or pass --allow-seen (results are then flagged)"
        )
    if not seen:
        return len(ds) if category_seen else 0
    n = sum(str(Path(s.image_path).resolve()) in seen for s in ds.samples)
    if n and not allow:
        raise ZsadInputError(
            f"{cat}: {n} of {len(ds)} images were used to train this {method.name} checkpoint, so results would not "
            "be zero-shot; evaluate on other data or pass --allow-seen (results are then flagged)"
        )
    return n
