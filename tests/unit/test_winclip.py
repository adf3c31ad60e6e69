"""WinCLIP against a slow, obviously-correct reference: one open_clip forward per window, loops for aggregation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsad.backbone import ClipBackbone
from zsad.methods import create_method
from zsad.methods.winclip import harmonic_aggregation, membership, window_indices
from zsad.prompts import build_prompts, get_prompt_set


def _embeds(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    return torch.cat([cls, x], 1) + visual.positional_embedding


def _window_embedding(visual: torch.nn.Module, embeds: torch.Tensor, patches: list[int]) -> torch.Tensor:
    x = visual.transformer(visual.ln_pre(embeds[:, [0] + [p + 1 for p in patches]]))
    return visual.ln_post(x)[:, 0] @ visual.proj


def _text(bb: ClipBackbone, class_name: str, raw_mean: bool, set_name: str) -> torch.Tensor:
    out = []
    for prompts in build_prompts(get_prompt_set(set_name), class_name):
        e = bb.model.encode_text(bb.tokenizer(prompts))
        out.append(F.normalize(e.mean(0) if raw_mean else F.normalize(e, dim=-1).mean(0), dim=-1))
    return torch.stack(out)


def _prob(e: torch.Tensor, text: torch.Tensor, t: float = 0.07) -> torch.Tensor:
    return (F.normalize(e, dim=-1) @ text.T / t).softmax(-1)[..., 1]


def _slow_winclip(
    bb: ClipBackbone,
    images: torch.Tensor,
    class_name: str,
    refs: torch.Tensor | None = None,
    raw_mean: bool = False,
    set_name: str = "winclip",
    scales=(2, 3),
) -> tuple[torch.Tensor, ...]:
    visual = bb.model.visual
    g = images.shape[-1] // bb.patch_size
    text = _text(bb, class_name, raw_mean, set_name)

    def windows(scale: int) -> list[list[int]]:
        return [
            [(r + i) * g + (c + j) for i in range(scale) for j in range(scale)]
            for r in range(g - scale + 1)
            for c in range(g - scale + 1)
        ]

    def harmonic(win_scores: list[float], wins: list[list[int]]) -> torch.Tensor:
        out = torch.zeros(g * g)
        for p in range(g * g):
            covering = [s for s, w in zip(win_scores, wins, strict=True) if p in w]
            out[p] = len(covering) / sum(1.0 / s for s in covering)
        return out

    def features(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[int, list[torch.Tensor]]]:
        emb = _embeds(visual, img[None])
        x = visual.transformer(visual.ln_pre(emb))
        glob = visual.ln_post(x)[:, 0] @ visual.proj
        patch = visual.ln_post(x)[0, 1:]
        return glob[0], patch, {s: [_window_embedding(visual, emb, w)[0] for w in windows(s)] for s in scales}

    ref_feats = [features(r) for r in refs] if refs is not None else []
    maps, scores = [], []
    for img in images:
        glob, patch, wins = features(img)
        img_score = _prob(glob, text)
        per_scale = [torch.full((g * g,), float(img_score))]
        for s in scales:
            per_scale.append(harmonic([float(_prob(e, text)) for e in wins[s]], windows(s)))
        zs = torch.stack([len(per_scale) / sum(1.0 / m[p] for m in per_scale) for p in range(g * g)])
        if ref_feats:
            ref_patch = torch.cat([f[1] for f in ref_feats])
            fs_maps = [
                torch.stack([(1 - F.cosine_similarity(patch[p][None], ref_patch)).min() / 2 for p in range(g * g)])
            ]
            for s in scales:
                ref_w = torch.stack([e for f in ref_feats for e in f[2][s]])
                ws = [float((1 - F.cosine_similarity(e[None], ref_w)).min() / 2) for e in wins[s]]
                fs_maps.append(harmonic(ws, windows(s)))
            fs = torch.stack(fs_maps).mean(0)
            zs = (zs + fs) / 2
            img_score = (img_score + fs.max()) / 2
        maps.append(F.interpolate(zs.reshape(1, 1, g, g), size=images.shape[-2:], mode="bilinear")[0, 0])
        scores.append(img_score)
    return torch.stack(scores), torch.stack(maps)


@pytest.mark.parametrize("compat", ["none", "anomalib"])
def test_zero_shot_matches_slow_reference(tiny_backbone: ClipBackbone, images96: torch.Tensor, compat: str) -> None:
    m = create_method("winclip", tiny_backbone, compat=compat)
    m.setup("screw")
    pred = m.predict(images96[:2])
    with torch.no_grad():
        ref_s, ref_m = _slow_winclip(
            tiny_backbone,
            images96[:2],
            "screw",
            raw_mean=compat == "anomalib",
            set_name="winclip-anomalib" if compat == "anomalib" else "winclip",
        )
    torch.testing.assert_close(pred.pred_score, ref_s, atol=1e-5, rtol=0)
    torch.testing.assert_close(pred.anomaly_map, ref_m, atol=1e-5, rtol=0)


def test_few_shot_matches_slow_reference(tiny_backbone: ClipBackbone, images96: torch.Tensor) -> None:
    refs = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(9))
    m = create_method("winclip", tiny_backbone)
    m.setup("screw", reference_images=refs)
    assert m.k_shot == 2
    pred = m.predict(images96[:2])
    with torch.no_grad():
        ref_s, ref_m = _slow_winclip(tiny_backbone, images96[:2], "screw", refs=refs)
    torch.testing.assert_close(pred.pred_score, ref_s, atol=1e-5, rtol=0)
    torch.testing.assert_close(pred.anomaly_map, ref_m, atol=1e-5, rtol=0)


def test_reference_image_scores_zero_few_shot_distance(tiny_backbone: ClipBackbone, images96: torch.Tensor) -> None:
    m = create_method("winclip", tiny_backbone)
    m.setup("screw", reference_images=images96[:1])
    _, patches, wins = m._encode(images96[:1], final_tokens=True)
    from zsad.methods.winclip import association_scores

    assert association_scores(patches, m.reference[0]).abs().max() < 1e-5


def test_window_indices_hand_case() -> None:
    idx = window_indices((3, 3), 2)
    assert idx.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    strided = window_indices((5, 5), 2, stride=2)  # starts 0, 2 and the border start 3
    assert strided.shape == (9, 4)
    assert membership(strided, 25).sum(0).min() >= 1  # every patch covered


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_every_patch_is_covered_at_every_scale_and_stride(scale: int, stride: int) -> None:
    """A stride above the window size would leave patches between windows (a blind grid of zeros in the map)."""
    for grid in ((5, 5), (15, 15), (7, 12)):
        idx = window_indices(grid, scale, stride)
        covered = membership(idx, grid[0] * grid[1]).sum(0)
        assert covered.min() >= 1, (grid, scale, stride)
        rows = sorted({int(i) // grid[1] for i in idx[:, 0]})
        step = min(stride, scale)
        expected = sorted({*range(0, grid[0] - scale + 1, step), grid[0] - scale})
        assert rows == expected  # window tops: every min(stride, scale) rows plus the border row


def test_harmonic_aggregation_hand_case() -> None:
    idx = window_indices((2, 3), 2)  # two windows: patches {0,1,3,4} and {1,2,4,5}
    scores = torch.tensor([[0.5, 0.25]])
    agg = harmonic_aggregation(scores, membership(idx, 6))
    expected = torch.tensor([[0.5, 2 / (2 + 4), 0.25, 0.5, 2 / (2 + 4), 0.25]])
    torch.testing.assert_close(agg, expected)


def test_unknown_option_and_bad_shape_are_clear(tiny_backbone: ClipBackbone) -> None:
    from zsad.errors import ZsadInputError

    with pytest.raises(ZsadInputError, match="unknown option"):
        create_method("winclip", tiny_backbone, window_size=3)
    m = create_method("winclip", tiny_backbone)
    with pytest.raises(ZsadInputError, match="expected images"):
        m.predict(torch.randn(1, 3, 64, 64))
    with pytest.raises(ZsadInputError, match="unknown method"):
        create_method("nope", tiny_backbone)
