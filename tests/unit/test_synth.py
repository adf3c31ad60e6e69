"""Pseudo-anomaly synthesis: exact mask areas, smooth noise, untouched backgrounds, rectangles, determinism, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from zsad.errors import ZsadInputError
from zsad.synth import paste_anomalies, perlin_masks, perlin_noise, synthesize

S = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: intra-op threads only add overhead, and under CPU contention a lot of it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 4, s: int = S, seed: int = 1) -> torch.Tensor:
    """Normalised-CLIP-like input: roughly zero-mean, unit-variance, far outside [0, 1]."""
    return 2.0 * torch.randn(b, 3, s, s, generator=_gen(seed)) - 0.5


def _is_rectangle(mask: torch.Tensor) -> bool:
    """True when the ones of a (S, S) binary mask fill exactly their bounding box."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return False
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return bool((box == 1).all()) and int(mask.sum()) == box.numel()


# ------------------------------------------------------------------------------------------------------ noise


def test_perlin_noise_is_smooth_and_bounded() -> None:
    noise = perlin_noise((S, S), (4, 4), _gen())
    assert noise.shape == (S, S) and noise.dtype == torch.float32
    assert noise.abs().max() <= 1.0 + 1e-5 and noise.std() > 0.1
    neighbour = torch.cat([(noise[1:] - noise[:-1]).abs().flatten(), (noise[:, 1:] - noise[:, :-1]).abs().flatten()])
    flat = noise.flatten()
    g = _gen(5)
    i, j = torch.randint(0, flat.numel(), (2, 20000), generator=g)
    random_pairs = (flat[i] - flat[j]).abs()
    assert neighbour.mean() < 0.3 * random_pairs.mean()


def test_perlin_noise_non_multiple_shape_and_determinism() -> None:
    a = perlin_noise((50, 70), (3, 4), _gen(3))
    assert a.shape == (50, 70)
    assert torch.equal(a, perlin_noise((50, 70), (3, 4), _gen(3)))
    assert not torch.equal(a, perlin_noise((50, 70), (3, 4), _gen(4)))


# ------------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("area", [0.05, 0.2, 0.5])
def test_masks_cover_exact_area(area: float) -> None:
    masks = perlin_masks(6, S, area, generator=_gen())
    assert masks.shape == (6, S, S)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    fractions = masks.mean(dim=(1, 2))
    assert torch.all((fractions - area).abs() <= 2 / S**2), fractions
    assert len({m.numpy().tobytes() for m in masks}) == 6  # each mask its own noise


def test_masks_area_range_draws_per_mask_targets() -> None:
    lo, hi = 0.1, 0.3
    fractions = perlin_masks(12, S, (lo, hi), generator=_gen()).mean(dim=(1, 2))
    assert torch.all(fractions >= lo - 1 / S**2) and torch.all(fractions <= hi + 1 / S**2)
    assert fractions.max() - fractions.min() > 0.03  # not one shared target


@pytest.mark.parametrize("area", [0, 1.0, -0.1, (0.3, 0.1), (0.0, 0.5)])
def test_bad_area_raises(area: float | tuple[float, float]) -> None:
    with pytest.raises(ZsadInputError, match="area") as info:
        perlin_masks(2, S, area, generator=_gen())
    assert "\n" not in str(info.value)
    with pytest.raises(ZsadInputError, match="area"):
        synthesize(_images(2, 16), n=2, area=area, seed=0)


# ------------------------------------------------------------------------------------------------------ pasting


def test_texture_changes_pixels_only_inside_mask() -> None:
    images = _images()
    masks = perlin_masks(4, S, 0.2, generator=_gen(2))
    out, used = paste_anomalies(images, masks, generator=_gen(3))
    assert torch.equal(used, masks)
    inside = masks.bool()[:, None].expand_as(images)
    assert torch.equal(out[~inside], images[~inside])
    changed = (out[inside] - images[inside]).abs() > 1e-4
    assert changed.float().mean() > 0.9


def test_texture_comes_from_another_image() -> None:
    """Constant images survive the augmentation as constants, so the pasted value names the source image."""
    values = torch.tensor([-3.0, -1.0, 2.0, 5.0, 7.0])
    images = values[:, None, None, None].expand(5, 3, 16, 16).clone()
    masks = perlin_masks(5, 16, 0.3, generator=_gen(2))
    out, _ = paste_anomalies(images, masks, generator=_gen(7), opacity=(1.0, 1.0))
    for b in range(5):
        pasted = out[b][:, masks[b].bool()]
        assert torch.allclose(pasted, pasted.flatten()[0].expand_as(pasted), atol=1e-5)
        v = float(pasted.flatten()[0])
        assert abs(v - float(values[b])) > 0.5  # never its own texture
        assert torch.isclose(values, torch.tensor(v), atol=1e-4).any()  # but some other test image


def test_texture_from_external_source_and_single_image() -> None:
    images = _images(2, 32)
    masks = perlin_masks(2, 32, 0.25, generator=_gen())
    source = _images(3, 48, seed=9)  # other size: resized to 32
    out, _ = paste_anomalies(images, masks, generator=_gen(1), source=source)
    inside = masks.bool()[:, None].expand_as(images)
    assert torch.equal(out[~inside], images[~inside])
    assert ((out[inside] - images[inside]).abs() > 1e-4).float().mean() > 0.9
    one, _ = paste_anomalies(images[:1], masks[:1], generator=_gen(1))  # no other image: mirrored + rolled self
    assert ((one[inside[:1]] - images[:1][inside[:1]]).abs() > 1e-4).float().mean() > 0.9
    assert torch.equal(one[~inside[:1]], images[:1][~inside[:1]])


@pytest.mark.parametrize("area", [0.05, 0.15, 0.4])
def test_cutpaste_pastes_one_rectangle_of_the_requested_area(area: float) -> None:
    images = _images(6)
    masks = perlin_masks(6, S, area, generator=_gen(4))
    out, rect = paste_anomalies(images, masks, generator=_gen(5), mode="cutpaste")
    assert rect.shape == (6, S, S)
    for b in range(6):
        assert _is_rectangle(rect[b])
        assert abs(float(rect[b].mean()) - area) < 0.3 * area
        outside = ~rect[b].bool()[None].expand(3, S, S)
        assert torch.equal(out[b][outside], images[b][outside])
        assert not torch.equal(out[b], images[b])


def test_bad_mode_raises() -> None:
    images = _images(2, 16)
    masks = perlin_masks(2, 16, 0.2, generator=_gen())
    with pytest.raises(ZsadInputError, match="mode"):
        paste_anomalies(images, masks, generator=_gen(), mode="poisson")
    with pytest.raises(ZsadInputError, match="mode"):
        synthesize(images, n=2, area=0.1, seed=0, mode="poisson")


# ------------------------------------------------------------------------------------------------------ synthesize


@pytest.mark.parametrize("mode", ["texture", "cutpaste", "mixed"])
def test_synthesize_is_deterministic(mode: str) -> None:
    images = _images(3, 32)
    a_img, a_mask = synthesize(images, n=5, area=(0.05, 0.2), seed=11, mode=mode)
    b_img, b_mask = synthesize(images, n=5, area=(0.05, 0.2), seed=11, mode=mode)
    c_img, c_mask = synthesize(images, n=5, area=(0.05, 0.2), seed=12, mode=mode)
    assert a_img.shape == (5, 3, 32, 32) and a_mask.shape == (5, 32, 32)
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    assert not torch.equal(a_img, c_img) and not torch.equal(a_mask, c_mask)


def test_synthesize_cycles_images_and_mixes_modes() -> None:
    images = _images(3, 32)
    out, masks = synthesize(images, n=7, area=0.2, seed=0, mode="mixed")
    for i in range(7):
        # every output is one of the inputs outside its mask, and each input is used (7 > 3 cycles through all)
        outside = ~masks[i].bool()[None].expand(3, 32, 32)
        matches = [b for b in range(3) if torch.equal(out[i][outside], images[b][outside])]
        assert len(matches) == 1
        if i % 2:  # cutpaste samples: rectangles of about the requested area
            assert _is_rectangle(masks[i]) and abs(float(masks[i].mean()) - 0.2) < 0.06
        else:  # texture samples: the exact Perlin area
            assert abs(float(masks[i].mean()) - 0.2) <= 1 / 32**2
