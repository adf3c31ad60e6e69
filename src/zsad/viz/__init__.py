"""Visualisation: heatmap overlays with an explicit colour range, mask contours, grids and PNG output."""

from zsad.viz.overlay import (
    COLORMAPS,
    GT_COLOR,
    PRED_COLOR,
    SCOPES,
    contour,
    draw_contour,
    gray,
    heatmap_overlay,
    image_grid,
    jet,
    normalize_maps,
    render_prediction,
    save_png,
)

__all__ = [
    "COLORMAPS",
    "GT_COLOR",
    "PRED_COLOR",
    "SCOPES",
    "contour",
    "draw_contour",
    "gray",
    "heatmap_overlay",
    "image_grid",
    "jet",
    "normalize_maps",
    "render_prediction",
    "save_png",
]
