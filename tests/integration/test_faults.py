"""Faults with real processes: SIGKILL and Ctrl-C mid-run then resume, two runs into one folder, file modes.

Each run is ``python -m zsad`` in a child process on the tiny seeded model; afterwards the folder must hold exactly
one row, map and overlay per input, with the same bytes as a run that was never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from outputs_check import TINY, assert_one_set_per_input, cli, needs_permissions, one_line_error, rows, subprocess_cli
from PIL import Image

N = 40


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("many")
    out = []
    for i in range(N):
        arr = np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:03d}.png")
        out.append(folder / f"img_{i:03d}.png")
    return out


@pytest.fixture(scope="module")
def uninterrupted(many: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    res = cli("detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY)
    assert res.exit_code == 0, res.output
    return out


def _wait_rows(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until ``predictions.csv`` holds at least ``n`` rows (the child is mid-run)."""
    end = time.monotonic() + timeout
    path = out / "predictions.csv"
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if path.exists() and path.read_text().count("\n") > n:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not get going")


def _same_as(out: Path, ref: Path) -> None:
    """Row for row and map for map, the values of a run that was never interrupted (batch size 1: bit-identical)."""
    got = {r["image_path"]: r for r in rows(out)}
    want = {r["image_path"]: r for r in rows(ref)}
    assert got.keys() == want.keys()
    for path, r in want.items():
        for field in ("pred_score", "pred_label", "threshold", "map_min", "map_max", "anomaly_map_path"):
            assert got[path][field] == r[field], (path, field)
        got_map = np.load(out / got[path]["anomaly_map_path"])
        np.testing.assert_array_equal(got_map, np.load(ref / r["anomaly_map_path"]))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_mid_run_then_resume(
    many: list[Path], uninterrupted: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGKILL leaves what was fsync'd; Ctrl-C ends in one line and exit 130. Either way the rerun completes."""
    out = tmp_path / "out"
    args = ["detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY]
    proc = subprocess_cli(*args, wait=False)
    assert isinstance(proc, subprocess.Popen)
    _wait_rows(out, 5, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
        assert len(lines) == 1 and "run the same command again to resume" in lines[0], err
    n_before = len(rows(out))
    assert 5 <= n_before < N
    res = subprocess_cli(*args)
    assert isinstance(res, subprocess.CompletedProcess)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {n_before} of {N}" in res.stderr
    assert_one_set_per_input(out, many, check_content=False)
    _same_as(out, uninterrupted)


def test_second_run_into_a_busy_folder_is_refused(many: list[Path], uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess_cli("detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY, wait=False)
    assert isinstance(proc, subprocess.Popen)
    _wait_rows(out, 2, proc)
    line = one_line_error(cli("detect", many[0].parent, "--out", out, "--batch-size", "1", *TINY), "another zsad run")
    assert f"PID {proc.pid}" in line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_one_set_per_input(out, many, check_content=False)
    _same_as(out, uninterrupted)


def test_unreadable_image_and_read_only_output(many: list[Path], tmp_path: Path) -> None:
    """chmod 000 input: named and skipped; a read-only --out: one line, before any model loads."""
    needs_permissions()
    folder = tmp_path / "imgs"
    folder.mkdir(mode=0o755)
    for p in many[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    locked = folder / many[1].name
    locked.chmod(0o000)
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess_cli("detect", folder, "--out", out, *TINY, drop_dac=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"error: {locked}: cannot read image: Permission denied" in res.stderr
    res = subprocess_cli("detect", folder, "--out", out, "--skip-bad", *TINY, drop_dac=True)
    assert res.returncode == 1, res.stderr
    assert_one_set_per_input(out, [folder / many[0].name, folder / many[2].name], check_content=False)
    assert "Permission denied" in (out / "errors.csv").read_text()

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    for target in (read_only, read_only / "sub"):
        res = subprocess_cli("detect", folder, "--out", target, "--skip-bad", *TINY, drop_dac=True)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "permission denied, cannot write here" in errors[0], res.stderr
        assert "RANDOM" not in res.stderr  # refused before the model was built
    assert os.listdir(read_only) == []
