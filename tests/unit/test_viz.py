"""Visualisation: colormap endpoints, contours, explicit colour scales."""

from __future__ import annotations

import numpy as np

from zsad.viz import contour, heatmap_overlay, image_grid, jet, normalize_maps, render_prediction


def test_jet_endpoints() -> None:
    c = jet(np.array([0.0, 0.5, 1.0]))
    assert c[0].tolist() == [0, 0, 128] and c[2].tolist() == [128, 0, 0]
    assert c[1, 1] == 255  # green at the middle


def test_contour_of_square_is_its_border() -> None:
    m = np.zeros((6, 6), bool)
    m[1:5, 1:5] = True
    expected = m.copy()
    expected[2:4, 2:4] = False
    assert (contour(m) == expected).all()


def test_scopes() -> None:
    maps = [np.array([[0.0, 1.0]]), np.array([[2.0, 4.0]])]
    assert normalize_maps(maps, "dataset") == [(0.0, 4.0), (0.0, 4.0)]
    assert normalize_maps(maps, "per_image") == [(0.0, 1.0), (2.0, 4.0)]


def test_overlay_and_panel_shapes() -> None:
    img = np.full((10, 12, 3), 100, np.uint8)
    amap = np.zeros((10, 12))
    over = heatmap_overlay(img, amap, 0.0, 1.0, alpha=1.0)
    assert over[0, 0].tolist() == [0, 0, 128]
    gt = np.zeros((10, 12), bool)
    gt[2:6, 2:6] = True
    panel = render_prediction(img, amap, 0.0, 1.0, gt_mask=gt, pred_mask=gt, score=0.5, label=True)
    assert panel.shape[1] == 2 * 12 + 3 * 4 and panel.dtype == np.uint8
    assert image_grid([img, img, img], ncols=2).shape == (2 * 10 + 3 * 4, 2 * 12 + 3 * 4, 3)
