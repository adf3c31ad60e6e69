"""Scoring a dataset in batches: one backbone pass per image, image by image or as a set (transductive methods).

Yields ``ScoredBatch``es as they are computed, so a caller can write each batch at once (a crash loses at most the
batch in flight); thresholds and set-level re-scoring, which need every score, come after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from zsad.errors import ZsadInputError
from zsad.methods.base import Method, SetLevelMethod
from zsad.progress import reporter


def _collate_skip_bad(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The readable files as a batch plus the records of the others (``errors``).

    A batch of only unreadable files has no ``image`` but keeps its ``errors``: each input must end as a row or an
    error row.
    """
    errors = [b for b in batch if "error" in b]
    good = [b for b in batch if "error" not in b]
    out = torch.utils.data.default_collate(good) if good else {"image_path": []}
    out["errors"] = errors
    return out


class _SafeDataset(Dataset):
    """Turns a per-image read error into a record instead of an exception (``--skip-bad``)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            return self.base[i]
        except ZsadInputError as e:
            return {"error": str(e), "image_path": str(self.base.samples[i].image_path)}


class _Subset(Dataset):
    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)
        self.samples = [base.samples[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


def iterate_batches(
    dataset: Any, batch_size: int, *, skip_bad: bool = False, workers: int = 0, skip_paths: set[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Batches of a zsad dataset, optionally skipping already-done paths and unreadable files."""
    ds: Any = dataset
    if skip_paths:
        keep = [i for i, s in enumerate(dataset.samples) if str(s.image_path) not in skip_paths]
        ds = _Subset(dataset, keep)
    if len(ds) == 0:
        return
    if skip_bad:
        ds = _SafeDataset(ds)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate_skip_bad if skip_bad else None,
    )
    yield from loader


@dataclass
class ScoredBatch:
    """One batch's results on the CPU, with the loaded batch itself for the writer's other columns."""

    paths: list[str]
    scores: np.ndarray  # (B,)
    maps: np.ndarray  # (B, S, S) float32 at model resolution
    batch: dict[str, Any]
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # Prediction.score_parts
    notes: list[str] = field(default_factory=list)  # the method's set_notes (set-level methods)


def score_batches(
    method: Method, batches: Iterator[dict[str, Any]], on_error: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[ScoredBatch]:
    """Score batches with ``method.predict`` (not set-level), passing each batch's unreadable files to ``on_error``."""
    for batch in batches:
        for err in batch.get("errors", []):
            if on_error:
                on_error(err)
        if "image" in batch:
            yield _scored(batch, method.predict(batch["image"]))


def score_dataset(
    method: Method,
    dataset: Any,
    batch_size: int,
    *,
    skip_paths: set[str] | None = None,
    skip_bad: bool = False,
    on_error: Callable[[dict[str, Any]], None] | None = None,
    label: str = "",
) -> Iterator[ScoredBatch]:
    """Score a dataset batch by batch; a set-level method (pairing) first encodes every image of the set.

    Set-level: pass 1 runs the backbone once per image into the method's feature bank (images already scored are
    still encoded: they are partners), shown as a reporter task; pass 2 re-reads only the images to score (files,
    not the backbone) and scores them against the whole set. The method's ``set_notes`` (a set too small for it)
    are reported as warnings.
    """
    if not isinstance(method, SetLevelMethod):
        batches = iterate_batches(dataset, batch_size, skip_bad=skip_bad, skip_paths=skip_paths)
        yield from score_batches(method, batches, on_error)
        return
    done = skip_paths or set()
    if done and all(str(s.image_path) in done for s in dataset.samples):
        return
    rows: dict[str, int] = {}  # path -> bank row
    failed: set[str] = set()

    def encode_pass() -> Iterator[torch.Tensor]:
        """Every readable image, already-scored ones included (they are partners); the unreadable ones reported."""
        with reporter().task(f"{label or method.name}: encoding the set", len(dataset)) as task:
            for batch in iterate_batches(dataset, batch_size, skip_bad=skip_bad):
                for err in batch.get("errors", []):
                    failed.add(str(err["image_path"]))
                    if on_error and str(err["image_path"]) not in done:
                        on_error(err)
                if "image" not in batch:
                    continue
                for p in batch["image_path"]:
                    rows[str(p)] = len(rows)
                yield batch["image"]
                task.update(completed=len(rows) + len(failed))

    def score_pass(n: int) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """The set's notes, then the images still to score, re-read from their files, with their bank rows."""
        for note in method.set_notes:
            reporter().message(note, "warning")
        for batch in iterate_batches(dataset, batch_size, skip_bad=skip_bad, skip_paths=done | failed):
            for err in batch.pop("errors", []):  # unreadable now but read in pass 1: the file changed during the run
                if on_error:
                    on_error({**err, "error": f"{err['error']} (it was readable when the set was encoded)"})
            if "image" in batch:
                yield torch.tensor([rows[str(p)] for p in batch["image_path"]]), batch

    for batch, pred in method.score_set(encode_pass(), score_pass):
        yield _scored(batch, pred)


def score_images(method: Method, images: torch.Tensor, batch_size: int) -> ScoredBatch:
    """Score preprocessed images already in memory (a service request, a Ray block) as ``score_dataset`` would.

    A set-level method scores ``images`` as one set (encoded chunk by chunk into one bank); any other method scores
    them in chunks of ``batch_size``. Scores are the per-image ones: set-level re-scaling (``finalize_scores``) is
    the caller's, since it needs the whole set's parts.
    """
    notes: list[str] = []
    with torch.no_grad():
        if isinstance(method, SetLevelMethod):
            preds = [_scored({"image_path": []}, p) for p in method.predict_as_set(images, batch_size)]
            notes = list(method.set_notes)
        else:
            preds = [_scored({"image_path": []}, method.predict(c)) for c in torch.split(images, max(1, batch_size))]
    return ScoredBatch(
        paths=[],
        scores=np.concatenate([p.scores for p in preds]),
        maps=np.concatenate([p.maps for p in preds]),
        batch={},
        parts={k: np.concatenate([p.parts[k] for p in preds]) for k in preds[0].parts},
        notes=notes,
    )


def _scored(batch: dict[str, Any], pred: Any) -> ScoredBatch:
    return ScoredBatch(
        paths=list(batch["image_path"]),
        scores=pred.pred_score.detach().cpu().numpy().astype(np.float64),
        maps=pred.anomaly_map.detach().cpu().numpy().astype(np.float32),
        batch=batch,
        parts={k: v.detach().cpu().numpy().astype(np.float64) for k, v in pred.score_parts.items()},
    )


def resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Model-resolution map (S, S) -> original image size (H, W), bilinear (the squash undone)."""
    t = torch.from_numpy(amap)[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
