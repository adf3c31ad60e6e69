"""Fixtures of the integration modules that more than one module uses: a browser, a local Ray, serve samples, an export.

Each is module-scoped, as it was in the module it came from: every module that asks for one gets its own.
``samples`` are the service cases' five small images (3 good, then 2 defective); a module with a ``samples`` fixture
of its own (test_serve_api.py, test_serve_cli.py, ...) keeps using that one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from outputs_check import TINY, cli


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("no chromium on PATH: apt-get install -y chromium (.ci/run installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the module's tests.

    Shut down at the module's end only by the fixture that started it, so that one module's teardown never stops a
    Ray that someone else started (and is using).
    """
    ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'zsad[ray]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def sdp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SDP export with no references: no recorded thresholds (the runtime fits them per run)."""
    out = tmp_path_factory.mktemp("export") / "sdp"
    res = cli("export", "--method", "sdp", "--class-name", "tile", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from zsad.data import make_sample_images

    root = make_sample_images(tmp_path_factory.mktemp("samples"), n_normal=3, n_anomalous=2, size=64, seed=3)
    return sorted((root / "good").glob("*.png")) + sorted((root / "defect").glob("*.png"))
