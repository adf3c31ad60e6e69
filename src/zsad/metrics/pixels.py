"""One sort of all pixels of a category, shared by pixel AUROC/AP/F1-max and both AUPRO variants.

For float32 maps (what every method returns) the score and the pixel's GT region id are packed into one int64
key (order-preserving float bits << 31 | region) and sorted with ``np.sort``: no argsort, no gathers of the
millions of pixels. Other dtypes fall back to an argsort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_REGION_BITS = 31
_EIGHT = np.ones((3, 3), dtype=bool)


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, H, W) binary -> region id per pixel (0 = normal, 1..R across all images; 8-connected) and R."""
    out = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=_EIGHT)
        out[i] = np.where(lab > 0, lab + offset, 0)
        offset += n
    return out, offset


@dataclass(frozen=True)
class SortedPixels:
    scores: np.ndarray  # (P,) descending, dtype of the maps
    regions: np.ndarray  # (P,) GT region id of each pixel in that order, 0 = normal
    n_regions: int
    sizes: np.ndarray  # (R+1,) pixels per region, index 0 = normal pixels


def _float32_to_key(a: np.ndarray) -> np.ndarray:
    bits = (a + np.float32(0.0)).view(np.uint32)  # + 0.0 folds -0.0 into 0.0
    neg = (bits >> 31).astype(bool)
    return np.where(neg, ~bits, bits | np.uint32(0x80000000)).astype(np.int64)


def _key_to_float32(k: np.ndarray) -> np.ndarray:
    u = k.astype(np.uint32)
    pos = (u >> 31).astype(bool)
    return np.where(pos, u & np.uint32(0x7FFFFFFF), ~u).astype(np.uint32).view(np.float32)


def sort_pixels(maps: np.ndarray, masks: np.ndarray) -> SortedPixels:
    regions, n = label_regions(masks)
    r = regions.ravel()
    sizes = np.bincount(r, minlength=n + 1)
    if maps.dtype == np.float32 and n < 2**_REGION_BITS and np.isfinite(maps).all():
        key = (_float32_to_key(maps.ravel()) << _REGION_BITS) | r
        key.sort()
        key = key[::-1]
        return SortedPixels(_key_to_float32(key >> _REGION_BITS), key & ((1 << _REGION_BITS) - 1), n, sizes)
    flat = maps.ravel()
    order = np.argsort(-flat, kind="quicksort")
    return SortedPixels(flat[order], r[order], n, sizes)
