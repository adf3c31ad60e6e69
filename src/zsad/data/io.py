"""Image and mask reading that survives real files: 16-bit, palette, alpha, grayscale, CMYK, float TIFFs.

Every failure becomes one ``ZsadInputError`` line naming the file, so a batch job can report or skip it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from zsad.errors import ZsadInputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _open(path: str | Path) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise ZsadInputError(f"{p}: cannot read image: file not found")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ZsadInputError(f"{p}: cannot read image: {reason}") from None
    return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to 0..255 by its dtype's range (not by clipping)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        # 16-bit data often arrives as int32 ('I' mode): use the widest range the values need.
        top = 65535.0 if arr.max(initial=0) > 255 or arr.dtype in (np.uint16, np.int16) else 255.0
        if arr.max(initial=0) > 65535:
            top = float(np.iinfo(arr.dtype).max)
        return np.clip(np.round(arr.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)
    a = arr.astype(np.float64)
    if a.size and (a.min() < 0.0 or a.max() > 1.0):  # float data outside [0, 1]: min-max it
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def load_image(path: str | Path) -> Image.Image:
    """Any supported file -> 8-bit RGB PIL image. RGBA/LA/transparent palette are composited onto black."""
    img = _open(path)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode == "1":
        img = img.convert("L")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def load_mask(path: str | Path) -> Image.Image:
    """Mask file -> PIL 'L' with values {0, 255}: any non-zero pixel (in any channel) is a defect."""
    img = _open(path)
    arr = np.asarray(img)
    if img.mode == "P":
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] in (3, 4) else arr.max(axis=-1)
    return Image.fromarray(np.where(arr > 0, 255, 0).astype(np.uint8), mode="L")
