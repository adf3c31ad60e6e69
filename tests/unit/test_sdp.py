"""CLIP-AD SDP / SDP+ against independent slow references (open_clip's own blocks, loops, scipy, numpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.methods.sdp import stage_layers, surgery_config
from zsad.ops import gaussian_blur
from zsad.prompts import build_prompts, get_prompt_set

OPTS = {"prompt_set": "clipad", "text_aggregation": "mean"}


@pytest.mark.parametrize(("shape", "sigma"), [((240, 240), 8.0), ((20, 31), 2.0), ((9, 12), 4.0), ((40, 40), 0.7)])
def test_gaussian_blur_matches_scipy(shape: tuple[int, int], sigma: float) -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, *shape)).astype(np.float64)
    got = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    ref = np.stack([gaussian_filter(m, sigma) for m in maps])  # radius 32 > 9 and 12: repeated reflection
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_stages_and_resets() -> None:
    assert stage_layers(12, ()) == (3, 6, 9, 12) and stage_layers(24, ()) == (6, 12, 18, 24)
    assert surgery_config(12, (3, 6, 9, 12)).reset_layers == (4, 7, 10)
    assert surgery_config(12, (6, 12)).reset_layers == (7,)
    assert surgery_config(12, (6, 12), compat="official").reset_layers == (4, 7, 10)
    with pytest.raises(ZsadInputError):
        stage_layers(10, ())
    with pytest.raises(ZsadInputError):
        create_method("sdp", _tiny(), layers=(3, 2))


def _tiny() -> ClipBackbone:
    return ClipBackbone.from_pretrained("zsad-tiny", "none", seed=0)


def _bilinear_np(m: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """Literal bilinear resize of one (h, w) map to (size, size)."""
    h, w = m.shape

    def coords(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = np.arange(size, dtype=np.float64)
        src = i * (n_in - 1) / (size - 1) if align_corners else np.maximum((i + 0.5) * n_in / size - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, fr = coords(h)
    c0, c1, fc = coords(w)
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            top = m[r0[y], c0[x]] * (1 - fc[x]) + m[r0[y], c1[x]] * fc[x]
            bot = m[r1[y], c0[x]] * (1 - fc[x]) + m[r1[y], c1[x]] * fc[x]
            out[y, x] = top * (1 - fr[y]) + bot * fr[y]
    return out


def _slow_vv(blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """v-v attention of one open_clip block, one head at a time, explicit softmax."""
    attn = blk.attn
    w, h = x.shape[-1], attn.num_heads
    d = w // h
    v = blk.ln_1(x) @ attn.in_proj_weight[2 * w :].T + attn.in_proj_bias[2 * w :]
    heads = []
    for k in range(h):
        vh = v[..., k * d : (k + 1) * d]
        a = torch.exp(vh @ vh.transpose(-1, -2) / d**0.5)
        heads.append((a / a.sum(-1, keepdim=True)) @ vh)
    return blk.ls_1(attn.out_proj(torch.cat(heads, -1)))


def test_sdp_matches_slow_reference(tiny_backbone: ClipBackbone) -> None:
    bb = tiny_backbone
    imgs = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    m = create_method("sdp", bb, **OPTS)
    m.setup("screw")
    pred = m.predict(imgs)
    normal, anomalous = build_prompts(get_prompt_set("clipad"), "screw")
    text = torch.stack(
        [
            F.normalize(F.normalize(bb.model.encode_text(bb.tokenizer(p)), dim=-1).mean(0), dim=0)
            for p in (normal, anomalous)
        ]
    )
    torch.testing.assert_close(m.text, text, atol=1e-6, rtol=1e-5)
    visual = bb.model.visual
    stages = (1, 2, 3, 4)
    with torch.no_grad():
        x = visual._embeds(imgs)
        s = torch.zeros_like(x)
        per_stage = []
        for i, blk in enumerate(visual.transformer.resblocks):
            s = torch.zeros_like(x) if i + 1 in (2, 3, 4) else s
            s = s + _slow_vv(blk, x)
            x = blk(x)
            if i + 1 in stages:
                tok = torch.cat([x[:, :1], s[:, 1:]], 1)
                per_stage.append(F.normalize(visual.ln_post(tok) @ visual.proj, dim=-1).double().numpy())
        p0 = (100 * F.normalize(bb.model.encode_image(imgs), dim=-1) @ text.T).softmax(-1)[:, 1].numpy()
    t = text.double().numpy()
    gh = 6
    for b in range(2):
        total = np.zeros(gh * gh)
        for f in per_stage:
            logits = np.array([f[b, 0] @ t[c] for c in range(2)])
            prob = np.exp(logits) / np.exp(logits).sum()
            wgt = prob / prob.mean()
            for n in range(gh * gh):
                sims = [wgt[c] * (f[b, 1 + n] @ t[c]) for c in range(2)]
                total[n] += sims[1] - (sims[0] + sims[1]) / 2
        ref_map = gaussian_filter(_bilinear_np(total.reshape(gh, gh), 96, align_corners=False), 8.0)
        np.testing.assert_allclose(pred.anomaly_map[b].numpy(), ref_map, atol=2e-6)
        np.testing.assert_allclose(pred.score_parts["map_max"][b].item(), ref_map.max(), atol=2e-6)
        np.testing.assert_allclose(pred.score_parts["text_prob"][b].item(), p0[b], atol=1e-6)
        np.testing.assert_allclose(pred.pred_score[b].item(), p0[b] + ref_map.max(), atol=3e-6)


def test_official_tap_mode_matches_in_place_quirk(tiny_backbone: ClipBackbone) -> None:
    """compat='official': the layer-k tap holds block k's output plus block k+1's attention residual."""
    bb = tiny_backbone
    imgs = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(6))
    visual = bb.model.visual
    with torch.no_grad():
        feats = bb.encode_image(imgs, layers=[2, 4], tap_mode="official")
        x = visual._embeds(imgs)
        outs = []
        for blk in visual.transformer.resblocks:
            outs.append((x, blk(x)))
            x = outs[-1][1]
        blk3 = visual.transformer.resblocks[2]
        x2 = outs[1][1]
        expected2 = x2 + blk3.ls_1(blk3.attention(blk3.ln_1(x2)))
    torch.testing.assert_close(feats.tokens[2], expected2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats.tokens[4], outs[3][1], atol=1e-5, rtol=1e-4)  # the last tap is untouched


def test_transductive_minmax_is_opt_in_and_flagged(tiny_backbone: ClipBackbone) -> None:
    parts = {"text_prob": np.array([0.2, 0.6, 0.4]), "map_max": np.array([1.0, 3.0, 2.0])}
    plain = create_method("sdp", tiny_backbone, **OPTS)
    assert plain.finalize_scores(parts) is None and plain.describe()["transductive"] is False
    trans = create_method("sdp", tiny_backbone, transductive_minmax=True, **OPTS)
    np.testing.assert_allclose(trans.finalize_scores(parts), [0.0, 2.0, 1.0])
    # reference images rescaled with the test set's statistics
    np.testing.assert_allclose(
        trans.finalize_scores({"text_prob": np.array([0.4]), "map_max": np.array([4.0])}, fit=parts), [1.5 + 0.5]
    )
    assert trans.describe()["transductive"] is True


# ---------------------------------------------------------------------------------------------- SDP+


def _sdp_plus(bb: ClipBackbone, tmp_path, seed: int = 3):
    m = create_method("sdp+", bb, **OPTS)
    torch.manual_seed(seed)
    for head in m.heads:
        torch.nn.init.normal_(head.weight, std=0.2)
    return m, m.save(tmp_path / "ckpt", {"note": "test"})


def test_sdp_plus_checkpoint_round_trip(tiny_backbone: ClipBackbone, tmp_path, images96: torch.Tensor) -> None:
    m, ckpt = _sdp_plus(tiny_backbone, tmp_path)
    m.setup("screw")
    before = m.predict(images96)
    loaded = create_method("sdp+", tiny_backbone, checkpoint=str(ckpt), **OPTS)
    loaded.setup("screw")
    after = loaded.predict(images96)
    assert torch.equal(before.anomaly_map, after.anomaly_map) and torch.equal(before.pred_score, after.pred_score)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["method"] == "sdp+" and manifest["config"]["layers"] == [1, 2, 3, 4]


def test_sdp_plus_map_is_trained_probs_plus_sdp(tiny_backbone: ClipBackbone, tmp_path, images96) -> None:
    m, _ = _sdp_plus(tiny_backbone, tmp_path)
    m.setup("screw")
    sdp = create_method("sdp", tiny_backbone, smoothing_sigma=0.0, **OPTS)
    sdp.setup("screw")
    plus = m.predict(images96)
    base = sdp.predict(images96).anomaly_map.double().numpy()
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        x = visual._embeds(images96)
        extra = np.zeros((3, 96, 96))
        for i, blk in enumerate(visual.transformer.resblocks):
            x = blk(x)
            f = F.normalize(m.heads[i](x[:, 1:]), dim=-1).double()
            logits = (100 * f @ m.text.double().T).numpy()  # (B, N, 2)
            for b in range(3):
                up = np.stack([_bilinear_np(logits[b, :, c].reshape(6, 6), 96, align_corners=True) for c in range(2)])
                extra[b] += np.exp(up[1]) / np.exp(up).sum(0)
    for b in range(3):
        ref = gaussian_filter(base[b] + extra[b], 8.0)
        np.testing.assert_allclose(plus.anomaly_map[b].numpy(), ref, atol=5e-5)


def test_sdp_plus_refuses_missing_and_mismatched_checkpoints(tiny_backbone: ClipBackbone, tmp_path) -> None:
    m = create_method("sdp+", tiny_backbone, **OPTS)
    with pytest.raises(ZsadInputError, match="--checkpoint"):
        m.setup("screw")
    _, ckpt = _sdp_plus(tiny_backbone, tmp_path)
    other_seed = ClipBackbone.from_pretrained("zsad-tiny", "none", seed=1)
    with pytest.raises(ZsadInputError, match="seed"):
        create_method("sdp+", other_seed, checkpoint=str(ckpt))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["backbone"]["model_name"] = "ViT-B-16-plus-240"
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZsadInputError, match="ViT-B-16-plus-240"):
        create_method("sdp+", tiny_backbone, checkpoint=str(ckpt))
    with pytest.raises(ZsadInputError, match="layers"):
        create_method("sdp+", tiny_backbone, checkpoint=str(_sdp_plus(tiny_backbone, tmp_path / "b")[1]), layers=(2, 4))


def test_official_release_format_is_imported(tiny_backbone: ClipBackbone, tmp_path, images96) -> None:
    """A file in the official release's layout ({"linear_layers": fc.i.*}) becomes an equivalent zsad checkpoint."""
    from zsad.methods.sdp_plus import SdpPlus

    import_official_checkpoint = SdpPlus.import_official
    gen = torch.Generator().manual_seed(4)
    w, d = tiny_backbone.width, tiny_backbone.embed_dim
    state = {}
    for i in range(4):
        state[f"fc.{i}.weight"] = torch.randn(d, w, generator=gen) * 0.2
        state[f"fc.{i}.bias"] = torch.randn(d, generator=gen) * 0.1
    torch.save({"linear_layers": state}, tmp_path / "train_on_visa.pth")
    ckpt = import_official_checkpoint(tmp_path / "train_on_visa.pth", tiny_backbone, tmp_path / "ckpt", "visa")
    m = create_method("sdp+", tiny_backbone, checkpoint=str(ckpt))
    assert m.config.compat == "official"
    for i, head in enumerate(m.heads):
        assert torch.equal(head.weight, state[f"fc.{i}.weight"]) and torch.equal(head.bias, state[f"fc.{i}.bias"])
    training = json.loads((ckpt / "manifest.json").read_text())["training"]
    assert training["dataset"] == "visa" and training["source"] == "official CLIP-AD release"
    torch.save({"something": 1}, tmp_path / "bad.pth")
    with pytest.raises(ZsadInputError, match="bad.pth"):
        import_official_checkpoint(tmp_path / "bad.pth", tiny_backbone, tmp_path / "c2", "visa")
    # the same layers as safetensors (a flat dict): the same checkpoint tensors
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "layers.safetensors"))
    again = import_official_checkpoint(tmp_path / "layers.safetensors", tiny_backbone, tmp_path / "c3", "visa")
    m2 = create_method("sdp+", tiny_backbone, checkpoint=str(again))
    for a, b in zip(m.heads, m2.heads, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_official_compat_only_for_quarter_layers(tiny_backbone: ClipBackbone) -> None:
    create_method("sdp", tiny_backbone, compat="official", layers=(1, 2, 3, 4), **OPTS)
    with pytest.raises(ZsadInputError, match="quarter"):
        create_method("sdp", tiny_backbone, compat="official", layers=(2, 4), **OPTS)
