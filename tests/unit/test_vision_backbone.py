"""The timm vision-only backbone (DINOv2): taps against timm's own API, local weights, text refused, MuSc on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zsad.backbone.vision import VisionBackbone
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.mutual import lnamd, mutual_scores, rscin
from zsad.runs import BackboneSpec, MethodSpec

DINO = "timm:vit_small_patch14_dinov2.lvd142m"
X = torch.randn(4, 3, 56, 56, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def dino() -> VisionBackbone:
    return VisionBackbone.from_pretrained(DINO, "none", image_size=56, seed=0)


def test_taps_and_embedding_equal_timms_own_forward(dino: VisionBackbone) -> None:
    feats = dino.encode_image(X, layers=(3, 12))
    ref = dino.model.forward_intermediates(X, indices=[2, 11], norm=False, output_fmt="NLC", return_prefix_tokens=True)
    final, inter = ref
    for t, (patches, prefix) in zip((3, 12), inter, strict=True):
        assert feats.tokens[t].shape == (4, 1 + 16, 384)
        torch.testing.assert_close(feats.tokens[t][:, 1:], patches)
        torch.testing.assert_close(feats.tokens[t][:, 0], prefix[:, 0])
    torch.testing.assert_close(feats.embedding, dino.model.forward_features(X)[:, 0])
    assert dino.grid_size() == (4, 4) and dino.num_layers == 12 and dino.preprocess.mean == (0.485, 0.456, 0.406)


def test_register_tokens_are_dropped() -> None:
    bb = VisionBackbone.from_pretrained("timm:vit_small_patch14_reg4_dinov2", "none", image_size=56)
    feats = bb.encode_image(X, layers=(6,))
    full = bb.model.forward_intermediates(X, indices=[5], norm=False, output_fmt="NLC", intermediates_only=True)[0]
    assert bb.num_prefix_tokens == 5 and feats.tokens[6].shape[1] == 17
    torch.testing.assert_close(feats.tokens[6][:, 1:], full)


def test_local_weights_file_and_seed(dino: VisionBackbone, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    again = VisionBackbone.from_pretrained(DINO, "none", image_size=56, seed=0)
    other = VisionBackbone.from_pretrained(DINO, "none", image_size=56, seed=1)
    torch.testing.assert_close(again.encode_image(X).embedding, dino.encode_image(X).embedding)
    assert not torch.allclose(other.encode_image(X).embedding, dino.encode_image(X).embedding)
    f = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in dino.model.state_dict().items()}, str(f))
    loaded = VisionBackbone.from_pretrained(DINO, weights=f, image_size=56)
    assert not loaded.random_init and loaded.manifest()["weights"]["sha256"]
    torch.testing.assert_close(
        loaded.encode_image(X, layers=(6,)).tokens[6], dino.encode_image(X, layers=(6,)).tokens[6]
    )
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ZsadInputError, match="bad.safetensors"):
        VisionBackbone.from_pretrained(DINO, weights=bad, image_size=56)


def test_text_methods_refused_before_loading() -> None:
    bb = BackboneSpec(DINO, "none", image_size=56)
    with pytest.raises(ZsadInputError, match="vision-only .* method sdp reads text"):
        MethodSpec("sdp", bb).validate()
    with pytest.raises(ZsadInputError, match="method musc reads text"):
        MethodSpec("musc", bb, {"language": "winclip"}).validate()
    assert MethodSpec("musc", bb).validate().backbone.key()["model_name"] == DINO
    with pytest.raises(ZsadInputError, match="timm has no model 'vit_nope'"):
        MethodSpec("musc", BackboneSpec("timm:vit_nope", "none")).validate()


def test_musc_on_dinov2_equals_its_parts(dino: VisionBackbone) -> None:
    m = create_method("musc", dino, bank_dtype="float32", degrees=(1, 3))
    m.setup(None)
    assert m.layers == (3, 6, 9, 12)
    pred = m.predict(X)
    feats = dino.encode_image(X, layers=m.layers)
    total = torch.zeros(4, 16, dtype=torch.float64)
    for r in (1, 3):
        for t in m.layers:
            z = lnamd(feats.tokens[t][:, 1:], (4, 4), r)
            total += mutual_scores(z, torch.arange(4), z, 4, 0.0, 0.3).double()
    want = F.interpolate((total / 8).float().reshape(4, 1, 4, 4), size=(56, 56), mode="bilinear", align_corners=True)
    torch.testing.assert_close(pred.anomaly_map, want[:, 0], atol=1e-5, rtol=0)
    glob = F.normalize(feats.embedding, dim=-1)
    torch.testing.assert_close(pred.pred_score, rscin(want[:, 0].flatten(1).amax(1), glob).float(), atol=1e-5, rtol=0)


def test_both_wrappers_are_backbones(dino: VisionBackbone, tiny_backbone) -> None:  # noqa: ANN001
    """The ``Backbone`` protocol is what MuSc reads: both wrappers have every member, other objects do not."""
    from zsad.backbone import Backbone

    assert isinstance(dino, Backbone) and isinstance(tiny_backbone, Backbone)
    assert not isinstance(torch.nn.Linear(2, 2), Backbone)
    for bb in (dino, tiny_backbone):
        assert bb.grid_size() == (bb.image_size // bb.patch_size,) * 2
        assert bb.manifest()["precision"] == bb.precision == "fp32"
        assert create_method("musc", bb).backbone is bb
