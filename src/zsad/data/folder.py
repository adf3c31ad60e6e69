"""``Folder``: your own images in folders, with masks by file stem or image-level labels from a CSV.

Real datasets are messier than MVTec: Magnetic Tile keeps each mask ``X.png`` beside its image ``X.jpg``,
HeadCT has only a ``labels.csv`` whose header is ``id, hemorrhage`` and whose ids are ints for ``000.png``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from zsad.data.datasets import AnomalyDataset, Sample
from zsad.data.files import MaskIndex, list_images, resolve_dir
from zsad.data.io import is_image_file
from zsad.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from zsad.errors import ZsadInputError

_NORMAL_WORDS = {"0", "normal", "good", "ok", "false", "no"}
_ANOMALOUS_WORDS = {"1", "anomaly", "anomalous", "abnormal", "bad", "defect", "defective", "true", "yes"}


class ImageLabels:
    """Image-level labels from a CSV, matched to files by name, by stem, or by integer value of the stem.

    Matching by integer lets the id ``7`` find ``007.png``, as HeadCT needs.
    """

    def __init__(self, path: Path, id_column: str | None = None, label_column: str | None = None) -> None:
        self.path = path
        self._by_key: dict[str, int] = {}
        self._by_int: dict[int, int] = {}
        if not path.is_file():
            raise ZsadInputError(f"{path}: labels file not found")
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, skipinitialspace=True)
            header = [h.strip() for h in next(reader, [])]
            if len(header) < 2:
                raise ZsadInputError(f"{path}: need a header with an id and a label column, got {header!r}")
            id_at = self._column(header, id_column, 0)
            label_at = self._column(header, label_column, 1)
            for line, row in enumerate(reader, start=2):
                if not any(v.strip() for v in row):
                    continue
                if max(id_at, label_at) >= len(row):
                    raise ZsadInputError(f"{path}: line {line}: too few columns in {row!r}")
                self._add(row[id_at].strip(), self._parse(row[label_at], line), line)
        if not self._by_key:
            raise ZsadInputError(f"{path}: no label rows")

    def _column(self, header: list[str], name: str | None, default: int) -> int:
        if name is None:
            return default
        wanted = name.strip().lower()
        for i, h in enumerate(header):
            if h.lower() == wanted:
                return i
        raise ZsadInputError(f"{self.path}: no column {name!r} (have: {', '.join(header)})")

    def _parse(self, raw: str, line: int) -> int:
        value = raw.strip().lower()
        if value.replace(".", "", 1).isdigit() and float(value) in (0.0, 1.0):
            return int(float(value))
        if value in _NORMAL_WORDS:
            return 0
        if value in _ANOMALOUS_WORDS:
            return 1
        raise ZsadInputError(f"{self.path}: line {line}: label {raw.strip()!r} is not 0/1 or normal/anomaly")

    def _add(self, key: str, label: int, line: int) -> None:
        keys = {key.lower()}
        if is_image_file(key):
            keys.add(Path(key).stem.lower())
        for k in keys:
            if self._by_key.setdefault(k, label) != label:
                raise ZsadInputError(f"{self.path}: line {line}: id {key!r} has conflicting labels")
        stem = Path(key).stem if is_image_file(key) else key
        if stem.isdigit() and self._by_int.setdefault(int(stem), label) != label:
            raise ZsadInputError(f"{self.path}: line {line}: id {key!r} has conflicting labels")

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, image: Path) -> int | None:
        """Label of ``image``: by file name, then stem, then the stem's integer value; None if absent."""
        for key in (image.name.lower(), image.stem.lower()):
            if key in self._by_key:
                return self._by_key[key]
        if image.stem.isdigit():
            return self._by_int.get(int(image.stem))
        return None


class Folder(AnomalyDataset):
    """Images from folders below ``root`` (or absolute): ``normal_dir``/``abnormal_dir``, or one ``image_dir``.

    * ``mask_dir``: masks share the image's stem (``X.png``, ``X_mask.png``, any image extension). It may be the
      image folder itself, as in Magnetic Tile; then give ``image_glob="*.jpg"`` so masks are not read as images.
      An abnormal image without a mask is an error; a normal image's mask is known (empty if no file).
    * ``normal_mask_known``: count normal images as pixel-annotated (empty masks) even without ``mask_dir``.
    * ``image_dir`` + ``labels_csv`` (relative to root or absolute): image-level labels; ``id_column`` and
      ``label_column`` default to the first and second column. ``image_dir`` alone: unlabeled images.
    """

    def __init__(
        self,
        root: str | Path,
        normal_dir: str | Path | None = None,
        abnormal_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        image_glob: str = "*",
        category: str = "folder",
        normal_mask_known: bool = False,
        image_dir: str | Path | None = None,
        labels_csv: str | Path | None = None,
        id_column: str | None = None,
        label_column: str | None = None,
        recursive: bool = False,
        split: str = "test",
        image_size: int = 240,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ZsadInputError(f"{root}: dataset root folder not found")
        normal = resolve_dir(root, normal_dir, "normal images")
        abnormal = resolve_dir(root, abnormal_dir, "abnormal images")
        masks_dir = resolve_dir(root, mask_dir, "mask")
        plain = resolve_dir(root, image_dir, "images")
        if plain is not None and (normal is not None or abnormal is not None):
            raise ZsadInputError(f"{root}: give image_dir, or normal_dir/abnormal_dir, not both")
        if plain is None and normal is None and abnormal is None:
            raise ZsadInputError(f"{root}: give normal_dir and/or abnormal_dir, or image_dir")
        if labels_csv is not None and plain is None:
            raise ZsadInputError(f"{labels_csv}: labels_csv needs image_dir (normal_dir/abnormal_dir carry labels)")
        if normal is not None and abnormal is not None and normal.resolve() == abnormal.resolve():
            raise ZsadInputError(f"{normal}: normal_dir and abnormal_dir are the same folder")
        labels = None
        if labels_csv is not None:
            csv_path = Path(labels_csv) if Path(labels_csv).is_absolute() else root / labels_csv
            labels = ImageLabels(csv_path, id_column, label_column)

        masks = MaskIndex(masks_dir) if masks_dir is not None else None
        groups: list[tuple[Path, int | None]] = []
        if plain is not None:
            groups.append((plain, None))
        if normal is not None:
            groups.append((normal, 0))
        if abnormal is not None:
            groups.append((abnormal, 1))

        samples: list[Sample] = []
        for folder, folder_label in groups:
            images = list_images(folder, image_glob, recursive)
            if masks_dir is not None and masks_dir.resolve() == folder.resolve():
                images = _drop_masks_beside_images(folder, images)
            for img in images:
                label = folder_label
                if labels is not None:
                    label = labels.get(img)
                    if label is None:
                        raise ZsadInputError(f"{img}: no label for this image in {labels.path}")
                rel_parent = img.parent.relative_to(folder)
                mask = masks.find(img, rel_parent) if masks is not None else None
                if masks_dir is not None and label == 1 and mask is None:
                    raise ZsadInputError(f"{img}: anomalous image has no mask with its stem in {masks_dir}")
                samples.append(Sample(img, label, mask, category, split, _defect_type(label, rel_parent)))

        folders = ", ".join(str(f) for f, _ in groups)
        super().__init__(
            samples,
            image_size,
            mean,
            std,
            masks_known=masks_dir is not None or normal_mask_known,
            source=f"{folders} (image_glob {image_glob!r})",
        )


def _drop_masks_beside_images(folder: Path, images: list[Path]) -> list[Path]:
    """With masks in the image folder, ``X_mask.*`` files are masks, and two files sharing a stem are ambiguous."""
    kept = [p for p in images if not p.stem.lower().endswith("_mask")]
    seen: dict[tuple[Path, str], Path] = {}
    for p in kept:
        other = seen.setdefault((p.parent, p.stem.lower()), p)
        if other is not p:
            raise ZsadInputError(
                f"{folder}: {other.name} and {p.name} share a stem and masks live in this folder: "
                "set image_glob (e.g. '*.jpg') so masks are not read as images"
            )
    return kept


def _defect_type(label: int | None, rel_parent: Path) -> str:
    """``good`` for normal images; a nested sub-folder names the defect (``abnormal/scratch/x.png``)."""
    if label == 0:
        return "good"
    if rel_parent != Path():
        return rel_parent.as_posix()
    return "" if label is None else "anomaly"
