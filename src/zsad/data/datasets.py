"""Datasets with anomalib's names (``MVTecAD``, ``Visa``, ``Folder``) plus ``ImageList`` for unlabeled images.

Each is a list of ``Sample`` rows validated up front (missing folders or mask files fail before any compute)
and a torch ``Dataset`` that squashes image and mask to the same square.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from zsad.data.io import IMAGE_EXTENSIONS, is_image_file, load_image, load_mask
from zsad.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, squash_image, squash_mask
from zsad.errors import ZsadInputError


@dataclass(frozen=True)
class Sample:
    image_path: Path
    label: int | None  # 1 anomalous, 0 normal, None unknown
    mask_path: Path | None
    category: str
    split: str = "test"
    defect_type: str = ""


class AnomalyDataset(Dataset):
    """Samples -> dicts of ``image, gt_mask, has_mask, gt_label, image_path, mask_path, category, original_size``.

    ``masks_known``: the dataset annotates pixels, so a normal image without a mask file has an empty mask.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int = 240,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        masks_known: bool = False,
        source: str = "dataset",
    ) -> None:
        if not samples:
            raise ZsadInputError(f"{source}: no images found")
        for s in samples:
            if s.mask_path is not None and not s.mask_path.is_file():
                raise ZsadInputError(f"{s.mask_path}: mask file not found (for image {s.image_path.name})")
        self.samples = list(samples)
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.masks_known = masks_known

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def categories(self) -> list[str]:
        return sorted({s.category for s in self.samples})

    def mask_known(self, s: Sample) -> bool:
        return s.mask_path is not None or (self.masks_known and s.label == 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        img = load_image(s.image_path)
        size = self.image_size
        mask = squash_mask(load_mask(s.mask_path), size) if s.mask_path is not None else torch.zeros(size, size)
        return {
            "image": squash_image(img, size, self.mean, self.std),
            "gt_mask": mask,
            "has_mask": self.mask_known(s),
            "gt_label": -1 if s.label is None else int(s.label),
            "image_path": str(s.image_path),
            "mask_path": str(s.mask_path) if s.mask_path is not None else "",
            "category": s.category,
            "original_size": (img.height, img.width),
        }


def _dir(root: Path, sub: str | Path | None, what: str) -> Path | None:
    if sub is None:
        return None
    p = Path(sub) if Path(sub).is_absolute() else root / sub
    if not p.is_dir():
        raise ZsadInputError(f"{p}: {what} folder not found")
    return p


def _images(folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    it = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(p for p in it if p.is_file() and is_image_file(p))


class MVTecAD(AnomalyDataset):
    """``<root>/<category>/{train/good,test/<defect>}``, masks ``ground_truth/<defect>/<stem>_mask.png``."""

    def __init__(self, root: str | Path, category: str, split: str = "test", **kw: Any) -> None:
        root = Path(root)
        base = root / category
        if not (base / split).is_dir():
            known = ", ".join(self.list_categories(root)) or "none"
            raise ZsadInputError(f"{base / split}: MVTec category/split not found (categories in {root}: {known})")
        samples = []
        for defect_dir in sorted(p for p in (base / split).iterdir() if p.is_dir()):
            defect = defect_dir.name
            for img in _images(defect_dir):
                anomalous = defect != "good"
                mask = base / "ground_truth" / defect / f"{img.stem}_mask.png" if anomalous else None
                samples.append(Sample(img, int(anomalous), mask, category, split, defect))
        super().__init__(samples, masks_known=True, source=str(base / split), **kw)

    @staticmethod
    def list_categories(root: str | Path) -> list[str]:
        root = Path(root)
        if not root.is_dir():
            raise ZsadInputError(f"{root}: dataset root not found")
        return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


class Visa(AnomalyDataset):
    """VisA from ``<root>/split_csv/1cls.csv`` (object, split, label, image, mask; paths relative to root)."""

    def __init__(self, root: str | Path, category: str, split: str = "test", **kw: Any) -> None:
        root = Path(root)
        rows = self._rows(root)
        known = sorted({r["object"] for r in rows})
        if category not in known:
            raise ZsadInputError(f"{category!r}: not a VisA category in {root} (known: {', '.join(known)})")
        samples = []
        for r in rows:
            if r["object"] != category or r["split"] != split:
                continue
            anomalous = r["label"].strip().lower() == "anomaly"
            mask = root / r["mask"] if anomalous and r.get("mask", "").strip() else None
            samples.append(
                Sample(root / r["image"], int(anomalous), mask, category, split, "anomaly" if anomalous else "good")
            )
        super().__init__(samples, masks_known=True, source=f"{root} ({category}, {split})", **kw)

    @staticmethod
    def _rows(root: Path) -> list[dict[str, str]]:
        path = root / "split_csv" / "1cls.csv"
        if not path.is_file():
            raise ZsadInputError(f"{path}: VisA split file not found")
        with path.open(newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            need = {"object", "split", "label", "image", "mask"}
            if not need <= set(reader.fieldnames or []):
                raise ZsadInputError(f"{path}: expected columns {', '.join(sorted(need))}")
            return list(reader)

    @staticmethod
    def list_categories(root: str | Path) -> list[str]:
        return sorted({r["object"] for r in Visa._rows(Path(root))})


def find_mask(image: Path, mask_dir: Path) -> Path | None:
    """The mask sharing the image's stem (``X.*`` or ``X_mask.*``), never the image itself."""
    for stem in (image.stem, f"{image.stem}_mask"):
        for ext in IMAGE_EXTENSIONS:
            for cand in (mask_dir / f"{stem}{ext}", mask_dir / f"{stem}{ext.upper()}"):
                if cand.is_file() and cand.resolve() != image.resolve():
                    return cand
    return None


def _read_labels(path: Path, id_column: str | None, label_column: str | None) -> dict[str, int]:
    if not path.is_file():
        raise ZsadInputError(f"{path}: labels file not found")
    with path.open(newline="") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = [h.strip() for h in next(reader, [])]
        if len(header) < 2:
            raise ZsadInputError(f"{path}: expected a header with an id and a label column")
        try:
            ic = header.index(id_column) if id_column else 0
            lc = header.index(label_column) if label_column else 1
        except ValueError:
            raise ZsadInputError(f"{path}: column not found (have: {', '.join(header)})") from None
        out = {}
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                out[row[ic].strip()] = int(float(row[lc]))
            except (ValueError, IndexError):
                raise ZsadInputError(f"{path}: line {n}: cannot read id/label from {row!r}") from None
    return out


def _label_for(stem: str, labels: dict[str, int]) -> int | None:
    if stem in labels:
        return labels[stem]
    if stem.isdigit():
        for k, v in labels.items():
            if k.isdigit() and int(k) == int(stem):
                return v
    return None


class Folder(AnomalyDataset):
    """Your own folders: ``normal_dir``/``abnormal_dir`` (+ ``mask_dir``), or ``image_dir`` + ``labels_csv``.

    ``mask_dir`` may be the image folder itself (Magnetic Tile keeps ``X.png`` beside ``X.jpg``): give
    ``image_glob="*.jpg"`` so the masks are not taken for images.
    """

    def __init__(
        self,
        root: str | Path,
        normal_dir: str | Path | None = None,
        abnormal_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
        labels_csv: str | Path | None = None,
        id_column: str | None = None,
        label_column: str | None = None,
        image_glob: str = "*",
        category: str = "folder",
        recursive: bool = False,
        **kw: Any,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ZsadInputError(f"{root}: root folder not found")
        nd = _dir(root, normal_dir, "normal")
        ad = _dir(root, abnormal_dir, "abnormal")
        md = _dir(root, mask_dir, "mask")
        idir = _dir(root, image_dir, "image")
        if not (nd or ad or idir):
            raise ZsadInputError(f"{root}: give --normal-dir/--abnormal-dir or --image-dir")
        samples: list[Sample] = []
        labels = (
            _read_labels(root / labels_csv if labels_csv else Path(), id_column, label_column) if labels_csv else None
        )
        for folder, label, defect in ((nd, 0, "good"), (ad, 1, "anomaly"), (idir, None, "")):
            if folder is None:
                continue
            for img in _images(folder, image_glob, recursive):
                if md is not None and md == folder and img.stem.endswith("_mask"):
                    continue
                lab = label if folder is not idir or labels is None else _label_for(img.stem, labels)
                mask = find_mask(img, md) if md is not None else None
                if md is not None and lab == 1 and mask is None:
                    raise ZsadInputError(f"{img}: no mask with this stem in {md}")
                samples.append(Sample(img, lab, mask, category, "test", defect or ("" if lab is None else str(lab))))
        super().__init__(samples, masks_known=md is not None, source=str(root), **kw)


class ImageList(AnomalyDataset):
    """Unlabeled files, folders or glob patterns (``zsad detect``)."""

    def __init__(
        self, paths: Sequence[str | Path], recursive: bool = False, category: str = "images", **kw: Any
    ) -> None:
        files: list[Path] = []
        for raw in paths:
            p = Path(raw)
            if p.is_dir():
                found = _images(p, "*", recursive)
                if not found:
                    raise ZsadInputError(f"{p}: no images in this folder")
                files += found
            elif p.is_file():
                files.append(p)
            else:
                found = sorted(Path(m) for m in glob.glob(str(raw), recursive=True) if is_image_file(Path(m)))
                if not found:
                    raise ZsadInputError(f"{raw}: no such file or folder, and no images match it")
                files += found
        unique = list(dict.fromkeys(files))
        super().__init__(
            [Sample(f, None, None, category) for f in unique],
            masks_known=False,
            source=", ".join(map(str, paths)),
            **kw,
        )


def load_meta_json(path: str | Path, root: str | Path | None = None, split: str = "test") -> dict[str, list[Sample]]:
    """Import the CLIP-AD/AdaCLIP/AnomalyCLIP ``meta.json``: ``{split: {cls: [{img_path, mask_path, ...}]}}``."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZsadInputError(f"{path}: cannot read meta.json: {str(e).splitlines()[0]}") from None
    if split not in meta:
        raise ZsadInputError(f"{path}: no {split!r} split (have: {', '.join(meta)})")
    base = Path(root) if root is not None else path.parent
    out: dict[str, list[Sample]] = {}
    for cls, items in meta[split].items():
        out[cls] = [
            Sample(
                base / it["img_path"],
                int(it.get("anomaly", 0)),
                base / it["mask_path"] if it.get("mask_path") else None,
                it.get("cls_name", cls),
                split,
                it.get("specie_name", ""),
            )
            for it in items
        ]
    return out


def save_meta_json(samples_by_split: dict[str, list[Sample]], path: str | Path, root: str | Path) -> None:
    """Export samples as ``meta.json`` with paths relative to ``root``."""
    root = Path(root)

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return str(p)

    meta: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split, samples in samples_by_split.items():
        for s in samples:
            meta.setdefault(split, {}).setdefault(s.category, []).append(
                {
                    "img_path": rel(s.image_path),
                    "mask_path": rel(s.mask_path),
                    "cls_name": s.category,
                    "specie_name": s.defect_type,
                    "anomaly": int(s.label or 0),
                }
            )
    Path(path).write_text(json.dumps(meta, indent=2))
