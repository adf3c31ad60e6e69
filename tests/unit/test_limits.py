"""zsad.limits: the documented ranges, the override, and the memory estimate against hand-computed values."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from zsad import limits
from zsad.errors import ZsadInputError
from zsad.runs.build import BackboneSpec

TINY = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)  # patch 16, width 64, 4 layers, 4 heads


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ALLOW_LARGE_ENV, raising=False)


@pytest.mark.parametrize(
    ("bound", "low", "high"),
    [
        (limits.IMAGE_SIZE, 32, 2048),
        (limits.BATCH_SIZE, 1, 1024),
        (limits.MAP_SIZE, 0, 16384),
        (limits.SERVE_QUEUE, 1, 4096),
        (limits.SERVE_MODELS, 1, 64),
        (limits.BLOCK_MB, 1, 65536),
    ],
)
def test_each_bound_takes_its_range_and_refuses_outside_it(bound: limits.Bound, low: int, high: int) -> None:
    bound.check(low)
    bound.check(high)
    with pytest.raises(ZsadInputError, match=rf"^{bound.option} {high + 1}: at most {high} \(") as e:
        bound.check(high + 1)
    assert limits.ALLOW_LARGE_FLAG in str(e.value) and limits.ALLOW_LARGE_ENV in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ZsadInputError, match=rf"^{bound.option} {low - 1}: must be >= {low}"):
        bound.check(low - 1)


def test_a_bound_refuses_what_is_not_a_finite_number() -> None:
    with pytest.raises(ZsadInputError, match="--max-upload-mb inf: must be a finite number"):
        limits.SERVE_UPLOAD_MB.check(float("inf"))
    with pytest.raises(ZsadInputError, match="--image-size '224': must be a number"):
        limits.IMAGE_SIZE.check("224")  # type: ignore[arg-type]
    with pytest.raises(ZsadInputError, match="--n-anomalous 20000: at most 10000"):
        limits.SAMPLE_COUNT.check(20000, "--n-anomalous")  # renamed for another option of the same range


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_the_environment_variable_lifts_the_upper_bounds(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(limits.ALLOW_LARGE_ENV, value)
    assert limits.allow_large()
    limits.IMAGE_SIZE.check(4096)  # moderately over: let through
    limits.MAP_SIZE.check(20000)
    with pytest.raises(ZsadInputError, match="must be >= 32"):  # the lower bound is never lifted
        limits.IMAGE_SIZE.check(8)


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_other_values_of_the_variable_keep_the_bounds(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(limits.ALLOW_LARGE_ENV, value)
    assert not limits.allow_large()
    with pytest.raises(ZsadInputError, match="at most 2048"):
        limits.IMAGE_SIZE.check(4096)


def test_allowing_large_lifts_the_bounds_for_its_duration_only() -> None:
    with limits.allowing_large():
        limits.BATCH_SIZE.check(2000)
        assert os.environ[limits.ALLOW_LARGE_ENV] == "1"  # what the service's thread and Ray's workers read
    assert limits.ALLOW_LARGE_ENV not in os.environ
    with limits.allowing_large(False), pytest.raises(ZsadInputError, match="at most 1024"):
        limits.BATCH_SIZE.check(2000)


def test_the_estimate_of_a_vit_forward_is_the_documented_formula() -> None:
    # zsad-tiny at 96 px, batch 2: T = (96 // 16)**2 + 1 = 37 tokens;
    # attention 4 heads * 37 * 37 = 5476; features (4 layers + 7) * 37 * 64 = 26048; 2 images * 4 bytes each
    assert limits.vit_tokens(96, 16) == 37
    assert limits.vit_activation_bytes(96, 16, 64, 4, 4, batch=2) == 2 * 4 * (5476 + 26048) == 252192
    # ViT-B/16 at 224 px: T = 197; 12 * 197**2 = 465708; 19 * 197 * 768 = 2874624
    assert limits.vit_activation_bytes(224, 16, 768, 12, 12) == 4 * (465708 + 2874624) == 13361328


def test_a_backbone_spec_reads_its_tower_shape_for_the_estimate() -> None:
    assert TINY.vision_shape() == (16, 64, 4, 4)
    assert TINY.memory_estimate(2) == 252192
    b16 = BackboneSpec("ViT-B-16", "none", None, 224, "cpu")
    assert b16.vision_shape() == (16, 768, 12, 12)
    assert b16.memory_estimate() == 13361328
    dino = BackboneSpec("timm:vit_large_patch14_dinov2.lvd142m", "none", None, 518, "cpu")
    assert dino.vision_shape() == (14, 1024, 24, 16)
    assert BackboneSpec("RN50", "none", None, 224, "cpu").memory_estimate() is None  # a CNN: no estimate


def test_the_memory_check_refuses_in_one_line_and_the_override_lets_it_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "physical_memory", lambda: 2**30)  # a 1 GiB machine
    big = BackboneSpec("zsad-tiny", "none", None, 1024, "cpu", 0)  # 4097 tokens: about 267 MiB an image
    big.check_memory(1)
    with pytest.raises(ZsadInputError) as e:
        big.check_memory(8)
    msg = str(e.value)
    assert msg.startswith("--image-size 1024 with --batch-size 8 (zsad-tiny, 4097 tokens an image) needs about 2.1 GiB")
    assert "more than this machine's memory (1.0 GiB)" in msg and limits.ALLOW_LARGE_FLAG in msg
    with pytest.raises(ZsadInputError, match="--max-batch 8"):
        big.check_memory(8, "--max-batch")
    with limits.allowing_large():
        big.check_memory(8)
        big.validate(8)  # the whole backbone check, still without building anything


def test_validate_applies_the_range_and_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ZsadInputError, match="^--image-size 100000: at most 2048"):
        BackboneSpec("zsad-tiny", "none", None, 100000, "cpu").validate()
    with pytest.raises(ZsadInputError, match="^--batch-size 0: must be >= 1"):
        TINY.validate(0)
    monkeypatch.setattr(limits, "physical_memory", lambda: 2**20)
    with pytest.raises(ZsadInputError, match="^--image-size 96 with --batch-size 16 .* needs about"):
        TINY.validate(16)


def test_a_memory_budget_option_is_bounded_by_its_range_and_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "physical_memory", lambda: 4 * 2**30)
    limits.check_budget_mb("block_mb", 256)
    with pytest.raises(ZsadInputError, match="^block_mb=8192 needs about 8.0 GiB, more than this machine's memory"):
        limits.check_budget_mb("block_mb", 8192)
    with pytest.raises(ZsadInputError, match="^dual-image: option chunk_mb=100000: at most 65536 "):
        limits.check_budget_mb("chunk_mb", 100000, "dual-image")
    with pytest.raises(ZsadInputError, match="^musc: option block_mb=0: must be >= 1$"):
        limits.check_budget_mb("block_mb", 0, "musc")
    with limits.allowing_large():
        limits.check_budget_mb("block_mb", 8192)


def test_physical_memory_is_what_the_system_says() -> None:
    assert limits.physical_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") > 0


def test_a_cuda_run_is_compared_with_the_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's own memory decides for ``cuda`` (faked here: the check needs no GPU to be tested)."""
    import torch

    from zsad.runs.build import device_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=(i + 1) * 2**30))
    monkeypatch.setattr(limits, "physical_memory", lambda: 2**40)  # plenty of RAM: not what decides
    assert device_memory("cuda") == (2**30, "the memory of cuda:0")
    assert device_memory("cuda:1") == (2 * 2**30, "the memory of cuda:1")
    assert device_memory("cpu") == (2**40, "this machine's memory")
    spec = BackboneSpec("zsad-tiny", "none", None, 1024, "cuda:0", 0)
    with pytest.raises(ZsadInputError, match=r"needs about 2.1 GiB .*, more than the memory of cuda:0 \(1.0 GiB\)"):
        spec.check_memory(8)
    BackboneSpec("zsad-tiny", "none", None, 1024, "cpu", 0).check_memory(8)
