"""Image and mask reading that survives real files: 16-bit, float, palette, alpha, grayscale and CMYK.

Everything the models see goes through ``load_image`` (8-bit RGB) and ``load_mask`` ({0, 255} 'L'), so a
dataset quirk is handled once, here. Every failure is a one-line ``ZsadInputError`` naming the file, so a
batch job can report or skip the file instead of dying with a decoder traceback.

EXIF orientation is deliberately ignored: masks carry no EXIF, and rotating only the image would misalign them.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from zsad.errors import ZsadInputError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Modes whose pixels are not 8-bit and must be rescaled (not clipped) before display or CLIP.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "F")


# PIL names the in-memory buffer (``<_io.BytesIO object at 0x...>``) where the user's file name belongs.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def is_image_file(path: str | Path) -> bool:
    """True for a supported image extension, in any letter case (``X.JPG`` is as good as ``x.jpg``)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _open(path: str | Path) -> Image.Image:
    """Decode fully from memory, so no file handle outlives the call and truncation errors surface here."""
    p = Path(path)
    if p.is_dir():
        raise ZsadInputError(f"{p}: cannot read image: is a directory")
    if not p.exists():
        raise ZsadInputError(f"{p}: cannot read image: file not found")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ZsadInputError(f"{p}: cannot read image: {e.strerror or type(e).__name__}") from None
    return _decode(data, str(p))


def _decode(data: bytes, name: str) -> Image.Image:
    if not data:
        raise ZsadInputError(f"{name}: cannot read image: empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise ZsadInputError(
            f"{name}: cannot read image: not an image file, or a format Pillow cannot decode"
        ) from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        reason = _OBJECT_REPR.sub("the file", _one_line(str(e))) or type(e).__name__
        raise ZsadInputError(f"{name}: cannot read image: {reason}") from None
    return img


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit or float gray values onto 0..255 by the range of the data type, never by clipping.

    * unsigned/signed 16-bit (``I;16*``): the full 0..65535 (or -32768..32767) range;
    * ``I`` (32-bit int, how 16-bit files often arrive): 0..65535 when the values fit, else the values' own range;
    * ``F`` (float): 0..1 when the values fit, else the values' own range. NaN/inf become 0.
    """
    if mode == "F":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = 0.0, 1.0
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            lo, hi = float(a.min()), float(a.max())
    elif mode == "I":
        a = arr.astype(np.float64)
        lo, hi = 0.0, 65535.0
        if a.size and (a.min() < 0 or a.max() > 65535):
            lo, hi = float(a.min()), float(a.max())
    else:
        info = np.iinfo(arr.dtype)
        a = arr.astype(np.float64)
        lo, hi = float(info.min), float(info.max)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.rint((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    """Alpha-blend onto black: transparent pixels carry no product, so they should not look like one."""
    a = np.asarray(rgba.convert("RGBA"), dtype=np.float64)
    rgb = np.rint(a[..., :3] * (a[..., 3:4] / 255.0))
    return Image.fromarray(rgb.astype(np.uint8))


def load_image(path: str | Path) -> Image.Image:
    """Read any supported file as an 8-bit RGB PIL image.

    Grayscale is replicated to three channels; 16-bit/float data is rescaled by its type's range;
    RGBA, LA and palette images with transparency are composited onto black; CMYK is converted by PIL.
    """
    return _as_rgb(_open(path), str(path))


def decode_image(data: bytes, name: str) -> tuple[Image.Image, str]:
    """``load_image`` for bytes in memory (an upload): the 8-bit RGB image and its format (``PNG``, ``JPEG``...).

    ``name`` only labels error messages (it is the client's file name, never opened).
    """
    img = _decode(data, name)
    return _as_rgb(img, name), str(img.format or "")


def _as_rgb(img: Image.Image, path: str) -> Image.Image:
    try:
        mode = img.mode
        if mode in _WIDE_GRAY_MODES:
            return Image.fromarray(_wide_to_uint8(np.asarray(img), mode)).convert("RGB")
        if mode == "P":
            img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "RGBa", "La"):
            return _composite_on_black(img)
        if img.mode == "RGB":
            return img
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ZsadInputError(f"{path}: cannot read image: mode {img.mode}: {_one_line(str(e))}") from None


def load_mask(path: str | Path) -> Image.Image:
    """Read a mask as PIL 'L' with values {0, 255}: any non-zero pixel is defect (JPEG: from half range on).

    A folder of masks (MVTec LOCO) reads as their union.

    Binarising on the raw values matters: VisA stores masks as 0/1, 16-bit masks may use 1 or 65535, and
    rescaling to 8 bit first would erase a value of 1. Colour masks count a pixel as defect if any channel is
    non-zero; transparent pixels count as background.
    """
    path = Path(path)
    if path.is_dir():  # MVTec LOCO: one folder of masks per image, the defect is their union
        parts = [np.asarray(load_mask(p)) for p in sorted(path.iterdir()) if is_image_file(p)]
        if not parts:
            raise ZsadInputError(f"{path}: mask folder holds no mask images")
        if len({p.shape for p in parts}) > 1:
            raise ZsadInputError(f"{path}: the masks in this folder differ in size")
        return Image.fromarray(np.where(np.any(parts, axis=0), 255, 0).astype(np.uint8))
    img = _open(path)
    lossy = path.suffix.lower() in (".jpg", ".jpeg")
    try:
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "RGBa", "La"):
            arr = np.asarray(_composite_on_black(img))
        elif img.mode in ("1", "L", "RGB", *_WIDE_GRAY_MODES):
            arr = np.asarray(img)
        else:
            arr = np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ZsadInputError(f"{path}: cannot read mask: mode {img.mode}: {_one_line(str(e))}") from None
    if lossy:  # JPEG masks (Kvasir-SEG): compression noise around edges is not defect; cut at half range
        gray = arr.max(axis=-1) if arr.ndim == 3 else arr
        return Image.fromarray(np.where(gray >= 128, 255, 0).astype(np.uint8))
    if arr.ndim == 3:
        arr = np.asarray(arr.any(axis=-1))
    defect = np.nan_to_num(arr.astype(np.float64), nan=0.0) != 0
    return Image.fromarray(np.where(defect, 255, 0).astype(np.uint8))
