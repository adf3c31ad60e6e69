"""A labelled dataset described by value (``DatasetSpec``), opened into per-category datasets before any model loads.

``eval`` and ``train`` take the same description, so a folder layout or a benchmark root is spelled one way
everywhere, and a run key can record it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad.errors import ZsadInputError


@dataclass
class DatasetSpec:
    """Which images, labels and masks: a benchmark by name (``zsad.data.benchmarks``) or a ``folder`` layout.

    ``root`` and ``reference_dir`` are made absolute, so rows, run keys and resumes do not depend on the working
    folder. The folder fields (``normal_dir`` ... ``image_glob``) apply to ``dataset="folder"`` only.
    """

    dataset: str
    root: Path
    categories: list[str] = field(default_factory=list)
    class_name: str | None = None
    normal_dir: str | None = None
    abnormal_dir: str | None = None
    mask_dir: str | None = None
    image_dir: str | None = None
    labels_csv: str | None = None
    image_glob: str = "*"
    k_shot: int = 0
    reference_dir: Path | None = None
    seed: int = 0
    allow_seen: bool = False

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(self.root))
        if self.reference_dir is not None:
            self.reference_dir = Path(os.path.abspath(self.reference_dir))
        if self.k_shot < 0:
            raise ZsadInputError(f"--k-shot {self.k_shot}: must be >= 0")

    def key(self) -> dict[str, Any]:
        """What decides the images and labels (a run key part; categories may be added to a run, not changed)."""
        skip = ("categories", "allow_seen")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items() if k not in skip}


def default_root(dataset: str) -> Path:
    """The root of a dataset given without ``--root``: only ELPV has one (its pip package ships the data)."""
    if dataset.lower() == "elpv":
        from zsad.data.benchmarks import elpv_root

        found = elpv_root()
        if found is None:
            raise ZsadInputError("--dataset elpv: pass --root, or pip install elpv-dataset (it ships the images)")
        return found
    raise ZsadInputError(f"--dataset {dataset}: --root is required")


def open_datasets(spec: DatasetSpec, kw: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """(category, test dataset, normal-reference dataset or None) per requested category.

    Listing checks every folder and file, so it runs before any model is built; ``kw`` (image size, mean, std) may
    come later through ``with_preprocessing``.
    """
    from zsad import data

    kw = kw or {}
    refs: Any
    if not spec.root.is_dir():
        raise ZsadInputError(f"{spec.root}: dataset root not found")
    name = spec.dataset.lower()
    if name == "folder":
        cat = spec.categories[0] if spec.categories else spec.root.name
        ds = data.Folder(
            spec.root,
            normal_dir=spec.normal_dir,
            abnormal_dir=spec.abnormal_dir,
            mask_dir=spec.mask_dir,
            image_dir=spec.image_dir,
            labels_csv=spec.labels_csv,
            image_glob=spec.image_glob,
            category=cat,
            **kw,
        )
        refs = data.ImageList([str(spec.reference_dir)], **kw) if spec.reference_dir else None
        return [(cat, ds, refs)]
    from zsad.data.benchmarks import BenchmarkDataset, benchmark_info, read_benchmark
    from zsad.progress import reporter

    info = benchmark_info(name)
    layout = read_benchmark(name, spec.root, spec.categories)
    for note in layout.notes:
        reporter().message(note, "note")
    listed: list[tuple[str, Any, Any]] = []
    for cat, rows in layout.test.items():
        source = f"{spec.root} ({info.title}, {layout.name}, category {cat})"
        ref_rows = layout.references.get(cat) or []
        refs = BenchmarkDataset(ref_rows, info, f"{source} references", **kw) if spec.k_shot and ref_rows else None
        if spec.k_shot and refs is None:
            raise ZsadInputError(
                f"{spec.root}: {info.title} category {cat!r} has no normal training images for --k-shot"
            )
        listed.append((cat, BenchmarkDataset(rows, info, source, **kw), refs))
    return listed


def reference_indices(refs: Any, k: int, seed: int) -> list[int]:
    """Which samples of a reference dataset are the references: ``k`` normal ones (0: all), in a seeded order.

    One rule for the squashed batch (``reference_images``) and the full-size images a tiled run cuts into tiles.
    """
    if refs is None:
        return []
    normal = [i for i, s in enumerate(refs.samples) if s.label in (0, None)]
    order = torch.randperm(len(normal), generator=torch.Generator().manual_seed(seed)).tolist()
    return [normal[i] for i in order[: (k or len(normal))]]


def reference_images(refs: Any, k: int, seed: int) -> torch.Tensor | None:
    """``k`` normal images of a reference dataset (0: all), in a seeded random order, as one batch."""
    chosen = reference_indices(refs, k, seed)
    return torch.stack([refs[i]["image"] for i in chosen]) if chosen else None


def gt_masks(ds: Any, idx: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """GT masks at model resolution and whether each is known, re-read from disk (masks are small)."""
    from zsad.data import load_mask, squash_mask

    masks = np.zeros((len(idx), size, size), dtype=np.uint8)
    known = np.zeros(len(idx), dtype=bool)
    has_any = any(s.mask_path is not None for s in ds.samples)
    for j, i in enumerate(idx):
        s = ds.samples[i]
        if s.mask_path is not None:
            masks[j] = squash_mask(load_mask(s.mask_path), size).numpy() > 0.5
            known[j] = True
        elif s.label == 0 and has_any:
            known[j] = True  # a normal image of a dataset with masks: empty mask
    return masks, known


def native_gt_masks(ds: Any, idx: list[int], shapes: list[tuple[int, int]]) -> tuple[list[np.ndarray], np.ndarray]:
    """GT masks at each image's own size (``shapes``: its map's (H, W)) and whether each is known.

    For pixel metrics at native resolution: no squash. A mask stored at another size than its image is resized to
    it as ``squash_mask`` does (bilinear, kept from half on), and refused in one line if its aspect ratio differs.
    An empty or unknown mask is a read-only view of one ``False``, so normal images cost no memory.
    """
    from PIL import Image

    from zsad.data import load_mask
    from zsad.data.datasets import _check_mask_shape

    masks: list[np.ndarray] = []
    known = np.zeros(len(idx), dtype=bool)
    has_any = any(s.mask_path is not None for s in ds.samples)
    for j, (i, (h, w)) in enumerate(zip(idx, shapes, strict=True)):
        s = ds.samples[i]
        if s.mask_path is None:
            masks.append(np.broadcast_to(np.False_, (h, w)))
            known[j] = s.label == 0 and has_any  # a normal image of a dataset with masks: empty mask
            continue
        gray = load_mask(s.mask_path)
        if gray.size != (w, h):
            _check_mask_shape(s, (w, h), gray.size)  # as reading the image refuses it: almost surely mis-paired
            gray = gray.resize((w, h), Image.Resampling.BILINEAR)
        masks.append(np.asarray(gray) >= 128)
        known[j] = True
    return masks, known
