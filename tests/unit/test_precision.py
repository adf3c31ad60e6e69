"""``--precision``: which parts change type, what stays fp32, bounded drift, one-line refusals, run keys."""

from __future__ import annotations

import pytest
import torch

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError


def _tiny(size: int = 64) -> ClipBackbone:
    return ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=size, seed=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_only_the_image_blocks_matmuls_change_type(precision: str) -> None:
    ref, low = _tiny(), _tiny().set_precision(precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    visual = low.model.visual
    for blk in visual.transformer.resblocks:
        assert blk.attn.in_proj_weight.dtype == dtype and blk.attn.out_proj.weight.dtype == dtype
        assert blk.mlp.c_fc.weight.dtype == dtype and blk.mlp.c_proj.weight.dtype == dtype
        assert blk.ln_1.weight.dtype == torch.float32 and blk.ln_2.weight.dtype == torch.float32
    assert visual.conv1.weight.dtype == torch.float32 and visual.proj.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in low.model.transformer.parameters())  # the text tower
    assert low.manifest()["precision"] == precision and ref.manifest()["precision"] == "fp32"
    # text features are untouched: the same bits as fp32
    assert torch.equal(low.encode_text(["a photo of a tile"]), ref.encode_text(["a photo of a tile"]))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ref.encode_image(x, layers=(1, 2), surgery_layers=(2,), final_tokens=True)
        b = low.encode_image(x, layers=(1, 2), surgery_layers=(2,), final_tokens=True)
    pairs = [(a.embedding, b.embedding), (a.tokens[2], b.tokens[2]), (a.surgery[2], b.surgery[2])]
    pairs.append((a.final_tokens, b.final_tokens))
    for want, got in pairs:
        assert got.dtype == torch.float32  # heads always receive fp32
        rel = float((got - want).abs().max() / want.abs().max())
        assert 0 < rel < 0.05, rel  # rounded (so the cast happened), but only by a half-precision step
    # WinCLIP's window re-runs go through the same blocks
    idx = torch.tensor([[0, 1, 2, 3], [0, 4, 5, 6]])
    with torch.no_grad():
        wa = ref.encode_token_subsets(ref.embed(x), idx)
        wb = low.encode_token_subsets(low.embed(x), idx)
    assert wb.dtype == torch.float32 and 0 < float((wa - wb).abs().max() / wa.abs().max()) < 0.05


def test_precision_refusals() -> None:
    with pytest.raises(ZsadInputError, match=r"^--precision fp8: use one of fp32, bf16, fp16$"):
        _tiny().set_precision("fp8")
    bb = _tiny().set_precision("bf16")
    assert bb.set_precision("bf16") is bb  # asking again is a no-op
    with pytest.raises(ZsadInputError, match="already cast to bf16"):
        bb.set_precision("fp32")  # the fp32 weights are gone: no silent round trip


def test_spec_key_build_and_full_precision_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    from zsad.methods import get_method_class
    from zsad.runs.build import BackboneSpec, MethodSpec

    tiny = dict(model_name="zsad-tiny", pretrained="none", image_size=64, device="cpu")
    fp32 = MethodSpec("sdp", BackboneSpec(**tiny)).validate()  # type: ignore[arg-type]
    bf16 = MethodSpec("sdp", BackboneSpec(**tiny, precision="bf16")).validate()  # type: ignore[arg-type]
    assert "precision" not in fp32.key()["backbone"]  # fp32 keys are those of folders written before --precision
    assert bf16.key()["backbone"]["precision"] == "bf16"
    assert fp32.backbone.cache_key() != bf16.backbone.cache_key()  # never shared between precisions in one run
    assert bf16.build().backbone.precision == "bf16"
    with pytest.raises(ZsadInputError, match="--precision fp8"):
        MethodSpec("sdp", BackboneSpec(**tiny, precision="fp8")).validate()  # type: ignore[arg-type]
    monkeypatch.setattr(get_method_class("sdp"), "full_precision", {"bf16": "its drift changed decisions"})
    kept = MethodSpec("sdp", BackboneSpec(**tiny, precision="bf16")).validate()  # type: ignore[arg-type]
    assert kept.backbone.precision == "fp32" and "precision" not in kept.key()["backbone"]
    assert kept.build().backbone.precision == "fp32"
    fp16 = MethodSpec("sdp", BackboneSpec(**tiny, precision="fp16")).validate()  # type: ignore[arg-type]
    assert fp16.backbone.precision == "fp16"  # only the precisions named are refused


def test_vision_backbone_autocast_keeps_fp32_outputs() -> None:
    from zsad.backbone.vision import VisionBackbone

    name = "timm:vit_small_patch14_dinov2.lvd142m"
    ref = VisionBackbone.from_pretrained(name, "none", image_size=56)
    low = VisionBackbone.from_pretrained(name, "none", image_size=56).set_precision("bf16")
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref.encode_image(x, layers=(3, 6)), low.encode_image(x, layers=(3, 6))
    for want, got in ((a.embedding, b.embedding), (a.tokens[6], b.tokens[6])):
        assert got.dtype == torch.float32
        assert 0 < float((got - want).abs().max() / want.abs().max()) < 0.05
    assert low.manifest()["precision"] == "bf16"


def test_methods_kept_in_fp32_under_bf16() -> None:
    """RWDA and AnomalyCLIP flipped decisions in bf16 (RESULTS.md): their runs stay fp32; fp16 stays allowed."""
    from zsad.runs.build import BackboneSpec, MethodSpec

    tiny = dict(model_name="zsad-tiny", pretrained="none", image_size=64, device="cpu")
    for name in ("rwda", "anomalyclip"):
        spec = MethodSpec(name, BackboneSpec(**tiny, precision="bf16")).validate(for_training=True)  # type: ignore[arg-type]
        assert spec.backbone.precision == "fp32"
        spec = MethodSpec(name, BackboneSpec(**tiny, precision="fp16")).validate(for_training=True)  # type: ignore[arg-type]
        assert spec.backbone.precision == "fp16"
