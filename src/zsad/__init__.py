"""zsad: zero-/few-shot visual anomaly detection with CLIP."""

__version__ = "0.1.0"

from zsad.backbone import ClipBackbone  # noqa: E402
from zsad.methods import create_method, list_methods  # noqa: E402
from zsad.types import Prediction  # noqa: E402

__all__ = ["ClipBackbone", "Prediction", "__version__", "create_method", "list_methods"]
