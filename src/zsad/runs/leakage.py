"""The leakage guard: results on images a checkpoint was trained on are refused, or flagged NOT zero-shot.

Two checks: the exact training images (listed beside the checkpoint by content hash and path), and, for the named
benchmarks (``zsad.data.benchmarks``), the category itself (another copy of the dataset has other paths but the same
objects). Content, not paths: a copy of the training folder is the training data. Only evaluation files whose byte
size equals some training file's are hashed, so a large evaluation pays a ``stat`` per image, not a read.
Checkpoints of older versions list paths only; they are compared by path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsad.errors import ZsadInputError
from zsad.methods.base import Method

ALL = "*"  # every category of a dataset (released checkpoints trained on a whole benchmark)


@dataclass
class TrainingImages:
    """The images a checkpoint was trained on: resolved paths, and sha256 digests grouped by byte size."""

    paths: set[str] = field(default_factory=set)
    by_size: dict[int, set[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.paths or self.by_size)

    def match(self, path: str | Path) -> str:
        """'path' (a listed training file), 'content' (the bytes of one, elsewhere) or '' (not seen)."""
        from zsad.fileio import sha256_file

        p = Path(path)
        if str(p.resolve()) in self.paths:
            return "path"
        try:
            size = os.stat(p).st_size
            hashes = self.by_size.get(size)
            return "content" if hashes and sha256_file(p) in hashes else ""
        except OSError:  # unreadable: scoring reports it
            return ""


def training_images(method: Method) -> TrainingImages:
    """The images a method's checkpoint was trained on (empty for training-free methods)."""
    manifest = getattr(method, "training_manifest", None)
    ckpt = getattr(method.config, "checkpoint", "")
    if not manifest or not ckpt:
        return TrainingImages()
    training = manifest.get("training", {})
    folder = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent
    seen = TrainingImages()
    listed = training.get("images_list")
    if listed and (folder / listed).is_file():
        seen.paths = {line.strip() for line in (folder / listed).read_text().splitlines() if line.strip()}
    hashed = str(training.get("images_hashes") or "")
    if hashed and (folder / hashed).is_file():
        for line in (folder / hashed).read_text(errors="surrogateescape").splitlines()[1:]:
            digest, size, *_ = [*line.split("\t", 2), "", ""]
            if len(digest) == 64 and size.isdigit():
                seen.by_size.setdefault(int(size), set()).add(digest)
    return seen


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


def check_unseen(method: Method, cat: str, ds: Any, seen: TrainingImages, allow: bool, dataset: str = "") -> int:
    """Refuse to report images used in training as zero-shot; returns how many were seen.

    Two checks: the exact training images (by content, or by path for older checkpoints), and, for the named
    benchmarks, the category itself (another copy of the dataset has other paths but the same objects).
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
    how = [seen.match(s.image_path) for s in ds.samples]
    n, copies = sum(bool(h) for h in how), how.count("content")
    if n and not allow:
        where = f" ({copies} of them copies: the same bytes at another path)" if copies else ""
        raise ZsadInputError(
            f"{cat}: {n} of {len(ds)} images were used to train this {method.name} checkpoint{where}, so results "
            "would not be zero-shot; evaluate on other data or pass --allow-seen (results are then flagged)"
        )
    return n
