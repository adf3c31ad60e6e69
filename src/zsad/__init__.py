"""zsad: zero-/few-shot visual anomaly detection with CLIP.

The public API:

- ``ClipBackbone.from_pretrained(...)``: the one CLIP wrapper (an open_clip name + tag, a local weights file, an
  open_clip model-config JSON or folder, or seeded random weights);
- ``create_method(name, backbone, **options)`` / ``list_methods()``: the registered methods, each returning a
  ``Prediction`` (``pred_score``, ``anomaly_map``, ...) from ``setup(class_name)`` then ``predict(images)``;
- ``zsad.runs``: ``detect``, ``evaluate``, ``train``, ``predict_set`` and ``import_checkpoint``, the runs every
  front end uses (resumable output folders, thresholds, metrics), with progress through ``zsad.progress``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from zsad._version import __version__

if TYPE_CHECKING:
    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method, list_methods
    from zsad.types import Prediction, Preprocess

# Every public name loads on first use, so ``import zsad.runtime`` (exported models) never imports torch.
_LAZY = {
    "ClipBackbone": "zsad.backbone",
    "create_method": "zsad.methods",
    "list_methods": "zsad.methods",
    "Prediction": "zsad.types",
    "Preprocess": "zsad.types",
    "import_checkpoint": "zsad.runs",
}

__all__ = [
    "ClipBackbone",
    "Prediction",
    "Preprocess",
    "__version__",
    "create_method",
    "import_checkpoint",
    "list_methods",
    "runs",
]


def __getattr__(name: str) -> Any:
    """The public names load on first use: torch, data, metrics and viz only when a name needs them."""
    if name == "runs":
        return importlib.import_module("zsad.runs")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zsad' has no attribute {name!r}")
