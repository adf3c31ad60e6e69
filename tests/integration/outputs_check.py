"""Helpers of the bad-input and fault suite: run the CLI, and check an output folder input by input.

``assert_one_set_per_input`` is the suite's main check: exactly one row, one map and one overlay per input, no
orphan file, and each map holding *its* input's heatmap, recomputed here image by image on the same model.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from zsad.cli.main import app

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[2]


def cli(*args: Any) -> Any:
    """The CLI in this process; an exception that escapes it (a traceback for the user) fails the test."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res: Any, *needles: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line, containing every needle."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and 'File "' not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def rows(out: Path, name: str = "predictions.csv") -> list[dict[str, str]]:
    with (out / name).open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def subprocess_cli(
    *args: Any, drop_dac: bool = False, wait: bool = True, env: dict[str, str] | None = None
) -> subprocess.Popen[str] | subprocess.CompletedProcess[str]:
    """``python -m zsad ...`` in a child process (for kills, interrupts, concurrency and permissions).

    ``drop_dac``: run without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so that file modes bind even as root.
    """
    cmd = [sys.executable, "-m", "zsad", *map(str, args)]
    if drop_dac and os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if wait:
        return subprocess.run(
            cmd, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=300, preexec_fn=_default_sigint
        )
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=REPO,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """The child gets Python's Ctrl-C handling even when the test run itself ignores SIGINT.

    A shell without job control starts background jobs with SIGINT ignored (``cmd &`` in a script), and an ignored
    signal stays ignored across exec: the child would then never see the Ctrl-C the tests send it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def needs_permissions() -> None:
    """File modes bind for root only without its DAC capabilities (setpriv drops them)."""
    if os.geteuid() == 0 and not any((Path(p) / "setpriv").is_file() for p in os.environ["PATH"].split(":")):
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")


@cache
def _reference_method(class_name: str) -> Any:
    from zsad import ClipBackbone, create_method

    bb = ClipBackbone.from_pretrained("zsad-tiny", "none", image_size=96, seed=0)
    m = create_method("winclip", bb)
    m.setup(class_name)
    return m


def reference(path: str, class_name: str = "object", cap: int = 4096) -> tuple[float, np.ndarray]:
    """(score, map at the written size) of one image, scored alone with the CLI's tiny model."""
    from zsad.data import ImageList
    from zsad.runs.detect import map_size
    from zsad.runs.scoring import resize_map

    m = _reference_method(class_name)
    item = ImageList([path], image_size=96, mean=m.backbone.mean, std=m.backbone.std)[0]
    pred = m.predict(item["image"][None])
    h, w = item["original_size"]
    return float(pred.pred_score[0]), resize_map(pred.anomaly_map[0].numpy(), map_size(h, w, cap))


def assert_one_set_per_input(
    out: Path, inputs: list[Path], *, overlays: bool = True, check_content: bool = True, class_name: str = "object"
) -> list[dict[str, str]]:
    """One row, map and overlay per input (no more, no orphans), each map holding its own input's heatmap."""
    rs = rows(out)
    assert sorted(r["image_path"] for r in rs) == sorted(os.path.abspath(p) for p in inputs)
    maps = sorted(p.relative_to(out).as_posix() for p in (out / "maps").iterdir())
    assert maps == sorted(r["anomaly_map_path"] for r in rs), "orphan or missing map files"
    if overlays:
        pngs = sorted(p.relative_to(out).as_posix() for p in (out / "overlays").iterdir())
        assert pngs == sorted(r["overlay_path"] for r in rs), "orphan or missing overlays"
    if check_content:
        for r in rs:
            score, amap = reference(r["image_path"], class_name)
            assert float(r["pred_score"]) == pytest.approx(score, abs=1e-5), r["image_path"]
            np.testing.assert_allclose(np.load(out / r["anomaly_map_path"]), amap, atol=1e-5, err_msg=r["image_path"])
    return rs
