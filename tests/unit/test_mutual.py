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
