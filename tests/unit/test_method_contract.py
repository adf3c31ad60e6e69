"""Contract every registered method must honour; a new registry line is tested automatically."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from zsad.backbone import ClipBackbone
from zsad.methods import Method, create_method, list_methods
from zsad.methods.options import config_record
from zsad.types import Prediction


@pytest.fixture(params=list_methods())
def options(
    request: pytest.FixtureRequest, tiny_backbone: ClipBackbone, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, Any]]:
    """A method name and the options every instance of it in these tests is built with."""
    m = create_method(request.param, tiny_backbone)
    if m.trainable and not m.requires_checkpoint:  # trains itself (RWDA): small and cached in a temporary folder
        return request.param, {"n_pairs": 200, "epochs": 2, "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    if m.trainable:  # its seeded untrained parts, through a real checkpoint round trip
        ckpt = m.save(tmp_path_factory.mktemp("ckpt"), {"note": "untrained, contract test"})
        return request.param, {"checkpoint": str(ckpt)}
    return request.param, {}


def _fresh(options: tuple[str, dict[str, Any]], backbone: ClipBackbone) -> Method:
    name, opts = options
    m = create_method(name, backbone, **opts)
    m.setup("bottle")
    return m


@pytest.fixture
def method(options: tuple[str, dict[str, Any]], tiny_backbone: ClipBackbone) -> Method:
    return _fresh(options, tiny_backbone)


def test_shapes_and_finite(method, images96: torch.Tensor) -> None:
    pred = method.predict(images96)
    assert isinstance(pred, Prediction)
    assert pred.pred_score.shape == (3,) and pred.anomaly_map.shape == (3, 96, 96)
    assert torch.isfinite(pred.pred_score).all() and torch.isfinite(pred.anomaly_map).all()
    assert pred.pred_score.dtype == torch.float32 and pred.anomaly_map.dtype == torch.float32


def test_deterministic(
    options: tuple[str, dict[str, Any]], tiny_backbone: ClipBackbone, images96: torch.Tensor
) -> None:
    """Two instances built the same way on the same backbone give the same outputs (no hidden state or RNG)."""
    first, second = _fresh(options, tiny_backbone), _fresh(options, tiny_backbone)
    assert first is not second
    a, b = first.predict(images96), second.predict(images96)
    assert torch.equal(a.pred_score, b.pred_score) and torch.equal(a.anomaly_map, b.anomaly_map)


def test_batch_size_invariant(method, images96: torch.Tensor) -> None:
    if method.set_level:
        pytest.skip("set-level: a batch is the pairing set; detect/eval give batch-size-free scores (CLI tests)")
    full = method.predict(images96)
    single = [method.predict(images96[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(torch.cat([p.pred_score for p in single]), full.pred_score, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p.anomaly_map for p in single]), full.anomaly_map, atol=1e-5, rtol=1e-5)


def test_describe_is_complete(method: Method, options: tuple[str, dict[str, Any]]) -> None:
    """``describe()`` holds every field that reproduces a run."""
    d = method.describe()
    assert d["method"] == method.name == options[0]
    # every config field, with the values used, except the default-backbone ones (the backbone is recorded apart)
    assert d["config"] == config_record(method.config)
    fields = {f.name for f in dataclasses.fields(method.config)}
    # options added after a release are recorded only when set (an absent one means its default), so older
    # folders keep their run keys
    unset = {
        f.name
        for f in dataclasses.fields(method.config)
        if f.name in getattr(method.config, "later_fields", ()) and getattr(method.config, f.name) == f.default
    }
    assert set(d["config"]) == fields - {"backbone", "pretrained", "image_size"} - unset
    assert not {"backbone", "pretrained", "image_size"} & set(d["config"])
    for key, value in options[1].items():
        assert d["config"][key] == value, key
    assert d["class_name"] == ("bottle" if method.uses_class_name(method.config) else "object")  # agnostic: never read
    assert d["k_shot"] == method.k_shot == 0  # no reference images were given
    assert isinstance(d["transductive"], bool) and d["transductive"] == method.is_transductive
    manifest = method.backbone.manifest()
    assert d["backbone"]["model_name"] == "zsad-tiny"
    for key in (
        "model_name",
        "pretrained",
        "random_init",
        "weights",
        "image_size",
        "seed",
        "pos_interpolation",
        "activation",
    ):
        assert d["backbone"][key] == manifest[key], key


def test_class_name_flag_read_on_the_class_is_a_bool() -> None:
    """Front ends read the flag before building a method: on the class it must be a bool, per config.

    RWDA in its default category-agnostic mode never reads the class name, so its run key and the service's model
    key must not carry one (a property on the class was an object, hence always true).
    """
    from zsad.methods import get_method_class
    from zsad.methods.options import make_config
    from zsad.runs.build import BackboneSpec, MethodSpec
    from zsad.runs.detect import DetectJob

    for name in list_methods():
        cls = get_method_class(name)
        assert isinstance(cls.uses_class_name(make_config(cls.config_cls, {}, name)), bool), name
    rwda = get_method_class("rwda")
    assert rwda.uses_class_name(make_config(rwda.config_cls, {}, "rwda")) is False
    assert rwda.uses_class_name(make_config(rwda.config_cls, {"object_mode": "known"}, "rwda")) is True
    spec = MethodSpec("rwda", BackboneSpec(model_name="zsad-tiny", pretrained="none"), {}).validate()
    job = DetectJob(["x.png"], "out", class_name="bottle")
    assert job.key(spec)["class_name"] == "object"
    tiny = BackboneSpec(model_name="zsad-tiny", pretrained="none")
    known = MethodSpec("rwda", tiny, {"object_mode": "known"}).validate()
    assert job.key(known)["class_name"] == "bottle"


@pytest.mark.parametrize("name", ["musc", "dual-image"])
def test_set_level_loop_scores_the_rows_asked_against_the_whole_set(
    name: str, tiny_backbone: ClipBackbone, images96: torch.Tensor
) -> None:
    """``score_set`` is the one set loop: any batching of pass 1, only the rows pass 2 asks for, tags kept."""
    from zsad.methods import get_method_class
    from zsad.methods.base import SetLevelMethod

    m = create_method(name, tiny_backbone, rscin=False)
    assert isinstance(m, SetLevelMethod) and type(m).set_level is True
    m.setup("bottle")
    whole = m.predict(images96)  # the batch is the set
    asked: list[int] = []

    def rows(n: int) -> list[tuple[torch.Tensor, str]]:
        asked.append(n)
        return [(torch.tensor([2, 0]), "a"), (torch.tensor([1]), "b")]

    got = list(m.score_set(torch.split(images96, 1), rows))
    assert asked == [3] and [tag for tag, _ in got] == ["a", "b"]
    scores = torch.cat([p.pred_score for _, p in got])
    torch.testing.assert_close(scores, whole.pred_score[[2, 0, 1]], atol=1e-5, rtol=1e-5)
    assert list(m.score_set([], rows)) == [] and asked == [3]  # an empty set is never closed nor scored
    assert get_method_class("winclip").set_level is False  # read on the class by the front ends
