"""Procedural sample images (textured tiles, some with scratches/blobs) so the demo needs no third-party images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _tile(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.55 + 0.08 * np.sin(2 * np.pi * (6 * xx + rng.uniform())) * np.cos(2 * np.pi * (5 * yy + rng.uniform()))
    noise = rng.normal(0.0, 0.03, (size, size))
    gray = np.clip(base + noise, 0, 1)
    tint = np.array([0.95, 0.9, 0.8])
    return (gray[..., None] * tint[None, None] * 255).astype(np.uint8)


def _defect(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "scratch":
        x0, y0 = rng.uniform(0.2, 0.5, 2) * size
        ang = rng.uniform(0, np.pi)
        length, width = rng.uniform(0.25, 0.45) * size, max(2.0, size / 80)
        dx, dy = np.cos(ang), np.sin(ang)
        t = (xx - x0) * dx + (yy - y0) * dy
        d = np.abs(-(xx - x0) * dy + (yy - y0) * dx)
        return (d < width) & (t > 0) & (t < length)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    rx, ry = rng.uniform(0.04, 0.1, 2) * size
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0


def make_sample_images(
    out_dir: str | Path, n_normal: int = 4, n_anomalous: int = 4, size: int = 256, seed: int = 0
) -> Path:
    """Write ``good/``, ``defect/`` and ``ground_truth/`` (masks named like the defect images); return ``out_dir``."""
    out = Path(out_dir)
    for sub in ("good", "defect", "ground_truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_normal):
        Image.fromarray(_tile(rng, size)).save(out / "good" / f"good_{i:03d}.png")
    for i in range(n_anomalous):
        img = _tile(rng, size)
        mask = _defect(rng, size, "scratch" if i % 2 == 0 else "blob")
        img[mask] = (img[mask] * 0.35).astype(np.uint8)
        Image.fromarray(img).save(out / "defect" / f"defect_{i:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / "ground_truth" / f"defect_{i:03d}.png")
    return out
