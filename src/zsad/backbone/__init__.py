"""The shared CLIP backbone wrapper, and the ``Backbone`` protocol it shares with the vision-only one."""

from zsad.backbone.clip import ClipBackbone, ImageFeatures, SurgeryConfig
from zsad.backbone.loading import file_digest, resolve_model
from zsad.backbone.protocol import Backbone

__all__ = ["Backbone", "ClipBackbone", "ImageFeatures", "SurgeryConfig", "file_digest", "resolve_model"]
