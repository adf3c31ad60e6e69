"""The one output type every method returns (anomalib-style field names)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
