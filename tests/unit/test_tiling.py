"""Tiled scoring's exactness: plans cover every pixel with the asked overlap, stitching reproduces known maps
without seams, and a 1x1 grid is the untiled path itself (checked against the method's own forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.errors import ZsadInputError
from zsad.outputs import map_size
from zsad.tiling import EDGE_WEIGHT, TileSpec, plan_tiles, ramp, stitch

CASES = [
    (1000, 1000, TileSpec(None, 0.25), 240),
    (2048, 1536, TileSpec(None, 0.5), 240),
    (333, 4000, TileSpec(None, 0.25), 240),  # one row: the short side is padded
    (100, 90, TileSpec((3, 2), 0.25), 240),
    (2000, 3000, TileSpec((2, 3), 0.1), 518),
    (8000, 8000, TileSpec(None, 0.25), 518),
    (1200, 700, TileSpec((4, 4), 0.0), 240),
]


def _coverage(plan) -> np.ndarray:
    cover = np.zeros((plan.height, plan.width), dtype=np.int32)
    for t in plan.tiles:
        cover[t.y0 : t.y0 + t.size, t.x0 : t.x0 + t.size] += 1
    return cover


@pytest.mark.parametrize(("h", "w", "spec", "size"), CASES)
def test_plans_cover_every_pixel_with_the_asked_overlap(h: int, w: int, spec: TileSpec, size: int) -> None:
    plan = plan_tiles(h, w, spec, size)
    assert not plan.untiled and len(plan.tiles) > 1
    assert _coverage(plan).min() >= 1, "a pixel no tile covers"
    side = plan.tiles[0].size
    assert all(t.size == side for t in plan.tiles)
    if spec.grid is None:
        assert side == size  # auto: tiles at the backbone's input scale (1:1)
    for t in plan.tiles:  # inside the image, except on a side shorter than a tile (padded)
        assert t.y0 >= 0 and t.x0 >= 0
        assert t.y0 + t.size <= h or (t.y0 == 0 and h < side)
        assert t.x0 + t.size <= w or (t.x0 == 0 and w < side)
    for axis, extent in ((0, h), (1, w)):
        starts = sorted({(t.y0, t.x0)[axis] for t in plan.tiles})
        gaps = np.diff(starts)
        if len(gaps):
            assert gaps.max() <= side * (1 - spec.overlap) + 1, "less overlap than asked"
            assert starts[-1] + side == extent, "the last tile is not shifted back to the edge"


def test_small_images_and_one_by_one_are_untiled() -> None:
    assert plan_tiles(200, 240, TileSpec(None), 240).untiled
    assert plan_tiles(5000, 5000, TileSpec((1, 1)), 240).untiled
    assert plan_tiles(5000, 5000, TileSpec((1, 1)), 240).count == 1
    p = plan_tiles(1000, 1000, TileSpec(None, 0.25, global_pass=True), 240)
    assert p.count == len(p.tiles) + 1


def test_specs_parse_and_refuse_in_one_line() -> None:
    assert TileSpec.parse("none") is None and TileSpec.parse("") is None
    assert TileSpec.parse("auto") == TileSpec(None)
    s = TileSpec.parse("2x3+global", overlap=0.5, tile_size=300, score="map_max")
    assert s == TileSpec((2, 3), 0.5, 300, True, "map_max") and s.describe() == "2x3+global"
    for bad, msg in (("3by3", "use auto, RxC"), ("0x2", "1 to 4096 tiles")):
        with pytest.raises(ZsadInputError, match=msg):
            TileSpec.parse(bad)
    with pytest.raises(ZsadInputError, match="--tile-overlap 0.95"):
        TileSpec.parse("auto", overlap=0.95)
    with pytest.raises(ZsadInputError, match="--tile-score 'mean'"):
        TileSpec.parse("auto", score="mean")
    with pytest.raises(ZsadInputError, match="leaves gaps"):
        plan_tiles(1000, 1000, TileSpec((2, 2), 0.25, tile_size=300), 240)
    with pytest.raises(ZsadInputError, match="more than 4096"):
        plan_tiles(60000, 60000, TileSpec(None, 0.5, tile_size=64), 240)


def test_ramps_fade_only_toward_neighbours() -> None:
    w = ramp(10, 4, True, True)
    assert w[0] == pytest.approx(0.125) and w[-1] == pytest.approx(0.125) and w[4:6].tolist() == [1.0, 1.0]
    assert ramp(10, 4, False, False).tolist() == [1.0] * 10
    assert ramp(10, 4, False, True)[0] == 1.0 and ramp(10, 0, True, True).min() == 1.0
    assert ramp(3, 1000, True, True).min() >= EDGE_WEIGHT


@pytest.mark.parametrize(("h", "w", "spec", "size"), CASES[:5])
def test_a_constant_map_stitches_to_itself_no_seams(h: int, w: int, spec: TileSpec, size: int) -> None:
    """Weights in use sum to one everywhere: a constant tile map stitches to exactly that constant."""
    plan = plan_tiles(h, w, spec, size)
    out = map_size(h, w, 1024)
    got = stitch(np.full((len(plan.tiles), 32, 32), 0.37, np.float32), plan, out)
    assert got.shape == out and np.abs(got - 0.37).max() < 1e-6
    g = stitch(np.full((len(plan.tiles), 32, 32), 1.0, np.float32), plan, out, np.full((32, 32), 1.0, np.float32))
    assert np.abs(g - 1.0).max() < 1e-6


@pytest.mark.parametrize(
    ("h", "w", "spec", "size"),
    [CASES[0], CASES[3], (600, 900, TileSpec((2, 3), 0.1), 240), (500, 260, TileSpec(None, 0.5), 96)],
)
def test_tiling_a_known_map_reproduces_it(h: int, w: int, spec: TileSpec, size: int) -> None:
    """Tile maps cut from a known full-resolution map (each at its tile's own size, so no resampling is involved)
    stitch back to exactly that map: the blend only ever averages values of the same pixel."""
    plan = plan_tiles(h, w, spec, size)
    rng = np.random.default_rng(1)
    full = rng.random((h, w)).astype(np.float32)
    side = plan.tiles[0].size
    padded = np.pad(full, ((0, max(0, side - h)), (0, max(0, side - w))), mode="edge")
    tiles = np.stack([padded[t.y0 : t.y0 + side, t.x0 : t.x0 + side] for t in plan.tiles])
    got = stitch(tiles, plan, (h, w))
    assert np.abs(got - full).max() < 1e-6


def test_eight_thousand_pixels_stitch_in_bounded_memory() -> None:
    plan = plan_tiles(8000, 8000, TileSpec(None, 0.25), 518)
    assert len(plan.tiles) == 21 * 21
    out = stitch(np.zeros((len(plan.tiles), 37, 37), np.float32), plan, map_size(8000, 8000, 1024))
    assert out.shape == (1024, 1024) and out.dtype == np.float32


def test_one_by_one_is_the_untiled_forward_and_tiles_are_scored_as_images() -> None:
    from zsad.runs import MethodSpec, resize_map, score_tiled
    from zsad.runs.build import BackboneSpec

    method = MethodSpec("winclip", BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0), {}).build()
    method.setup("tile")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 410, 3), dtype=np.uint8))
    from zsad.data.transforms import squash_image

    pre = method.backbone.preprocess
    with torch.no_grad():
        ref = method.predict(squash_image(img, pre.image_size, pre.mean, pre.std)[None])
    one = score_tiled(method, img, TileSpec((1, 1)), batch_size=4, max_map_size=1024)
    assert one.score == float(ref.pred_score[0])
    assert np.array_equal(one.anomaly_map, resize_map(ref.anomaly_map[0].numpy(), (300, 410)))
    # a 2x2 grid: each tile scored as an image on its own crop; the score is the highest tile's
    spec = TileSpec((2, 2), 0.25)
    tiled = score_tiled(method, img, spec, batch_size=3, max_map_size=256)
    plan = tiled.plan
    assert len(tiled.tile_scores) == 4 and tiled.score == pytest.approx(tiled.tile_scores.max())
    t = plan.tiles[3]
    crop = img.crop((t.x0, t.y0, t.x0 + t.size, t.y0 + t.size))
    with torch.no_grad():
        alone = method.predict(squash_image(crop, pre.image_size, pre.mean, pre.std)[None])
    assert tiled.tile_scores[3] == pytest.approx(float(alone.pred_score[0]), rel=1e-5, abs=1e-6)
    assert tiled.anomaly_map.shape == map_size(300, 410, 256)


def _images(n: int, h: int, w: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def test_a_set_level_method_is_tiled_position_by_position(tiny_backbone) -> None:
    """Tiled MuSc: the set of tile (i, j) is that tile of every image; 1x1 is the untiled set; one size per set."""
    from zsad.data.transforms import squash_image
    from zsad.methods.registry import create_method
    from zsad.runs import resize_map, score_tiled_set
    from zsad.tiling import tile_tensor

    m = create_method("musc", tiny_backbone)
    m.setup("tile")
    pre = m.backbone.preprocess
    imgs = _images(3, 150, 200)
    untiled = m.predict_as_set(torch.stack([squash_image(i, pre.image_size, pre.mean, pre.std) for i in imgs]))[0]
    one = score_tiled_set(m, imgs, TileSpec((1, 1)), batch_size=2, max_map_size=1024)
    assert [r.score for r in one] == untiled.pred_score.tolist()
    assert np.array_equal(one[1].anomaly_map, resize_map(untiled.anomaly_map[1].numpy(), (150, 200)))
    spec = TileSpec((2, 2), 0.25, global_pass=True)
    got = score_tiled_set(m, imgs, spec, batch_size=2, max_map_size=100)
    plan = got[0].plan
    assert len(plan.tiles) == 4 and got[0].tile_scores.shape == (5,)
    t = plan.tiles[2]
    alone = m.predict_as_set(torch.stack([tile_tensor(i, t, pre.image_size, pre.mean, pre.std) for i in imgs]))[0]
    for i in range(3):
        assert got[i].tile_scores[2] == pytest.approx(float(alone.pred_score[i]), rel=1e-5)
        assert got[i].score == pytest.approx(got[i].tile_scores.max())
        assert got[i].anomaly_map.shape == map_size(150, 200, 100)
    with pytest.raises(ZsadInputError, match="need one size"):
        score_tiled_set(m, [*imgs, *_images(1, 151, 200)], spec, batch_size=2)


def test_references_are_tiled_like_the_images(tiny_backbone) -> None:
    from zsad.methods.registry import create_method
    from zsad.runs import setup_tiled

    m = create_method("winclip", tiny_backbone)
    spec = TileSpec(None, 0.25)
    refs = _images(2, 200, 300, seed=1)  # 96 px tiles: a 3 x 4 grid each
    n = setup_tiled(m, "tile", refs, spec)
    assert n == 2 * len(plan_tiles(200, 300, spec, m.backbone.preprocess.image_size).tiles) == 24
    assert setup_tiled(m, "tile", [], spec) == 0
