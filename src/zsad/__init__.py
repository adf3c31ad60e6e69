"""zsad: zero-/few-shot visual anomaly detection with CLIP.

The public API:

- ``ClipBackbone.from_pretrained(...)``: the one CLIP wrapper (an open_clip name + tag, a local weights file, an
  open_clip model-config JSON or folder, or seeded random weights);
- ``create_method(name, backbone, **options)`` / ``list_methods()``: the registered methods, each returning a
  ``Prediction`` (``pred_score``, ``anomaly_map``, ...) from ``setup(class_name)`` then ``predict(images)``;
- ``zsad.runs``: ``detect``, ``evaluate``, ``train``, ``predict_set`` and ``import_checkpoint``, the runs every
  front end uses (resumable output folders, thresholds, metrics), with progress through ``zsad.progress``.
"""

from typing import Any

__version__ = "0.1.0"

from zsad.backbone import ClipBackbone  # noqa: E402
from zsad.methods import create_method, list_methods  # noqa: E402
from zsad.types import Prediction, Preprocess  # noqa: E402

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
    """``zsad.runs`` and ``zsad.import_checkpoint`` load on first use (they pull in data, metrics and viz)."""
    if name == "runs":
        import importlib

        return importlib.import_module("zsad.runs")
    if name == "import_checkpoint":
        from zsad.runs import import_checkpoint

        return import_checkpoint
    raise AttributeError(f"module 'zsad' has no attribute {name!r}")
