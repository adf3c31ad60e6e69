"""Position-aware ("radius") scoring of WinCLIP+'s reference memory and Dual-Image's visual path.

Each scoring function is checked against literal loops over patches and positions; the methods are checked
through ``predict``: no radius is today's result bit for bit, a radius past the grid is no radius, and a radius
reaches every scale (patches and each window size) with the positions the loops compute on their own.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.methods import dual_image as dual_module
from zsad.methods import winclip as winclip_module
from zsad.methods.dual_image import nearest_patch_distance
from zsad.methods.winclip import association_scores, window_centres, window_indices
from zsad.mutual import neighbourhood, within_radius

RADII = [0, 1, 2.5, None]
SMALL_PROMPTS = "adaclip"  # 48 sentences: the text is not what these tests are about, and it is encoded on a CPU


def _cheb(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


def _patch_positions(grid: tuple[int, int]) -> list[tuple[float, float]]:
    return [(float(r), float(c)) for r in range(grid[0]) for c in range(grid[1])]


def _window_positions(grid: tuple[int, int], scale: int) -> list[tuple[float, float]]:
    """Centres of the stride-1 windows, row-major, by loops: top-left (r, c) plus half the window's span."""
    half = (scale - 1) / 2
    return [(r + half, c + half) for r in range(grid[0] - scale + 1) for c in range(grid[1] - scale + 1)]


def _loop_association(
    query: torch.Tensor, refs: torch.Tensor, pos: list[tuple[float, float]], radius: float | None
) -> torch.Tensor:
    """(B, P, C) vs (K, P, C) at positions ``pos``: per query patch, min over the near reference patches of all K
    images of (1 - cos) / 2, by loops."""
    q, r = F.normalize(query.double(), dim=-1).tolist(), F.normalize(refs.double(), dim=-1).tolist()
    out = torch.zeros(query.shape[:2], dtype=torch.float64)
    for b, rows in enumerate(q):
        for p, f in enumerate(rows):
            best = math.inf
            for image in r:
                for m, g in enumerate(image):
                    if radius is None or _cheb(pos[p], pos[m]) <= radius:
                        best = min(best, (1 - sum(x * y for x, y in zip(f, g, strict=True))) / 2)
            out[b, p] = best
    return out


def _loop_visual(
    query: torch.Tensor, partners: torch.Tensor, grid: tuple[int, int], radius: float | None
) -> torch.Tensor:
    """(L, N, D), (P, L, N, D) unit -> (P, N): sum over layers of min over near partner patches, by loops."""
    pos = _patch_positions(grid)
    q, ps = query.double().tolist(), partners.double().tolist()
    out = torch.zeros(partners.shape[0], query.shape[1], dtype=torch.float64)
    for k, partner in enumerate(ps):
        for lyr, rows in enumerate(q):
            for i, f in enumerate(rows):
                near = [
                    (1 - sum(x * y for x, y in zip(f, g, strict=True))) / 2
                    for j, g in enumerate(partner[lyr])
                    if radius is None or _cheb(pos[i], pos[j]) <= radius
                ]
                out[k, i] += max(0.0, min(near))
    return out


def _mask(n_pos: list[tuple[float, float]], radius: float | None) -> torch.Tensor | None:
    if radius is None:
        return None
    t = torch.tensor(n_pos)
    return within_radius(t, t, radius)


# ---------------------------------------------------------------------- scoring functions against loops
@pytest.mark.parametrize("radius", RADII)
def test_association_scores_equal_loops_at_patch_scale(radius: float | None) -> None:
    grid = (4, 5)
    g = torch.Generator().manual_seed(0)
    query, refs = torch.randn(2, 20, 6, generator=g), torch.randn(3, 20, 6, generator=g)
    near = None if radius is None else neighbourhood(grid, radius)
    got = association_scores(query, refs.reshape(-1, 6), near)
    want = _loop_association(query, refs, _patch_positions(grid), radius)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("scale", [2, 3])
def test_association_scores_equal_loops_at_window_scale(radius: float | None, scale: int) -> None:
    grid = (5, 6)
    centres = window_centres(window_indices(grid, scale), grid)
    assert centres.tolist() == [list(p) for p in _window_positions(grid, scale)]  # the centre, in patch units
    g = torch.Generator().manual_seed(scale)
    n = centres.shape[0]
    query, refs = torch.randn(2, n, 6, generator=g), torch.randn(2, n, 6, generator=g)
    near = None if radius is None else within_radius(centres, centres, radius)
    got = association_scores(query, refs.reshape(-1, 6), near)
    want = _loop_association(query, refs, _window_positions(grid, scale), radius)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_window_centres_at_a_stride_keep_the_border_windows() -> None:
    """Stride 2 on 5 rows: window tops 0, 2 and the border top 3; centres half a patch further for 2x2."""
    centres = window_centres(window_indices((5, 5), 2, stride=2), (5, 5))
    assert sorted({r for r, _ in centres.tolist()}) == [0.5, 2.5, 3.5]
    assert within_radius(centres, centres, 0).equal(torch.eye(len(centres), dtype=torch.bool))


@pytest.mark.parametrize("radius", RADII)
def test_nearest_patch_distance_equals_loops(radius: float | None) -> None:
    grid = (3, 4)
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(2, 12, 5, generator=g), dim=-1)
    p = F.normalize(torch.randn(3, 2, 12, 5, generator=g), dim=-1)
    near = None if radius is None else neighbourhood(grid, radius)
    for budget in (12 * 12 * 4, 1 << 20):  # one partner per block, and every partner in one block
        got = nearest_patch_distance(q, p, budget, near)
        torch.testing.assert_close(got.double(), _loop_visual(q, p, grid, radius), atol=1e-6, rtol=0)


def test_a_radius_past_the_grid_is_no_radius_in_the_scoring_functions() -> None:
    grid = (3, 4)
    g = torch.Generator().manual_seed(2)
    q, refs = torch.randn(2, 12, 6, generator=g), torch.randn(24, 6, generator=g)
    everywhere = neighbourhood(grid, 4)
    assert everywhere.all()
    assert torch.equal(association_scores(q, refs, everywhere), association_scores(q, refs))
    qu, pu = F.normalize(q, dim=-1), F.normalize(torch.randn(3, 2, 12, 6, generator=g), dim=-1)
    assert torch.equal(nearest_patch_distance(qu, pu, 1 << 20, everywhere), nearest_patch_distance(qu, pu, 1 << 20))


# ---------------------------------------------------------------------- WinCLIP+ through predict
def _old_association(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The association score as it was before the option (frozen copy)."""
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(reference, dim=-1).T
    return (1.0 - cos).amin(-1) / 2.0


def _loop_mask(pos: list[tuple[float, float]], radius: float) -> torch.Tensor:
    return torch.tensor([[_cheb(a, b) <= radius for b in pos] for a in pos])


def _same(a, b) -> bool:
    return torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)


@pytest.fixture(scope="module")
def refs() -> torch.Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(9))


def _winclip(bb: ClipBackbone, refs: torch.Tensor, **opts: object):
    m = create_method("winclip", bb, prompt_set=SMALL_PROMPTS, **opts)
    m.setup("screw", reference_images=refs)
    return m


@pytest.fixture(scope="module")
def aligned(tiny_backbone: ClipBackbone, refs: torch.Tensor):
    """WinCLIP+ with a radius of 1.5 patches."""
    return _winclip(tiny_backbone, refs, radius=1.5)


def test_winclip_no_radius_is_todays_result(
    tiny_backbone: ClipBackbone, refs: torch.Tensor, images96: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = images96[:2]
    m = _winclip(tiny_backbone, refs)
    default = m.predict(x)
    assert _same(_winclip(tiny_backbone, refs, radius=6).predict(x), default)  # 6 >= the 6x6 grid: every position

    def frozen(e: torch.Tensor, r: torch.Tensor, near: torch.Tensor | None = None) -> torch.Tensor:
        assert near is None
        return _old_association(e, r)

    monkeypatch.setattr(winclip_module, "association_scores", frozen)
    assert _same(m.predict(x), default)


def test_winclip_radius_reaches_every_scale_with_loop_positions(
    aligned, tiny_backbone: ClipBackbone, refs: torch.Tensor, images96: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scale's score gets the mask of its own positions: patches on the grid, windows by their centres."""
    radius, m = 1.5, aligned
    grid = tiny_backbone.grid_size()
    want = {grid[0] * grid[1]: _loop_mask(_patch_positions(grid), radius)}
    want |= {(grid[0] - s + 1) * (grid[1] - s + 1): _loop_mask(_window_positions(grid, s), radius) for s in (2, 3)}
    seen: dict[int, torch.Tensor] = {}
    real = association_scores

    def spy(e: torch.Tensor, r: torch.Tensor, near: torch.Tensor | None = None) -> torch.Tensor:
        assert near is not None and r.shape[0] == refs.shape[0] * e.shape[1]  # K images x the same positions
        seen[e.shape[1]] = near.cpu()
        return real(e, r, near)

    monkeypatch.setattr(winclip_module, "association_scores", spy)
    m.predict(images96[:1])
    assert sorted(seen) == sorted(want)
    for n, mask in want.items():
        assert torch.equal(seen[n], mask), n


def test_winclip_reference_patches_moved_out_of_the_radius_no_longer_match(
    aligned, tiny_backbone: ClipBackbone, refs: torch.Tensor
) -> None:
    """A reference image as the query matches itself at its own position (distance 0, every scale); with its
    patches shifted 3 columns, only a radius >= 3 still finds them (why unaligned parts suffer)."""
    m = aligned
    _, patches, wins = m._encode(refs[:1], final_tokens=True)
    assert association_scores(patches, m.reference[0], m.near[0]).abs().max() < 1e-5
    for w, rw, near in zip(wins, m.reference[1], m.near[1:], strict=True):
        assert association_scores(w, rw, near).abs().max() < 1e-5
    grid = tiny_backbone.grid_size()
    moved = patches.reshape(1, *grid, -1).roll(3, dims=2).reshape(-1, patches.shape[-1])
    assert association_scores(patches, moved).abs().max() < 1e-5  # no radius: found wherever it moved to
    assert association_scores(patches, moved, neighbourhood(grid, 3)).abs().max() < 1e-5
    assert association_scores(patches, moved, neighbourhood(grid, 2.5)).min() > 1e-3


# ---------------------------------------------------------------------- Dual-Image through predict
def _dual(bb: ClipBackbone, **opts: object):
    m = create_method("dual-image", bb, prompt_set=SMALL_PROMPTS, mode="visual", partners=2, smoothing_sigma=0, **opts)
    m.setup("screw")  # the same class as WinCLIP's: its text is encoded once
    return m


@pytest.mark.parametrize("pairing", ["nearest", "all"])
def test_dual_image_no_radius_is_todays_result(
    tiny_backbone: ClipBackbone, images96: torch.Tensor, monkeypatch: pytest.MonkeyPatch, pairing: str
) -> None:
    x = images96[:2]
    m = _dual(tiny_backbone, pairing=pairing)
    default = m.predict(x)
    assert _same(_dual(tiny_backbone, pairing=pairing, radius=8).predict(x), default)  # 8 >= the 6x6 grid
    original = nearest_patch_distance

    def frozen(q: torch.Tensor, p: torch.Tensor, budget: int, near: torch.Tensor | None = None) -> torch.Tensor:
        assert near is None
        return original(q, p, budget)

    monkeypatch.setattr(dual_module, "nearest_patch_distance", frozen)
    assert _same(m.predict(x), default)


@pytest.mark.parametrize("pairing", ["nearest", "all"])
def test_dual_image_radius_uses_the_grid_positions(
    tiny_backbone: ClipBackbone, images96: torch.Tensor, monkeypatch: pytest.MonkeyPatch, pairing: str
) -> None:
    grid = tiny_backbone.grid_size()
    want = _loop_mask(_patch_positions(grid), 1)
    calls = []
    original = nearest_patch_distance

    def spy(q: torch.Tensor, p: torch.Tensor, budget: int, near: torch.Tensor | None = None) -> torch.Tensor:
        assert near is not None and torch.equal(near.cpu(), want)
        calls.append(p.shape[0])
        return original(q, p, budget, near)

    monkeypatch.setattr(dual_module, "nearest_patch_distance", spy)
    _dual(tiny_backbone, pairing=pairing, radius=1).predict(images96)
    assert calls


def test_nearest_patch_distance_misses_a_partner_moved_out_of_the_radius() -> None:
    grid = (4, 6)
    q = F.normalize(torch.randn(2, 24, 8, generator=torch.Generator().manual_seed(4)), dim=-1)
    moved = q.reshape(2, *grid, 8).roll(3, dims=2).reshape(1, 2, 24, 8)  # the same patches, 3 columns over
    assert nearest_patch_distance(q, moved, 1 << 20).abs().max() < 1e-6
    assert nearest_patch_distance(q, moved, 1 << 20, neighbourhood(grid, 3)).abs().max() < 1e-6
    assert nearest_patch_distance(q, moved, 1 << 20, neighbourhood(grid, 2.5)).min() > 1e-3


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize("name", ["winclip", "dual-image"])
def test_radius_is_an_option_recorded_only_when_set(tiny_backbone: ClipBackbone, name: str) -> None:
    assert "radius" not in create_method(name, tiny_backbone).describe()["config"]  # old run keys stay the same
    assert create_method(name, tiny_backbone, radius="2.5").describe()["config"]["radius"] == 2.5
    with pytest.raises(ZsadInputError, match="radius=-1"):
        create_method(name, tiny_backbone, radius=-1)


def test_rwda_refuses_a_radius_it_has_no_memory_for() -> None:
    from zsad.methods import get_method_class
    from zsad.methods.options import make_config

    with pytest.raises(ZsadInputError, match="rwda: option radius"):
        make_config(get_method_class("rwda").config_cls, {"radius": 1}, "rwda")
