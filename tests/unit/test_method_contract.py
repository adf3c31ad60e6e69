"""Contract every registered method must honour; a new registry line is tested automatically."""

from __future__ import annotations

import pytest
import torch

from zsad.backbone import ClipBackbone
from zsad.methods import create_method, list_methods
from zsad.types import Prediction


@pytest.fixture(params=list_methods())
def method(request: pytest.FixtureRequest, tiny_backbone: ClipBackbone, tmp_path_factory: pytest.TempPathFactory):
    m = create_method(request.param, tiny_backbone)
    if m.trainable and not m.requires_checkpoint:  # trains itself (RWDA): small and cached in a temporary folder
        small = {"n_pairs": 200, "epochs": 2, "cache_dir": str(tmp_path_factory.mktemp("cache"))}
        m = create_method(request.param, tiny_backbone, **small)
    elif m.trainable:  # its seeded untrained parts, through a real checkpoint round trip
        ckpt = m.save(tmp_path_factory.mktemp("ckpt"), {"note": "untrained, contract test"})
        m = create_method(request.param, tiny_backbone, checkpoint=str(ckpt))
    m.setup("bottle")
    return m


def test_shapes_and_finite(method, images96: torch.Tensor) -> None:
    pred = method.predict(images96)
    assert isinstance(pred, Prediction)
    assert pred.pred_score.shape == (3,) and pred.anomaly_map.shape == (3, 96, 96)
    assert torch.isfinite(pred.pred_score).all() and torch.isfinite(pred.anomaly_map).all()
    assert pred.pred_score.dtype == torch.float32 and pred.anomaly_map.dtype == torch.float32


def test_deterministic(method, images96: torch.Tensor) -> None:
    a, b = method.predict(images96), method.predict(images96)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)


def test_batch_size_invariant(method, images96: torch.Tensor) -> None:
    if method.set_level:
        pytest.skip("set-level: a batch is the pairing set; detect/eval give batch-size-free scores (CLI tests)")
    full = method.predict(images96)
    single = [method.predict(images96[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(torch.cat([p.pred_score for p in single]), full.pred_score, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p.anomaly_map for p in single]), full.anomaly_map, atol=1e-5, rtol=1e-5)


def test_describe_is_complete(method) -> None:
    d = method.describe()
    assert d["method"] == method.name and d["backbone"]["model_name"] == "zsad-tiny"
    assert d["class_name"] == ("bottle" if method.needs_class_name else "object")  # agnostic: never read
