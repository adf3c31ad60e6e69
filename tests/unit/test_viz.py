"""Overlays: colormap values, contours, colour-scale scope, grids and the prediction panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad.viz import (
    GT_COLOR,
    PRED_COLOR,
    contour,
    draw_contour,
    heatmap_overlay,
    image_grid,
    jet,
    normalize_maps,
    render_prediction,
    save_png,
)


def test_jet_endpoints_and_middle() -> None:
    assert jet(np.array(0.0)).tolist() == [0, 0, 128]  # dark blue
    assert jet(np.array(1.0)).tolist() == [128, 0, 0]  # dark red
    assert jet(np.array(0.5)).tolist() == [123, 255, 123]  # green: r = b = 0.15 / 0.31
    assert jet(np.array([-3.0, 7.0, np.nan])).tolist() == [[0, 0, 128], [128, 0, 0], [0, 0, 128]]
    assert jet(np.zeros((2, 3))).shape == (2, 3, 3)


def test_contour_of_a_square_is_its_border() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:7, 3:8] = True
    expected = mask.copy()
    expected[3:6, 4:7] = False  # the interior is not boundary
    assert (contour(mask) == expected).all()
    edge = np.zeros((4, 4), dtype=bool)
    edge[:, :2] = True  # touching the image border: the border pixels are boundary too
    assert contour(edge)[:, 0].all() and contour(edge)[:, 1].all()
    assert not contour(np.zeros((3, 3))).any()


def test_draw_contour_paints_only_the_boundary() -> None:
    img = np.full((10, 10, 3), 50, dtype=np.uint8)
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:7, 3:8] = True
    out = draw_contour(img, mask, PRED_COLOR)
    assert (out[contour(mask)] == PRED_COLOR).all()
    assert (out[~contour(mask)] == 50).all() and (img == 50).all()  # input untouched
    assert (draw_contour(img, mask)[2, 3] == GT_COLOR).all()


def test_dataset_scope_keeps_normal_maps_blue() -> None:
    normal = np.array([[0.0, 0.1]])
    anomalous = np.array([[0.0, 3.0]])
    assert normalize_maps([normal, anomalous], "dataset") == [(0.0, 3.0), (0.0, 3.0)]
    assert normalize_maps([normal, anomalous], "per_image") == [(0.0, 0.1), (0.0, 3.0)]
    assert normalize_maps(np.stack([normal, anomalous])) == [(0.0, 3.0), (0.0, 3.0)]  # default: dataset
    img = np.zeros((1, 2, 3), dtype=np.uint8)
    (lo, hi), _ = normalize_maps([normal, anomalous], "dataset")
    shared = heatmap_overlay(img, normal, lo, hi, alpha=1.0)
    own = heatmap_overlay(img, normal, *normalize_maps([normal], "per_image")[0], alpha=1.0)
    assert shared[0, 1].tolist() == jet(np.array(0.1 / 3.0)).tolist()  # still blue
    assert own[0, 1].tolist() == [128, 0, 0]  # the same normal map looks maximally red on its own scale
    with pytest.raises(ValueError, match="scope"):
        normalize_maps([normal], "global")


def test_heatmap_overlay_blend_and_resize() -> None:
    img = np.full((4, 6, 3), 100, dtype=np.uint8)
    amap = np.zeros((2, 3), dtype=np.float32)  # model resolution: resized to the image
    assert (heatmap_overlay(img, amap, 0.0, 1.0, alpha=0.0) == 100).all()
    full = heatmap_overlay(img, amap, 0.0, 1.0, alpha=1.0)
    assert full.shape == (4, 6, 3) and (full == [0, 0, 128]).all()
    half = heatmap_overlay(img, amap, 0.0, 1.0, alpha=0.5)
    assert half[0, 0].tolist() == [50, 50, 114]  # (100 + jet) / 2
    flat = heatmap_overlay(img[..., 0], amap + 5.0, 5.0, 5.0, alpha=1.0)  # gray input, empty range
    assert (flat == [0, 0, 128]).all()


def test_image_grid_layout() -> None:
    tiles = [np.full((10, 20, 3), v, dtype=np.uint8) for v in (1, 2, 3)]
    grid = image_grid(tiles, ncols=2, pad=2)
    assert grid.shape == (2 * 10 + 3 * 2, 2 * 20 + 3 * 2, 3)
    assert grid[2, 2].tolist() == [1, 1, 1] and grid[2, 24].tolist() == [2, 2, 2] and grid[14, 2].tolist() == [3, 3, 3]
    assert grid[14, 24].tolist() == [255, 255, 255]  # empty cell


@pytest.mark.parametrize("scope", ["dataset", "per_image"])
def test_render_prediction_panel(tmp_path: Path, scope: str) -> None:
    img = np.full((32, 48, 3), 90, dtype=np.uint8)
    amap = np.zeros((16, 16), dtype=np.float32)
    amap[4:8, 4:8] = 1.0
    gt = np.zeros((32, 48), dtype=bool)
    gt[18:26, 30:40] = True  # apart from the predicted blob, so red does not paint over white
    panel = render_prediction(
        img, amap, 0.0, 1.0, gt_mask=gt, pred_mask=amap > 0.5, score=0.93, label=True, scope=scope
    )
    assert panel.dtype == np.uint8 and panel.shape[1] == 2 * 48 + 3 * 4 and panel.shape[0] > 32 + 8
    assert (panel[4 : 4 + 32, 4 : 4 + 48] == img).all()  # left: the untouched input
    overlay = panel[4 : 4 + 32, 56 : 56 + 48]
    assert (overlay[contour(gt)] == GT_COLOR).all()
    assert (overlay == PRED_COLOR).all(axis=-1).any()
    caption = panel[32 + 8 :]
    assert (caption < 128).any()  # some text was drawn
    out = save_png(tmp_path / "sub" / "panel.png", panel)
    with Image.open(out) as saved:
        assert np.array_equal(np.asarray(saved), panel)


def test_render_prediction_narrow_panel_keeps_the_caption_readable() -> None:
    """A caption part wider than a tiny panel widens the panel instead of being cut off."""
    panel = render_prediction(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), 0.0, 1.0, scope="per_image")
    assert panel.shape[1] > 2 * 8 + 3 * 4
    caption = panel[8 + 2 * 4 :]
    cols = np.nonzero((caption < 128).any(axis=(0, 2)))[0]
    assert cols.size and cols.max() < panel.shape[1] - 2  # text ends inside the panel
