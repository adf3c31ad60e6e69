"""Import and export of the ``meta.json`` used by the CLIP-AD repos (AdaCLIP, AnomalyCLIP, APRIL-GAN).

``{"train"|"test": {cls: [{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}]}}`` with paths
relative to the dataset root (the meta file's folder); an empty ``mask_path`` means no mask. Supporting it lets
users of those repos bring their dataset lists along unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zsad.data.datasets import Sample
from zsad.errors import ZsadInputError


def load_meta_json(
    path: str | Path, root: str | Path | None = None, split: str | None = "test"
) -> dict[str, list[Sample]]:
    """Samples per category from ``meta.json``. ``split=None`` loads every split (see ``Sample.split``).

    The default is the test split, so train images never leak into an evaluation by accident.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZsadInputError(f"{path}: meta.json not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZsadInputError(f"{path}: cannot read meta.json: {' '.join(str(e).split())}") from None
    if not isinstance(meta, dict):
        raise ZsadInputError(f"{path}: meta.json must be an object of splits")
    if split is not None and split not in meta:
        raise ZsadInputError(f"{path}: no split {split!r} (have: {', '.join(map(str, meta))})")
    base = Path(root) if root is not None else path.parent
    out: dict[str, list[Sample]] = {}
    for split_name in [split] if split is not None else list(meta):
        classes = meta[split_name]
        if not isinstance(classes, dict):
            raise ZsadInputError(f"{path}: split {split_name!r} must map class names to lists")
        for cls, items in classes.items():
            for n, item in enumerate(items):
                out.setdefault(cls, []).append(_sample(path, base, split_name, cls, n, item))
    return out


def _sample(path: Path, base: Path, split: str, cls: str, n: int, item: Any) -> Sample:
    if not isinstance(item, dict) or "img_path" not in item:
        raise ZsadInputError(f"{path}: {split}/{cls}[{n}] has no img_path")
    mask = str(item.get("mask_path") or "")
    try:
        label = int(item.get("anomaly", 0))
    except (TypeError, ValueError):
        raise ZsadInputError(f"{path}: {split}/{cls}[{n}]: anomaly {item.get('anomaly')!r} is not 0/1") from None
    return Sample(
        image_path=base / item["img_path"],
        label=label,
        mask_path=base / mask if mask else None,
        category=str(item.get("cls_name") or cls),
        split=split,
        defect_type=str(item.get("specie_name") or ""),
    )


def save_meta_json(samples_by_split: Mapping[str, Sequence[Sample]], path: str | Path, root: str | Path) -> None:
    """Write ``meta.json`` with paths relative to ``root`` (absolute where a file lies outside it).

    Unknown labels (None) cannot be written: the format has no such value and 0 would claim "normal".
    """
    root = Path(root)
    meta: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split, samples in samples_by_split.items():
        classes = meta.setdefault(split, {})
        for s in samples:
            if s.label is None:
                raise ZsadInputError(f"{s.image_path}: unknown label cannot be written to meta.json")
            classes.setdefault(s.category, []).append(
                {
                    "img_path": _relative(s.image_path, root),
                    "mask_path": "" if s.mask_path is None else _relative(s.mask_path, root),
                    "cls_name": s.category,
                    "specie_name": s.defect_type,
                    "anomaly": int(s.label),
                }
            )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(meta, indent=4) + "\n", encoding="utf-8")


def _relative(p: Path, root: Path) -> str:
    for a, b in ((Path(p), root), (Path(p).resolve(), root.resolve())):
        try:
            return a.relative_to(b).as_posix()
        except ValueError:
            continue
    return str(Path(p).resolve())
