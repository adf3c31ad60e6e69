"""Segmentation losses shared by every trainable method (SDP+, AdaCLIP, RWDA, Dual-Image adaptation).

These are the definitions CLIP-AD, AdaCLIP and APRIL-GAN train with, written vectorised so they run on the
device of their inputs (the published versions scatter into a CPU one-hot tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class probabilities with the published label smoothing (no class weights).

    ``probs`` (B, C, H, W) are already softmaxed; ``target`` (B, H, W) holds class ids (long, or float 0./1.
    masks, which are rounded to the nearest id). The one-hot target is clamped to [smooth/(C-1), 1-smooth] and
    ``smooth`` is added to pt, so log(pt) stays finite even where a probability is exactly 0.
    """
    if probs.ndim != 4 or target.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(
            f"focal_loss: probs (B, C, H, W) and target (B, H, W) expected, got {probs.shape}, {target.shape}"
        )
    c = probs.shape[1]
    if c < 2:
        raise ValueError(f"focal_loss: needs at least 2 classes, got {c}")
    ids = target.long() if not target.is_floating_point() else target.round().long()  # (B, H, W)
    onehot = F.one_hot(ids, c).movedim(-1, 1).to(probs.dtype)  # (B, C, H, W)
    onehot = onehot.clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (onehot * probs).sum(1) + smooth  # (B, H, W)
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary soft dice: 1 - mean over images of (2|p.t| + s) / (|p| + |t| + s).

    ``prob`` and ``target`` are (B, H, W) (any trailing shape works: each image is flattened). Per-image dice
    keeps small defects from being swamped by large ones in the same batch.
    """
    if prob.shape != target.shape:
        raise ValueError(f"dice_loss: prob and target shapes differ: {prob.shape} vs {target.shape}")
    p = prob.reshape(prob.shape[0], -1)  # (B, HW)
    t = target.reshape(target.shape[0], -1).to(p.dtype)  # (B, HW)
    d = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)  # (B,)
    return 1.0 - d.mean()
