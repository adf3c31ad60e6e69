"""The shared CLIP backbone wrapper."""

from zsad.backbone.clip import ClipBackbone, ImageFeatures, SurgeryConfig
from zsad.backbone.loading import file_digest, resolve_model

__all__ = ["ClipBackbone", "ImageFeatures", "SurgeryConfig", "file_digest", "resolve_model"]
