"""AnomalyVFM: adapters against literal numbers, the tower against open_clip, the release importer end to end.

The release is written by hand here in the exact layout of the official Hugging Face upload (config.json +
model.safetensors with the full state dict of ``hf_model.AnomalyVFM``: ``model.net.*`` HF CLIP vision keys whose
q/v/out projections are wrapped as ``*.layer.weight`` + ``lora_A``/``lora_B``/``magnitude``, ``decoder.*``,
``predictor.lin.*``), from a tiny seeded CLIP with OpenAI's QuickGELU.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from zsad.backbone import ClipBackbone
from zsad.backbone.vision import VisionBackbone
from zsad.errors import ZsadInputError
from zsad.methods import create_method
from zsad.methods.anomalyvfm import (
    AnomalyVfm,
    dinov2_positions,
    interpolate_positions,
    loss_from_logits,
    sigmoid_focal,
)
from zsad.methods.peft import DoraAdapter, LoraAdapter, adapted_qkv
from zsad.runs import import_checkpoint
from zsad.runs.build import BackboneSpec

SIZE = 128  # grid 8 on a 6x6 positional embedding: the interpolation runs
TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 96, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny-quickgelu.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def bb(tiny_json: Path) -> ClipBackbone:
    return ClipBackbone.from_pretrained(str(tiny_json), "none", seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def _vfm(backbone: ClipBackbone | VisionBackbone, **options: object) -> AnomalyVfm:
    m = create_method("anomalyvfm", backbone, **options)
    assert isinstance(m, AnomalyVfm)
    return m


def _randomise(method: AnomalyVfm, seed: int = 7) -> AnomalyVfm:
    """Non-zero B and magnitudes off the row norms, so every adapter changes the forward."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.parts.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.05 if "lora" in name else 0.1))
    method.training_manifest = {"training": {}}  # parts set directly: let it run
    return method


def _release(method: AnomalyVfm, tower: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The full state dict of the official ``hf_model.AnomalyVFM`` holding ``method``'s tower and parts."""
    w = tower or {k: v.detach().clone() for k, v in method.backbone.model.visual.state_dict().items()}
    p = {k: v.detach().clone() for k, v in method.parts.state_dict().items()}
    net = "model.net."
    out = {
        net + "embeddings.patch_embedding.weight": w["conv1.weight"],
        net + "embeddings.class_embedding": w["class_embedding"],
        net + "embeddings.position_embedding.weight": w["positional_embedding"],
        net + "pre_layrnorm.weight": w["ln_pre.weight"],
        net + "pre_layrnorm.bias": w["ln_pre.bias"],
        net + "post_layernorm.weight": w["ln_post.weight"],
        net + "post_layernorm.bias": w["ln_post.bias"],
    }
    for i in range(method.backbone.num_layers):
        hf, oc = f"{net}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        qw, kw, vw = w[oc + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = w[oc + "attn.in_proj_bias"].chunk(3)
        ow, ob = w[oc + "attn.out_proj.weight"], w[oc + "attn.out_proj.bias"]
        out[hf + "self_attn.k_proj.weight"], out[hf + "self_attn.k_proj.bias"] = kw, kb
        for z, name, (wt, bs) in (("q", "q_proj", (qw, qb)), ("v", "v_proj", (vw, vb)), ("out", "out_proj", (ow, ob))):
            out[f"{hf}self_attn.{name}.layer.weight"], out[f"{hf}self_attn.{name}.layer.bias"] = wt, bs
            for t in ("lora_A", "lora_B", "magnitude"):
                if f"adapters.{i}.{z}.{t}" in p:
                    out[f"{hf}self_attn.{name}.{t}"] = p[f"adapters.{i}.{z}.{t}"]
        pairs = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
        for o, h in pairs:
            out[f"{hf}{h}.weight"], out[f"{hf}{h}.bias"] = w[f"{oc}{o}.weight"], w[f"{oc}{o}.bias"]
    out.update({k: v for k, v in p.items() if k.startswith("decoder.")})
    out["predictor.lin.weight"], out["predictor.lin.bias"] = p["predictor.weight"], p["predictor.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def _write_release(folder: Path, state: dict[str, torch.Tensor], **config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_name": "clip", "image_size": SIZE, "peft_type": "dora", "peft_rank": 4, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def _import(src: Path, out: Path, tiny_json: Path) -> Path:
    spec = BackboneSpec(model_name=str(tiny_json), pretrained="none", image_size=SIZE)
    return import_checkpoint(src, "anomalyvfm", out, "synthetic (test)", backbone=spec)


# ---------------------------------------------------------------------------------------------- adapters
def test_dora_is_the_literal_magnitude_direction_formula() -> None:
    """W' = m (W + s B A) / (||W + s B A||_row + 1e-8), by hand: rows (3, 4, 0)/5 and (0, 0, 1)/1."""
    ad = DoraAdapter(2, 3, rank=1, alpha=1.0, weight=torch.zeros(2, 3))
    with torch.no_grad():
        ad.lora_A.copy_(torch.tensor([[0.0, 4.0, 0.0]]))
        ad.lora_B.copy_(torch.tensor([[1.0], [0.0]]))
        ad.magnitude.copy_(torch.tensor([10.0, 2.0]))
    w = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(ad.merged_weight(w), torch.tensor([[6.0, 8.0, 0.0], [0.0, 0.0, 2.0]]))
    y = ad(torch.tensor([[1.0, 1.0, 1.0]]), w, torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(y, torch.tensor([[15.0, 1.0]]))
    fresh = DoraAdapter(2, 3, rank=1, alpha=1.0, weight=w)  # B = 0, m = row norms: W itself (to the 1e-8)
    torch.testing.assert_close(fresh.magnitude, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(fresh.merged_weight(w), w)


def test_lora_adds_the_scaled_low_rank_path_to_the_output() -> None:
    """y = x W^T + b + (alpha / r) (x A^T) B^T, by hand: (5.5, 11) + 2 * (6, 0)."""
    ad = LoraAdapter(2, 2, rank=1, alpha=2.0)
    with torch.no_grad():
        ad.lora_A.copy_(torch.tensor([[1.0, 1.0]]))
        ad.lora_B.copy_(torch.tensor([[2.0], [0.0]]))
    y = ad(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(y, torch.tensor([[17.5, 11.0]]))
    assert ad.scaling == 2.0 and torch.equal(LoraAdapter(3, 5, rank=4, alpha=1.0).lora_B, torch.zeros(3, 4))


def test_tower_equals_open_clip_with_the_adapted_weights_merged(bb: ClipBackbone, images: torch.Tensor) -> None:
    """The adapters act on the q and v rows of the fused in_proj and on out_proj: merged into a copy of the model,
    open_clip's own block loop gives the same last hidden state (and with zero LoRA the backbone's, exactly)."""
    lora = _vfm(bb, peft="lora", rank=4)
    with torch.no_grad():
        plain = bb.encode_image(images, layers=(bb.num_layers,)).tokens[bb.num_layers]
        assert torch.equal(lora.tower_tokens(images), plain)
    m = _randomise(_vfm(bb, rank=4))
    model = copy.deepcopy(bb.model)
    with torch.no_grad():
        for i, blk in enumerate(model.visual.transformer.resblocks):
            ad: Any = m.parts.adapters[i]  # DoRA adapters: merged_weight
            wq, wk, wv = blk.attn.in_proj_weight.chunk(3)
            blk.attn.in_proj_weight.copy_(torch.cat([ad.q.merged_weight(wq), wk, ad.v.merged_weight(wv)]))
            blk.attn.out_proj.weight.copy_(ad.out.merged_weight(blk.attn.out_proj.weight))
        merged = ClipBackbone.from_model(model, "zsad-tiny", image_size=SIZE)
        want = merged.encode_image(images, layers=(bb.num_layers,)).tokens[bb.num_layers]
        torch.testing.assert_close(m.tower_tokens(images), want, atol=1e-5, rtol=1e-5)
        assert (want - plain).abs().max() > 1e-2  # the adapters did something


def test_positions_resize_bicubically_without_aligned_corners(bb: ClipBackbone) -> None:
    pos = bb.model.visual.positional_embedding
    got = interpolate_positions(pos, (8, 8))
    grid = pos[1:].reshape(1, 6, 6, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(64, -1)
    assert torch.equal(got[0], pos[0]) and torch.equal(got[1:], want)
    assert torch.equal(got, bb.positional_embedding((8, 8), mode="bicubic"))
    assert interpolate_positions(pos, (6, 6)) is pos


# ---------------------------------------------------------------------------------------------- predict
def test_predict_shapes_ranges_and_the_official_map_path(bb: ClipBackbone, images: torch.Tensor) -> None:
    m = _randomise(_vfm(bb, rank=4))
    m.setup("ignored")
    pred = m.predict(images)
    assert pred.pred_score.shape == (2,) and pred.anomaly_map.shape == (2, SIZE, SIZE)
    assert ((pred.pred_score > 0) & (pred.pred_score < 1)).all()
    assert (pred.anomaly_map >= 0).all() and (pred.anomaly_map <= 1).all()
    with torch.no_grad():
        score, mask, conf = m.logits(images)
    assert mask.shape == conf.shape == (2, 1, 16, 16)  # 8x8 grid, one x2 block
    torch.testing.assert_close(pred.pred_score, score.sigmoid())
    smooth = F.avg_pool2d(mask.sigmoid(), 5, 1, 2, count_include_pad=True)
    torch.testing.assert_close(pred.anomaly_map, smooth.repeat_interleave(8, 2).repeat_interleave(8, 3)[:, 0])
    raw = _vfm(bb, rank=4, mean_kernel=0, map_upsample="bilinear")
    raw.parts.load_state_dict(m.parts.state_dict())
    raw.training_manifest = {}
    want = F.interpolate(mask.sigmoid(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(raw.predict(images).anomaly_map, want)
    assert AnomalyVfm.uses_text(m.config) is False and m.describe()["class_name"] == "object"


def test_untrained_and_bad_options_are_refused(bb: ClipBackbone) -> None:
    with pytest.raises(ZsadInputError, match="no trained adapters"):
        _vfm(bb, rank=4).setup(None)
    for bad, why in (({"mean_kernel": 4}, "odd"), ({"peft": "vpt"}, "dora or lora"), ({"rank": 0}, ">= 1")):
        with pytest.raises(ZsadInputError, match=why):
            _vfm(bb, **bad)
    with pytest.raises(ZsadInputError, match="train_steps"):
        _vfm(bb, train_steps=-1)


# ---------------------------------------------------------------------------------------------- the importer
def test_release_imports_and_runs_as_the_model_set_directly(
    bb: ClipBackbone, images: torch.Tensor, tiny_json: Path, tmp_path: Path
) -> None:
    """Every tensor of the release consumed; the tower equals the backbone's, so it is checked, not stored."""
    m = _randomise(_vfm(bb, rank=4))
    src = _write_release(tmp_path / "anomalyvfm_clip", _release(m))
    ckpt = _import(src, tmp_path / "ckpt", tiny_json)
    got = _vfm(bb, checkpoint=str(ckpt))
    assert (got.config.peft, got.config.rank, got.config.tower_weights) == ("dora", 4, "backbone")
    a, b = got.predict(images), m.predict(images)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)
    tower = got.describe()["vision_tower"]
    assert tower["weights"] == "backbone" and tower["import_check"]["differing_tensors"] == 0
    assert tower["import_check"]["compared_tensors"] == 5 + 12 * bb.num_layers
    assert got.training_manifest is not None and got.training_manifest["training"]["release_config"]["peft_rank"] == 4


def test_a_release_tower_that_differs_is_stored_and_run(
    bb: ClipBackbone, images: torch.Tensor, tiny_json: Path, tmp_path: Path
) -> None:
    """Released weights other than the backbone's (LoRA here, and the Drive model.pkl layout): the imported model
    runs on the released tower, as a model whose backbone holds those weights."""
    m = _randomise(_vfm(bb, peft="lora", rank=4))
    model = copy.deepcopy(bb.model)
    with torch.no_grad():
        model.visual.ln_pre.weight.mul_(1.5)
        model.visual.transformer.resblocks[1].mlp.c_fc.bias.add_(0.1)
    other = ClipBackbone.from_model(model, "zsad-tiny", image_size=SIZE)
    state = _release(m, tower=model.visual.state_dict())
    drive = {
        "model_state_dict": {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")},
        "decoder_state_dict": {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")},
        "predictor_state_dict": {k.removeprefix("predictor."): v for k, v in state.items() if k.startswith("pred")},
    }
    torch.save(drive, tmp_path / "model.pkl")
    ckpt = _import(tmp_path / "model.pkl", tmp_path / "ckpt", tiny_json)
    got = _vfm(bb, checkpoint=str(ckpt))
    assert (got.config.peft, got.config.tower_weights) == ("lora", "checkpoint")
    assert got.describe()["vision_tower"]["import_check"]["differing_tensors"] == 2
    want = _vfm(other, peft="lora", rank=4)
    want.parts.load_state_dict(m.parts.state_dict())
    want.training_manifest = {}
    a, b = got.predict(images), want.predict(images)
    torch.testing.assert_close(a.pred_score, b.pred_score, atol=0, rtol=0)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, atol=0, rtol=0)
    with pytest.raises(ZsadInputError, match="tower_weights='checkpoint', but tower_weights='backbone'"):
        _vfm(bb, checkpoint=str(ckpt), tower_weights="backbone")


def _one_line(fn: object, match: str) -> str:
    with pytest.raises(ZsadInputError, match=match) as err:
        fn()  # type: ignore[operator]
    text = str(err.value)
    assert "\n" not in text
    return text


def test_foreign_corrupt_and_other_releases_are_refused_in_one_line(
    bb: ClipBackbone, tiny_json: Path, tmp_path: Path
) -> None:
    m = _randomise(_vfm(bb, rank=4))
    state = _release(m)
    cases: list[tuple[str, dict[str, torch.Tensor], dict[str, object], str]] = [
        ("foreign", {"visual.conv1.weight": torch.zeros(2, 2)}, {}, "not an AnomalyVFM release"),
        ("radio", state, {"model_name": "radio"}, "model_name 'radio' but the tensors hold a clip tower"),
        ("tips", state, {"model_name": "tipsv2"}, "for backbone 'tipsv2'.*RADIO and SigLIP2 only"),
        ("named", state, {"model_name": "dinov2"}, "model_name 'dinov2' but the tensors hold a clip tower"),
        ("rank", state, {"peft_rank": 8}, "peft_rank 8 but the adapters have rank 4"),
        ("kind", state, {"peft_type": "lora"}, "peft_type 'lora' but the tensors hold dora"),
        ("extra", {**state, "decoder_extra.w": torch.zeros(1)}, {}, "tensors this importer does not know"),
        ("missing", {k: v for k, v in state.items() if "layer_norm2.bias" not in k}, {}, "layer_norm2.bias.*missing"),
        ("size", state, {"image_size": 672}, "runs at 672 px.*--image-size 672"),
    ]
    for name, st, cfg, match in cases:
        src = _write_release(tmp_path / name, st, **cfg)
        text = _one_line(lambda src=src, name=name: _import(src, tmp_path / f"out_{name}", tiny_json), match)
        assert str(src) in text
    corrupt = _write_release(tmp_path / "corrupt", state)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    _one_line(lambda: _import(corrupt, tmp_path / "out_corrupt", tiny_json), "model.safetensors: not a readable")
    torch.save({"model_state_dict": {"net.x": torch.zeros(1)}, "note": object()}, tmp_path / "obj.pkl")
    _one_line(lambda: _import(tmp_path / "obj.pkl", tmp_path / "out_obj", tiny_json), "weights_only=True")
    _one_line(lambda: _import(tmp_path / "nothing", tmp_path / "out_none", tiny_json), "not found")
    (tmp_path / "gelu.json").write_text(json.dumps({**TINY, "quick_gelu": False}))  # same weights, exact GELU
    gelu = BackboneSpec(model_name=str(tmp_path / "gelu.json"), pretrained="none", image_size=SIZE)
    src = _write_release(tmp_path / "anomalyvfm_clip", state)
    _one_line(lambda: import_checkpoint(src, "anomalyvfm", tmp_path / "o", "x", backbone=gelu), "QuickGELU")
    tiny = BackboneSpec(model_name="zsad-tiny", pretrained="none", image_size=SIZE)  # 4 blocks, not 2
    _one_line(lambda: import_checkpoint(src, "anomalyvfm", tmp_path / "o2", "x", backbone=tiny), "2-block tower")


# ---------------------------------------------------------------------------------------------- training
def test_loss_is_the_official_composition_by_hand() -> None:
    """Focal: logit 0 gives 0.25 * 0.25 * ln 2 (target 1) and 0.75 * 0.25 * ln 2 (target 0), as torchvision's."""
    from torchvision.ops import sigmoid_focal_loss  # type: ignore[import-untyped]

    ln2 = math.log(2)
    got = sigmoid_focal(torch.zeros(2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(got, torch.tensor([0.0625 * ln2, 0.1875 * ln2]))
    x, t = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3, (torch.arange(64) % 3 == 0).float()
    torch.testing.assert_close(sigmoid_focal(x, t), sigmoid_focal_loss(x, t, reduction="none"))
    # one image, a 2x2 map: logits 0, confidence 0 (c = 2), mask [[1, 0], [0, 0]]
    gt = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    terms = loss_from_logits(torch.tensor([0.0]), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), gt, torch.ones(1))
    pos, neg = 5 * 0.0625 * ln2 + 0.5, 5 * 0.1875 * ln2 + 0.5  # |clip(0.5) - gt| = 0.5 either way
    want = (2 * pos + 3 * 2 * neg) / 4 - 0.1 * math.log(2)
    assert terms["mask"].item() == pytest.approx(want, rel=1e-6)
    assert terms["image"].item() == pytest.approx(0.0625 * ln2, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(want + 0.0625 * ln2, rel=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(bb: ClipBackbone, images: torch.Tensor) -> None:
    grads = []
    gt = (torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    for recompute in (False, True):
        m = _randomise(_vfm(bb, rank=4, grad_checkpointing=recompute))
        m.parts.train()
        m.loss_terms(images, gt, torch.tensor([1.0, 0.0]))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in m.parts.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) == len(list(m.parts.parameters()))
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_zsad_train_runs_the_published_recipe_in_steps(bb: ClipBackbone, tiny_json: Path, tmp_path: Path) -> None:
    from zsad.data import make_sample_images
    from zsad.data.spec import DatasetSpec
    from zsad.runs import train

    root = make_sample_images(tmp_path / "data", n_normal=2, n_anomalous=2, size=SIZE, seed=1)
    data = [DatasetSpec("folder", root, normal_dir="good", abnormal_dir="defect", mask_dir="ground_truth")]
    spec = BackboneSpec(model_name=str(tiny_json), pretrained="none", image_size=SIZE)
    ckpt = train("anomalyvfm", data, tmp_path / "ckpt", options={"rank": 4, "train_steps": 3}, backbone=spec,
                 recipe={"batch_size": 3})  # fmt: skip
    m = _vfm(bb, checkpoint=str(ckpt))
    assert m.config.rank == 4 and m.training_manifest is not None
    cfg = m.default_train_config()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.seed) == ("adamw", 1e-4, 1e-2, 32, 12)
    history = m.training_manifest["training"]["history"]
    assert len(history) == 1 and math.isfinite(history[0]["loss"]) and {"image", "mask"} <= set(history[0])
    fresh = _vfm(bb, rank=4)
    fresh.build_parts(seed=12)  # what fit starts from
    moved = [n for n, p in m.parts.named_parameters() if not torch.equal(p, fresh.parts.state_dict()[n])]
    assert any("lora_B" in n for n in moved) and any("decoder" in n for n in moved)
    with pytest.raises(ZsadInputError, match="tower_weights=checkpoint"):
        _vfm(bb, rank=4, tower_weights="checkpoint").fit([], cfg)


def test_synthetic_anomalies_replace_normal_images_of_a_batch(bb: ClipBackbone, images: torch.Tensor) -> None:
    """``synth``: a share of the batch's normals becomes zsad.synth anomalies (label 1, Perlin masks), seeded by the
    loop's RNG; the anomalous image of the batch is left as it was."""
    m = _vfm(bb, rank=4, synth="mixed", synth_fraction=1.0, synth_area=[0.05, 0.1])
    x = torch.cat([images, images.flip(-1)])
    gt = torch.zeros(4, SIZE, SIZE)
    gt[3, :8, :8] = 1
    label = torch.tensor([0.0, 0.0, 0.0, 1.0])
    torch.manual_seed(5)
    a = m.synthetic(x, gt, label)
    torch.manual_seed(5)
    b = m.synthetic(x, gt, label)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))  # reproducible from the loop's RNG
    img, mask, lab = a
    assert lab.tolist() == [1.0, 1.0, 1.0, 1.0] and torch.equal(img[3], x[3]) and torch.equal(mask[3], gt[3])
    assert all(0 < float(mask[i].mean()) < 0.5 for i in range(3))
    assert not torch.equal(img[:3], x[:3]) and torch.equal(label, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    half = _vfm(bb, rank=4, synth="texture")
    assert half.synthetic(x, gt, label)[2].tolist().count(1.0) == 1 + round(3 * 0.5)
    with pytest.raises(ZsadInputError, match="synth_area"):
        _vfm(bb, synth_area=[0.2, 0.1])


# ---------------------------------------------------------------------------------------------- the DINOv2 variant
# timm's DINOv2 ViT with 4 registers (layer scale, no class position in pos_embed), cut to 2 blocks of width 64, at
# 112 px (grid 8): the architecture of vit_large_patch14_reg4_dinov2 at a test's size
DINO = "timm:vit_small_patch14_reg4_dinov2"
DINO_SIZE = 112


@pytest.fixture(scope="module")
def dino() -> VisionBackbone:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model(DINO[5:], pretrained=False, img_size=DINO_SIZE, depth=2, embed_dim=64, num_heads=4,
                                num_classes=0)  # fmt: skip
    with torch.no_grad():  # timm's default layer scale (1e-5) would hide the blocks; DINOv2's trained ones are ~0.1-1
        g = torch.Generator().manual_seed(1)
        for name, p in vit.named_parameters():
            if name.endswith("gamma") or name in ("cls_token", "reg_token"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return VisionBackbone(vit, model_name=DINO, pretrained="none", image_size=DINO_SIZE)


@pytest.fixture(scope="module")
def dino_images() -> torch.Tensor:
    return torch.randn(2, 3, DINO_SIZE, DINO_SIZE, generator=torch.Generator().manual_seed(4))


def test_fused_qkv_adapters_are_the_official_wrappers_literally() -> None:
    """DoRA: one matmul with cat(m_q · dir(W_q + s B_q A_q), W_k, m_v · dir(W_v + s B_v A_v)); LoRA: the frozen fused
    map plus s (x A^T) B^T on its q and v thirds, k untouched."""
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(6, 4, generator=g), torch.randn(6, generator=g), torch.randn(3, 5, 4, generator=g)
    wq, wk, wv = w[:2], w[2:4], w[4:]
    dq, dv = DoraAdapter(2, 4, 2, 1.0, wq), DoraAdapter(2, 4, 2, 1.0, wv)
    lq, lv = LoraAdapter(2, 4, 2, 3.0), LoraAdapter(2, 4, 2, 3.0)
    with torch.no_grad():
        for ad in (dq, dv, lq, lv):
            ad.lora_B.copy_(torch.randn(ad.lora_B.shape, generator=g))
        dq.magnitude.mul_(1.5)
    s = 0.5
    aq, av = wq + s * dq.lora_B @ dq.lora_A, wv + s * dv.lora_B @ dv.lora_A
    final = torch.cat([dq.magnitude[:, None] * aq / (aq.norm(dim=1, keepdim=True) + 1e-8), wk,
                       dv.magnitude[:, None] * av / (av.norm(dim=1, keepdim=True) + 1e-8)])  # fmt: skip
    torch.testing.assert_close(adapted_qkv(x, w, b, dq, dv), x @ final.T + b)
    q, k, v = (x @ w.T + b).chunk(3, dim=-1)
    want = torch.cat([q + 1.5 * (x @ lq.lora_A.T) @ lq.lora_B.T, k, v + 1.5 * (x @ lv.lora_A.T) @ lv.lora_B.T], -1)
    torch.testing.assert_close(adapted_qkv(x, w, b, lq, lv), want)


def _merged_copy(model: Any, m: AnomalyVfm) -> Any:
    """A copy of a timm tower whose fused qkv rows (q, v) and proj hold ``m``'s adapted (merged) weights."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            ad: Any = m.parts.adapters[i]
            wq, wk, wv = blk.attn.qkv.weight.chunk(3)
            blk.attn.qkv.weight.copy_(torch.cat([ad.q.merged_weight(wq), wk, ad.v.merged_weight(wv)]))
            blk.attn.proj.weight.copy_(ad.out.merged_weight(blk.attn.proj.weight))
    return model


def test_dinov2_tower_is_timms_forward_features_with_the_adapted_weights_merged(
    dino: VisionBackbone, dino_images: torch.Tensor
) -> None:
    """Zero LoRA: timm's own forward_features (CLS, then patches; registers dropped), exactly. Random DoRA: the same
    on a copy of the model whose fused qkv (q and v rows) and proj hold the merged weights."""
    reg = 1 + 4
    with torch.no_grad():
        plain = dino.model.forward_features(dino_images)
        got = _vfm(dino, peft="lora", rank=4).tower_tokens(dino_images)
    assert got.shape == (2, 1 + 64, 64) and torch.equal(got, torch.cat([plain[:, :1], plain[:, reg:]], 1))
    m = _randomise(_vfm(dino, rank=4))
    model = _merged_copy(dino.model, m)
    with torch.no_grad():
        want = model.forward_features(dino_images)
        torch.testing.assert_close(m.tower_tokens(dino_images), torch.cat([want[:, :1], want[:, reg:]], 1),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
        assert (want - plain).abs().max() > 1e-2
    assert m.predict(dino_images).anomaly_map.shape == (2, DINO_SIZE, DINO_SIZE)


def _official_dinov2_resize(
    pos: torch.Tensor, w: int, h: int, patch: int, offset: float, antialias: bool
) -> torch.Tensor:
    """DINOv2's ``interpolate_pos_encoding`` (facebookresearch/dinov2, vision_transformer.py), literally."""
    n = pos.shape[1] - 1
    cls, patch_pos, dim = pos[:, 0], pos[:, 1:], pos.shape[-1]
    w0, h0, m = w // patch, h // patch, int(math.sqrt(n))
    kw: dict[str, Any] = {"scale_factor": ((w0 + offset) / m, (h0 + offset) / m)} if offset else {"size": (w0, h0)}
    out = F.interpolate(patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **kw)
    return torch.cat((cls.unsqueeze(0), out.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)


def test_dinov2_positions_are_the_official_resize_and_timms() -> None:
    """37x37 -> 48x48 (672 px) as dinov2_vitl14_reg resizes (antialias, size, offset 0), equal to timm's load-time
    resample; the antialias flag and the old models' offset (0.1, scale factor) change the numbers, and are kept."""
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 37 * 37, 16, generator=torch.Generator().manual_seed(0))
    got = dinov2_positions(pos[:, 1:], (48, 48))
    assert torch.equal(got, _official_dinov2_resize(pos, 672, 672, 14, 0.0, True)[:, 1:])
    assert torch.equal(got, resample_abs_pos_embed(pos[:, 1:], [48, 48], num_prefix_tokens=0))
    old = dinov2_positions(pos[:, 1:], (48, 48), offset=0.1, antialias=False)
    assert torch.equal(old, _official_dinov2_resize(pos, 672, 672, 14, 0.1, False)[:, 1:])
    no_aa = F.interpolate(pos[:, 1:].reshape(1, 37, 37, 16).permute(0, 3, 1, 2), size=(48, 48), mode="bicubic")
    assert (got - no_aa.permute(0, 2, 3, 1).reshape(1, -1, 16)).abs().max() > 1e-3 and not torch.equal(got, old)
    table = pos[:, 1:]
    assert dinov2_positions(table, (37, 37)) is table


def _dinov2_meta(bb: VisionBackbone, pos: torch.Tensor | None = None, cls: torch.Tensor | None = None) -> dict:
    """Meta's DINOv2 state dict (the torch hub module's names) of a timm tower: by default the class position is 0
    and the table is at the backbone's grid, so timm's conversion gives back the backbone exactly."""
    t = {k: v.detach().clone() for k, v in bb.model.state_dict().items()}
    zero = torch.zeros(1, 1, bb.width)
    out = {
        "cls_token": t["cls_token"] if cls is None else cls,
        "pos_embed": torch.cat([zero, t["pos_embed"]], 1) if pos is None else pos,
        "register_tokens": t["reg_token"],
        "mask_token": torch.zeros(1, bb.width),
    }
    out.update({k: v for k, v in t.items() if k.startswith(("patch_embed.", "blocks.", "norm."))})
    return out


def _dinov2_release(
    meta: dict[str, torch.Tensor], method: AnomalyVfm, blocks: str = "model.net.blocks."
) -> dict[str, torch.Tensor]:
    """The official hf_model.AnomalyVFM state dict: model.net.* with qkv/proj wrapped, decoder.*, predictor.lin.*
    (the fused-QKV wrappers under ``blocks``: DINOv2's, or RADIO's ``model.net.model.blocks.``)."""
    p = {k: v.detach().clone() for k, v in method.parts.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for k, v in meta.items():
        for lin in (".attn.qkv.", ".attn.proj."):
            k = k.replace(lin, lin + "layer.")
        out["model.net." + k] = v
    names = {"q": ("qkv", "_q", "mag_q"), "v": ("qkv", "_v", "mag_v"), "out": ("proj", "", "magnitude")}
    for i in range(method.backbone.num_layers):
        for z, (mod, suffix, mag) in names.items():
            base = f"{blocks}{i}.attn.{mod}."
            out[base + "lora_A" + suffix] = p[f"adapters.{i}.{z}.lora_A"]
            out[base + "lora_B" + suffix] = p[f"adapters.{i}.{z}.lora_B"]
            if f"adapters.{i}.{z}.magnitude" in p:
                out[base + mag] = p[f"adapters.{i}.{z}.magnitude"]
    out.update({k: v for k, v in p.items() if k.startswith("decoder.")})
    out["predictor.lin.weight"], out["predictor.lin.bias"] = p["predictor.weight"], p["predictor.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def _dino_import(src: Path, out: Path, bb: VisionBackbone) -> Path:
    """The importer ``import_checkpoint`` calls, on the tiny tower (``runs`` builds timm towers from names only)."""
    return AnomalyVfm.import_official(src, bb, out, "synthetic (test)")


def test_dinov2_release_imports_checked_or_stored_as_timm_converts_it(
    dino: VisionBackbone, dino_images: torch.Tensor, tmp_path: Path
) -> None:
    """A release in the exact Hugging Face layout: on the tower it was made from it is checked, not stored, and runs
    as the model set directly; with another tower (a 6x6 table resized to 8x8, a class position) it is stored and
    runs as a backbone holding what timm's own DINOv2 conversion makes of those weights."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    bb = dino
    m = _randomise(_vfm(bb, rank=4))
    src = _write_release(tmp_path / "same", _dinov2_release(_dinov2_meta(bb), m), model_name="dinov2",
                         image_size=DINO_SIZE)  # fmt: skip
    got = _vfm(bb, checkpoint=str(_dino_import(src, tmp_path / "ckpt", bb)))
    assert (got.config.peft, got.config.rank, got.config.tower_weights) == ("dora", 4, "backbone")
    check = got.describe()["vision_tower"]["import_check"]
    assert check["differing_tensors"] == 0 and check["compared_tensors"] == 7 + 14 * bb.num_layers
    a, b = got.predict(dino_images), m.predict(dino_images)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)

    g = torch.Generator().manual_seed(2)
    meta = _dinov2_meta(
        bb, pos=torch.randn(1, 1 + 36, bb.width, generator=g), cls=torch.randn(1, 1, bb.width, generator=g)
    )
    lora = _randomise(_vfm(bb, peft="lora", rank=4))
    drive = {f"{part}_state_dict": {k.removeprefix(pre): v for k, v in _dinov2_release(meta, lora).items()
                                    if k.startswith(pre)}
             for part, pre in (("model", "model."), ("decoder", "decoder."), ("predictor", "predictor."))}  # fmt: skip
    torch.save(drive, tmp_path / "model.pkl")
    got = _vfm(bb, checkpoint=str(_dino_import(tmp_path / "model.pkl", tmp_path / "ckpt2", bb)))
    assert (got.config.peft, got.config.tower_weights) == ("lora", "checkpoint")
    model = copy.deepcopy(bb.model)
    model.load_state_dict(checkpoint_filter_fn(dict(meta), model))  # timm: class position folded, table resampled
    other = VisionBackbone(model, model_name=DINO, pretrained="none", image_size=DINO_SIZE)
    want = _vfm(other, peft="lora", rank=4)
    want.parts.load_state_dict(lora.parts.state_dict())
    want.training_manifest = {}
    a, b = got.predict(dino_images), want.predict(dino_images)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)


def test_dinov2_releases_that_do_not_fit_are_refused_in_one_line(
    dino: VisionBackbone, bb: ClipBackbone, tiny_json: Path, tmp_path: Path
) -> None:
    m = _randomise(_vfm(dino, rank=4))
    state = _dinov2_release(_dinov2_meta(dino), m)
    cases: list[tuple[str, dict[str, torch.Tensor], dict[str, object], str]] = [
        ("mask", {k: v for k, v in state.items() if "mask_token" not in k}, {}, "model.net.mask_token.*missing"),
        ("extra", {**state, "model.net.blocks.0.attn.qkv.lora_C": torch.zeros(1)}, {}, "does not know"),
        ("rank", state, {"peft_rank": 8}, "peft_rank 8 but the adapters have rank 4"),
        ("siglip", state, {"model_name": "siglip2"}, "model_name 'siglip2' but the tensors hold a dinov2 tower"),
    ]
    for name, st, cfg, match in cases:
        src = _write_release(tmp_path / name, st, **{"model_name": "dinov2", "image_size": DINO_SIZE, **cfg})
        assert str(src) in _one_line(lambda src=src, name=name: _dino_import(src, tmp_path / f"o_{name}", dino), match)
    src = _write_release(tmp_path / "dinov2", state, model_name="dinov2", image_size=DINO_SIZE)
    _one_line(lambda: _import(src, tmp_path / "o_clip", tiny_json), "DINOv2 release; backbone .* is not a DINOv2 tower")
    clip = _write_release(tmp_path / "clip", _release(_randomise(_vfm(bb, rank=4))))
    _one_line(lambda: _dino_import(clip, tmp_path / "o_dino", dino), "CLIP release; backbone timm:.* is not a CLIP")


def test_dinov2_training_step_checkpointed_and_bf16_forward(dino: VisionBackbone, dino_images: torch.Tensor) -> None:
    """Per-block recomputation gives the same gradients on the DINOv2 path; ``--precision bf16`` runs its blocks
    under autocast and stays near fp32 (random weights: a smoke bound, not a measurement)."""
    gt = (torch.rand(2, DINO_SIZE, DINO_SIZE, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    grads = []
    for recompute in (False, True):
        m = _randomise(_vfm(dino, rank=4, grad_checkpointing=recompute))
        m.parts.train()
        m.loss_terms(dino_images, gt, torch.tensor([1.0, 0.0]))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in m.parts.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) == len(list(m.parts.parameters()))
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    m.parts.eval()
    with torch.no_grad():
        full = m.tower_tokens(dino_images)
        dino.set_precision("bf16")
        try:
            low = m.tower_tokens(dino_images)
        finally:
            dino.set_precision("fp32")
    assert low.dtype == torch.float32 and 0 < (low - full).abs().max() < 0.2 * full.abs().max()


# ---------------------------------------------------------------------------------------------- the RADIO variant
# zsad's timm RADIO v2.5 (8 prefix tokens without positions, no layer scale, no final norm) cut to 2 blocks of width
# 64 at 64 px (grid 4), positions resized from a 6x6 table as the release's radio_local.py does
RADIO = "timm:vit_large_patch16_radio_v2_5"
RADIO_SIZE = 64


def _radio_model(**kw: Any) -> Any:
    import timm

    from zsad.backbone.vision import timm_name

    return timm.create_model(timm_name(RADIO), img_size=RADIO_SIZE, depth=2, embed_dim=64, num_heads=4, **kw)


@pytest.fixture(scope="module")
def radio() -> VisionBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = _radio_model(pretrained=False)
    with torch.no_grad():  # timm starts the prefix tokens near 0; the trained ones are not
        g = torch.Generator().manual_seed(1)
        for name in ("cls_token", "reg_token", "patch_embed.proj.bias"):
            vit.get_parameter(name).copy_(torch.randn(vit.get_parameter(name).shape, generator=g) * 0.5)
    return VisionBackbone(vit, model_name=RADIO, pretrained="none", image_size=RADIO_SIZE)


@pytest.fixture(scope="module")
def radio_images() -> torch.Tensor:
    return torch.randn(2, 3, RADIO_SIZE, RADIO_SIZE, generator=torch.Generator().manual_seed(5))


def _radio_local_forward(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """The release's radio_local.py RADIOModel forward (no adapters) on its own names, literally: patches by unfold
    into a bias-free linear map, 8 prefix tokens, the 128² table resized bicubically to the grid (prefix: zeros),
    pre-norm blocks without layer scale, no final norm."""
    b, _, h, w = x.shape
    emb = state["model.patch_generator.embedder.weight"]
    p = round((emb.shape[1] // 3) ** 0.5)
    t = x.unfold(2, p, p).unfold(3, p, p).contiguous().view(b, 3, h // p, w // p, p, p)
    t = t.permute(0, 2, 3, 1, 4, 5).contiguous().view(b, -1, 3 * p * p) @ emb.T
    tok = state["model.patch_generator.cls_token.token"]
    t = torch.cat([tok.unsqueeze(0).expand(b, -1, -1), t], 1)
    pos = state["model.patch_generator.pos_embed"]
    m, dim = round(pos.shape[1] ** 0.5), pos.shape[2]
    grid = F.interpolate(pos.reshape(1, m, m, dim).permute(0, 3, 1, 2), size=(h // p, w // p), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, dim)  # fmt: skip
    t = t + torch.cat([torch.zeros(1, tok.shape[0], dim), grid], 1)
    i = 0
    while f"model.blocks.{i}.norm1.weight" in state:
        s = {k.removeprefix(f"model.blocks.{i}."): v for k, v in state.items() if k.startswith(f"model.blocks.{i}.")}
        y = F.layer_norm(t, (dim,), s["norm1.weight"], s["norm1.bias"], 1e-6)
        q, k, v = (y @ s["attn.qkv.weight"].T + s["attn.qkv.bias"]).reshape(b, -1, 3, heads, dim // heads).permute(
            2, 0, 3, 1, 4)  # fmt: skip
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), -1) @ v
        t = t + a.transpose(1, 2).reshape(b, -1, dim) @ s["attn.proj.weight"].T + s["attn.proj.bias"]
        y = F.layer_norm(t, (dim,), s["norm2.weight"], s["norm2.bias"], 1e-6)
        y = F.gelu(y @ s["mlp.fc1.weight"].T + s["mlp.fc1.bias"])
        t = t + y @ s["mlp.fc2.weight"].T + s["mlp.fc2.bias"]
        i += 1
    return t


def _radio_state(width: int, layers: int, seed: int = 3, table: int = 6) -> dict[str, torch.Tensor]:
    """RADIO v2.5 module names (radio_local.RADIOModel's), seeded: a ``table``² position table, OpenAI statistics."""
    from zsad.backbone.radio import OPENAI_MEAN, OPENAI_STD

    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    out = {
        "model.patch_generator.embedder.weight": r(width, 3 * 16 * 16, scale=0.05),
        "model.patch_generator.cls_token.token": r(8, width, scale=0.5),
        "model.patch_generator.pos_embed": r(1, table * table, width, scale=0.5),
        "input_conditioner.norm_mean": torch.tensor(OPENAI_MEAN).view(3, 1, 1),
        "input_conditioner.norm_std": torch.tensor(OPENAI_STD).view(3, 1, 1),
        "summary_idxs": torch.tensor([0, 1, 2]),
    }
    for i in range(layers):
        b = f"model.blocks.{i}."
        shapes = {"norm1": (width,), "norm2": (width,), "attn.qkv": (3 * width, width), "attn.proj": (width, width),
                  "mlp.fc1": (4 * width, width), "mlp.fc2": (width, 4 * width)}  # fmt: skip
        for n, shape in shapes.items():
            out[f"{b}{n}.weight"] = (1 + r(width)) if n.startswith("norm") else r(*shape)
            out[f"{b}{n}.bias"] = r(shape[0])
    return out


def test_radio_weights_load_as_the_release_code_runs_them(radio_images: torch.Tensor, tmp_path: Path) -> None:
    """A RADIO v2.5 file (its module names, under radio_model.) loads into zsad's timm RADIO; timm's forward_features
    then equals radio_local's forward written out by hand, and zsad's tower (no adapters) reads tokens 0-2 and the
    patches of it. The resize is bicubic: timm's own RADIO converter (bilinear) gives other positions."""
    state = _radio_state(64, 2)
    save_file({"radio_model." + k: v for k, v in state.items()}, str(tmp_path / "radio.safetensors"))
    vit = _radio_model(pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "radio.safetensors")})
    bb = VisionBackbone(vit, model_name=RADIO, pretrained="none", image_size=RADIO_SIZE)
    assert bb.num_prefix_tokens == 8 and bb.preprocess.mean == (0.48145466, 0.4578275, 0.40821073)
    with torch.no_grad():
        want = _radio_local_forward(state, radio_images, heads=4)
        got = bb.model.forward_features(radio_images)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        tokens = _vfm(bb, peft="lora", rank=4).tower_tokens(radio_images)
    torch.testing.assert_close(tokens, torch.cat([want[:, :3], want[:, 8:]], 1), atol=2e-5, rtol=1e-5)
    from timm.models.vision_transformer import _convert_radio

    from zsad.backbone.radio import convert_radio

    hub = {("base_model." + k.removeprefix("model.") if k.startswith("model.") else k): v for k, v in state.items()}
    by_hub = convert_radio(hub, bb.model)  # NVIDIA's torch hub names (per its hubconf): the same tensors
    assert all(torch.equal(by_hub[k], v) for k, v in bb.model.state_dict().items() if k in by_hub)
    timm_pos = _convert_radio({"radio_model." + k: v for k, v in state.items()}, bb.model)["pos_embed"]
    assert (timm_pos - bb.model.pos_embed).abs().max() > 1e-2
    bad = {**state, "input_conditioner.norm_std": torch.ones(3, 1, 1)}
    _one_line(lambda: convert_radio(bad, bb.model), "input_conditioner.norm_std is .* not OpenAI")
    _one_line(lambda: convert_radio({"visual.proj": torch.zeros(1)}, bb.model), "not RADIO weights.*'visual.proj'")


def test_radio_tower_is_timms_forward_features_with_the_adapted_weights_merged(
    radio: VisionBackbone, radio_images: torch.Tensor
) -> None:
    """Zero LoRA: timm's forward_features at tokens 0, 1, 2 and the patches (summary, then the grid). Random DoRA:
    the same on a copy with merged weights; the predictor reads the three summary tokens concatenated."""
    with torch.no_grad():
        plain = radio.model.forward_features(radio_images)
        m0 = _vfm(radio, peft="lora", rank=4)
        got = m0.tower_tokens(radio_images)
    assert m0.parts.predictor.in_features == 3 * 64 and got.shape == (2, 3 + 16, 64)
    torch.testing.assert_close(got, torch.cat([plain[:, :3], plain[:, 8:]], 1), atol=2e-5, rtol=1e-5)
    m = _randomise(_vfm(radio, rank=4))
    model = _merged_copy(radio.model, m)
    with torch.no_grad():
        want = model.forward_features(radio_images)
        tokens = m.tower_tokens(radio_images)
        torch.testing.assert_close(tokens, torch.cat([want[:, :3], want[:, 8:]], 1), atol=2e-5, rtol=1e-5)
        score = m.parts.predictor(want[:, :3].reshape(2, -1))[:, 0].sigmoid()
    torch.testing.assert_close(m.predict(radio_images).pred_score, score, atol=1e-5, rtol=1e-5)


def test_radio_release_imports_stored_and_runs_as_the_tower_it_holds(
    radio: VisionBackbone, radio_images: torch.Tensor, dino: VisionBackbone, tmp_path: Path
) -> None:
    """A RADIO release in the exact Hugging Face layout: its tower differs from the backbone's, so it is stored and
    the model runs as a backbone loaded from that tower's RADIO weights with the same parts; what does not fit is
    refused in one line (a DINOv2 backbone, other summary tokens, another conditioner, a missing tensor)."""
    state = _radio_state(64, 2)
    m = _randomise(_vfm(radio, rank=4))
    release = _dinov2_release(state, m, blocks="model.net.model.blocks.")  # RADIOModel's names under model.net.
    src = _write_release(tmp_path / "rel", release, model_name="radio", image_size=RADIO_SIZE)
    got = _vfm(radio, checkpoint=str(_dino_import(src, tmp_path / "ckpt", radio)))
    assert (got.config.peft, got.config.rank, got.config.tower_weights) == ("dora", 4, "checkpoint")
    assert got.describe()["vision_tower"]["import_check"]["compared_tensors"] == 5 + 12 * 2
    save_file(state, str(tmp_path / "tower.safetensors"))
    other = VisionBackbone(
        _radio_model(pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "tower.safetensors")}).eval(),
        model_name=RADIO, pretrained="none", image_size=RADIO_SIZE,
    )  # fmt: skip
    want = _vfm(other, rank=4)
    want.parts.load_state_dict(m.parts.state_dict())
    want.training_manifest = {}
    a, b = got.predict(radio_images), want.predict(radio_images)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)
    assert (a.pred_score - m.predict(radio_images).pred_score).abs().max() > 1e-4  # the stored tower is what ran
    # --weights the release file itself: the backbone holds the released tower, nothing is stored, same outputs
    own = _radio_model(pretrained=True, pretrained_cfg_overlay={"file": str(src / "model.safetensors")})
    own_bb = VisionBackbone(own, model_name=RADIO, pretrained="none", image_size=RADIO_SIZE)
    small = _vfm(own_bb, checkpoint=str(_dino_import(src, tmp_path / "ckpt_own", own_bb)))
    assert small.config.tower_weights == "backbone"
    c = small.predict(radio_images)
    assert torch.equal(c.pred_score, a.pred_score) and torch.equal(c.anomaly_map, a.anomaly_map)
    cases: list[tuple[str, dict[str, torch.Tensor], str]] = [
        ("idx", {**release, "model.net.summary_idxs": torch.tensor([0, 1, 3])}, "summary_idxs \\[0, 1, 3\\]"),
        ("cond", {**release, "model.net.input_conditioner.norm_mean": torch.zeros(3, 1, 1)}, "not OpenAI"),
        ("miss", {k: v for k, v in release.items() if "pos_embed" not in k}, "pos_embed'? is missing"),
    ]
    for name, st, match in cases:
        bad = _write_release(tmp_path / name, st, model_name="radio", image_size=RADIO_SIZE)
        _one_line(lambda bad=bad, name=name: _dino_import(bad, tmp_path / f"o_{name}", radio), str(bad) + ".*" + match)
    _one_line(lambda: _dino_import(src, tmp_path / "o_dino", dino), "RADIO release; backbone timm:.* is not a RADIO")


# ---------------------------------------------------------------------------------------------- the SigLIP2 variant
# zsad's timm SigLIP2 NaFlex at a fixed size (no class token, tanh GELU, final norm, MAP head) cut to 2 blocks of
# width 64 at 64 px (grid 4), positions resized from a 6x6 table as Hugging Face's NaFlex embeddings do
SIGLIP = "timm:vit_so400m_patch16_siglip2_naflex"


def _siglip_model(**kw: Any) -> Any:
    import timm

    from zsad.backbone.vision import timm_name

    return timm.create_model(timm_name(SIGLIP), img_size=RADIO_SIZE, depth=2, embed_dim=64, num_heads=4, mlp_ratio=2.0,
                             **kw).eval()  # fmt: skip


def _hf_siglip_state(width: int, layers: int, seed: int = 4, table: int = 6) -> dict[str, torch.Tensor]:
    """Hugging Face Siglip2VisionTransformer names, seeded (norm weights near 1, every bias non-zero)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def lin(out: int, inp: int, name: str) -> dict[str, torch.Tensor]:
        return {name + ".weight": r(out, inp, scale=inp**-0.5), name + ".bias": r(out)}

    def norm(name: str) -> dict[str, torch.Tensor]:
        return {name + ".weight": 1 + r(width), name + ".bias": r(width)}

    out = {**lin(width, 16 * 16 * 3, "embeddings.patch_embedding"), **norm("post_layernorm"), **norm("head.layernorm")}
    out["embeddings.position_embedding.weight"] = r(table * table, width, scale=0.5)
    out["head.probe"] = r(1, 1, width, scale=1.0)
    out["head.attention.in_proj_weight"], out["head.attention.in_proj_bias"] = (
        r(3 * width, width, scale=0.1),
        r(3 * width),
    )
    out.update({**lin(width, width, "head.attention.out_proj"), **lin(2 * width, width, "head.mlp.fc1")})
    out.update(lin(width, 2 * width, "head.mlp.fc2"))
    for i in range(layers):
        h = f"encoder.layers.{i}."
        out.update({**norm(h + "layer_norm1"), **norm(h + "layer_norm2"), **lin(2 * width, width, h + "mlp.fc1")})
        out.update(lin(width, 2 * width, h + "mlp.fc2"))
        for x in "qkv":
            out.update(lin(width, width, f"{h}self_attn.{x}_proj"))
        out.update(lin(width, width, h + "self_attn.out_proj"))
    return out


def _hf_siglip_forward(
    state: dict[str, torch.Tensor], x: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face's Siglip2 vision forward (NaFlex at one square size), written out: patches in (ph, pw, C) order
    into a linear map, the table resized bilinearly with antialias, pre-norm blocks with tanh GELU, post_layernorm,
    and the pooling head through torch's own nn.MultiheadAttention. (last_hidden_state, pooler_output)."""
    b, _, s, _ = x.shape
    g, dim = s // 16, state["post_layernorm.weight"].shape[0]
    t = x.reshape(b, 3, g, 16, g, 16).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, -1)
    t = F.linear(t, state["embeddings.patch_embedding.weight"], state["embeddings.patch_embedding.bias"])
    table = state["embeddings.position_embedding.weight"]
    m = round(table.shape[0] ** 0.5)
    pos = F.interpolate(table.reshape(m, m, dim).permute(2, 0, 1)[None], size=(g, g), mode="bilinear",
                        align_corners=False, antialias=True)  # fmt: skip
    t = t + pos[0].reshape(dim, -1).T
    i = 0
    while f"encoder.layers.{i}.layer_norm1.weight" in state:
        s_ = {
            k.removeprefix(f"encoder.layers.{i}."): v for k, v in state.items() if k.startswith(f"encoder.layers.{i}.")
        }
        y = F.layer_norm(t, (dim,), s_["layer_norm1.weight"], s_["layer_norm1.bias"], 1e-6)
        q, k, v = (F.linear(y, s_[f"self_attn.{n}_proj.weight"], s_[f"self_attn.{n}_proj.bias"]) for n in "qkv")
        q, k, v = (z.reshape(b, -1, heads, dim // heads).transpose(1, 2) for z in (q, k, v))
        a = (
            (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), -1) @ v)
            .transpose(1, 2)
            .reshape(b, -1, dim)
        )
        t = t + F.linear(a, s_["self_attn.out_proj.weight"], s_["self_attn.out_proj.bias"])
        y = F.layer_norm(t, (dim,), s_["layer_norm2.weight"], s_["layer_norm2.bias"], 1e-6)
        y = F.gelu(F.linear(y, s_["mlp.fc1.weight"], s_["mlp.fc1.bias"]), approximate="tanh")
        t = t + F.linear(y, s_["mlp.fc2.weight"], s_["mlp.fc2.bias"])
        i += 1
    t = F.layer_norm(t, (dim,), state["post_layernorm.weight"], state["post_layernorm.bias"], 1e-6)
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    mha.load_state_dict(
        {k.removeprefix("head.attention."): v for k, v in state.items() if k.startswith("head.attention.")}
    )
    h = mha(state["head.probe"].expand(b, -1, -1), t, t, need_weights=False)[0]
    y = F.layer_norm(h, (dim,), state["head.layernorm.weight"], state["head.layernorm.bias"], 1e-6)
    y = F.gelu(F.linear(y, state["head.mlp.fc1.weight"], state["head.mlp.fc1.bias"]), approximate="tanh")
    return t, (h + F.linear(y, state["head.mlp.fc2.weight"], state["head.mlp.fc2.bias"]))[:, 0]


def test_siglip2_weights_load_and_run_as_hugging_faces_forward(radio_images: torch.Tensor, tmp_path: Path) -> None:
    """Hugging Face SigLIP2 vision weights (under vision_model.) load into zsad's timm SigLIP2; timm's tokens and
    pooled output then equal HF's forward written out by hand (its head through torch's MultiheadAttention), and so
    does zsad's tower with zero LoRA (pooled output first, then the patches). The resize is bilinear with antialias:
    timm's default bicubic resample gives other positions."""
    from timm.layers import resample_abs_pos_embed

    from zsad.backbone.siglip2 import convert_siglip2

    state = _hf_siglip_state(64, 2)
    save_file({"vision_model." + k: v for k, v in state.items()}, str(tmp_path / "siglip2.safetensors"))
    vit = _siglip_model(pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "siglip2.safetensors")})
    bb = VisionBackbone(vit, model_name=SIGLIP, pretrained="none", image_size=RADIO_SIZE)
    assert bb.num_prefix_tokens == 0 and bb.preprocess.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        tokens, pooled = _hf_siglip_forward(state, radio_images, heads=4)
        feats = vit.forward_features(radio_images)
        torch.testing.assert_close(feats, tokens, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(vit.forward_head(feats, pre_logits=True), pooled, atol=2e-5, rtol=1e-5)
        m = _vfm(bb, peft="lora", rank=4)
        got = m.tower_tokens(radio_images)
    assert m.parts.predictor.in_features == 64 and got.shape == (2, 1 + 16, 64)
    torch.testing.assert_close(got, torch.cat([pooled[:, None], tokens], 1), atol=2e-5, rtol=1e-5)
    table = state["embeddings.position_embedding.weight"][None]
    assert (resample_abs_pos_embed(table, [4, 4], num_prefix_tokens=0) - vit.pos_embed).abs().max() > 1e-2
    _one_line(lambda: convert_siglip2({"visual.proj": torch.zeros(1)}, vit), "not SigLIP2 vision weights")
    part = {k: v for k, v in state.items() if k != "head.probe"}
    _one_line(lambda: convert_siglip2(part, vit), "tensor 'head.probe' is missing")


def _siglip_release(state: dict[str, torch.Tensor], method: AnomalyVfm) -> dict[str, torch.Tensor]:
    """The official hf_model.AnomalyVFM state dict of a SigLIP2 release: model.net.* (HF names) with q/v/out_proj of
    every layer and the head's attention.out_proj wrapped (``.layer.`` + lora_A/B, magnitude), decoder, predictor."""
    p = {k: v.detach().clone() for k, v in method.parts.state_dict().items()}
    wrapped = [f"encoder.layers.{i}.self_attn.{n}_proj" for i in range(method.backbone.num_layers) for n in "qvo"]
    wrapped = [w.replace("o_proj", "out_proj") for w in wrapped] + ["head.attention.out_proj"]
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        module, leaf = k.rsplit(".", 1)
        out["model.net." + (f"{module}.layer.{leaf}" if module in wrapped else k)] = v
    g = torch.Generator().manual_seed(9)  # the head's wrapper: adapters that never act in the official forward
    out["model.net.head.attention.out_proj.lora_A"] = torch.randn(4, 64, generator=g)
    out["model.net.head.attention.out_proj.lora_B"] = torch.randn(64, 4, generator=g)
    out["model.net.head.attention.out_proj.magnitude"] = torch.rand(64, generator=g) + 1
    for i in range(method.backbone.num_layers):
        for z, n in (("q", "q_proj"), ("v", "v_proj"), ("out", "out_proj")):
            for t in ("lora_A", "lora_B", "magnitude"):
                if f"adapters.{i}.{z}.{t}" in p:
                    out[f"model.net.encoder.layers.{i}.self_attn.{n}.{t}"] = p[f"adapters.{i}.{z}.{t}"]
    out.update({k: v for k, v in p.items() if k.startswith("decoder.")})
    out["predictor.lin.weight"], out["predictor.lin.bias"] = p["predictor.weight"], p["predictor.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def test_siglip2_release_imports_stored_drops_the_heads_dead_adapters_and_runs(
    radio_images: torch.Tensor, radio: VisionBackbone, tmp_path: Path
) -> None:
    """A SigLIP2 release in the exact Hugging Face layout: its tower is stored and the model runs as a backbone
    loaded from that tower's HF weights with the same parts; the head's out_proj adapters are read, dropped and
    recorded; a RADIO backbone and a missing tensor are refused in one line."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb = VisionBackbone(_siglip_model(pretrained=False), model_name=SIGLIP, pretrained="none", image_size=64)
    state = _hf_siglip_state(64, 2)
    m = _randomise(_vfm(bb, rank=4))
    release = _siglip_release(state, m)
    src = _write_release(tmp_path / "rel", release, model_name="siglip2", image_size=RADIO_SIZE)
    got = _vfm(bb, checkpoint=str(_dino_import(src, tmp_path / "ckpt", bb)))
    check = got.describe()["vision_tower"]["import_check"]
    assert got.config.tower_weights == "checkpoint" and check["compared_tensors"] == 18 + 12 * 2
    assert check["dropped_adapters"] == [f"head.attention.out_proj.{t}" for t in ("lora_A", "lora_B", "magnitude")]
    save_file(state, str(tmp_path / "tower.safetensors"))
    tower = _siglip_model(pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "tower.safetensors")})
    other = VisionBackbone(tower, model_name=SIGLIP, pretrained="none", image_size=RADIO_SIZE)
    want = _vfm(other, rank=4)
    want.parts.load_state_dict(m.parts.state_dict())
    want.training_manifest = {}
    a, b = got.predict(radio_images), want.predict(radio_images)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)
    own = _siglip_model(pretrained=True, pretrained_cfg_overlay={"file": str(src / "model.safetensors")})
    own_bb = VisionBackbone(own, model_name=SIGLIP, pretrained="none", image_size=RADIO_SIZE)
    small = _vfm(own_bb, checkpoint=str(_dino_import(src, tmp_path / "ckpt_own", own_bb)))
    c = small.predict(radio_images)
    assert small.config.tower_weights == "backbone" and torch.equal(c.anomaly_map, a.anomaly_map)
    miss = _write_release(tmp_path / "miss", {k: v for k, v in release.items() if "head.layernorm.bias" not in k},
                          model_name="siglip2", image_size=RADIO_SIZE)  # fmt: skip
    _one_line(
        lambda: _dino_import(miss, tmp_path / "o_miss", bb),
        "miss/model.safetensors: .*head.layernorm.bias'? is missing",
    )
    _one_line(
        lambda: _dino_import(src, tmp_path / "o_radio", radio), "SigLIP2 release; backbone timm:.* is not a SigLIP2"
    )


@pytest.mark.parametrize("family", ["radio", "siglip2"])
def test_radio_and_siglip2_training_step_reaches_every_part_the_same_when_recomputed(
    family: str, radio: VisionBackbone, radio_images: torch.Tensor
) -> None:
    """One training step on each new tower: every adapter, decoder and predictor tensor gets a gradient (SigLIP2's
    pooling head is part of the frozen tower, not of the parts), and per-block recomputation gives the same ones."""
    if family == "radio":
        bb = radio
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            bb = VisionBackbone(_siglip_model(pretrained=False), model_name=SIGLIP, pretrained="none", image_size=64)
    gt = (torch.rand(2, RADIO_SIZE, RADIO_SIZE, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    grads = []
    for recompute in (False, True):
        m = _randomise(_vfm(bb, rank=4, grad_checkpointing=recompute))
        m.parts.train()
        m.loss_terms(radio_images, gt, torch.tensor([1.0, 0.0]))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in m.parts.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) == len(list(m.parts.parameters()))
    assert all(g.abs().max() > 0 for n, g in grads[0].items() if "adapters" in n)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert not any(p.requires_grad for p in bb.model.parameters())  # the tower, head included, stays frozen
