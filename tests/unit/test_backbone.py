"""ClipBackbone against open_clip's own forward and against slow, literal references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsad.backbone import ClipBackbone, SurgeryConfig
from zsad.errors import ZsadInputError


def test_global_embedding_matches_open_clip(tiny_backbone: ClipBackbone, images96: torch.Tensor) -> None:
    with torch.no_grad():
        ref = tiny_backbone.model.encode_image(images96)
        got = tiny_backbone.encode_image(images96).embedding
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_layer_taps_match_open_clip_intermediates(tiny_backbone: ClipBackbone, images96: torch.Tensor) -> None:
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        x = visual._embeds(images96)  # conv + cls + pos + ln_pre, open_clip's own code
        refs = []
        for blk in visual.transformer.resblocks:
            x = blk(x)
            refs.append(x)
        feats = tiny_backbone.encode_image(images96, layers=[1, 2, 3, 4])
    for layer in (1, 2, 3, 4):
        torch.testing.assert_close(feats.tokens[layer], refs[layer - 1], atol=1e-5, rtol=1e-5)


def test_projection_is_ln_post_then_proj(tiny_backbone: ClipBackbone, images96: torch.Tensor) -> None:
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        feats = tiny_backbone.encode_image(images96, layers=[2])
        got = tiny_backbone.project(feats.tokens[2])
        ref = visual.ln_post(feats.tokens[2]) @ visual.proj
    torch.testing.assert_close(got, ref)


def test_other_resolution_interpolates_without_mutating(tiny_backbone: ClipBackbone) -> None:
    pos_before = tiny_backbone.model.visual.positional_embedding.detach().clone()
    with torch.no_grad():
        feats = tiny_backbone.encode_image(torch.randn(2, 3, 160, 160))
    assert feats.grid == (10, 10)
    assert torch.equal(tiny_backbone.model.visual.positional_embedding, pos_before)
    pe = tiny_backbone.positional_embedding((10, 10))
    assert pe.shape == (101, tiny_backbone.width)
    # Interpolating back to the native grid is the identity (bicubic, align_corners=False, same size).
    torch.testing.assert_close(tiny_backbone.positional_embedding((6, 6)), pos_before)


def _slow_vv(blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Literal v-v attention, one token and one head at a time."""
    attn = blk.attn
    w = x.shape[-1]
    h = attn.num_heads
    d = w // h
    y = blk.ln_1(x)
    v = y @ attn.in_proj_weight[2 * w :].T + attn.in_proj_bias[2 * w :]
    out = torch.zeros_like(v)
    for b in range(x.shape[0]):
        for head in range(h):
            vh = v[b, :, head * d : (head + 1) * d]
            for t in range(x.shape[1]):
                logits = torch.stack([vh[t] @ vh[u] for u in range(x.shape[1])]) / d**0.5
                out[b, t, head * d : (head + 1) * d] = (logits.softmax(0)[:, None] * vh).sum(0)
    return attn.out_proj(out)


def test_surgery_path_matches_slow_reference(tiny_backbone: ClipBackbone) -> None:
    visual = tiny_backbone.model.visual
    imgs = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    cfg = SurgeryConfig(start_layer=1, reset_layers=(3,), init="zero", replace_cls=True)
    with torch.no_grad():
        feats = tiny_backbone.encode_image(imgs, layers=[2, 4], surgery=cfg, surgery_layers=[2, 4])
        x = visual._embeds(imgs)
        s = torch.zeros_like(x)
        expected = {}
        for i, blk in enumerate(visual.transformer.resblocks):
            if i + 1 == 3:
                s = torch.zeros_like(x)
            s = s + _slow_vv(blk, x)
            x = blk(x)
            if i + 1 in (2, 4):
                expected[i + 1] = torch.cat([x[:, :1], s[:, 1:]], dim=1)
    for layer in (2, 4):
        torch.testing.assert_close(feats.surgery[layer], expected[layer], atol=1e-5, rtol=1e-4)


def test_surgery_residual_init(tiny_backbone: ClipBackbone) -> None:
    imgs = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        zero = tiny_backbone.encode_image(imgs, surgery=SurgeryConfig(start_layer=2), surgery_layers=[2])
        res = tiny_backbone.encode_image(
            imgs,
            layers=[1],
            surgery=SurgeryConfig(start_layer=2, init="residual", replace_cls=False),
            surgery_layers=[2],
        )
    # residual init = hidden state entering block 2 (= tap of layer 1) + the same v-v output
    torch.testing.assert_close(
        res.surgery[2][:, 1:] - res.tokens[1][:, 1:], zero.surgery[2][:, 1:], atol=1e-5, rtol=1e-4
    )


def test_text_cache_and_values(tiny_backbone: ClipBackbone) -> None:
    prompts = ["a photo of a bottle.", "a photo of a damaged bottle."]
    tiny_backbone.clear_text_cache()
    with torch.no_grad():
        ref = tiny_backbone.model.encode_text(tiny_backbone.tokenizer(prompts))
    got = tiny_backbone.encode_text(prompts)
    torch.testing.assert_close(got, ref)
    assert set(tiny_backbone._text_cache) == set(prompts)
    torch.testing.assert_close(tiny_backbone.encode_text(prompts, normalize=True), F.normalize(ref, dim=-1))


def test_token_subsets_match_per_subset_forward(tiny_backbone: ClipBackbone, images96: torch.Tensor) -> None:
    visual = tiny_backbone.model.visual
    index = torch.tensor([[0, 1, 2, 7, 8], [0, 5, 6, 11, 12]])
    with torch.no_grad():
        embeds = tiny_backbone.embed(images96)
        got = tiny_backbone.encode_token_subsets(embeds, index, chunk_size=1)
        for b in range(images96.shape[0]):
            for s in range(index.shape[0]):
                x = visual.transformer(visual.ln_pre(embeds[b : b + 1, index[s]]))
                ref = visual.ln_post(x)[:, 0] @ visual.proj
                torch.testing.assert_close(got[b, s], ref[0], atol=1e-5, rtol=1e-5)


def test_seeded_random_weights_are_reproducible() -> None:
    a = ClipBackbone.from_pretrained("zsad-tiny", "none", seed=5)
    b = ClipBackbone.from_pretrained("zsad-tiny", "none", seed=5)
    c = ClipBackbone.from_pretrained("zsad-tiny", "none", seed=6)
    pa, pb, pc = (next(iter(m.model.visual.parameters())) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a.random_init and a.manifest()["pretrained"] == "none"


def test_local_weights_file_is_loaded_and_hashed(tmp_path, tiny_backbone: ClipBackbone) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    bb = ClipBackbone.from_pretrained("zsad-tiny", weights=path)
    assert not bb.random_init
    info = bb.manifest()["weights"]
    assert info["size"] == path.stat().st_size and len(info["sha256"]) == 64
    for (k, v), v2 in zip(bb.model.state_dict().items(), tiny_backbone.model.state_dict().values(), strict=True):
        assert torch.equal(v, v2), k


def test_bad_weights_and_names_give_one_line_errors(tmp_path) -> None:
    with pytest.raises(ZsadInputError, match="not found"):
        ClipBackbone.from_pretrained("zsad-tiny", weights=tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ZsadInputError, match="bad.pt") as e:
        ClipBackbone.from_pretrained("zsad-tiny", weights=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ZsadInputError, match="unknown backbone"):
        ClipBackbone.from_pretrained("ViT-Nope", "none")


def test_text_block_loop_matches_open_clip(tiny_backbone: ClipBackbone) -> None:
    tok = tiny_backbone.tokenize(["a photo of a screw.", "damaged bottle with a crack", "x"])
    with torch.no_grad():
        ref = tiny_backbone.model.encode_text(tok)
        got = tiny_backbone.encode_text_tokens(tok)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    tiny_backbone.clear_text_cache()
    cached = tiny_backbone.encode_text(["a photo of a screw.", "damaged bottle with a crack", "x"])
    torch.testing.assert_close(cached, ref, atol=1e-5, rtol=1e-4)  # the cached path runs the same loop
    held = len(tiny_backbone._text_cache)
    one_off = tiny_backbone.encode_text(["x", "a photo of a screw.", "a one-off sentence"], cache=False)
    assert len(tiny_backbone._text_cache) == held  # read from the cache, not grown
    torch.testing.assert_close(one_off[:2], ref[[2, 0]])


def test_text_deep_prompts_replace_positions(tiny_backbone: ClipBackbone) -> None:
    """Deep text prompts = overwrite positions 1..M before the chosen blocks, through open_clip's own blocks."""
    model = tiny_backbone.model
    tok = tiny_backbone.tokenize(["x x x a photo of a screw.", "x x x damaged bottle"])
    g = torch.Generator().manual_seed(0)
    width = model.token_embedding.weight.shape[1]
    prompts = {1: torch.randn(2, 3, width, generator=g), 2: torch.randn(1, 3, width, generator=g)}
    with torch.no_grad():
        got = tiny_backbone.encode_text_tokens(tok, deep_prompts=prompts)
        x = model.token_embedding(tok) + model.positional_embedding
        for i, blk in enumerate(model.transformer.resblocks):
            if i in prompts:
                x = x.clone()
                x[:, 1:4] = prompts[i]
            x = blk(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        ref = x[torch.arange(2), tok.argmax(-1)] @ model.text_projection
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, tiny_backbone.encode_text_tokens(tok), atol=1e-3)


def test_visual_deep_prompts_append_then_replace(tiny_backbone: ClipBackbone) -> None:
    """AdaCLIP-style visual prompts, against open_clip's own blocks with literal concatenation."""
    visual = tiny_backbone.model.visual
    imgs = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(1)
    w, m = tiny_backbone.width, 3
    prompts = {0: torch.randn(2, m, w, generator=g), 1: torch.randn(1, m, w, generator=g)}
    with torch.no_grad():
        feats = tiny_backbone.encode_image(imgs, layers=[1, 3], visual_prompts=prompts)
        x = visual._embeds(imgs)
        taps = {}
        for i, blk in enumerate(visual.transformer.resblocks):
            if i == 0:
                x = torch.cat([x, prompts[0]], 1)
            elif i in prompts:
                x = torch.cat([x[:, :-m], prompts[i].expand(2, -1, -1)], 1)
            x = blk(x)
            taps[i + 1] = x[:, :-m]
        pooled = visual.ln_post(x[:, 0]) @ visual.proj
        plain = tiny_backbone.encode_image(imgs)
    assert feats.tokens[1].shape == (2, 37, w)
    for lyr in (1, 3):
        torch.testing.assert_close(feats.tokens[lyr], taps[lyr], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats.embedding, pooled, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(feats.embedding, plain.embedding, atol=1e-3)


def test_pooled_only_gives_the_same_embedding(tiny_backbone: ClipBackbone, images96: torch.Tensor) -> None:
    with torch.no_grad():
        full = tiny_backbone.encode_image(images96).embedding
        fast = tiny_backbone.encode_image(images96, pooled_only=True).embedding
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)


def test_text_prompt_sets_equal_repeated_sentences(tiny_backbone: ClipBackbone) -> None:
    """Sentences of different lengths under P prompt sets = the plain loop on the sentences repeated P times."""
    tok = tiny_backbone.tokenize(["x x x a photo of a screw.", "x x x damaged", "x x x a b c d e f g h"])
    g = torch.Generator().manual_seed(1)
    width = tiny_backbone.model.token_embedding.weight.shape[1]
    prompts = {1: torch.randn(2, 3, width, generator=g), 2: torch.randn(2, 3, width, generator=g)}
    with torch.no_grad():
        got = tiny_backbone.encode_text_prompt_sets(tok, prompts)
        for p in range(2):
            ref = tiny_backbone.encode_text_tokens(tok, deep_prompts={i: v[p : p + 1] for i, v in prompts.items()})
            torch.testing.assert_close(got[p], ref, atol=1e-5, rtol=1e-4)
    assert got.shape == (2, 3, tiny_backbone.embed_dim)
    assert not torch.allclose(got[0], got[1], atol=1e-3)
    with pytest.raises(ZsadInputError, match="common first dimension"):
        tiny_backbone.encode_text_prompt_sets(tok, {1: prompts[1], 2: prompts[2][:1]})


def test_activation_is_recorded_and_used(tiny_backbone: ClipBackbone) -> None:
    """A QuickGELU build keeps its activation through zsad's block loop (equal to open_clip's own forward)."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("zsad-tiny", pretrained=None, force_quick_gelu=True)
    quick = ClipBackbone.from_model(model.eval(), "zsad-tiny")
    assert quick.manifest()["activation"] == "QuickGELU" and tiny_backbone.manifest()["activation"] == "GELU"
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(quick.encode_image(x).embedding, model.encode_image(x), atol=1e-5, rtol=1e-4)
