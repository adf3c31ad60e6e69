"""Datasets with anomalib's names (``MVTecAD``, ``Visa``) plus ``ImageList`` for unlabeled images.

Every dataset is a validated list of ``Sample`` rows (missing folders or mask files fail at construction, before
any compute) wrapped in one torch ``Dataset`` that squashes image and mask to the same square.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from zsad.data.files import MaskIndex, collect_images, list_entry, list_images, read_list_file  # noqa: F401 (re-exported)
from zsad.data.io import load_image, load_mask
from zsad.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, squash_image, squash_mask
from zsad.errors import ZsadInputError
from zsad.types import Preprocess


@dataclass(frozen=True)
class Sample:
    """One image row. ``label``: 1 anomalous, 0 normal, None unknown; ``mask_path`` None means no mask file."""

    image_path: Path
    label: int | None
    mask_path: Path | None
    category: str
    split: str = "test"
    defect_type: str = ""

    def __post_init__(self) -> None:
        # Accept str paths from callers (JSON, CSV) but store Path, so equality and path maths stay uniform.
        if not isinstance(self.image_path, Path):
            object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None and not isinstance(self.mask_path, Path):
            object.__setattr__(self, "mask_path", Path(self.mask_path))


class _Categories:
    """``Dataset.categories(root)`` lists what a root holds; ``dataset.categories`` lists what was loaded."""

    def __get__(self, obj: AnomalyDataset | None, owner: type[AnomalyDataset]) -> Any:
        if obj is None:
            return owner.list_categories
        return sorted({s.category for s in obj.samples})


class AnomalyDataset(Dataset):
    """Samples -> dicts ``image, gt_mask, has_mask, gt_label, image_path, mask_path, category, original_size``.

    ``masks_known``: the dataset annotates pixels, so a normal image without a mask file has a known, empty mask
    (it counts in pixel metrics). None: decide from the samples (True if any has a mask file).
    """

    categories = _Categories()

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int = 240,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        masks_known: bool | None = None,
        source: str = "samples",
    ) -> None:
        if not samples:
            raise ZsadInputError(f"{source}: no images found")
        if int(image_size) <= 0:
            raise ZsadInputError(f"image_size={image_size}: must be a positive number of pixels")
        for s in samples:
            if not s.image_path.is_file():
                raise ZsadInputError(f"{s.image_path}: image file not found")
            if s.mask_path is not None and not (s.mask_path.is_file() or s.mask_path.is_dir()):
                raise ZsadInputError(f"{s.mask_path}: mask file not found (for image {s.image_path.name})")
        self.samples: list[Sample] = list(samples)
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.masks_known = any(s.mask_path is not None for s in samples) if masks_known is None else masks_known
        self.source = source

    def with_preprocessing(self, pre: Preprocess) -> AnomalyDataset:
        """Set the model's input size and normalisation after listing (datasets are listed before models load)."""
        if int(pre.image_size) <= 0:
            raise ZsadInputError(f"image_size={pre.image_size}: must be a positive number of pixels")
        self.image_size = int(pre.image_size)
        self.mean = tuple(float(v) for v in pre.mean)
        self.std = tuple(float(v) for v in pre.std)
        return self

    @classmethod
    def list_categories(cls, root: str | Path) -> list[str]:
        """The categories under ``root``; only datasets with a category layout (MVTec AD, VisA) can list them."""
        raise TypeError(f"{cls.__name__} has no category layout to list; use MVTecAD or Visa")

    def __len__(self) -> int:
        return len(self.samples)

    def has_mask(self, index: int) -> bool:
        """Whether pixel labels of sample ``index`` are known (a mask file, or a normal image of a masked set)."""
        s = self.samples[index]
        return s.mask_path is not None or (self.masks_known and s.label == 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        img = load_image(s.image_path)
        size = self.image_size
        if s.mask_path is not None:
            mask = load_mask(s.mask_path)
            _check_mask_shape(s, img.size, mask.size)
            gt_mask = squash_mask(mask, size)
        else:
            gt_mask = torch.zeros(size, size, dtype=torch.float32)
        return {
            "image": squash_image(img, size, self.mean, self.std),
            "gt_mask": gt_mask,
            "has_mask": self.has_mask(index),
            "gt_label": -1 if s.label is None else int(s.label),
            "image_path": str(s.image_path),
            "mask_path": "" if s.mask_path is None else str(s.mask_path),
            "category": s.category,
            "original_size": (img.height, img.width),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, n={len(self)}, image_size={self.image_size})"


def _check_mask_shape(s: Sample, image_wh: tuple[int, int], mask_wh: tuple[int, int]) -> None:
    """A mask of another aspect ratio cannot be aligned by squashing: it is almost surely mis-paired."""
    if image_wh == mask_wh:
        return
    (iw, ih), (mw, mh) = image_wh, mask_wh
    if abs(iw * mh - ih * mw) > 0.02 * iw * mh:
        raise ZsadInputError(
            f"{s.mask_path}: mask is {mw}x{mh} but image {s.image_path.name} is {iw}x{ih} (different aspect ratio)"
        )


class MVTecAD(AnomalyDataset):
    """``<root>/<category>/{train/good, test/<defect>}``, masks ``ground_truth/<defect>/<stem>_mask.png``.

    ``good`` images are normal with a known, empty mask; every other defect folder is anomalous.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "test",
        image_size: int = 240,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        root = Path(root)
        available = self.list_categories(root)
        if category not in available:
            raise ZsadInputError(f"{root}: no MVTec AD category {category!r} (available: {', '.join(available)})")
        base = root / category
        split_dir = base / split
        if not split_dir.is_dir():
            splits = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != "ground_truth")
            raise ZsadInputError(f"{split_dir}: split folder not found (available: {', '.join(splits)})")
        samples: list[Sample] = []
        for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            defect = defect_dir.name
            masks = MaskIndex(base / "ground_truth" / defect)
            for img in list_images(defect_dir):
                if defect == "good":
                    samples.append(Sample(img, 0, None, category, split, defect))
                    continue
                mask = masks.find(img) or base / "ground_truth" / defect / f"{img.stem}_mask.png"
                samples.append(Sample(img, 1, mask, category, split, defect))
        super().__init__(samples, image_size, mean, std, masks_known=True, source=str(split_dir))

    @classmethod
    def list_categories(cls, root: str | Path) -> list[str]:
        """Sub-folders of ``root`` that have a ``train`` or ``test`` folder."""
        root = Path(root)
        if not root.is_dir():
            raise ZsadInputError(f"{root}: MVTec AD root folder not found")
        return sorted(p.name for p in root.iterdir() if (p / "test").is_dir() or (p / "train").is_dir())


_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


class Visa(AnomalyDataset):
    """VisA from ``<root>/split_csv/1cls.csv`` (object, split, label, image, mask; paths relative to root).

    VisA masks hold 0/1 values, which ``load_mask`` binarises like any other non-zero mask.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "test",
        image_size: int = 240,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        root = Path(root)
        csv_path = self._csv_path(root)
        rows = self._rows(csv_path)
        available = sorted({r["object"] for _, r in rows})
        if category not in available:
            raise ZsadInputError(f"{csv_path}: no VisA category {category!r} (available: {', '.join(available)})")
        samples: list[Sample] = []
        for line, r in rows:
            if r["object"] != category or r["split"] != split:
                continue
            kind = r["label"].lower()
            if kind not in ("normal", "anomaly"):
                raise ZsadInputError(f"{csv_path}: line {line}: label {r['label']!r} is neither normal nor anomaly")
            label = int(kind == "anomaly")
            mask = root / r["mask"] if r["mask"] else None
            samples.append(Sample(root / r["image"], label, mask, category, split, "anomaly" if label else "good"))
        source = f"{csv_path} (category {category}, split {split})"
        super().__init__(samples, image_size, mean, std, masks_known=True, source=source)

    @staticmethod
    def _csv_path(root: Path) -> Path:
        path = root / "split_csv" / "1cls.csv"
        if not path.is_file():
            raise ZsadInputError(f"{path}: VisA split file not found")
        return path

    @staticmethod
    def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            missing = [c for c in _VISA_COLUMNS if c not in header]
            if missing:
                raise ZsadInputError(f"{path}: missing columns {', '.join(missing)} (have: {', '.join(header)})")
            rows = []
            for line, values in enumerate(reader, start=2):
                if not any(v.strip() for v in values):
                    continue
                padded = [v.strip() for v in values] + [""] * (len(header) - len(values))
                rows.append((line, dict(zip(header, padded, strict=False))))
        return rows

    @classmethod
    def list_categories(cls, root: str | Path) -> list[str]:
        """The ``object`` values of the split file."""
        return sorted({r["object"] for _, r in cls._rows(cls._csv_path(Path(root)))})


class ImageList(AnomalyDataset):
    """Unlabeled images from files, folders or glob patterns (``zsad detect``), in argument order, deduplicated.

    ``image_glob`` selects files inside the folders (``'*.jpg'``); without it, a folder holding two image files of
    the same name and different extensions (``X.jpg`` and its mask ``X.png``) is refused: scoring the masks as
    images is never what was meant. Paths are stored absolute, so results do not depend on the working folder.
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        recursive: bool = False,
        category: str = "images",
        image_size: int = 240,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        image_glob: str | None = None,
    ) -> None:
        items = [paths] if isinstance(paths, str | Path) else list(paths)
        files = collect_images(items, recursive=recursive, image_glob=image_glob)
        samples = [Sample(f, None, None, category, "test", "") for f in files]
        super().__init__(samples, image_size, mean, std, masks_known=False, source=", ".join(map(str, items)))
