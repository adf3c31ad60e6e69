"""AdaCLIP against independent references on the tiny seeded CLIP (work in progress: issue 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.ops import kmeans
from zsad.prompts import build_prompts, get_prompt_set


def _with_params(bb: ClipBackbone, tmp_path, **opts):
    m = create_method("adaclip", bb, **opts)
    return create_method("adaclip", bb, checkpoint=str(m.save(tmp_path / "ck", {"note": "test"})), **opts)


def test_without_prompts_and_identity_projections_equals_plain_clip(tiny_backbone: ClipBackbone, tmp_path) -> None:
    """No prompts, patch projections = CLIP's proj, no fusion: the map is CLIP's own patch-text map."""
    bb = tiny_backbone
    m = _with_params(bb, tmp_path, branches="", use_hsf=False)
    visual = bb.model.visual
    with torch.no_grad():
        for head in m.params.patch_proj:
            head.weight.copy_(visual.proj.T)
            head.bias.zero_()
    m.setup("screw")
    imgs = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    pred = m.predict(imgs)
    normal, anomalous = build_prompts(get_prompt_set("adaclip"), "screw")
    with torch.no_grad():
        text = torch.stack(
            [
                F.normalize(F.normalize(bb.model.encode_text(bb.tokenizer(p)), dim=-1).mean(0), dim=0)
                for p in (normal, anomalous)
            ]
        )
        x = visual._embeds(imgs)
        logits = []
        for blk in visual.transformer.resblocks:
            x = blk(x)
            f = F.normalize(x[:, 1:] @ visual.proj, dim=-1)
            lg = (100 * f @ text.T).transpose(1, 2).reshape(2, 2, 6, 6)
            logits.append(F.interpolate(lg, size=(96, 96), mode="bilinear", align_corners=True))
        prob = torch.stack(logits).mean(0).softmax(1)[:, 1].double().numpy()
    for b in range(2):
        np.testing.assert_allclose(pred.anomaly_map[b].numpy(), gaussian_filter(prob[b], 4.0), atol=1e-5)


def test_dynamic_prompts_follow_the_image(tiny_backbone: ClipBackbone, tmp_path) -> None:
    m = _with_params(tiny_backbone, tmp_path)
    imgs = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        emb = tiny_backbone.encode_image(imgs).embedding
        vis, txt = m._prompts(emb)
    assert set(vis) == {0, 1, 2, 3} and set(txt) == {1, 2, 3}  # no text prompt before block 0
    assert not torch.allclose(vis[0][0], vis[0][1]) and not torch.allclose(txt[1][0], txt[1][1])
    static_only = _with_params(tiny_backbone, tmp_path / "s", prompting="S")
    with torch.no_grad():
        sv, _ = static_only._prompts(emb)
    assert torch.equal(sv[0][0], sv[0][1])  # static prompts are the same for every image


def test_text_placeholders_keep_every_word(tiny_backbone: ClipBackbone, tmp_path) -> None:
    m = _with_params(tiny_backbone, tmp_path)
    tokens, n_normal = m._sentence_tokens("screw")
    plain = tiny_backbone.tokenize(["a bad photo of a screw."])[0]
    x_id = int(tiny_backbone.tokenize(["X"])[0, 1])
    assert n_normal == 28 and tokens.shape[0] == 48
    assert (tokens[0, 1:6] == x_id).all() and torch.equal(tokens[0, 6 : 6 + 7], plain[1:8])
    official = _with_params(tiny_backbone, tmp_path / "o", text_placeholders=False)
    assert torch.equal(official._sentence_tokens("screw")[0][0], plain)


def test_kmeans_finds_planted_clusters_and_is_batch_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 4, 6, generator=g) * 5
    x = (centres[:, :, None] + 0.1 * torch.randn(2, 4, 20, 6, generator=g)).reshape(2, 80, 6)
    labels, _ = kmeans(x, 4, seed=3)
    truth = torch.arange(4).repeat_interleave(20)
    for b in range(2):
        assert all(len(set(labels[b][truth == j].tolist())) == 1 for j in range(4))
        assert len(set(labels[b].tolist())) == 4
    alone, _ = kmeans(x[1:], 4, seed=3)
    assert torch.equal(alone[0], labels[1])


def test_untrained_refuses_and_checkpoint_round_trip(tiny_backbone: ClipBackbone, tmp_path, images96) -> None:
    with pytest.raises(ZsadInputError, match="--checkpoint"):
        create_method("adaclip", tiny_backbone).setup("screw")
    m = _with_params(tiny_backbone, tmp_path)
    with torch.no_grad():
        m.params.static_visual.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    m.setup("screw")
    before = m.predict(images96)
    again = create_method("adaclip", tiny_backbone, checkpoint=str(m.save(tmp_path / "c2", {"note": "t"})))
    again.setup("screw")
    after = again.predict(images96)
    assert torch.equal(before.anomaly_map, after.anomaly_map) and torch.equal(before.pred_score, after.pred_score)


def test_official_checkpoint_layout_is_imported(tiny_backbone: ClipBackbone, tmp_path, images96) -> None:
    """A dict in the official trainer's layout (clip_model.* names) becomes an equivalent zsad checkpoint."""
    from zsad.methods.adaclip import import_official_checkpoint

    ref = _with_params(tiny_backbone, tmp_path / "ref", text_placeholders=False)
    with torch.no_grad():
        for prm in ref.params.parameters():
            prm.normal_(0, 0.1, generator=torch.Generator().manual_seed(prm.numel()))
    p = ref.params
    raw = {}
    for j in range(4):
        raw[f"clip_model.visual_prompter.static_prompts.{j}"] = p.static_visual[j].detach().clone()
        raw[f"clip_model.text_prompter.static_prompts.{j}"] = p.static_text[j].detach().clone()
        raw[f"clip_model.patch_token_layer.head.{j}.weight"] = p.patch_proj[j].weight.detach().clone()
        raw[f"clip_model.patch_token_layer.head.{j}.bias"] = p.patch_proj[j].bias.detach().clone()
    for i in range(5):
        for src, dst in (
            ("dynamic_visual_prompt_generator", p.dynamic_visual),
            ("dynamic_text_prompt_generator", p.dynamic_text),
        ):
            raw[f"clip_model.{src}.head.{i}.weight"] = dst[i].weight.detach().clone()
            raw[f"clip_model.{src}.head.{i}.bias"] = dst[i].bias.detach().clone()
    raw["clip_model.cls_token_layer.head.0.weight"] = p.global_proj.weight.detach().clone()
    raw["clip_model.cls_token_layer.head.0.bias"] = p.global_proj.bias.detach().clone()
    torch.save(raw, tmp_path / "official.pth")
    ckpt = import_official_checkpoint(tmp_path / "official.pth", tiny_backbone, tmp_path / "imp", "mvtec+colondb")
    m = create_method("adaclip", tiny_backbone, checkpoint=str(ckpt))
    assert m.config.text_placeholders is False
    ref.setup("screw")
    m.setup("screw")
    a, b = ref.predict(images96), m.predict(images96)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)
