"""Tiled scoring of large images: cut into overlapping tiles at the backbone's input scale, stitch the maps back.

Every method squashes the whole image to the backbone's input (240 to 518 px), so on a 5-megapixel board a
0.3 mm defect is less than one patch. Tiling looks at the image at the resolution the defect lives at:

- **Tiles are square crops** of side ``T`` original pixels (``tile_size``; by default the backbone's input size,
  so a tile is seen at 1:1). Each crop is resized uniformly to the input size: no squash inside a tile, the
  aspect ratio kept. ``auto`` takes as many rows and columns as cover the image with at least ``overlap``
  (a fraction of ``T``) between neighbours; ``RxC`` fixes the grid and makes ``T`` as small as covers the image.
- **Borders**: tiles start on an even spread from 0 to ``H - T`` (the last tile is shifted back inside the image,
  so overlaps near the end may be larger than asked); only a side shorter than ``T`` is padded (edge pixels
  repeated, so the padding adds no edge of its own), and padded pixels never reach the stitched map.
- **A 1x1 grid is the untiled path** (the whole image squashed to the input), so ``--tiles 1x1`` scores exactly
  as no tiling does.
- **Stitching**: each tile map is resized to its box in the output map (the original size, capped by
  ``max_map_size``) and blended with separable weights that are 1 in a tile's interior and fall linearly to
  ``EDGE_WEIGHT`` across the overlap width at its edges: ``map = sum_i w_i m_i / sum_i w_i``, so the weights in use
  sum to one at every pixel and a constant map stitches to the same constant. At the image's own border the
  ramp is not applied (no neighbour to hand over to).
- **``+global``** adds the whole image, squashed, as one more tile covering everything with weight 1: large
  defects that no tile sees whole are not lost.
- **Image score**: ``max_tile`` (default), the highest of the tiles' image scores (each tile is scored as an image
  by the method, its calibration intact), or ``map_max``, the maximum of the stitched map.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from zsad.errors import ZsadInputError

if TYPE_CHECKING:
    import torch

EDGE_WEIGHT = 1e-3  # a tile's weight at its outer edge inside the image: small but never 0 (sum_w > 0 everywhere)
MAX_TILES = 4096  # per image (an 8,000 px side in 518 px tiles with 25 % overlap is a 21 x 21 grid: 441)
ScoreRule = Literal["max_tile", "map_max"]
SCORE_RULES: tuple[str, ...] = ("max_tile", "map_max")
_GRID = re.compile(r"(?:(auto)|(\d+)x(\d+))(\+global)?")


@dataclass(frozen=True)
class TileSpec:
    """How to tile (``--tiles``, ``--tile-overlap``, ``--tile-size``, ``--tile-score``)."""

    grid: tuple[int, int] | None = None  # (rows, cols); None = auto
    overlap: float = 0.25
    tile_size: int | None = None  # original pixels per tile side; None = the backbone's input size
    global_pass: bool = False
    score: str = "max_tile"

    @classmethod
    def parse(
        cls, text: str, overlap: float = 0.25, tile_size: int | None = None, score: str = "max_tile"
    ) -> TileSpec | None:
        """``auto``, ``RxC``, either with ``+global``; ``none`` (or empty) is no tiling (None)."""
        t = (text or "").strip().lower()
        if t in ("", "none", "off"):
            return None
        m = _GRID.fullmatch(t)
        if m is None:
            raise ZsadInputError(f"--tiles {text!r}: use auto, RxC (e.g. 2x3), either with +global, or none")
        grid = None if m.group(1) else (int(m.group(2)), int(m.group(3)))
        spec = cls(grid, float(overlap), tile_size, bool(m.group(4)), score)
        spec.check()
        return spec

    def check(self) -> None:
        """One line per bad setting."""
        if self.grid is not None and (min(self.grid) < 1 or self.grid[0] * self.grid[1] > MAX_TILES):
            raise ZsadInputError(f"--tiles {self.grid[0]}x{self.grid[1]}: 1 to {MAX_TILES} tiles per image")
        if not (0.0 <= self.overlap < 0.9) or not math.isfinite(self.overlap):
            raise ZsadInputError(f"--tile-overlap {self.overlap}: a fraction of the tile from 0 to 0.9 (e.g. 0.25)")
        if self.tile_size is not None and not (16 <= self.tile_size <= 65536):
            raise ZsadInputError(f"--tile-size {self.tile_size}: 16 to 65536 original pixels")
        if self.score not in SCORE_RULES:
            raise ZsadInputError(f"--tile-score {self.score!r}: use one of {', '.join(SCORE_RULES)}")

    def describe(self) -> str:
        """The grid as typed (``auto``, ``2x3+global``...)."""
        g = "auto" if self.grid is None else f"{self.grid[0]}x{self.grid[1]}"
        return g + ("+global" if self.global_pass else "")

    def record(self) -> dict[str, Any]:
        """As run keys, manifests, answers and profiles record it (``from_record`` reads it back)."""
        return {"grid": self.describe(), "overlap": self.overlap, "tile_size": self.tile_size, "score": self.score}

    @classmethod
    def from_record(cls, record: Any, where: str = "tiles") -> TileSpec:
        """A recorded spec (``record``'s output), every field checked as the command line checks it.

        A manifest or a client's request may hold anything, so a bad record is one line naming ``where``.
        """
        fields = ("grid", "overlap", "tile_size", "score")
        if not isinstance(record, dict) or set(record) != set(fields):
            raise ZsadInputError(f"{where}: a tile setting is an object with {', '.join(fields)}, got {record!r}")
        grid, overlap, size, score = (record[k] for k in fields)
        number = isinstance(overlap, int | float) and not isinstance(overlap, bool)
        whole = size is None or (isinstance(size, int) and not isinstance(size, bool))
        if not (isinstance(grid, str) and number and whole and isinstance(score, str)):
            raise ZsadInputError(
                f"{where}: tiles {record!r}: grid a text (auto, RxC[+global]), overlap a number, tile_size a whole "
                "number or null, score a text"
            )
        try:
            spec = cls.parse(grid, float(overlap), size, score)
        except ZsadInputError as e:
            raise ZsadInputError(f"{where}: {e}") from None
        if spec is None:
            raise ZsadInputError(f"{where}: tiles.grid {grid!r}: no tiling is recorded as no tile setting at all")
        return spec


def tile_key(tiles: TileSpec | None) -> dict[str, Any]:
    """The ``tiles`` section of a run key, manifest or profile setup.

    Absent without tiling, so what was recorded before tiling existed stays the same.
    """
    return {} if tiles is None else {"tiles": tiles.record()}


@dataclass(frozen=True)
class Tile:
    """One crop, in original pixels: its box may pass the image's bottom or right edge (that part is padding)."""

    y0: int
    x0: int
    size: int


@dataclass
class TilePlan:
    """The tiles of one image of ``height`` x ``width``; ``untiled`` when the grid is 1x1 (the plain path)."""

    height: int
    width: int
    tiles: list[Tile] = field(default_factory=list)
    overlap_px: int = 0
    global_pass: bool = False
    untiled: bool = False

    @property
    def count(self) -> int:
        """Forwards this image costs: its tiles, plus the global pass (or 1 when untiled)."""
        return 1 if self.untiled else len(self.tiles) + int(self.global_pass)


def _starts(extent: int, size: int, n: int) -> list[int]:
    """``n`` starts from 0 to ``extent - size``, evenly spread (the last tile shifted back inside the image).

    A side no longer than a tile has one start, 0 (the tile's excess is padding).
    """
    if extent <= size:
        return [0]
    if n < 2:
        raise AssertionError("tiling: one tile cannot cover a side longer than a tile")
    return [round(i * (extent - size) / (n - 1)) for i in range(n)]


def plan_tiles(height: int, width: int, spec: TileSpec, input_size: int) -> TilePlan:
    """Where the tiles of an image lie (see the module doc)."""
    if height < 1 or width < 1:
        raise ZsadInputError(f"image of {width} x {height}: nothing to tile")
    o = spec.overlap
    if spec.grid is not None:
        rows, cols = spec.grid
        if (rows, cols) == (1, 1):
            return TilePlan(height, width, untiled=True)
        side = spec.tile_size or math.ceil(max(height / (rows - (rows - 1) * o), width / (cols - (cols - 1) * o)))
        if (rows > 1 and height <= side) or (cols > 1 and width <= side):
            rows, cols = (1 if height <= side else rows), (1 if width <= side else cols)  # a side one tile covers
        if rows * side < height or cols * side < width:
            raise ZsadInputError(
                f"--tiles {rows}x{cols} --tile-size {side}: leaves gaps in an image of {width} x {height}"
            )
    else:
        side = spec.tile_size or input_size
        if height <= side and width <= side:
            return TilePlan(height, width, untiled=True, global_pass=False)
        step = side * (1.0 - o)
        rows = 1 if height <= side else math.ceil((height - side) / step) + 1
        cols = 1 if width <= side else math.ceil((width - side) / step) + 1
    if rows * cols > MAX_TILES:
        raise ZsadInputError(
            f"image of {width} x {height}: {rows} x {cols} tiles of {side} px, more than {MAX_TILES}; "
            "give a larger --tile-size or a smaller grid"
        )
    ys, xs = _starts(height, side, rows), _starts(width, side, cols)
    tiles = [Tile(y, x, side) for y in ys for x in xs]
    return TilePlan(height, width, tiles, round(o * side), spec.global_pass)


def tile_tensors(
    image: Image.Image, plan: TilePlan, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """The plan's tiles as the model's input (N, 3, S, S), the global pass last; each crop scaled uniformly to S.

    A crop past the image's edge is filled by repeating the edge pixels (``plan_tiles`` only lets that happen on a
    side shorter than a tile).
    """
    import torch

    from zsad.data.transforms import squash_image

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    out = [tile_tensor(rgb, t, size, mean, std) for t in plan.tiles]
    if plan.global_pass:
        out.append(squash_image(rgb, size, mean, std))
    return torch.stack(out)


def tile_tensor(rgb: Image.Image, t: Tile, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """One tile of an RGB image as the model's input (3, S, S), padded by edge repeat past the image."""
    from zsad.data.transforms import squash_image

    return squash_image(tile_crop(rgb, t), size, mean, std)  # square into square: a uniform scale, no squash


def tile_crop(rgb: Image.Image, t: Tile) -> Image.Image:
    """One tile of an RGB image, square, padded by edge repeat past the image (torch-free: the runtime cuts too)."""
    crop = rgb.crop((t.x0, t.y0, min(rgb.width, t.x0 + t.size), min(rgb.height, t.y0 + t.size)))
    if crop.size != (t.size, t.size):
        a = np.asarray(crop)
        a = np.pad(a, ((0, t.size - a.shape[0]), (0, t.size - a.shape[1]), (0, 0)), mode="edge")
        crop = Image.fromarray(a)
    return crop


def resize_bilinear(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W) bilinear with half-pixel centres and edge clamping: torch's ``align_corners=False``."""
    h, w = amap.shape
    out_h, out_w = size

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, None)
        lo = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo).astype(np.float32)

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    a = amap.astype(np.float32)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return (top * (1 - wy)[:, None] + bottom * wy[:, None]).astype(np.float32)


def ramp(n: int, width: float, fade_start: bool, fade_end: bool) -> np.ndarray:
    """1-D weights over ``n`` pixels: 1 inside, falling linearly to ``EDGE_WEIGHT`` over ``width`` at faded ends."""
    i = np.arange(n, dtype=np.float64) + 0.5
    w = np.ones(n, dtype=np.float64)
    if width > 0:
        if fade_start:
            w = np.minimum(w, i / width)
        if fade_end:
            w = np.minimum(w, (n - i) / width)
    return np.clip(w, EDGE_WEIGHT, 1.0)


def stitch(
    maps: np.ndarray,
    plan: TilePlan,
    out_hw: tuple[int, int],
    global_map: np.ndarray | None = None,
) -> np.ndarray:
    """The tiles' maps (N, S, S), in ``plan.tiles`` order, blended into one (H', W') map (see the module doc).

    Built in place: one float64 sum and one weight array of the output's size, whatever the number of tiles.
    """
    oh, ow = out_hw
    fy, fx = oh / plan.height, ow / plan.width
    acc = np.zeros((oh, ow), dtype=np.float64)
    wsum = np.zeros((oh, ow), dtype=np.float64)
    for amap, t in zip(maps, plan.tiles, strict=True):
        # the tile's box in output pixels; the part past the image (padding) is cut off after resizing
        y0, x0 = round(t.y0 * fy), round(t.x0 * fx)
        th, tw = max(1, round(t.size * fy)), max(1, round(t.size * fx))
        m = resize_bilinear(amap, (th, tw))
        y1, x1 = min(oh, y0 + th), min(ow, x0 + tw)
        wy = ramp(th, plan.overlap_px * fy, t.y0 > 0, t.y0 + t.size < plan.height)[: y1 - y0]
        wx = ramp(tw, plan.overlap_px * fx, t.x0 > 0, t.x0 + t.size < plan.width)[: x1 - x0]
        w = wy[:, None] * wx[None, :]
        acc[y0:y1, x0:x1] += w * m[: y1 - y0, : x1 - x0]
        wsum[y0:y1, x0:x1] += w
    if global_map is not None:
        acc += resize_bilinear(global_map, (oh, ow))
        wsum += 1.0
    if not np.all(wsum > 0):
        raise AssertionError("tiling: a pixel no tile covers (a bug in plan_tiles)")
    return (acc / wsum).astype(np.float32)


def image_score(tile_scores: np.ndarray, stitched: np.ndarray, rule: str) -> float:
    """The image's score from its tiles' scores (global pass included) or from the stitched map."""
    if rule == "max_tile":
        return float(np.max(tile_scores))
    if rule == "map_max":
        return float(np.max(stitched))
    raise ZsadInputError(f"--tile-score {rule!r}: use one of {', '.join(SCORE_RULES)}")
