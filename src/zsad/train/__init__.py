"""Shared training for the methods with learnable parts: one loop, one set of losses, one checkpoint format."""

from zsad.train.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from zsad.train.loop import TrainConfig, Training, TrainResult, fit
from zsad.train.losses import dice_loss, focal_loss

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Training",
    "dice_loss",
    "fit",
    "focal_loss",
    "load_checkpoint",
    "read_manifest",
    "save_checkpoint",
]
