"""Two small run entry points: one set of images scored as ``evaluate`` scores a category, and checkpoint import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad.errors import ZsadInputError
from zsad.limits import BATCH_SIZE
from zsad.methods.base import Method, SetLevelMethod
from zsad.methods.trainable import TrainableMethod
from zsad.outputs import RunLock, check_output_dir, mark_folder
from zsad.progress import Reporter, using
from zsad.runs.build import BackboneSpec, MethodSpec, as_int, as_path
from zsad.types import Prediction


def predict_set(method: Method, images: torch.Tensor, batch_size: int = 8) -> Prediction:
    """Score ``images`` (N, 3, S, S) as one set, exactly as ``zsad eval`` scores one category.

    Set-level methods (``set_level``: Dual-Image pairing) see every image of the set; methods with a set-level
    re-scoring (``finalize_scores``: SDP's transductive min-max) get it applied over the whole set. For other methods
    this equals ``method.predict`` batch by batch.
    """
    BATCH_SIZE.check(as_int(batch_size, "batch_size"))
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a built Method (zsad.create_method), not {type(method).__name__}")
    if method.class_name is None:
        method.setup(None)
    if isinstance(method, SetLevelMethod):
        preds = method.predict_as_set(images, batch_size)
    else:
        preds = [method.predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    keys = preds[0].score_parts.keys()
    out = Prediction(
        pred_score=torch.cat([p.pred_score for p in preds]),
        anomaly_map=torch.cat([p.anomaly_map for p in preds]),
        score_parts={k: torch.cat([p.score_parts[k] for p in preds]) for k in keys},
    )
    parts = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in out.score_parts.items()}
    final = method.finalize_scores(parts) if parts else None
    if final is not None:
        out.pred_score = torch.as_tensor(np.asarray(final), dtype=out.pred_score.dtype, device=out.pred_score.device)
    return out


def import_checkpoint(
    file: str | Path,
    method: str,
    out: str | Path,
    trained_on: str,
    *,
    backbone: BackboneSpec | None = None,
    reporter: Reporter | None = None,
) -> Path:
    """Convert a checkpoint released with a method's official code into a zsad checkpoint folder at ``out``.

    The released file is read as safetensors, or with ``torch.load(weights_only=True)``: no code in it runs.
    """
    with using(reporter):
        file, out = as_path(file, "file"), as_path(out, "out")
        spec = MethodSpec(method, BackboneSpec.of(backbone), {"checkpoint": ""})
        cls = spec.cls
        if not issubclass(cls, TrainableMethod) or not cls.official_checkpoint:
            raise ZsadInputError(
                f"--method {method}: official checkpoints can be imported for {', '.join(importable())}"
            )
        folder_ok = getattr(cls, "official_folder", False)  # a release downloaded as a folder (AnomalyVFM's HF layout)
        if Path(file).is_dir() and not folder_ok:
            raise ZsadInputError(f"{file}: is a folder; --method {method} imports a checkpoint file")
        if not (Path(file).is_file() or (folder_ok and Path(file).is_dir())):
            raise ZsadInputError(f"{file}: file not found")
        spec.validate(for_training=True)
        check_output_dir(Path(out), kind="checkpoint")
        with RunLock(Path(out)):
            mark_folder(Path(out), "checkpoint", "import-checkpoint")
            built: Any = spec.build()
            return cls.import_official(Path(file), built.backbone, Path(out), trained_on)


def importable() -> list[str]:
    """Methods whose officially released checkpoints ``import_checkpoint`` converts."""
    from zsad.methods import get_method_class, list_methods

    out = []
    for name in list_methods():
        cls = get_method_class(name)
        if issubclass(cls, TrainableMethod) and cls.official_checkpoint:
            out.append(name)
    return out
