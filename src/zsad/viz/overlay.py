"""Heatmap overlays with mask contours, in numpy + PIL only (no matplotlib/opencv, no model code).

The colour scale is always explicit (``vmin``/``vmax``) and written on the panel. Scaling each map to its own
range makes every normal image look red (anomalib #3085), so the default scope is one range for the whole run:
``normalize_maps(maps, "dataset")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GT_COLOR: tuple[int, int, int] = (255, 255, 255)
PRED_COLOR: tuple[int, int, int] = (255, 0, 0)
SCOPES = ("dataset", "per_image")

# The classic 'jet' colormap as piecewise-linear (position, value) knots per channel.
_JET_KNOTS = {
    "r": ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    "g": ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    "b": ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
}


def jet(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN -> 0) -> uint8 RGB with a trailing axis: 0 is dark blue, 1 dark red."""
    v = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0), 0.0, 1.0)
    channels = [np.interp(v, *_JET_KNOTS[c]) for c in "rgb"]
    return np.rint(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def gray(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 gray RGB (for print or colour-blind readers)."""
    v = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0), 0.0, 1.0)
    return np.repeat(np.rint(v * 255.0).astype(np.uint8)[..., None], 3, axis=-1)


COLORMAPS = {"jet": jet, "gray": gray}


def normalize_maps(maps: Sequence[Any] | np.ndarray, scope: str = "dataset") -> list[tuple[float, float]]:
    """Colour range (vmin, vmax) for each map.

    ``dataset``: one min/max over all maps, so a normal image stays blue next to a defective one.
    ``per_image``: each map's own min/max, which shows structure inside a map but hides how anomalous it is.
    NaNs are ignored.
    """
    arrays = [np.asarray(m, dtype=np.float64) for m in maps]
    if not arrays:
        raise ValueError("normalize_maps: no maps given")
    if scope == "dataset":
        lo = float(min(np.nanmin(a) for a in arrays))
        hi = float(max(np.nanmax(a) for a in arrays))
        return [(lo, hi)] * len(arrays)
    if scope == "per_image":
        return [(float(np.nanmin(a)), float(np.nanmax(a))) for a in arrays]
    raise ValueError(f"unknown normalisation scope {scope!r}: use one of {', '.join(SCOPES)}")


def _rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    if img.ndim == 3 and img.shape[-1] == 4:
        return img[..., :3]
    if img.ndim == 3 and img.shape[-1] == 3:
        return img
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")


def _fit_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (H, W): maps come at model resolution, images at their own."""
    a = np.asarray(values, dtype=np.float32)
    if a.shape == shape:
        return a
    return np.asarray(Image.fromarray(a).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask).astype(bool)
    if m.shape == shape:
        return m
    small = Image.fromarray(np.where(m, 255, 0).astype(np.uint8))
    return np.asarray(small.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def heatmap_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> np.ndarray:
    """Blend the coloured map over a uint8 (H, W[, 3]) image; the map is scaled so vmin -> 0 and vmax -> 1.

    A map of another size is resized to the image. vmax <= vmin colours everything as the low end.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}: use one of {', '.join(COLORMAPS)}")
    rgb = _rgb(image)
    values = _fit_map(anomaly_map, rgb.shape[:2])
    span = float(vmax) - float(vmin)
    out = np.empty_like(rgb)
    # In bands of rows: the float64 temporaries of a 4096 px map would otherwise take gigabytes at once.
    step = max(1, (1 << 20) // max(1, rgb.shape[1]))
    for y in range(0, rgb.shape[0], step):
        band = values[y : y + step]
        scaled = (band - float(vmin)) / span if span > 0 else np.zeros_like(band)
        heat = COLORMAPS[colormap](scaled).astype(np.float64)
        blended = (1.0 - alpha) * rgb[y : y + step].astype(np.float64) + alpha * heat
        out[y : y + step] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def contour(mask: np.ndarray) -> np.ndarray:
    """1-pixel inner boundary of a binary mask: the mask XOR its 4-neighbour erosion (image edges count)."""
    m = np.asarray(mask).astype(bool)
    p = np.pad(m, 1, constant_values=False)
    eroded = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m ^ eroded


def draw_contour(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = GT_COLOR) -> np.ndarray:
    """Copy of ``image`` with the mask's boundary painted in ``color`` (GT white, prediction red by convention)."""
    out = _rgb(image).copy()
    out[contour(_fit_mask(mask, out.shape[:2]))] = color
    return out


def image_grid(images: Sequence[np.ndarray], ncols: int, pad: int = 4, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (any sizes) row by row into ``ncols`` columns of equal cells, ``pad`` pixels apart."""
    if not images:
        raise ValueError("image_grid: no images given")
    if ncols < 1:
        raise ValueError(f"image_grid: ncols must be >= 1, got {ncols}")
    tiles = [_rgb(im) for im in images]
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    cols = min(ncols, len(tiles))
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), fill, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + t.shape[0], x : x + t.shape[1]] = t
    return grid


WARNING_COLOR = (200, 0, 0)
RANDOM_WEIGHTS_MARK = "RANDOM WEIGHTS: this score and heatmap mean nothing (smoke test)"


def _caption(parts: list[str], width: int, warning: str | None = None) -> np.ndarray:
    """White strip with ``parts`` joined by " | ", wrapped onto several lines when the panel is narrow.

    ``warning`` comes first, on its own line, in red (e.g. that the weights were random). The strip grows wider
    than ``width`` only when one part alone does not fit (the caller pads the panel).
    """
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = [warning] if warning else []
    first = len(lines)
    for part in parts:
        joined = f"{lines[-1]} | {part}" if len(lines) > first else part
        if len(lines) > first and measure.textlength(joined, font=font) <= width - 8:
            lines[-1] = joined
        else:
            lines.append(part)
    strip_w = max(width, *(int(np.ceil(measure.textlength(line, font=font))) + 8 for line in lines))
    _, top, _, bottom = measure.textbbox((0, 0), "Ag|[", font=font)
    line_h = int(bottom - top) + 4
    strip = Image.new("RGB", (strip_w, line_h * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        colour = WARNING_COLOR if i < first else (0, 0, 0)
        draw.text((4, 2 + i * line_h - top), line, fill=colour, font=font)
    return np.asarray(strip)


def render_prediction(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float,
    vmax: float,
    gt_mask: np.ndarray | None = None,
    pred_mask: np.ndarray | None = None,
    score: float | None = None,
    label: bool | int | None = None,
    scope: str = "dataset",
    alpha: float = 0.5,
    colormap: str = "jet",
    warning: str | None = None,
) -> np.ndarray:
    """[input | overlay] panel: GT contour white, predicted-mask contour red, and a caption below.

    The caption states the score, the label (or that there is none) and the colour range with its normalisation
    ``scope`` (so a reader knows what red means); ``warning`` is written above it in red, so an image that leaves
    the folder still says, e.g., that it was made with random weights.
    """
    rgb = _rgb(image)
    over = heatmap_overlay(rgb, anomaly_map, vmin, vmax, alpha=alpha, colormap=colormap)
    if gt_mask is not None:
        over = draw_contour(over, gt_mask, GT_COLOR)
    if pred_mask is not None:
        over = draw_contour(over, pred_mask, PRED_COLOR)
    body = image_grid([rgb, over], ncols=2, pad=4)
    parts = []
    if score is not None:
        parts.append(f"score {score:.4g}")
    if label is not None:
        parts.append("anomalous" if label else "normal")
    elif score is not None:
        parts.append("no label (no threshold)")
    parts += [f"colour range [{vmin:.3g}, {vmax:.3g}]", f"scope: {scope}"]
    caption = _caption(parts, body.shape[1], warning)
    if caption.shape[1] > body.shape[1]:
        body = np.pad(body, ((0, 0), (0, caption.shape[1] - body.shape[1]), (0, 0)), constant_values=255)
    return np.concatenate([body, caption], axis=0)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 (H, W[, 3]) array as PNG, creating parent folders; returns the path."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {arr.dtype}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(out)
    return out
