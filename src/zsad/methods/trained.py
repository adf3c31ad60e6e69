"""What every trainable method does around the shared loop: check the data, record it, write the checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad.errors import ZsadInputError

IMAGES_LIST = "training_images.txt"


def mask_items(method: str, datasets: Sequence[tuple[str, Any]]) -> list[tuple[str, Any, int]]:
    """(category, dataset, index) of every training image; refuses anomalous images without a pixel mask."""
    items = [(cat, ds, i) for cat, ds in datasets for i in range(len(ds))]
    if not items:
        raise ZsadInputError(f"{method}: the training data holds no images")
    for cat, ds in datasets:
        unmasked = [s for s in ds.samples if s.label == 1 and s.mask_path is None]
        if unmasked:
            raise ZsadInputError(
                f"{unmasked[0].image_path}: {method} trains on pixel masks, but {len(unmasked)} anomalous images of "
                f"{cat} have none (pass --mask-dir)"
            )
    return items


def start_run(out: Path, items: Sequence[tuple[str, Any, int]]) -> Path:
    """Create the checkpoint folder and list the exact training images (the eval leakage guard reads it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / IMAGES_LIST).write_text("".join(f"{Path(ds.samples[i].image_path).resolve()}\n" for _, ds, i in items))
    return out


def training_record(
    data_info: dict[str, Any], items: Sequence[tuple[str, Any, int]], train_cfg: Any, history: list[dict[str, float]]
) -> dict[str, Any]:
    """The manifest's ``training`` section: data, recipe and loss history."""
    return {
        **data_info,
        "num_images": len(items),
        "categories": sorted({c for c, _, _ in items}),
        "train_config": dataclasses.asdict(train_cfg),
        "history": history,
        "images_list": IMAGES_LIST,
    }


def save_method(method: Any, out: Path, training: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write ``method.tensors()`` + manifest (method, backbone, ``config``, ``training``) to ``out``."""
    from zsad.train import save_checkpoint

    manifest = {
        "method": method.name,
        "backbone": method.backbone.manifest(),
        "config": {**config, "checkpoint": ""},
        "training": training,
    }
    save_checkpoint(Path(out), method.tensors(), manifest)
    method.training_manifest = manifest
    return Path(out)


def load_tensors(module: Any, tensors: dict[str, Any], path: str | Path) -> None:
    """Load checkpoint tensors into a module; a shape mismatch is a one-line input error naming the file."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        raise ZsadInputError(f"{path}: tensors do not fit this backbone: {str(e).splitlines()[0]}") from e


def require_trained(method: Any, what: str, extra: str = "") -> None:
    """Trained methods refuse to run on their untrained initialisation."""
    if method.training_manifest is None:
        raise ZsadInputError(
            f"{method.name}: no trained {what}; pass --checkpoint DIR (from `zsad train --method {method.name} ...`)"
            + extra
        )
