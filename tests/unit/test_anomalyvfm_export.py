"""AnomalyVFM through ``zsad export``: the graph, run by zsad's runtime, gives the torch path's scores and maps.

The parts are seeded random with non-zero ``lora_B`` and DoRA magnitudes off the row norms (as test_anomalyvfm.py
perturbs them), so every adapter changes the forward; a check against the same model with identity adapters shows
the graph holds them. The CLIP case goes through the command line with a real checkpoint folder, as a user runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsad.backbone import ClipBackbone
from zsad.backbone.vision import VisionBackbone
from zsad.cli.main import app
from zsad.data import load_image, make_sample_images, squash_image
from zsad.export import export_method
from zsad.methods import create_method
from zsad.methods.anomalyvfm import AnomalyVfm
from zsad.runtime import ExportedModel

pytest.importorskip("onnxruntime", reason="pip install 'zsad[export]'")
SIZE = 96
TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", str(SIZE), "--device", "cpu"]
TOL = 1e-5  # fp32 graph vs torch fp32 (measured: 9e-8 on scores, 1.8e-7 on maps)
TOL_FP16 = 1e-3  # fp16 graph vs torch fp16, as the other methods' fp16 test (measured: 8e-5)
DINO = "timm:vit_large_patch14_reg4_dinov2.lvd142m"
DINO_SIZE = 112


def _randomise(method: AnomalyVfm, seed: int = 7) -> AnomalyVfm:
    """Seeded parts with non-zero B and magnitudes off the row norms, so every adapter changes the forward."""
    method.build_parts(0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.parts.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.05 if "lora" in name else 0.1))
    method.training_manifest = {"training": {}}  # parts set directly: let it run
    return method


def _clip(precision: str = "fp32") -> ClipBackbone:
    return ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=SIZE, seed=0).set_precision(precision)


def _vfm(bb: ClipBackbone | VisionBackbone, **options: object) -> AnomalyVfm:
    m = create_method("anomalyvfm", bb, **options)
    assert isinstance(m, AnomalyVfm)
    return m


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder of seeded random DoRA parts (rank 4) on the tiny CLIP, as ``zsad train`` writes one."""
    m = _randomise(_vfm(_clip(), rank=4))
    return m.save(tmp_path_factory.mktemp("ck") / "anomalyvfm", {"note": "seeded random parts for the export test"})


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = make_sample_images(tmp_path_factory.mktemp("imgs"), n_normal=2, n_anomalous=2, size=128, seed=5)
    return sorted((root / "good").glob("*.png")) + sorted((root / "defect").glob("*.png"))


def _max_abs(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(np.asarray(a) - b.numpy()).max())


def test_cli_export_of_a_trained_anomalyvfm_runs_as_torch(
    checkpoint: Path, image_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "model"
    res = CliRunner().invoke(
        app, ["export", "--method", "anomalyvfm", "--checkpoint", str(checkpoint), "--out", str(out), *TINY]
    )
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["method"] == "anomalyvfm" and man["options"]["checkpoint"] == str(checkpoint)
    assert (man["options"]["peft"], man["options"]["rank"], man["class_name"]) == ("dora", 4, "object")
    assert man["outputs"]["anomaly_map"] == ["batch", SIZE, SIZE] and man["precision"] == "fp32"
    assert man["parity"]["pred_score_max_abs"] <= TOL and man["parity"]["anomaly_map_max_abs"] <= TOL
    # independently: the torch method loaded from the same checkpoint, on the same files, against the runtime
    m = _vfm(_clip(), checkpoint=str(checkpoint))
    m.setup(None)
    want = m.predict(torch.stack([squash_image(load_image(f), SIZE) for f in image_files]))
    got = ExportedModel(out).predict(list(image_files), batch_size=3)  # 3 then 1: batches other than the traced 2
    assert got.pred_score.shape == (4,) and got.anomaly_map.shape == (4, SIZE, SIZE)
    assert _max_abs(got.pred_score, want.pred_score) <= TOL
    assert _max_abs(got.anomaly_map, want.anomaly_map) <= TOL
    # the adapters are in the graph: the same decoder and predictor on identity adapters score otherwise
    plain = _vfm(_clip(), rank=4)
    plain.build_parts(0)  # B = 0, magnitudes = row norms
    state = m.parts.state_dict()
    state.update({k: v for k, v in plain.parts.state_dict().items() if k.startswith("adapters.")})
    plain.parts.load_state_dict(state)
    plain.training_manifest = {"training": {}}
    without = plain.predict(torch.stack([squash_image(load_image(f), SIZE) for f in image_files]))
    assert _max_abs(got.pred_score, without.pred_score) > 100 * TOL
    assert _max_abs(got.anomaly_map, without.anomaly_map) > 100 * TOL
    # OpenVINO (CPU, fp32 inference) runs the same ONNX graph to the same numbers
    pytest.importorskip("openvino")
    ov = ExportedModel(out, runtime="openvino").predict(list(image_files), batch_size=4)
    assert _max_abs(ov.pred_score, want.pred_score) <= TOL
    assert _max_abs(ov.anomaly_map, want.anomaly_map) <= TOL


def test_untrained_anomalyvfm_export_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["export", "--method", "anomalyvfm", "--out", str(out), *TINY])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "anomalyvfm needs trained parts: pass --checkpoint DIR" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["export", "--method", "anomalyvfm", "--precision", "bf16", "--out", str(out), *TINY])
    assert res.exit_code == 2 and "--precision bf16: graphs are exported in fp32 or fp16" in res.output


def _dino() -> VisionBackbone:
    """A 2-block DINOv2-layout timm ViT (4 registers, layer scale), layer scales and tokens made visible."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model(
            DINO[5:], pretrained=False, img_size=DINO_SIZE, depth=2, embed_dim=64, num_heads=4, num_classes=0
        )
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in vit.named_parameters():
            if name.endswith("gamma") or name in ("cls_token", "reg_token"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return VisionBackbone(vit, model_name=DINO, pretrained="none", image_size=DINO_SIZE)


def _zsad_timm(name: str) -> VisionBackbone:
    """zsad's own timm RADIO or SigLIP2 tower cut to 2 blocks of width 64 at 64 px, its prefix tokens made visible."""
    import timm

    from zsad.backbone.vision import timm_name

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model(timm_name(name), img_size=64, depth=2, embed_dim=64, num_heads=4, num_classes=0)
        for p in (getattr(vit, n, None) for n in ("cls_token", "reg_token")):
            if p is not None:
                p.data.normal_(0, 0.5)
    return VisionBackbone(vit, model_name=name, pretrained="none", image_size=64)


@pytest.mark.parametrize("case", ["clip-fp16", "dinov2-fp32", "radio-fp32", "siglip2-fp32"])
def test_fp16_graph_and_dinov2_tower_export_as_torch(case: str, tmp_path: Path) -> None:
    """The fp16 graph holds fp16 block weights and gives torch fp16's numbers; the DINOv2, RADIO and SigLIP2
    towers (their linear patch maps, prefix tokens, SigLIP2's pooling head) export too."""
    import onnx

    if case == "clip-fp16":
        m, size, tol = _randomise(_vfm(_clip("fp16"), rank=4)), SIZE, TOL_FP16
    elif case == "dinov2-fp32":
        m, size, tol = _randomise(_vfm(_dino(), rank=4)), DINO_SIZE, TOL
    else:
        name = {
            "radio-fp32": "timm:vit_large_patch16_radio_v2_5",
            "siglip2-fp32": "timm:vit_so400m_patch16_siglip2_naflex",
        }
        m, size, tol = _randomise(_vfm(_zsad_timm(name[case]), rank=4)), 64, TOL
    m.setup(None)
    res = export_method(m, tmp_path / "model")
    assert res.parity["pred_score_max_abs"] <= tol and res.parity["anomaly_map_max_abs"] <= tol
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(4))
    want = m.predict(x)
    got = ExportedModel(tmp_path / "model").predict_arrays(x.numpy())
    assert _max_abs(got.pred_score, want.pred_score) <= tol
    assert _max_abs(got.anomaly_map, want.anomaly_map) <= tol
    if case == "clip-fp16":
        graph = onnx.load(str(tmp_path / "model" / "model.onnx")).graph
        halves = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert len(halves) >= 4 * m.backbone.num_layers  # in_proj, out_proj, c_fc, c_proj of every block
        full = _vfm(_clip(), rank=4)
        full.parts.load_state_dict(m.parts.state_dict())
        full.training_manifest = {"training": {}}
        assert _max_abs(got.pred_score, full.predict(x).pred_score) > 0  # it is another precision
