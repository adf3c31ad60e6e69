"""MuSc's backbone-free parts against literal slow references written from the paper's description."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsad.mutual import interval, lnamd, mutual_scores, rscin


def _lnamd_slow(tokens: np.ndarray, grid: tuple[int, int], r: int) -> np.ndarray:
    """Per image: LayerNorm over all (C, H, W) values, r x r zero-padded neighbourhood mean per channel, unit norm."""
    b, n, c = tokens.shape
    gh, gw = grid
    out = np.zeros((b, n, c))
    pad = (r - 1) // 2
    for i in range(b):
        x = tokens[i].T.reshape(c, gh, gw).astype(np.float64)
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-5)
        xp = np.zeros((c, gh + 2 * pad, gw + 2 * pad))
        xp[:, pad : pad + gh, pad : pad + gw] = x
        for y in range(gh):
            for xx in range(gw):
                v = xp[:, y : y + r, xx : xx + r].reshape(c, -1).mean(1)
                out[i, y * gw + xx] = v / np.linalg.norm(v)
    return out


@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_equals_slow_reference(r: int) -> None:
    g = torch.Generator().manual_seed(r)
    tokens = torch.randn(2, 5 * 6, 7, generator=g)
    got = lnamd(tokens, (5, 6), r).numpy()
    np.testing.assert_allclose(got, _lnamd_slow(tokens.numpy(), (5, 6), r), atol=1e-5)


def _msm_slow(z: np.ndarray, low: float, high: float) -> np.ndarray:
    """For each image i and patch p: min Euclidean distance to each other image's patches, sorted, interval mean."""
    n, m, _ = z.shape
    out = np.zeros((n, m))
    for i in range(n):
        for p in range(m):
            per_image = sorted(
                min(float(np.linalg.norm(z[i, p] - z[j, q])) for q in range(m)) for j in range(n) if j != i
            )
            a, b = interval(n - 1, low, high)
            out[i, p] = np.mean(per_image[a:b]) if b > a else 0.0
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.mark.parametrize(("n", "low", "high"), [(12, 0.0, 0.3), (9, 0.1, 0.5), (5, 0.0, 0.3), (2, 0.0, 0.3)])
def test_mutual_scores_equal_slow_reference(n: int, low: float, high: float) -> None:
    z = _unit(torch.randn(n, 6, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64))
    got = mutual_scores(z, torch.arange(n), z, n, low, high).numpy()
    np.testing.assert_allclose(got, _msm_slow(z.numpy(), low, high), atol=1e-9)


def test_blockwise_equals_one_shot() -> None:
    n = 11
    z = _unit(torch.randn(n, 8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    whole = mutual_scores(z, torch.arange(n), z, n)

    def chunks() -> list[tuple[int, torch.Tensor]]:
        return [(s, z[s : s + 3]) for s in range(0, n, 3)]

    parts = [mutual_scores(z[s : s + 4], torch.arange(s, min(n, s + 4)), chunks, n, block_bytes=64) for s in (0, 4, 8)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-12)


def test_small_sets_are_finite_and_documented() -> None:
    assert interval(0) == (0, 0) and interval(1) == (0, 1) and interval(4) == (0, 1) and interval(9) == (0, 2)
    one = _unit(torch.randn(1, 4, 3))
    assert torch.equal(mutual_scores(one, torch.arange(1), one, 1), torch.zeros(1, 4))  # nobody to compare with
    two = _unit(torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1)))
    s2 = mutual_scores(two, torch.arange(2), two, 2)
    d = torch.cdist(two[0], two[1]).amin(1)  # image 0 against its only partner
    torch.testing.assert_close(s2[0], d)
    five = _unit(torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(2)))
    assert torch.isfinite(mutual_scores(five, torch.arange(5), five, 5)).all()


def _rscin_slow(scores: np.ndarray, emb: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    s = (scores - scores.min()) / (scores.max() - scores.min())
    w = emb @ emb.T
    n = len(s)
    outs = []
    for k in ks:
        res = np.zeros(n)
        for i in range(n):
            nb = np.argsort(-w[i], kind="stable")[:k]
            res[i] = sum(w[i, j] * s[j] for j in nb) / sum(w[i, j] for j in nb)
        outs.append(res)
    return np.mean(outs, 0)


def test_rscin_equals_slow_reference() -> None:
    g = torch.Generator().manual_seed(3)
    emb = _unit(torch.randn(15, 8, generator=g, dtype=torch.float64) + 2.0)  # positive similarities, no ties
    scores = torch.rand(15, generator=g, dtype=torch.float64)
    got = rscin(scores, emb, (1, 2, 3)).numpy()
    np.testing.assert_allclose(got, _rscin_slow(scores.numpy(), emb.numpy(), (1, 2, 3)), atol=1e-12)
    # k = 1 keeps each image's own (normalised) score: its most similar image is itself
    np.testing.assert_allclose(rscin(scores, emb, (1,)).numpy(), _rscin_slow(scores.numpy(), emb.numpy(), (1,)))


def _literal_mutual(feats: torch.Tensor, grid: tuple[int, int], radius: float | None, low: float, high: float):
    """Loops, no vectorisation: each patch against the patches of every other image within ``radius`` of it."""
    from zsad.mutual import interval

    n_img, n, _ = feats.shape
    gw = grid[1]
    k_min, k_max = interval(n_img - 1, low, high)
    out = torch.zeros(n_img, n, dtype=torch.float64)
    for i in range(n_img):
        for a in range(n):
            per_image = []
            for j in range(n_img):
                if j == i:
                    continue
                best = float("inf")
                for b in range(n):
                    cheb = max(abs(a // gw - b // gw), abs(a % gw - b % gw))
                    if radius is None or cheb <= radius:
                        best = min(best, float(torch.linalg.vector_norm(feats[i, a].double() - feats[j, b].double())))
                per_image.append(best)
            per_image.sort()
            out[i, a] = sum(per_image[k_min:k_max]) / (k_max - k_min)
    return out


@pytest.mark.parametrize("radius", [None, 0, 1, 2.5])
def test_position_aware_mutual_scores_equal_a_literal_reference(radius: float | None) -> None:
    from zsad.mutual import mutual_scores

    torch.manual_seed(3)
    grid = (4, 5)
    feats = torch.nn.functional.normalize(torch.randn(6, 20, 8), dim=-1)
    got = mutual_scores(feats, torch.arange(6), feats, 6, 0.0, 0.5, radius=radius, grid=grid)
    want = _literal_mutual(feats, grid, radius, 0.0, 0.5)
    assert torch.allclose(got.double(), want, atol=1e-5), (got - want).abs().max()


def test_a_radius_past_the_grid_is_the_published_method_and_needs_the_grid() -> None:
    from zsad.mutual import mutual_scores, neighbourhood

    feats = torch.nn.functional.normalize(torch.randn(4, 12, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    everywhere = mutual_scores(feats, torch.arange(4), feats, 4)
    assert torch.equal(mutual_scores(feats, torch.arange(4), feats, 4, radius=float("inf"), grid=(3, 4)), everywhere)
    assert torch.equal(mutual_scores(feats, torch.arange(4), feats, 4, radius=3, grid=(3, 4)), everywhere)
    assert neighbourhood((3, 4), 0).equal(torch.eye(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs the patch grid"):
        mutual_scores(feats, torch.arange(4), feats, 4, radius=1)


def test_musc_radius_is_an_option_recorded_only_when_set(tiny_backbone) -> None:
    from zsad.methods.registry import create_method

    plain = create_method("musc", tiny_backbone)
    assert "radius" not in plain.describe()["config"]  # folders made before the option keep their run key
    aligned = create_method("musc", tiny_backbone, radius=1)
    assert aligned.describe()["config"]["radius"] == 1
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    a = plain.predict_as_set(x)[0].anomaly_map
    b = aligned.predict_as_set(x)[0].anomaly_map
    assert not torch.allclose(a, b)  # a patch meeting only its neighbourhood scores differently
    with pytest.raises(ValueError, match="radius=-1"):
        create_method("musc", tiny_backbone, radius=-1)
