"""Resize image and mask the way the zero-shot AD papers do: squash both to S x S, never crop.

Stock CLIP preprocessing resizes the short side and centre-crops, which cuts off defects near the border and
misaligns the mask. Squashing keeps every pixel and keeps image and mask aligned. Bicubic for the image
matches CLIP's pretraining; bilinear + threshold 0.5 for the mask is the field's evaluation protocol.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from zsad.types import OPENAI_MEAN as OPENAI_CLIP_MEAN
from zsad.types import OPENAI_STD as OPENAI_CLIP_STD


def _channel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each, got {len(mean)} and {len(std)}")
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32).view(3, 1, 1)
    return m, s


def squash_image(
    img: Image.Image,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor (3, S, S), resized to S x S ignoring the aspect ratio."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    resized = rgb.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m, s = _channel_stats(mean, std)
    return ((x - m) / s).contiguous()


def squash_mask(mask: Image.Image, size: int) -> torch.Tensor:
    """Binary 'L' mask -> float tensor (S, S) in {0, 1}: bilinear resize to S x S, then keep values >= 0.5."""
    gray = mask if mask.mode == "L" else mask.convert("L")
    resized = np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy((resized >= 0.5).astype(np.float32))


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> np.ndarray:
    """Undo ``squash_image``'s normalisation: (3, H, W) tensor -> (H, W, 3) uint8, for drawing overlays."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
    m, s = _channel_stats(mean, std)
    x = (image.detach().to("cpu", torch.float32) * s + m).clamp(0.0, 1.0)
    return np.rint(x.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
