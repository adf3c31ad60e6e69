"""Representative Vector Selection against planted clusters and independent sklearn / numpy references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KernelDensity

from zsad.errors import ZsadInputError
from zsad.prompts import (
    RVS_METHODS,
    aggregate_text,
    build_prompts,
    get_prompt_set,
    kde_weights,
    select_representative,
)

D = 32
TIGHT = {"dbscan": {"eps": 0.5, "min_samples": 10}, "mean_shift": {"meanshift_bandwidth": 0.6}}


def _unit(v: torch.Tensor) -> torch.Tensor:
    return F.normalize(v, dim=-1)


@pytest.fixture(scope="module")
def planted() -> tuple[torch.Tensor, torch.Tensor]:
    """60 unit vectors tightly around u plus 25 outliers spread around v orthogonal to u (they bias the mean)."""
    g = torch.Generator().manual_seed(0)
    u = _unit(torch.randn(D, generator=g))
    v = torch.randn(D, generator=g)
    v = _unit(v - (v @ u) * u)
    cluster = _unit(u + 0.05 * torch.randn(60, D, generator=g))
    outliers = _unit(v + 0.15 * torch.randn(25, D, generator=g))
    rows = torch.cat([cluster, outliers]) * (1 + torch.rand(85, 1, generator=g))  # norms must not matter
    return rows, u


@pytest.fixture(scope="module")
def sentence_like() -> torch.Tensor:
    """198 rows resembling CLIP sentence embeddings of one state: cos ~0.8 (min 0.6) to their mean direction."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(D, generator=g) + 0.7 * torch.randn(198, D, generator=g)


def _mean(rows: torch.Tensor) -> torch.Tensor:
    return _unit(_unit(rows.float()).mean(0))


@pytest.mark.parametrize("how", RVS_METHODS)
def test_unit_float32_vector(planted: tuple[torch.Tensor, torch.Tensor], how: str) -> None:
    rows, _ = planted
    r = select_representative(rows.double(), how, **TIGHT.get(how, {}))
    assert r.shape == (D,) and r.dtype == torch.float32 and r.device == rows.device
    assert abs(float(r.norm()) - 1) < 1e-6


@pytest.mark.parametrize("how", RVS_METHODS)
def test_recovers_planted_cluster(planted: tuple[torch.Tensor, torch.Tensor], how: str) -> None:
    rows, u = planted
    cos = float(select_representative(rows, how, **TIGHT.get(how, {})) @ u)
    cos_mean = float(_mean(rows) @ u)
    assert cos_mean < 0.96  # the outliers really pull the plain mean away
    if how != "mean":
        assert cos > 0.99
    if how == "dbscan":
        assert cos > cos_mean + 0.03


def test_kde_matches_sklearn(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    rows, _ = planted
    h = 0.3
    x = _unit(rows.float()).double().numpy()
    logd = KernelDensity(kernel="gaussian", bandwidth=h).fit(x).score_samples(x)
    w = np.exp(logd) / np.exp(logd).sum()
    np.testing.assert_allclose(kde_weights(torch.from_numpy(x), h).numpy(), w, rtol=0, atol=1e-6)
    expected = w @ x
    expected /= np.linalg.norm(expected)
    got = select_representative(rows, "kde", kde_bandwidth=h).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_pca_matches_numpy_svd(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    rows, _ = planted
    x = _unit(rows.float()).double().numpy()
    centred = x - x.mean(axis=1, keepdims=True)  # (N, D): each sentence minus its own mean over D
    top = np.linalg.svd(centred, full_matrices=False)[2][0]  # first right singular vector of X^T = left of X
    got = select_representative(rows, "pca").double().numpy()
    assert min(np.abs(got - top).max(), np.abs(got + top).max()) < 1e-6
    assert float(got @ x.mean(0)) >= 0  # sign agrees with the plain mean
    flipped = select_representative(-rows, "pca").double().numpy()  # a sign convention, not an accident
    assert float(flipped @ -x.mean(0)) >= 0


def test_dbscan_all_noise_falls_back_to_mean(planted: tuple[torch.Tensor, torch.Tensor]) -> None:
    rows, _ = planted
    with pytest.warns(UserWarning, match=r"eps=0\.001, min_samples=2"):
        r = select_representative(rows, "dbscan", eps=0.001, min_samples=2)
    torch.testing.assert_close(r, _mean(rows), rtol=0, atol=0)


def test_dbscan_tie_takes_lowest_label() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = _unit(torch.randn(2, D, generator=g))
    rows = torch.cat(
        [_unit(a + 0.02 * torch.randn(20, D, generator=g)), _unit(b + 0.02 * torch.randn(20, D, generator=g))]
    )
    r = select_representative(rows, "dbscan", eps=0.3, min_samples=5)
    torch.testing.assert_close(r, _mean(rows[:20]))


def test_paper_wide_settings_equal_mean(sentence_like: torch.Tensor) -> None:
    """VisA's eps=1.5 / min_samples=25 and mean-shift bandwidth 2 put every unit vector in one cluster."""
    mean = _mean(sentence_like)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dbscan = select_representative(sentence_like, "dbscan", eps=1.5, min_samples=25)
    torch.testing.assert_close(dbscan, mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(select_representative(sentence_like, "mean_shift"), mean, rtol=0, atol=1e-6)


@pytest.mark.parametrize("how", ["mean", "kde", "mean_shift"])
def test_single_row(how: str) -> None:
    row = torch.tensor([[3.0, 4.0, 0.0]])
    torch.testing.assert_close(select_representative(row, how), torch.tensor([0.6, 0.8, 0.0]))


def test_errors() -> None:
    rows = torch.randn(5, D)
    with pytest.raises(ZsadInputError, match="known: mean, pca, kde, dbscan, mean_shift"):
        select_representative(rows, "median")
    with pytest.raises(ZsadInputError, match="raw_mean"):
        aggregate_text(rows, "median")
    with pytest.raises(ZsadInputError, match="bandwith"):
        aggregate_text(rows, "kde", bandwith=0.3)
    with pytest.raises(ZsadInputError, match="N >= 1"):
        select_representative(torch.empty(0, D), "mean")
    with pytest.raises(ZsadInputError, match="N >= 1"):
        select_representative(torch.randn(D), "mean")
    with pytest.raises(ZsadInputError, match="eps"):
        select_representative(rows, "dbscan", eps=0.0)


def test_aggregate_text_mean_unchanged(sentence_like: torch.Tensor) -> None:
    e = sentence_like * torch.rand(198, 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(aggregate_text(e, "mean"), F.normalize(F.normalize(e, dim=-1).mean(0), dim=-1))
    assert torch.equal(aggregate_text(e), aggregate_text(e, "mean", eps=0.1))
    assert torch.equal(aggregate_text(e, "raw_mean"), F.normalize(e.mean(0), dim=-1))
    params = {"eps": 1.0, "min_samples": 10}
    torch.testing.assert_close(aggregate_text(e, "dbscan", **params), select_representative(e, "dbscan", **params))


def test_clipad_prompt_counts() -> None:
    ps = get_prompt_set("clipad")
    assert (len(ps.normal_states), len(ps.anomalous_states), len(ps.templates)) == (9, 10, 22)
    normal, anomalous = build_prompts(ps, "screw")
    assert (len(normal), len(anomalous)) == (198, 220)
    assert (
        normal[0] == "a cropped photo of the flawless screw." and normal[22] == "a cropped photo of the perfect screw."
    )
    assert anomalous[-1] == "a photo of a screw with contamination for anomaly detection."
