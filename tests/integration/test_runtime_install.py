"""The documented torch-free install, for real: ``pip install 'zsad[runtime]'`` from this checkout into a fresh venv.

The other runtime tests hide torch inside the test's own environment; this one proves the packaging: the runtime
extra installs no torch, and that venv's ``zsad detect --model`` and ``zsad.runtime.ExportedModel`` give, on real
images, the scores, labels and thresholds of the torch path (``zsad detect`` in this venv, same method and backbone).

pip reads the configured package index (or its cache) for numpy, Pillow, onnxruntime and the build's setuptools: the
same index ``make install`` uses. About 20 s of the test's time is the venv and that install (docs/install.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from outputs_check import TINY, cli, csv_rows

pytest.importorskip("onnxruntime", reason="zsad export needs it: pip install 'zsad[export]'")

REPO = Path(__file__).resolve().parents[2]
INSTALL_LINE = "pip install '{}[runtime]'"  # README.md and docs/install.md: pip install 'zsad[runtime]'
# what the full install brings and the runtime must not (import names)
FULL_ONLY = ("torch", "torchvision", "open_clip", "timm", "scipy", "sklearn", "typer", "rich", "safetensors", "fastapi")
METHOD = ["--method", "sdp", "--class-name", "metal plate"]
COMPARED = ("pred_label", "threshold_source", "pixel_threshold_source", "image_size", "map_size", "input_missing")
RTOL = 1e-4
ATOL = 1e-5  # SDP's maps cross zero: a relative tolerance alone would ask for exact zeros there


def _close(a: str, b: str) -> bool:
    """Two CSV numbers within RTOL of each other (both empty counts as equal: no threshold)."""
    if a == "" or b == "":
        return a == b
    return math.isclose(float(a), float(b), rel_tol=RTOL, abs_tol=ATOL)


def _env() -> dict[str, str]:
    """The runtime venv sees only itself: nothing from PYTHONPATH, the user's site-packages or this venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(cmd: list[str | Path], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the documented runtime line, from a copy of this checkout's source (the build writes its
    build/ and egg-info into the tree it builds, so it builds a copy rather than the checkout)."""
    root = tmp_path_factory.mktemp("runtime-install")
    src = root / "zsad-src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for lic in REPO.glob("LICEN[CS]E*"):
        shutil.copy2(lic, src / lic.name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", venv], timeout=120)
    assert made.returncode == 0, made.stderr
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    line = INSTALL_LINE.format(src)
    done = _run([bin_dir / "python", "-m", "pip", "install", "-q", f"{src}[runtime]"], timeout=600)
    assert done.returncode == 0, f"{line} failed in a fresh venv:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return bin_dir


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> dict[str, Path]:
    """Real images (MPDD metal plate RGB 512x512; Magnetic Tile grayscale of its own sizes), an export and the torch
    path's results, both made in this (full) venv: SDP on the tiny seeded CLIP, with normal references that set the
    image and pixel thresholds (recorded in the export's manifest)."""
    plate = assets_dir / "mpdd_metal_plate"
    if not plate.is_dir():
        pytest.skip(f"{plate} not found: this test scores MPDD metal_plate images (see ZSAD_ASSETS)")
    root = tmp_path_factory.mktemp("runtime-case")
    good = sorted((plate / "good").glob("*.png"))
    tiles = sorted((assets_dir / "magnetic_tile").glob("MT_*/Imgs/*.jpg"))[::97][:2]
    imgs, refs = root / "imgs", root / "refs"
    imgs.mkdir()
    refs.mkdir()
    for f in good[:4]:
        (refs / f.name).symlink_to(f)
    for f in [*good[10:13], *sorted((plate / "defect").glob("*.png"))[:3], *tiles]:
        (imgs / f.name).symlink_to(f)
    ref_args = ["--reference-dir", refs]
    res = cli("export", *METHOD, *ref_args, "--out", root / "model", *TINY)
    assert res.exit_code == 0, res.output
    res = cli("detect", imgs, *METHOD, *ref_args, "--out", root / "torch", "--no-overlays", *TINY)
    assert res.exit_code == 0, res.output
    return {"root": root, "imgs": imgs, "model": root / "model", "torch": root / "torch"}


def test_runtime_extra_installs_no_torch(runtime_venv: Path) -> None:
    """``import torch`` fails in the runtime venv; nothing else of the full install is there either."""
    torch = _run([runtime_venv / "python", "-c", "import torch"])
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr, torch.stdout + torch.stderr
    probe = f"import importlib.util as u; print([n for n in {FULL_ONLY!r} if u.find_spec(n)])"
    found = _run([runtime_venv / "python", "-c", probe])
    assert found.returncode == 0 and found.stdout.strip() == "[]", found.stdout + found.stderr
    # the runtime itself is there: onnxruntime, numpy, Pillow
    ok = _run([runtime_venv / "python", "-c", "import onnxruntime, numpy, PIL, zsad.runtime"])
    assert ok.returncode == 0, ok.stderr
    # and the rest of the command line says what to install, in one line
    other = _run([runtime_venv / "zsad", "eval", "--dataset", "mvtec"])
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stdout + other.stderr
    assert other.stdout.startswith("error: zsad eval needs the full install") and len(other.stdout.splitlines()) == 1
    assert "(torch is not installed here): pip install 'zsad[full]'" in other.stdout
    shown = _run([runtime_venv / "zsad", "--help"])
    assert shown.returncode == 0 and "zsad detect PATHS... --model DIR" in shown.stdout, shown.stdout + shown.stderr
    assert "torch is not installed" in shown.stdout and "pip install 'zsad[full]'" in shown.stdout


def test_runtime_venv_detect_equals_torch_detect(runtime_venv: Path, case: dict[str, Path]) -> None:
    """The runtime venv's ``zsad detect IMAGES --model DIR``: the torch path's rows, thresholds and maps."""
    out = case["root"] / "runtime"
    done = _run([runtime_venv / "zsad", "detect", case["imgs"], "--model", case["model"], "--out", out])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 images scored" in done.stdout, done.stdout
    want = {r["image_path"]: r for r in csv_rows(case["torch"] / "predictions.csv")}
    got = {r["image_path"]: r for r in csv_rows(out / "predictions.csv")}
    assert len(want) == 8 and set(got) == set(want)
    for path, w in want.items():
        g = got[path]
        for col in ("pred_score", "threshold", "pixel_threshold", "map_min", "map_max"):
            assert _close(g[col], w[col]), (path, col, g[col], w[col])
        for col in COMPARED:
            assert g[col] == w[col], (path, col, g[col], w[col])
        a = np.load(out / g["anomaly_map_path"])
        b = np.load(case["torch"] / w["anomaly_map_path"])
        assert a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL), path
    # the references set both thresholds (normal_quantile): a decision per image, the same on both paths
    assert {(r["threshold_source"], r["pixel_threshold_source"]) for r in want.values()} == {("normal_quantile",) * 2}
    assert all(r["pred_label"] in ("0", "1") for r in want.values())
    assert json.loads((out / "manifest.json").read_text())["runtime"] == "onnxruntime"


def test_runtime_venv_exported_model_equals_torch(runtime_venv: Path, case: dict[str, Path]) -> None:
    """``zsad.runtime.ExportedModel`` in the runtime venv: the torch path's scores and its recorded threshold."""
    want = {r["image_path"]: r for r in csv_rows(case["torch"] / "predictions.csv")}
    paths = sorted(want)
    script = (
        "import json, sys\n"
        "from zsad.runtime import ExportedModel\n"
        f"m = ExportedModel({str(case['model'])!r})\n"
        f"out = m.predict({paths!r}, batch_size=3)\n"
        "print(json.dumps({'score': out.pred_score.tolist(), 'map_shape': list(out.anomaly_map.shape),\n"
        "                  'threshold': m.threshold, 'source': m.threshold_source, 'torch': 'torch' in sys.modules}))\n"
    )
    done = _run([runtime_venv / "python", "-c", script])
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["torch"] is False and res["map_shape"] == [8, 96, 96]
    for path, score in zip(paths, res["score"], strict=True):
        assert math.isclose(score, float(want[path]["pred_score"]), rel_tol=RTOL, abs_tol=ATOL), path
    first = want[paths[0]]
    assert res["source"] == first["threshold_source"] == "normal_quantile"
    assert math.isclose(res["threshold"], float(first["threshold"]), rel_tol=RTOL)
