"""Helpers of the watched-folder tests: a station with a profile, writers in other processes, the store read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from zsad.runs import BackboneSpec, make_setup
from zsad.store import Station

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
WATCH_TINY = ["--device", "cpu"]  # the profile decides the rest


FAST_SDP = {"prompt_set": "adaclip", "text_aggregation": "raw_mean"}


def make_station(out: Path, name: str = "tile", threshold: float | None = 0.5) -> str:
    """A SQLite station in ``out`` with one profile (manual threshold, so every file gets a label); its URL."""
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'station.db'}"
    with Station(url, out) as st:
        # sdp with a small prompt set: the method does not matter here, and its text tower was most of each start
        setup = make_setup("sdp", backbone=BB, options=FAST_SDP, threshold=threshold)
        st.create_profile(name, setup)
    return url


def tile_images(assets: Path, n: int) -> list[Path]:
    """``n`` real Magnetic Tile images (small JPEGs), the same ones every time."""
    found = sorted((assets / "magnetic_tile").rglob("*.jpg"))
    assert len(found) >= n, f"only {len(found)} Magnetic Tile images"
    return found[:n]


def write_files(files: list[Path], folder: Path, *, delay: float = 0.0, names: list[str] | None = None) -> None:
    """Copy ``files`` into ``folder`` from a separate process (as a camera would), waiting for it."""
    spawn_writer(files, folder, delay=delay, names=names).wait(timeout=120)


def spawn_writer(
    files: list[Path], folder: Path, *, delay: float = 0.0, names: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """A separate process that copies ``files`` into ``folder`` (under ``names``), ``delay`` seconds apart."""
    names = names or [f"{i:05d}_{p.name}" for i, p in enumerate(files)]
    script = (
        "import shutil, sys, time\n"
        "args = sys.argv[1:]\n"
        "delay, folder, pairs = float(args[0]), args[1], args[2:]\n"
        "for src, name in zip(pairs[::2], pairs[1::2]):\n"
        "    shutil.copyfile(src, folder + '/' + name)\n"
        "    time.sleep(delay)\n"
    )
    pairs = [x for src, name in zip(files, names, strict=True) for x in (str(src), name)]
    return subprocess.Popen([sys.executable, "-c", script, str(delay), str(folder), *pairs])


def slow_write(path: Path, data: bytes, seconds: float, chunks: int = 20) -> subprocess.Popen[bytes]:
    """A separate process writing ``data`` to ``path`` in ``chunks`` pieces over ``seconds`` (a slow camera)."""
    src = path.with_name(f".source-{path.name}")
    src.write_bytes(data)
    script = (
        "import sys, time, os\n"
        "src, dst, secs, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])\n"
        "data = open(src, 'rb').read()\n"
        "step = -(-len(data) // n)\n"
        "with open(dst, 'wb') as f:\n"
        "    for i in range(0, len(data), step):\n"
        "        f.write(data[i:i + step]); f.flush(); os.fsync(f.fileno())\n"
        "        time.sleep(secs / n)\n"
        "os.unlink(src)\n"
    )
    return subprocess.Popen([sys.executable, "-c", script, str(src), str(path), str(seconds), str(chunks)])


def read_db(url: str, sql: str) -> list[dict[str, Any]]:
    """Rows of a query on the station's database (read-only; the server may hold its lock)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql)).mappings()]
    finally:
        engine.dispose()


def zsad(*args: str, log: Path, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run ``zsad ARGS`` to its end, its output in ``log``."""
    with log.open("ab") as f:
        return subprocess.run(
            [sys.executable, "-m", "zsad", *args], stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )


def start_zsad(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``zsad ARGS`` in the background, its output in ``log``."""
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "zsad", *args], stdout=f, stderr=subprocess.STDOUT, env={**os.environ}
        )
