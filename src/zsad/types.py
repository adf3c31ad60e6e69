"""The one output type every method returns (anomalib-style field names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prediction:
    """Batch of predictions.

    ``anomaly_map`` is at model input resolution (B, S, S); higher means more anomalous.
    ``pred_label``/``pred_mask`` are filled only once a threshold is known.
    """

    pred_score: torch.Tensor  # (B,)
    anomaly_map: torch.Tensor  # (B, S, S)
    pred_label: torch.Tensor | None = None  # (B,) bool
    pred_mask: torch.Tensor | None = None  # (B, S, S) bool
    # Named (B,) components of pred_score, for methods whose final score can be re-combined over a whole set
    # (e.g. CLIP-AD's transductive per-category min-max); written to predictions.csv.
    score_parts: dict[str, torch.Tensor] = field(default_factory=dict)


OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input: squashed to ``image_size`` x ``image_size``, normalised by mean/std.

    Taken from the backbone (``ClipBackbone.preprocess``), so datasets, runs and exports never rebuild it.
    """

    image_size: int = 240
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def kwargs(self) -> dict[str, Any]:
        """As the keyword arguments of the datasets (``image_size``, ``mean``, ``std``)."""
        return {"image_size": self.image_size, "mean": self.mean, "std": self.std}
