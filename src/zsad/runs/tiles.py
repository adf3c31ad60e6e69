"""Tiled scoring of one large image by a per-image method (``zsad.tiling`` plans and stitches; this scores).

The tiles of an image are scored in batches of ``batch_size`` (an N-tile image costs N forwards, batched like any
other images), the maps are stitched in place at the output size, and the image score follows the spec's rule.
A 1x1 grid is the untiled path itself: the same squash, the same forward, the same map resize.

- **References** of a few-shot method are tiled the same way (``setup_tiled``) and all their tiles join the
  memory: a tile is compared with every reference tile, not only the one at its own position (position-aware
  scoring, for fixtured parts, is a separate option).
- **Set-level methods** (MuSc, Dual-Image; ``score_tiled_set``) score tile position by position: the set of tile
  (i, j) is that tile of every image, so tile (i, j) of an image is compared with tile (i, j) of the others (the
  images of a set must then share one size, hence one grid); the ``+global`` pass is the squashed images as a set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsad.errors import ZsadInputError
from zsad.methods.base import Method, SetLevelMethod
from zsad.outputs import map_size
from zsad.runs.scoring import resize_map
from zsad.tiling import (
    TilePlan,
    TileSpec,
    image_score,
    plan_tiles,
    stitch,
    tile_tensor,
    tile_tensors,
)


@dataclass
class TiledScore:
    """One image's tiled result: its score, its stitched map (original size, capped), and what it cost."""

    score: float
    anomaly_map: np.ndarray  # (H', W') float32
    tile_scores: np.ndarray  # (N,) the tiles' own scores, the global pass last
    plan: TilePlan


def score_tiled(
    method: Method, image: Image.Image, spec: TileSpec, batch_size: int, max_map_size: int = 1024
) -> TiledScore:
    """Score ``image`` tile by tile with ``method`` (set up already) and stitch the tiles' maps."""
    from zsad.data.transforms import squash_image

    if isinstance(method, SetLevelMethod):
        raise ZsadInputError(f"--tiles: {method.name} scores a set of images; tiling it is not supported yet")
    pre = method.backbone.preprocess
    plan = plan_tiles(image.height, image.width, spec, pre.image_size)
    out_hw = map_size(image.height, image.width, max_map_size)
    if plan.untiled:
        x = squash_image(image, pre.image_size, pre.mean, pre.std)[None]
        scores, maps = _predict(method, x, batch_size)
        return TiledScore(float(scores[0]), resize_map(maps[0], out_hw), scores, plan)
    x = tile_tensors(image, plan, pre.image_size, pre.mean, pre.std)
    scores, maps = _predict(method, x, batch_size)
    n = len(plan.tiles)
    stitched = stitch(maps[:n], plan, out_hw, maps[n] if plan.global_pass else None)
    return TiledScore(image_score(scores, stitched, spec.score), stitched, scores, plan)


def _predict(method: Method, x: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    with torch.no_grad():
        for chunk in torch.split(x, max(1, batch_size)):
            p = method.predict(chunk)
            scores.append(p.pred_score.detach().cpu().numpy().astype(np.float64))
            maps.append(p.anomaly_map.detach().cpu().numpy().astype(np.float32))
    return np.concatenate(scores), np.concatenate(maps)


def setup_tiled(method: Method, class_name: str | None, references: list[Image.Image], spec: TileSpec) -> int:
    """Set a few-shot method up with the tiles of its reference images (each cut by its own plan).

    Returns the number of reference tiles; without references it is ``prepare_method(method, class_name)``. The
    method's ``k_shot`` stays the number of reference *images* (what a run key and a manifest name), not tiles.
    """
    from zsad.runs.train import prepare_method

    pre = method.backbone.preprocess
    if not references:
        prepare_method(method, class_name)
        return 0
    parts = []
    for ref in references:
        plan = plan_tiles(ref.height, ref.width, spec, pre.image_size)
        if plan.untiled:
            from zsad.data.transforms import squash_image

            parts.append(squash_image(ref, pre.image_size, pre.mean, pre.std)[None])
        else:
            parts.append(tile_tensors(ref, plan, pre.image_size, pre.mean, pre.std))
    tiles = torch.cat(parts)
    prepare_method(method, class_name, tiles)
    method.k_shot = len(references)
    return len(tiles)


def score_tiled_set(
    method: SetLevelMethod, images: list[Image.Image], spec: TileSpec, batch_size: int, max_map_size: int = 1024
) -> list[TiledScore]:
    """A set-level method on a set of large images, tile position by tile position (see the module doc).

    Memory holds one tile position of the set at a time (its N crops), never every tile of every image.
    """
    from zsad.data.transforms import squash_image

    if not images:
        return []
    sizes = {(im.height, im.width) for im in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{w} x {h}" for h, w in sorted(sizes)[:3])
        raise ZsadInputError(
            f"--tiles with {method.name}: the images of a set are compared tile by tile, so they need one size "
            f"(got {listed}{', ...' if len(sizes) > 3 else ''})"
        )
    pre = method.backbone.preprocess
    (h, w), n = sizes.pop(), len(images)
    plan = plan_tiles(h, w, spec, pre.image_size)
    out_hw = map_size(h, w, max_map_size)
    rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]

    def as_set(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            preds = method.predict_as_set(x, batch_size)
        return (np.concatenate([p.pred_score.detach().cpu().numpy().astype(np.float64) for p in preds]),
                np.concatenate([p.anomaly_map.detach().cpu().numpy().astype(np.float32) for p in preds]))  # fmt: skip

    squashed = [squash_image(im, pre.image_size, pre.mean, pre.std) for im in rgb] if (
        plan.untiled or plan.global_pass
    ) else []  # fmt: skip
    if plan.untiled:
        scores, maps = as_set(torch.stack(squashed))
        return [TiledScore(float(scores[i]), resize_map(maps[i], out_hw), scores[i : i + 1], plan) for i in range(n)]
    t_scores = np.zeros((n, plan.count), dtype=np.float64)
    t_maps: list[np.ndarray] = []  # per position: (n, S, S)
    for k, t in enumerate(plan.tiles):
        s_k, m_k = as_set(torch.stack([tile_tensor(im, t, pre.image_size, pre.mean, pre.std) for im in rgb]))
        t_scores[:, k] = s_k
        t_maps.append(m_k)
    g_maps = None
    if plan.global_pass:
        t_scores[:, -1], g_maps = as_set(torch.stack(squashed))
    out = []
    for i in range(n):
        stitched = stitch(np.stack([m[i] for m in t_maps]), plan, out_hw, None if g_maps is None else g_maps[i])
        out.append(TiledScore(image_score(t_scores[i], stitched, spec.score), stitched, t_scores[i], plan))
    return out


@dataclass
class TiledRow:
    """One input file's tiled result, as a detect folder writes it."""

    path: str
    score: float
    anomaly_map: np.ndarray  # stitched, at the original size capped by max_map_size
    size: tuple[int, int]  # the image's (H, W)


def score_files_tiled(
    method: Method,
    files: Sequence[Path | str],
    spec: TileSpec,
    batch_size: int,
    max_map_size: int,
    *,
    skip_paths: set[str] | None = None,
    skip_bad: bool = False,
    on_error: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[TiledRow]:
    """Score image files tiled, one file at a time (each read at full resolution, only while it is scored).

    A per-image method yields each file as it is done (a crash loses at most the image in flight). A set-level
    method needs the whole set at once: every readable file is read (already-scored ones too: they are partners),
    scored tile position by tile position, and only the files not in ``skip_paths`` are yielded. An unreadable
    file goes to ``on_error`` with ``skip_bad`` and stops the run otherwise.
    """
    from zsad.data import load_image

    done = skip_paths or set()

    def read(path: str) -> Image.Image | None:
        try:
            return load_image(path)
        except ZsadInputError as e:
            if not skip_bad:
                raise
            if on_error is not None and path not in done:
                on_error({"image_path": path, "error": str(e)})
            return None

    if not isinstance(method, SetLevelMethod):
        for f in files:
            path = str(f)
            if path in done or (image := read(path)) is None:
                continue
            t = score_tiled(method, image, spec, batch_size, max_map_size)
            yield TiledRow(path, t.score, t.anomaly_map, (image.height, image.width))
        return
    if all(str(f) in done for f in files):
        return
    loaded = [(str(f), im) for f in files if (im := read(str(f))) is not None]
    if not loaded:
        return
    results = score_tiled_set(method, [im for _, im in loaded], spec, batch_size, max_map_size)
    for (path, im), t in zip(loaded, results, strict=True):
        if path not in done:
            yield TiledRow(path, t.score, t.anomaly_map, (im.height, im.width))


def tiled_normals(
    method: Method, images: list[Image.Image], spec: TileSpec, batch_size: int, max_map_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, stitched-map maxima) of known-normal images scored tiled, as the images they calibrate are.

    A set-level method scores them as their own set, as the untiled calibration does.
    """
    if isinstance(method, SetLevelMethod):
        got = score_tiled_set(method, images, spec, batch_size, max_map_size)
    else:
        got = [score_tiled(method, im, spec, batch_size, max_map_size) for im in images]
    return (np.array([t.score for t in got], dtype=np.float64),
            np.array([float(t.anomaly_map.max()) for t in got], dtype=np.float64))  # fmt: skip


def refuse_tiled_rescaling(cls: type[Method], config: Any, tiles: TileSpec | None) -> None:
    """Refuse tiles with a set-wide re-scaling of image scores (sdp's transductive min-max), in every front end.

    The re-scaling needs per-image score parts; a tiled image has one per tile, so the two are refused together
    rather than combined silently. Asked of the class and its config, so it is said before any model is built.
    """
    rescales = cls.transductive_for(config) and cls.finalize_scores is not Method.finalize_scores
    if tiles is not None and rescales:
        raise ZsadInputError(
            f"--tiles: {cls.name} re-scales image scores over the whole set (transductive), which tiled scoring "
            "cannot carry through; turn that option off or score untiled"
        )
