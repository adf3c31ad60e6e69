"""The shared CLIP backbone wrapper."""

from zsad.backbone.clip import ClipBackbone, ImageFeatures, SurgeryConfig, file_digest

__all__ = ["ClipBackbone", "ImageFeatures", "SurgeryConfig", "file_digest"]
