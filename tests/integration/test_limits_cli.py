"""Size options through the real CLI: each bound refused in one line (exit 2) before any model loads, and the
override (``--allow-large`` or ``ZSAD_ALLOW_LARGE=1``) letting a moderately-over value through on the tiny model.

The ranges and the memory estimate are zsad.limits' (tests/unit/test_limits.py checks their values). Nothing here
runs a large model: the memory refusals shrink the machine (``limits.physical_memory``) instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from outputs_check import TINY, cli, one_line_error, rows, write_image

from zsad import limits
from zsad.errors import ZsadInputError
from zsad.serve.service import ServeConfig

OVER = "--allow-large (or set ZSAD_ALLOW_LARGE=1)"


@pytest.fixture(autouse=True)
def _bounds_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ALLOW_LARGE_ENV, raising=False)


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal must come before any model is built."""
    from zsad.backbone import ClipBackbone

    def fail(*a: object, **k: object) -> None:
        raise AssertionError("a model was built before the size was refused")

    monkeypatch.setattr(ClipBackbone, "from_pretrained", fail)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "imgs" / "part.png", 0)


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "physical_memory", lambda: 2**30)  # 1 GiB, whatever runs the tests


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--image-size", "100000"], ["--image-size 100000: at most 2048", OVER]),
        (["--image-size", "4096"], ["--image-size 4096: at most 2048", OVER]),
        (["--image-size", "16"], ["--image-size 16: must be >= 32"]),
        (["--batch-size", "5000"], ["--batch-size 5000: at most 1024", OVER]),
        (["--max-map-size", "100000"], ["--max-map-size 100000: at most 16384", OVER]),
        (["--max-map-size", "-1"], ["--max-map-size -1: must be >= 0 (0 = no cap)"]),
    ],
)
def test_detect_refuses_each_size_in_one_line(
    image: Path, tmp_path: Path, no_model: None, args: list[str], needles: list[str]
) -> None:
    out = tmp_path / "out"
    one_line_error(cli("detect", image, "--out", out, *TINY, *args), *needles)
    assert not out.exists()


def test_eval_refuses_a_batch_that_cannot_fit_the_memory(tmp_path: Path, no_model: None, small_machine: None) -> None:
    """In range, but 64 images of 1024 px on zsad-tiny need about 16.7 GiB by the estimate: more than 1 GiB."""
    root = tmp_path / "data"
    write_image(root / "good" / "a.png", 1)
    write_image(root / "bad" / "b.png", 2)
    out = tmp_path / "out"
    base = ["eval", "--dataset", "folder", "--root", root, "--normal-dir", "good", "--abnormal-dir", "bad"]
    args = [*base, "--out", out, *TINY, "--image-size", "1024", "--batch-size", "64"]
    line = one_line_error(cli(*args), "--image-size 1024 with --batch-size 64 (zsad-tiny, 4097 tokens an image)")
    assert "needs about 16.7 GiB" in line and "more than this machine's memory (1.0 GiB)" in line and OVER in line
    one_line_error(cli(*base, "--out", out, *TINY, "--batch-size", "2000"), "--batch-size 2000: at most 1024")
    assert not out.exists()


def test_train_benchmark_and_export_refuse_sizes(tmp_path: Path, no_model: None) -> None:
    out = tmp_path / "out"
    one_line_error(
        cli("train", "--method", "sdp+", "--out", out, *TINY, "--batch-size", "5000"), "--batch-size 5000: at most"
    )
    one_line_error(
        cli("benchmark", "--suite", "industrial", "--root", tmp_path, "--out", out, *TINY, "--batch-size", "0"),
        "--batch-size 0: must be >= 1",
    )
    one_line_error(
        cli("export", "--method", "winclip", "--out", out, *TINY, "--image-size", "3000"),
        "--image-size 3000: at most 2048",
    )
    assert not out.exists()


def test_samples_refuses_sizes(tmp_path: Path) -> None:
    out = tmp_path / "samples"
    one_line_error(cli("samples", out, "--size", "100000"), "--size 100000: at most 4096", OVER)
    one_line_error(cli("samples", out, "--n-normal", "1000000"), "--n-normal 1000000: at most 10000")
    one_line_error(cli("samples", out, "--n-anomalous", "-1"), "--n-anomalous -1: must be >= 0")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-batch", "5000"], "--max-batch 5000: at most 1024"),
        (["--max-queue", "1000000"], "--max-queue 1000000: at most 4096"),
        (["--max-images", "5000"], "--max-images 5000: at most 1024"),
        (["--max-upload-mb", "100000"], "--max-upload-mb 100000.0: at most 4096"),
        (["--max-upload-mb", "inf"], "--max-upload-mb inf: must be a finite number"),
        (["--max-models", "100"], "--max-models 100: at most 64"),
        (["--max-map-size", "100000"], "--max-map-size 100000: at most 16384"),
        (["--max-batch", "0"], "--max-batch 0: must be >= 1"),
    ],
)
def test_serve_refuses_each_limit_before_it_binds(no_model: None, args: list[str], needle: str) -> None:
    one_line_error(cli("serve", *TINY, "--port", "1", *args), needle)  # port 1 would fail to bind: never reached


def test_serve_refuses_a_batch_that_cannot_fit_the_memory(no_model: None, small_machine: None) -> None:
    args = ["--image-size", "1024", "--max-batch", "64", "--port", "1"]
    line = one_line_error(
        cli("serve", *TINY, *args), "--image-size 1024 with --max-batch 64", "lower --image-size or --max-batch"
    )
    assert OVER in line


def test_serve_config_bounds_and_override(small_machine: None) -> None:
    """keep_results has no CLI option; the Python API gets the same bounds, and the override lifts them."""
    bb = {"model_name": "zsad-tiny", "pretrained": "none", "image_size": 1024, "device": "cpu"}
    with pytest.raises(ZsadInputError, match=r"^--keep-results 2000000: at most 1000000 \("):
        ServeConfig(backbone=bb, keep_results=2_000_000).validate()  # type: ignore[arg-type]
    with pytest.raises(ZsadInputError, match=r"^--max-upload-bytes 8589934592: at most 4294967296 \("):
        ServeConfig(backbone=bb, max_upload_bytes=8 * 2**30).validate()  # type: ignore[arg-type]
    with pytest.raises(ZsadInputError, match="with --max-batch 64 .* needs about 16.7 GiB"):
        ServeConfig(backbone=bb, max_batch=64).validate()  # type: ignore[arg-type]
    with limits.allowing_large():
        config = ServeConfig(backbone=bb, max_batch=64, keep_results=2_000_000)  # type: ignore[arg-type]
        config.validate()
    assert config.backbone.image_size == 1024  # the dict became a BackboneSpec


def test_allow_large_lets_a_moderately_over_value_through(image: Path, tmp_path: Path) -> None:
    """On the tiny model: a map cap above the bound (the image is smaller, so nothing grows) runs to the end."""
    out = tmp_path / "out"
    res = cli("detect", image, "--out", out, *TINY, "--max-map-size", "20000", "--allow-large")
    assert res.exit_code == 0, res.output
    assert [r["image_path"] for r in rows(out)] == [str(image)]
    assert limits.ALLOW_LARGE_ENV not in os.environ  # lifted for the command only


def test_the_environment_variable_lets_a_large_batch_through(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(limits.ALLOW_LARGE_ENV, "1")
    out = tmp_path / "out"
    res = cli("detect", image, "--out", out, *TINY, "--batch-size", "2000")
    assert res.exit_code == 0, res.output
    assert len(rows(out)) == 1
