"""Helpers shared by the side-by-side fidelity harnesses (compare_clipad_sdp.py, compare_adaclip.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

Row = tuple[str, float | str | None, str]


def as_tensor(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).detach().double().cpu()


def maxdiff(a: Any, b: Any) -> float:
    ta, tb = as_tensor(a), as_tensor(b)
    if ta.shape != tb.shape:
        raise ValueError(f"shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return float((ta - tb).abs().max()) if ta.numel() else 0.0


def safe(rows: list[Row], quantity: str, fn: Callable[[], float | str], note: str | Callable[[], str] = "") -> None:
    """Append one row; an exception becomes an 'n/a' row with its message (the table never dies half-way)."""
    try:
        value = fn()
        rows.append((quantity, value, note() if callable(note) else note))
    except Exception as e:  # noqa: BLE001 - report anything
        msg = str(e).splitlines()[0] if str(e) else ""
        extra = f"; {note}" if isinstance(note, str) and note else ""
        rows.append((quantity, None, f"n/a: {type(e).__name__}: {msg[:160]}{extra}"))


def fmt(v: float | str | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.2e}"


def table(title: str, rows: Sequence[Row]) -> list[str]:
    out = [f"### {title}", "", "| quantity | max abs diff | note |", "|---|---:|---|"]
    out += [f"| {q} | {fmt(v)} | {n} |" for q, v, n in rows]
    return [*out, ""]


def dist_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def file_hashes(root: Path, files: Sequence[str]) -> str:
    """sha256 prefixes of the official files a run used (records what was compared without copying it)."""
    parts = []
    for rel in files:
        p = root / rel
        if p.is_file():
            parts.append(f"{rel} {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}")
    return "; ".join(parts)


def add_common_args(ap: Any, repo: str, images: int, seed_help: str, official_python: Path | None) -> None:
    """The options both harnesses take; ``official_python`` None makes ``--official-python`` required."""
    ap.add_argument("--official-root", type=Path, required=True, help=f"extracted official {repo} repository")
    if official_python is None:
        ap.add_argument("--official-python", type=Path, required=True, help="python of the official environment")
    else:
        ap.add_argument("--official-python", type=Path, default=official_python, help="python for the official side")
    ap.add_argument("--images", type=int, default=images, help="Magnetic Tile images (half MT_Free, half MT_Crack)")
    ap.add_argument("--seed", type=int, default=0, help=seed_help)
    ap.add_argument("--assets", type=Path, default=None, help="Magnetic Tile folder (default: shared/assets)")
    ap.add_argument("--append-results", action="store_true", help="append the report to --results-file")
    ap.add_argument("--results-file", type=Path, default=Path(__file__).resolve().with_name("RESULTS.md"))
    ap.add_argument("--keep-temp", action="store_true", help="keep the temporary folder (inputs, driver, outputs)")


def magnetic_tile_dir(assets: Path | None) -> Path:
    """``--assets`` or ``ZSAD_ASSETS`` (default ../shared/assets), pointed at its magnetic_tile folder."""
    here = Path(__file__).resolve().parent
    path = assets or Path(os.environ.get("ZSAD_ASSETS", here.parent.parent / "shared" / "assets"))
    return path / "magnetic_tile" if (path / "magnetic_tile").is_dir() else path


def magnetic_tile_picks(n: int, assets: Path) -> tuple[list[Path], int]:
    """The first n // 2 MT_Free and the first n - n // 2 MT_Crack images (sorted names), and n // 2."""
    n_free = n // 2
    picks = [*sorted((assets / "MT_Free" / "Imgs").glob("*.jpg"))[:n_free]]
    picks += sorted((assets / "MT_Crack" / "Imgs").glob("*.jpg"))[: n - n_free]
    return picks, n_free


def squashed(picks: Sequence[Path], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(n, 3, size, size) images squashed and normalised once by zsad, the tensor both sides get."""
    from PIL import Image

    from zsad.data import squash_image

    imgs = []
    for p in picks:
        with Image.open(p) as im:
            imgs.append(squash_image(im.convert("RGB"), size, mean, std))
    return torch.stack(imgs)


def run_official(driver: str, python: Path, root: Path, tmp: Path) -> tuple[dict[str, Any], float]:
    """Write the driver into ``tmp`` and run it in its own process from the official root; (outputs, seconds)."""
    (tmp / "official_driver.py").write_text(driver)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    t = time.perf_counter()
    proc = subprocess.run(
        [str(Path(python).absolute()), str(tmp / "official_driver.py"), str(root), str(tmp)],  # cwd is root
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"official side failed (exit {proc.returncode})")
    seconds = time.perf_counter() - t
    return torch.load(tmp / "official.pt", weights_only=False), seconds


def drop_temp(tmp: Path, keep: bool) -> None:
    if keep:
        print(f"temporary folder kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(report: str, errors: dict[str, str], append: bool, results_file: Path) -> None:
    """Print the report (and official-side errors); append it to the results file only when asked."""
    print(report)
    if errors:
        print("official-side errors:\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()))
    if append:
        with results_file.open("a") as fh:
            fh.write("\n" + report + "\n")
        print(f"appended to {results_file}")
