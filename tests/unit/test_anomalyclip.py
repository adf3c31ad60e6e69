"""AnomalyCLIP on the tiny seeded backbone: text, DPAM and maps against literal references; loss; checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.methods.anomalyclip import AnomalyClip, import_official_checkpoint


def _trained(bb: ClipBackbone, seed: int = 3, **opts: object) -> AnomalyClip:
    """A method with random (but non-trivial) prompts, marked trained by a save/load round trip."""
    m = create_method("anomalyclip", bb, **opts)
    assert isinstance(m, AnomalyClip)
    m.build_parts(seed)
    return m


def _literal_text(bb: ClipBackbone, m: AnomalyClip) -> torch.Tensor:
    """The two prompts through open_clip's own text blocks, with context and deep tokens written in by hand."""
    model = bb.model
    p = m.params
    out = []
    for s, ctx in enumerate((p.ctx_normal, p.ctx_abnormal)):
        tok = bb.tokenize(m.sentences())[s : s + 1]
        x = model.token_embedding(tok).clone()
        x[0, 1 : 1 + ctx.shape[0]] = ctx
        x = x + model.positional_embedding
        for i, blk in enumerate(model.transformer.resblocks):
            if 1 <= i <= p.deep.shape[0]:
                x = x.clone()
                x[0, 1 : 1 + p.deep.shape[1]] = p.deep[i - 1].half().float()
            x = blk(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        out.append(x[0, tok[0].argmax()] @ model.text_projection)
    return F.normalize(torch.stack(out), dim=-1)


def _literal_dpam(bb: ClipBackbone, images: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPAM by hand on open_clip's modules: returns (global without ln_post, last-layer v-v patch tokens projected)."""
    vis = bb.model.visual
    x = vis.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([vis.class_embedding.expand(x.shape[0], 1, -1), x], 1)
    g0 = int((vis.positional_embedding.shape[0] - 1) ** 0.5)
    gh = images.shape[-1] // bb.patch_size
    pos = vis.positional_embedding[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    pos = (
        F.interpolate(pos, size=(gh, gh), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(gh * gh, -1)
    )
    x = vis.ln_pre(x + torch.cat([vis.positional_embedding[:1], pos]))
    z = None
    for i, blk in enumerate(vis.transformer.resblocks, start=1):
        if i >= start:
            if z is None:
                z = x.clone()
            a = blk.attn
            v = F.linear(blk.ln_1(x), a.in_proj_weight[2 * a.embed_dim :], a.in_proj_bias[2 * a.embed_dim :])
            h = a.num_heads
            vh = v.reshape(v.shape[0], v.shape[1], h, -1).transpose(1, 2)
            att = (vh @ vh.transpose(-1, -2) / vh.shape[-1] ** 0.5).softmax(-1) @ vh
            z = z + a.out_proj(att.transpose(1, 2).reshape(v.shape))
        x = blk(x)
    glob = x[:, 0] @ vis.proj
    assert z is not None
    return glob, vis.ln_post(z[:, 1:]) @ vis.proj


@pytest.mark.parametrize("start", [0, 3])
def test_text_and_image_features_equal_literal_references(tiny_backbone: ClipBackbone, images96, start: int) -> None:
    m = _trained(tiny_backbone, dpam_start=start)
    assert m.config.dpam_start == (start or 1)
    with torch.no_grad():
        torch.testing.assert_close(m.text_features(), _literal_text(tiny_backbone, m), atol=1e-5, rtol=0)
        glob, patches, grid = m.image_features(images96)
        want_glob, want_patch = _literal_dpam(tiny_backbone, images96, m.config.dpam_start)
    torch.testing.assert_close(glob, F.normalize(want_glob, dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(patches[0], F.normalize(want_patch, dim=-1), atol=1e-5, rtol=0)


def test_map_and_score_written_out(tiny_backbone: ClipBackbone, tmp_path: Path, images96) -> None:
    m = _trained(tiny_backbone)
    loaded = create_method("anomalyclip", tiny_backbone, checkpoint=str(m.save(tmp_path / "ck", {"note": "t"})))
    loaded.setup(None)
    pred = loaded.predict(images96)
    with torch.no_grad():
        text = _literal_text(tiny_backbone, m)
        glob, patch = _literal_dpam(tiny_backbone, images96, m.config.dpam_start)
    glob, patch = F.normalize(glob, dim=-1), F.normalize(patch, dim=-1)
    score = (glob @ text.T / 0.07).softmax(-1)[:, 1]
    torch.testing.assert_close(pred.pred_score, score, atol=1e-5, rtol=0)
    g = 96 // tiny_backbone.patch_size
    prob = (patch @ text.T / 0.07).softmax(-1).transpose(1, 2).reshape(-1, 2, g, g)
    up = F.interpolate(prob, size=(96, 96), mode="bilinear", align_corners=False)[:, 1].numpy()
    want = np.stack([gaussian_filter(u.astype(np.float64), 4) for u in up])
    np.testing.assert_allclose(pred.anomaly_map.numpy(), want, atol=1e-5)


def test_loss_is_the_published_composition(tiny_backbone: ClipBackbone, images96) -> None:
    m = _trained(tiny_backbone)
    gt = torch.zeros(images96.shape[0], 96, 96)
    gt[0, 20:40, 30:60] = 1
    label = torch.tensor([1] + [0] * (images96.shape[0] - 1))
    terms = m.loss_terms(images96, gt, label)
    probs, logits = m.outputs(images96, m.text_features())
    p = probs[0]
    # focal (gamma 2, smoothing 1e-5) and dice (smooth 1) written out on both channels
    onehot = torch.stack([1 - gt, gt], 1).clamp(1e-5, 1 - 1e-5)
    pt = (onehot * p).sum(1) + 1e-5
    focal = (-((1 - pt) ** 2) * pt.log()).mean()

    def dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.flatten(1), b.flatten(1)
        return 1 - ((2 * (a * b).sum(1) + 1) / (a.sum(1) + b.sum(1) + 1)).mean()

    ce = F.cross_entropy(logits, label)
    want = 4 * (focal + dice(p[:, 1], gt) + dice(p[:, 0], 1 - gt)) + ce
    torch.testing.assert_close(terms["loss"], want, atol=1e-5, rtol=1e-5)
    terms["loss"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in m.params.parameters())


def test_untrained_refused_and_options_checked(tiny_backbone: ClipBackbone) -> None:
    with pytest.raises(ZsadInputError, match="--checkpoint"):
        create_method("anomalyclip", tiny_backbone).setup(None)
    with pytest.raises(ZsadInputError, match="DPAM blocks"):
        create_method("anomalyclip", tiny_backbone, dpam_start=3, layers=[2])
    with pytest.raises(ZsadInputError, match="deep_depth 5 exceeds"):
        create_method("anomalyclip", tiny_backbone, deep_depth=5)


def test_official_layout_imported_and_bad_files_refused(tiny_backbone: ClipBackbone, tmp_path: Path, images96) -> None:
    ref = _trained(tiny_backbone, seed=7)
    p = ref.params
    width = p.ctx_normal.shape[1]
    state = {
        "ctx_pos": p.ctx_normal.detach().clone()[None, None],
        "ctx_neg": p.ctx_abnormal.detach().clone()[None, None],
        "token_prefix_pos": torch.zeros(1, 1, 1, width),
        "tokenized_prompts_pos": torch.zeros(1, 1, 77, dtype=torch.int32),
        **{f"compound_prompts_text.{i}": p.deep[i].detach().clone() for i in range(p.deep.shape[0])},
        **{f"compound_prompt_projections.{i}.weight": torch.zeros(896, width) for i in range(p.deep.shape[0])},
    }
    torch.save({"prompt_learner": state}, tmp_path / "epoch_15.pth")
    ck = import_official_checkpoint(tmp_path / "epoch_15.pth", tiny_backbone, tmp_path / "imp", "visa")
    m = create_method("anomalyclip", tiny_backbone, checkpoint=str(ck))
    m.setup(None)
    ref.save(tmp_path / "ref", {"note": "t"})
    again = create_method("anomalyclip", tiny_backbone, checkpoint=str(tmp_path / "ref"))
    again.setup(None)
    a, b = m.predict(images96), again.predict(images96)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)
    torch.save({"prompt_learner": {"something": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ZsadInputError, match="other.pth: no prompt_learner ctx_pos"):
        import_official_checkpoint(tmp_path / "other.pth", tiny_backbone, tmp_path / "x", "visa")
    state["ctx_pos"] = torch.zeros(1, 1, 12, width + 1)
    state["ctx_neg"] = torch.zeros(1, 1, 12, width + 1)
    torch.save({"prompt_learner": state}, tmp_path / "wide.pth")
    with pytest.raises(ZsadInputError, match="wide.pth: prompts of width"):
        import_official_checkpoint(tmp_path / "wide.pth", tiny_backbone, tmp_path / "y", "visa")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ZsadInputError, match="corrupt.pth"):
        import_official_checkpoint(tmp_path / "corrupt.pth", tiny_backbone, tmp_path / "z", "visa")


def test_imported_release_counts_its_whole_dataset_as_seen(tiny_backbone: ClipBackbone, tmp_path: Path) -> None:
    from zsad.runs.leakage import check_unseen

    ref = _trained(tiny_backbone)
    p = ref.params
    state = {"ctx_pos": p.ctx_normal.detach()[None, None], "ctx_neg": p.ctx_abnormal.detach()[None, None]}
    state |= {f"compound_prompts_text.{i}": p.deep[i].detach() for i in range(p.deep.shape[0])}
    torch.save({"prompt_learner": state}, tmp_path / "epoch_15.pth")
    ck = import_official_checkpoint(tmp_path / "epoch_15.pth", tiny_backbone, tmp_path / "imp", "visa")
    m = create_method("anomalyclip", tiny_backbone, checkpoint=str(ck))
    with pytest.raises(ZsadInputError, match="trained on visa pcb1"):
        check_unseen(m, "pcb1", [], set(), allow=False, dataset="visa")
    assert check_unseen(m, "bottle", [], set(), allow=False, dataset="mvtec") == 0  # another dataset: fine
