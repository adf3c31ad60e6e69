"""Procedural sample images: metal washers, some with scratches, stains or cracks, plus their masks.

The README demo and the CLI tests need a labelled, masked dataset but the repository ships no third-party
images, so one is drawn here with numpy (seeded, so every run writes the same pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

_DEFECTS = ("scratch", "stain", "crack")


def _washer(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """A brushed-metal washer on a dark table: RGB float image in [0, 1], its region, and (cx, cy, r_in, r_out)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    cx, cy = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    r_out, r_in = size * rng.uniform(0.38, 0.42), size * rng.uniform(0.12, 0.15)
    dist = np.hypot(xx - cx, yy - cy)
    theta = np.arctan2(yy - cy, xx - cx)
    # Soft 1-pixel edges so the product does not look aliased.
    region = np.clip(r_out - dist + 0.5, 0.0, 1.0) * np.clip(dist - r_in + 0.5, 0.0, 1.0)
    rings = 0.04 * np.sin(2 * np.pi * dist / (size / 36) + rng.uniform(0, 2 * np.pi))
    brushed = 0.025 * np.sin(theta * 90 + rng.uniform(0, 2 * np.pi))
    light = 0.10 * ((xx - cx) * 0.6 - (yy - cy) * 0.8) / size
    metal = 0.62 + rings + brushed + light + rng.normal(0.0, 0.02, (size, size))
    table = 0.10 + 0.02 * (yy / size) + rng.normal(0.0, 0.01, (size, size))
    gray = region * metal + (1.0 - region) * table
    tint = np.array([0.96, 0.93, 0.88])
    return np.clip(gray[..., None] * tint, 0.0, 1.0), region > 0.5, (cx, cy, r_in, r_out)


def _segment_distance(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the segment a-b."""
    ab = b - a
    t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.hypot(xx - (a[0] + t * ab[0]), yy - (a[1] + t * ab[1]))


def _defect(
    rng: np.random.Generator, size: int, kind: str, geometry: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A defect's boolean mask and the RGB factor that paints it."""
    cx, cy, r_in, r_out = geometry
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    radius = rng.uniform(r_in + 0.25 * (r_out - r_in), r_out - 0.25 * (r_out - r_in))
    angle = rng.uniform(0, 2 * np.pi)
    start = np.array([cx + radius * np.cos(angle), cy + radius * np.sin(angle)])
    width = max(1.2, size / 140)
    if kind == "scratch":
        direction = rng.uniform(0, np.pi)
        length = rng.uniform(0.15, 0.25) * size
        end = start + length * np.array([np.cos(direction), np.sin(direction)])
        return _segment_distance(xx, yy, start, end) < width, np.array([0.45, 0.45, 0.47])
    if kind == "stain":
        rx, ry = rng.uniform(0.03, 0.06, 2) * size
        rot = rng.uniform(0, np.pi)
        u = (xx - start[0]) * np.cos(rot) + (yy - start[1]) * np.sin(rot)
        v = -(xx - start[0]) * np.sin(rot) + (yy - start[1]) * np.cos(rot)
        return (u / rx) ** 2 + (v / ry) ** 2 < 1.0, np.array([0.80, 0.55, 0.30])
    mask = np.zeros((size, size), dtype=bool)
    point, heading = start, rng.uniform(0, 2 * np.pi)
    for _ in range(14):  # a jagged random walk
        heading += rng.uniform(-0.7, 0.7)
        nxt = point + (size / 45) * np.array([np.cos(heading), np.sin(heading)])
        mask |= _segment_distance(xx, yy, point, nxt) < width * 0.8
        point = nxt
    return mask, np.array([0.30, 0.30, 0.32])


def make_sample_images(
    out_dir: str | Path, n_normal: int = 4, n_anomalous: int = 4, size: int = 256, seed: int = 0
) -> Path:
    """Write ``good/``, ``defect/`` and ``ground_truth/`` under ``out_dir`` and return ``out_dir``.

    Masks are named like their defect images (``defect/defect_000.png`` -> ``ground_truth/defect_000.png``), so
    ``Folder(out_dir, normal_dir="good", abnormal_dir="defect", mask_dir="ground_truth")`` reads the set.
    """
    if n_normal < 0 or n_anomalous < 0 or size < 32:
        raise ValueError(f"need n_normal, n_anomalous >= 0 and size >= 32, got {n_normal}, {n_anomalous}, {size}")
    out = Path(out_dir)
    for sub in ("good", "defect", "ground_truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_normal):
        img, _, _ = _washer(rng, size)
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(out / "good" / f"good_{i:03d}.png")
    for i in range(n_anomalous):
        img, region, geometry = _washer(rng, size)
        mask, factor = np.zeros((size, size), dtype=bool), np.ones(3)
        while not mask.any():  # a defect drawn into the hole would leave an empty mask: draw again
            mask, factor = _defect(rng, size, _DEFECTS[i % len(_DEFECTS)], geometry)
            mask &= region
        img[mask] *= factor
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(out / "defect" / f"defect_{i:03d}.png")
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(out / "ground_truth" / f"defect_{i:03d}.png")
    return out
