"""Heatmap overlays with contours. Pure numpy + PIL; imports no model code.

The colour scale is always explicit (``vmin``/``vmax``) and stated on the panel: per-image scaling makes every
normal image look red, so callers default to one scale for the whole run (``normalize_maps(..., "dataset")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GT_COLOR = (255, 255, 255)
PRED_COLOR = (255, 0, 0)


def jet(x: np.ndarray) -> np.ndarray:
    """Matplotlib-style 'jet' for values in [0, 1] -> uint8 RGB (0 = dark blue, 1 = dark red)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255.0 + 0.5).astype(np.uint8)


def normalize_maps(maps: Sequence[np.ndarray], scope: str = "dataset") -> list[tuple[float, float]]:
    """(vmin, vmax) per map: one shared range (``dataset``) or each map's own (``per_image``)."""
    if scope == "dataset":
        lo = min(float(np.min(m)) for m in maps)
        hi = max(float(np.max(m)) for m in maps)
        return [(lo, hi)] * len(maps)
    if scope == "per_image":
        return [(float(np.min(m)), float(np.max(m))) for m in maps]
    raise ValueError(f"unknown normalisation scope {scope!r}: use 'dataset' or 'per_image'")


def heatmap_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5
) -> np.ndarray:
    """Blend jet(map scaled to [vmin, vmax]) over an (H, W, 3) uint8 image of the same size."""
    span = vmax - vmin if vmax > vmin else 1.0
    heat = jet((anomaly_map - vmin) / span).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def contour(mask: np.ndarray) -> np.ndarray:
    """1-pixel inner boundary of a binary mask: the mask minus its 4-neighbour erosion."""
    m = np.asarray(mask).astype(bool)
    p = np.pad(m, 1, constant_values=False)
    eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~eroded


def draw_contour(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    out = image.copy()
    out[contour(mask)] = color
    return out


def image_grid(images: Sequence[np.ndarray], ncols: int, pad: int = 4, fill: int = 255) -> np.ndarray:
    """Tile same-height-or-not uint8 RGB images into rows of ``ncols`` (padded to the largest cell)."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    nrows = -(-len(images) // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + im.shape[0], x : x + im.shape[1]] = im
    return grid


def render_prediction(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float,
    vmax: float,
    gt_mask: np.ndarray | None = None,
    pred_mask: np.ndarray | None = None,
    score: float | None = None,
    label: bool | None = None,
    scope: str = "dataset",
) -> np.ndarray:
    """[input | overlay] panel with GT contour (white), predicted contour (red) and a caption line."""
    over = heatmap_overlay(image, anomaly_map, vmin, vmax)
    if gt_mask is not None:
        over = draw_contour(over, gt_mask, GT_COLOR)
    if pred_mask is not None:
        over = draw_contour(over, pred_mask, PRED_COLOR)
    body = image_grid([image, over], ncols=2, pad=4)
    caption = Image.new("RGB", (body.shape[1], 16), (255, 255, 255))
    parts = []
    if score is not None:
        parts.append(f"score {score:.4g}")
    if label is not None:
        parts.append("ANOMALOUS" if label else "normal")
    parts.append(f"colour scale [{vmin:.3g}, {vmax:.3g}] ({scope})")
    ImageDraw.Draw(caption).text((4, 2), " | ".join(parts), fill=(0, 0, 0))
    return np.concatenate([body, np.asarray(caption)], axis=0)


def save_png(path: str | Path, image: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
