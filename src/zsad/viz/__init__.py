"""Visualisation: heatmap overlays, contours, grids."""

from zsad.viz.overlay import (
    contour,
    draw_contour,
    heatmap_overlay,
    image_grid,
    jet,
    normalize_maps,
    render_prediction,
    save_png,
)

__all__ = [
    "contour",
    "draw_contour",
    "heatmap_overlay",
    "image_grid",
    "jet",
    "normalize_maps",
    "render_prediction",
    "save_png",
]
