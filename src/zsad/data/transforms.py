"""Square squash of image and mask together: the protocol of the field (stock CLIP's centre crop misaligns masks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def squash_image(
    img: Image.Image, size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD
) -> torch.Tensor:
    """RGB PIL image -> (3, S, S) float, resized ignoring aspect (bicubic, as CLIP was trained), normalised."""
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (t - m) / s


def squash_mask(mask: Image.Image, size: int) -> torch.Tensor:
    """{0,255} 'L' mask -> (S, S) float {0,1}: bilinear resize, then threshold at 0.5."""
    arr = np.asarray(mask.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy((arr >= 0.5).astype(np.float32))


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD
) -> np.ndarray:
    """(3, S, S) normalised tensor -> (S, S, 3) uint8, for drawing."""
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    x = (image.detach().float().cpu() * s + m).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
