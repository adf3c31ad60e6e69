"""Helpers of the bad-input and fault suite: run the CLI, make inputs, and check an output folder input by input.

``assert_one_set_per_input`` is the suite's main check: exactly one row, one map and one overlay per input, no
orphan file, and each map holding *its* input's heatmap, recomputed here image by image on the same model.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsad.cli.main import app
from zsad.runs.build import BackboneSpec

if TYPE_CHECKING:
    from zsad.serve.service import Service, Upload

TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]
BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)  # TINY as the Python API takes it
REPO = Path(__file__).resolve().parents[2]

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="pip install 'zsad[export]'"
)

# Child-process code where torch cannot be imported (the torch-free runtime's environment), then `zsad ...`
NO_TORCH = (
    "import sys, importlib.abc\n"
    "class NoTorch(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r} (hidden in this test)', name=name)\n"
    "sys.meta_path.insert(0, NoTorch())\n"
)
NO_TORCH_CLI = NO_TORCH + "from zsad.cli.entry import main\nmain(sys.argv[1:])\n"


def cli(*args: Any) -> Any:
    """The CLI in this process; an exception that escapes it (a traceback for the user) fails the test."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res: Any, *needles: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line, containing every needle."""
    assert res.exit_code == code, res.output
    assert 'File "' not in res.output, res.output
    return error_line(res.output, *needles)


def error_line(text: str, *needles: str) -> str:
    """No traceback in ``text`` and exactly one ``error:`` line, containing every needle (for any printed text)."""
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, text
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def rows(out: Path, name: str = "predictions.csv") -> list[dict[str, str]]:
    return csv_rows(out / name)


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV as a spreadsheet would read it (no unescaping of formula-like cells)."""
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes (a refused run must leave it byte-identical)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Path:
    """A distinct random image of ``size`` (width, height) (so a map in the wrong file would be noticed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def write_images(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (56, 40)) -> list[Path]:
    """``n`` distinct random images ``img_{seed + i:03d}.png`` in ``folder``."""
    return [write_image(folder / f"img_{seed + i:03d}.png", seed + i, size) for i in range(n)]


def uploads(paths: list[Path], names: list[str] | None = None) -> list[Upload]:
    """Files as the service receives them, under their own names or ``names``."""
    from zsad.serve.service import Upload

    return [Upload(n, p.read_bytes()) for n, p in zip(names or [p.name for p in paths], paths, strict=True)]


def service_detect(svc: Service, files: list[Upload], **kw: object) -> dict:
    """``Service.detect`` in this process (what a request to /v1/detect runs)."""
    return asyncio.run(svc.detect(files, **kw))  # type: ignore[arg-type]


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


def mpdd_plates(
    assets_dir: Path, root: Path, defect: int, good: int, refs: int, refs_from: int | None = None
) -> tuple[Path, Path]:
    """Real MPDD metal plates (512 px) copied into ``root``: (root/test, root/refs).

    root/test: the first ``defect`` defective and ``good`` good plates, named by their folder; root/refs: ``refs``
    other good plates, from good plate ``refs_from`` on (default: right after the test ones).
    """
    test, ref_dir = root / "test", root / "refs"
    test.mkdir(parents=True)
    ref_dir.mkdir()
    src = assets_dir / "mpdd_metal_plate"
    plates = sorted((src / "good").glob("*.png"))
    for p in sorted((src / "defect").glob("*.png"))[:defect] + plates[:good]:
        shutil.copy(p, test / f"{p.parent.name}_{p.name}")
    start = good if refs_from is None else refs_from
    for p in plates[start : start + refs]:
        shutil.copy(p, ref_dir)
    return test, ref_dir
