"""MuSc on the tiny seeded backbone: the whole assembly against the literal slow references of test_mutual."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from test_mutual import _lnamd_slow, _msm_slow, _rscin_slow

from zsad.methods import create_method

SIX = torch.randn(6, 3, 96, 96, generator=torch.Generator().manual_seed(5))


def test_musc_equals_a_literal_assembly(tiny_backbone) -> None:
    x = SIX[:5]
    m = create_method("musc", tiny_backbone)
    m.setup(None)
    pred = m.predict(x)
    feats = tiny_backbone.encode_image(x, layers=m.layers)
    grid = tiny_backbone.grid_size()
    total = np.zeros((5, grid[0] * grid[1]))
    for r in (1, 3, 5):
        for t in m.layers:
            tok = feats.tokens[t][:, 1:].to(torch.float16).double().numpy()  # stored as float16 in the bank
            total += _msm_slow(_lnamd_slow(tok, grid, r), 0.0, 0.3)
    patch = torch.from_numpy(total / 12).float().reshape(5, 1, *grid)
    want_map = F.interpolate(patch, size=(96, 96), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(pred.anomaly_map, want_map, atol=2e-5, rtol=0)
    emb = F.normalize(feats.embedding, dim=-1).to(torch.float16).double().numpy()
    want = _rscin_slow(want_map.flatten(1).amax(1).double().numpy(), emb, (1, 2, 3))
    np.testing.assert_allclose(pred.pred_score.numpy(), want, atol=1e-4)
    plain = create_method("musc", tiny_backbone, rscin=False)
    plain.setup(None)
    torch.testing.assert_close(plain.predict(x).pred_score, want_map.flatten(1).amax(1), atol=2e-5, rtol=0)


def test_small_sets_and_blocks(tiny_backbone) -> None:
    images96 = SIX
    m = create_method("musc", tiny_backbone)
    m.setup(None)
    assert torch.equal(m.predict(images96[:1]).pred_score, torch.zeros(1))  # nobody to compare with: 0
    for n in (2, 5):
        p = m.predict(images96[:n])
        assert torch.isfinite(p.pred_score).all() and torch.isfinite(p.anomaly_map).all()
    tight = create_method("musc", tiny_backbone, block_mb=1)
    tight.setup(None)
    torch.testing.assert_close(tight.predict(images96[:6]).anomaly_map, m.predict(images96[:6]).anomaly_map)


def test_language_fusion_equals_the_language_methods_probability(tiny_backbone) -> None:
    x = SIX[:5]
    base = create_method("musc", tiny_backbone)
    base.setup("tile")
    mutual = base.predict(x)
    glob = F.normalize(tiny_backbone.encode_image(x).embedding, dim=-1).to(torch.float16).float()
    for language in ("sdp", "winclip"):
        lang = create_method(language, tiny_backbone)
        lang.setup("tile")  # the class name reaches the prompts: MuSc passes it on
        if language == "sdp":
            p = (100.0 * glob @ lang.text.T).softmax(-1)[:, 1]
        else:
            p = (glob @ lang.text.T / 0.07).softmax(-1)[:, 1]
        fused = create_method("musc", tiny_backbone, language=language, language_weight=0.25)
        fused.setup("tile")
        got = fused.predict(x)
        torch.testing.assert_close(got.anomaly_map, mutual.anomaly_map)
        torch.testing.assert_close(got.score_parts["text_prob"], p, atol=1e-4, rtol=0)  # float16 embeddings
        torch.testing.assert_close(got.pred_score, 0.75 * mutual.pred_score + 0.25 * p, atol=1e-4, rtol=0)
    # without RsCIN the map maxima are min-max scaled over the set before the fusion
    raw = create_method("musc", tiny_backbone, rscin=False, language="sdp", language_weight=1.0)
    raw.setup("tile")
    out = raw.predict(x)
    torch.testing.assert_close(out.pred_score, out.score_parts["text_prob"])
    assert float(out.score_parts["mutual"].min()) >= 0 and abs(float(out.score_parts["mutual"].max()) - 1) < 1e-6


def test_small_sets_say_what_they_do(tiny_backbone) -> None:
    """A method never prints: the fallback of a small set is in ``set_notes``, which every front end shows."""
    m = create_method("musc", tiny_backbone)
    m.setup(None)
    said = {}
    for n in (1, 2, 4, 5):
        m.predict(SIX[:n])
        said[n] = " ".join(m.set_notes)
    assert "1 image has no other image" in said[1]
    assert "single nearest other image" in said[2] and "single nearest other image" in said[4]
    assert said[5] == ""  # int(0.3 * 4) = 1: the published interval holds one image
