"""Dual-Image: pairing, visual map against brute-force references, joint scoring, feature bank, set-level scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsad.backbone import ClipBackbone
from zsad.bank import FeatureBank
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.methods.dual_image import choose_partners, nearest_patch_distance


def _images(n: int, seed: int = 0, size: int = 96) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _brute_distance(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(L, N, D), (L, M, D) unit -> (N,): sum over layers of min over partner patches of (1 - cos) / 2, by loops."""
    out = np.zeros(q.shape[1])
    for lyr in range(q.shape[0]):
        for i in range(q.shape[1]):
            out[i] += min((1 - float(q[lyr, i] @ p[lyr, j])) / 2 for j in range(p.shape[1]))
    return out


def test_nearest_patch_distance_matches_loops() -> None:
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(2, 7, 5, generator=g), dim=-1)
    p = F.normalize(torch.randn(3, 2, 6, 5, generator=g), dim=-1)
    got = nearest_patch_distance(q, p, budget_bytes=7 * 6 * 4)  # one partner per block: exercises the chunking
    for k in range(3):
        np.testing.assert_allclose(got[k].numpy(), _brute_distance(q.numpy(), p[k].numpy()), atol=1e-6)


def test_partners_deterministic_and_never_self() -> None:
    g = torch.Generator().manual_seed(1)
    glob = F.normalize(torch.randn(9, 4, generator=g), dim=-1)
    a = choose_partners(glob, "random", 3, seed=5)
    assert torch.equal(a, choose_partners(glob, "random", 3, seed=5))
    assert not torch.equal(a, choose_partners(glob, "random", 3, seed=6))
    for pairing in ("random", "nearest", "all"):
        idx = choose_partners(glob, pairing, 3, seed=0)
        assert idx.shape == (9, 8 if pairing == "all" else 3)
        assert not (idx == torch.arange(9)[:, None]).any()
        assert all(len(set(row.tolist())) == idx.shape[1] for row in idx)
    sim = (glob @ glob.T).numpy()
    np.fill_diagonal(sim, -np.inf)
    expect = np.argsort(-sim, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(choose_partners(glob, "nearest", 3, seed=0).numpy(), expect)
    assert choose_partners(glob[:1], "nearest", 3, seed=0).shape == (1, 0)  # a set of one has no partner


@pytest.fixture(scope="module")
def bb() -> ClipBackbone:
    return ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)


def test_image_paired_with_itself_has_zero_visual_map(bb: ClipBackbone) -> None:
    m = create_method("dual-image", bb, pairing="nearest", partners=1, mode="visual", smoothing_sigma=0)
    m.setup("tile")
    x = _images(1)
    pred = m.predict(torch.cat([x, x]))
    assert float(pred.anomaly_map.abs().max()) < 1e-5
    assert torch.allclose(pred.score_parts["visual_max"], torch.zeros(2), atol=1e-5)


def test_pasted_defect_is_found_where_it_was_pasted(bb: ClipBackbone) -> None:
    """Two copies of one image, one with a pasted bright square: the visual map peaks inside the square."""
    m = create_method("dual-image", bb, pairing="nearest", partners=1, mode="visual", smoothing_sigma=0)
    m.setup("tile")
    x = _images(1, seed=3)
    y = x.clone()
    y[:, :, 48:64, 16:32] = 3.0  # grid cell (3, 1) of the 6x6 patch grid at 96 px
    amap = m.predict(torch.cat([x, y])).anomaly_map
    peak = divmod(int(amap[1].argmax()), 96)
    assert 48 <= peak[0] < 64 and 16 <= peak[1] < 32, peak
    assert float(amap[1, 48:64, 16:32].mean()) > 2 * float(amap[1].mean())


def test_mutual_scoring_matches_reference(bb: ClipBackbone) -> None:
    """pairing=all: per patch, mean of the smallest m per-partner distances, against a loop reference."""
    x = _images(5, seed=4)
    m = create_method("dual-image", bb, pairing="all", mode="visual", mutual_fraction=0.5, bank_dtype="float32")
    m.setup("tile")
    bank = m.new_bank()
    bank.add(m.encode(x))
    m.end_set(bank)
    vis = F.normalize(bank.get(torch.arange(5), ["vis"])["vis"], dim=-1)
    got = m._visual(torch.arange(5), bank, vis)
    for q in range(5):
        d = np.stack([_brute_distance(vis[q].numpy(), vis[p].numpy()) for p in range(5) if p != q])  # (4, N)
        ref = np.sort(d, axis=0)[:2].mean(0)  # m = round(0.5 * 4) = 2
        np.testing.assert_allclose(got[q].numpy(), ref, atol=1e-5)


def test_partner_average_and_joint_score(bb: ClipBackbone) -> None:
    """Joint map = language + lam * visual; score = text probability + map max; partners are averaged."""
    x = _images(4, seed=5)
    kw = {"pairing": "nearest", "partners": 2, "smoothing_sigma": 0.0, "bank_dtype": "float32"}
    parts = {}
    for mode in ("language", "visual", "joint"):
        m = create_method("dual-image", bb, mode=mode, lam=0.5, **kw)
        m.setup("tile")
        parts[mode] = m.predict(x)
    joint = parts["language"].anomaly_map + parts["visual"].anomaly_map  # the visual mode's map is already lam * M_V
    torch.testing.assert_close(parts["joint"].anomaly_map, joint, atol=1e-5, rtol=1e-5)
    p = parts["joint"]
    torch.testing.assert_close(p.pred_score, p.score_parts["text_prob"] + p.anomaly_map.flatten(1).amax(1))
    # the visual part of image 0 is the mean of its two partners' distance maps
    m = create_method("dual-image", bb, mode="visual", **kw)
    m.setup("tile")
    bank = m.new_bank()
    bank.add(m.encode(x))
    m.end_set(bank)
    vis = F.normalize(bank.get(torch.arange(4), ["vis"])["vis"], dim=-1)
    ref = np.mean([_brute_distance(vis[0].numpy(), vis[int(j)].numpy()) for j in m.partner_index[0]], axis=0)
    np.testing.assert_allclose(m._visual(torch.tensor([0]), bank, vis[:1])[0].numpy(), ref, atol=1e-5)


def test_language_mode_is_not_transductive_and_bad_options_fail(bb: ClipBackbone) -> None:
    assert not create_method("dual-image", bb, mode="language").is_transductive
    assert create_method("dual-image", bb).is_transductive
    assert "pairing" in create_method("dual-image", bb).transductive_note
    with pytest.raises(ZsadInputError, match="pairing 'best'"):
        create_method("dual-image", bb, pairing="best")
    with pytest.raises(ZsadInputError, match="needs a pairing"):
        create_method("dual-image", bb, mode="visual", pairing="none")


def test_feature_bank_spills_to_disk_and_reads_back() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [{"a": torch.randn(3, 4, 5, generator=g), "b": torch.arange(3) + 3 * i} for i in range(4)]
    ram = FeatureBank(dtype=torch.float32)
    disk = FeatureBank(ram_bytes=3 * 4 * 5 * 4, dtype=torch.float32)  # only the first batch of "a" fits
    for b in batches:
        ram.add(b)
        disk.add(b)
    assert disk.spilled and not ram.spilled and len(disk) == 12
    idx = torch.tensor([11, 0, 5, 5, 7])
    for bank in (ram, disk):
        got = bank.get(idx)
        torch.testing.assert_close(got["a"], torch.cat([b["a"] for b in batches])[idx])
        assert got["b"].tolist() == idx.tolist()
    assert [s for s, _ in disk.chunks(5)] == [0, 5, 10]
    folder = disk._dir
    disk.close()
    assert folder is not None and not folder.exists()
    with pytest.raises(ZsadInputError, match="differ"):
        ram.add({"a": torch.zeros(1, 4, 6), "b": torch.zeros(1, dtype=torch.long)})


def test_tta_adapter_starts_as_identity_and_training_lowers_the_loss(bb: ClipBackbone) -> None:
    from zsad.methods.dual_image import TokenAdapter

    toks = F.normalize(torch.randn(2, 4, 9, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    torch.testing.assert_close(TokenAdapter(4, 32)(toks), toks)
    x = _images(6, seed=7)
    kw = {"tta_images": 4, "tta_samples": 8, "tta_batch": 4, "tta_epochs": 4, "tta_lr": 1e-2, "pairing": "none"}
    runs = []
    for _ in range(2):
        m = create_method("dual-image", bb, tta=True, **kw)
        m.setup("tile")
        runs.append((m.predict(x), m.tta_record))
    (pred, rec), (again, _) = runs
    assert rec["synthetic_images"] == 8 and rec["canvas_images"] == 4
    losses = [h["loss"] for h in rec["history"]]
    assert losses[-1] < losses[0], losses
    torch.testing.assert_close(pred.anomaly_map, again.anomaly_map)  # seeded: identical runs
    plain = create_method("dual-image", bb, pairing="none")
    plain.setup("tile")
    assert not torch.allclose(plain.predict(x).anomaly_map, pred.anomaly_map, atol=1e-4)
    assert m.is_transductive and "TTA" in m.transductive_note and m.describe()["tta"]["synthetic_images"] == 8


def test_defect_pasted_into_a_real_image_is_found(bb: ClipBackbone, assets_dir) -> None:  # noqa: ANN001
    """A real Magnetic Tile image and its copy with a patch of a crack image pasted in: the peak is in the patch."""
    from zsad.data import ImageList

    mt = assets_dir / "magnetic_tile"
    free = sorted((mt / "MT_Free" / "Imgs").glob("*.jpg"))[0]
    crack = sorted((mt / "MT_Crack" / "Imgs").glob("*.jpg"))[0]
    ds = ImageList([str(free), str(crack)], image_size=96, mean=bb.mean, std=bb.std)
    x, c = ds[0]["image"][None], ds[1]["image"][None]
    y = x.clone()
    y[:, :, 16:32, 64:80] = c[:, :, 40:56, 40:56].flip(-1) * 2  # a foreign, high-contrast patch
    m = create_method("dual-image", bb, pairing="nearest", partners=1, mode="visual", smoothing_sigma=0)
    m.setup("magnetic tile")
    amap = m.predict(torch.cat([x, y])).anomaly_map
    peak = divmod(int(amap[1].argmax()), 96)
    assert 16 <= peak[0] < 32 and 64 <= peak[1] < 80, peak


def _rscin_numpy(s: np.ndarray, g: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """RsCIN written out: min-max, then per k the similarity-weighted mean over the k most similar (self included)."""
    s = (s - s.min()) / (s.max() - s.min())
    w = g @ g.T
    out = np.zeros((len(ks), len(s)))
    for a, k in enumerate(ks):
        for i in range(len(s)):
            nb = np.argsort(-w[i], kind="stable")[:k]
            out[a, i] = (w[i, nb] * s[nb]).sum() / w[i, nb].sum()
    return out.mean(0)


def test_rscin_option_rescores_the_set(bb: ClipBackbone) -> None:
    x = _images(6, seed=3)
    plain = create_method("dual-image", bb, image_size=96, pairing="all", bank_dtype="float32")
    plain.setup("tile")
    base = plain.predict(x)
    m = create_method("dual-image", bb, image_size=96, pairing="all", bank_dtype="float32", rscin=True, rscin_k=[1, 3])
    m.setup("tile")
    got = m.predict(x)
    torch.testing.assert_close(got.anomaly_map, base.anomaly_map)  # maps untouched
    torch.testing.assert_close(got.score_parts["score_before_rscin"], base.pred_score)
    g = F.normalize(bb.encode_image(x).embedding, dim=-1).double().numpy()
    want = _rscin_numpy(base.pred_score.double().numpy(), g, (1, 3))
    np.testing.assert_allclose(got.pred_score.numpy(), want, atol=1e-5)
    lang = create_method("dual-image", bb, image_size=96, mode="language", pairing="none", rscin=True)
    assert lang.is_transductive and "RsCIN" in lang.transductive_note
    with pytest.raises(ZsadInputError, match="rscin_k"):
        create_method("dual-image", bb, image_size=96, rscin_k=[0])
