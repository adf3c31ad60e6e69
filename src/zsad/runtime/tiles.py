"""Tiled scoring of large images with an exported model, torch-free: the graph scores tiles, numpy cuts and stitches.

The graph needs no change: a tile is an image at the model's size. Everything around it is ``zsad.tiling``
(torch-free) and the runtime's own preprocessing, step for step what ``zsad.runs.tiles.score_tiled`` does on the
torch path: plan the tiles, cut each crop (``tile_crop``, edge-repeat padding), preprocess it as an image (the same
bicubic resize and normalisation as ``squash_image``), the ``+global`` pass as the whole image preprocessed, run
them through the graph ``batch_size`` at a time, stitch, and score the image by the spec's rule. A 1x1 plan (or an
image no larger than a tile) is the untiled path: the whole image squashed, its map resized to the output size.

The spec travels in two records with one shape: the run key / manifest ``tiles`` section of a detect folder
(``tile_record``, equal to ``zsad.runs.detect.tile_key``) and the default an export records in its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.outputs import map_size
from zsad.tiling import TilePlan, TileSpec, image_score, plan_tiles, resize_bilinear, stitch, tile_crop

if TYPE_CHECKING:
    from PIL import Image

    from zsad.runtime.model import ExportedModel


@dataclass
class RuntimeTiledScore:
    """One image scored tiled: its score, its stitched map (original size, capped) and its tiles' own scores."""

    score: float
    anomaly_map: np.ndarray  # (H', W') float32
    tile_scores: np.ndarray  # (N,) the global pass last; (1,) when untiled
    plan: TilePlan


def tile_record(spec: TileSpec | None) -> dict[str, Any] | None:
    """The ``tiles`` section of a run key, a detect manifest and an export manifest (None: no tiling)."""
    return None if spec is None else spec.record()


def spec_of_record(record: Any, where: Path | str) -> TileSpec | None:
    """The ``TileSpec`` a manifest's ``tiles`` record names (None or absent: no tiling); one line if it is bad.

    A manifest may be edited by hand: ``TileSpec.from_record`` checks every field as the command line does.
    """
    return None if record is None else TileSpec.from_record(record, f"{where}: tiles")


def predict_tiled(
    model: ExportedModel, image: Image.Image, spec: TileSpec, batch_size: int, max_map_size: int
) -> RuntimeTiledScore:
    """Score one image tile by tile through ``model``'s graph and stitch the maps (see the module doc)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    plan = plan_tiles(rgb.height, rgb.width, spec, model.image_size)
    out_hw = map_size(rgb.height, rgb.width, max_map_size)
    if plan.untiled:
        scores, maps = _run(model, [model.preprocess(rgb)], batch_size)
        return RuntimeTiledScore(float(scores[0]), resize_bilinear(maps[0], out_hw), scores, plan)
    inputs = [model.preprocess(tile_crop(rgb, t)) for t in plan.tiles]
    if plan.global_pass:
        inputs.append(model.preprocess(rgb))
    scores, maps = _run(model, inputs, batch_size)
    n = len(plan.tiles)
    stitched = stitch(maps[:n], plan, out_hw, maps[n] if plan.global_pass else None)
    return RuntimeTiledScore(image_score(scores, stitched, spec.score), stitched, scores, plan)


def _run(model: ExportedModel, inputs: list[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The inputs through the graph ``batch_size`` at a time: (scores float64, maps float32), as the torch path."""
    step = max(1, batch_size)
    scores, maps = [], []
    for start in range(0, len(inputs), step):
        pred = model.predict_arrays(np.stack(inputs[start : start + step]))
        scores.append(pred.pred_score.astype(np.float64))
        maps.append(pred.anomaly_map.astype(np.float32))
    return np.concatenate(scores), np.concatenate(maps)
