"""Tiled scoring of one large image by a per-image method (``zsad.tiling`` plans and stitches; this scores).

The tiles of an image are scored in batches of ``batch_size`` (an N-tile image costs N forwards, batched like any
other images), the maps are stitched in place at the output size, and the image score follows the spec's rule.
A 1x1 grid is the untiled path itself: the same squash, the same forward, the same map resize.

This first stage scores one image at a time with a method already set up (its references, if any, as they were
given: whole images); tiled references, set-level methods and the front ends' options come next (issue 29).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from zsad.errors import ZsadInputError
from zsad.methods.base import Method, SetLevelMethod
from zsad.runs.scoring import resize_map
from zsad.tiling import TilePlan, TileSpec, image_score, output_size, plan_tiles, stitch, tile_tensors


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
    out_hw = output_size(image.height, image.width, max_map_size)
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
