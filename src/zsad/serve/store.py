"""Where the service's results live: server-made ids only, ``zsad detect``'s layout with ``--out``.

No file name, extension or path a client sends reaches the file system: every stored file is named by a random
hex id made here, and ``path`` accepts only such ids and a fixed set of kinds. With ``--out`` the folder is
``zsad detect``'s format (``predictions.csv`` rows written and fsync'd before the response is sent, ``maps/``,
``overlays/``, ``manifest.json``), plus ``images/`` holding the uploads so each row can be re-scored; without it
results go to a temporary folder that keeps the newest ``keep`` images and is removed when the server stops.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from zsad.fileio import save_npy, write_bytes, write_json
from zsad.outputs import CsvLog, RunLock, check_output_dir, claim_output
from zsad.runs.detect import FIELDS
from zsad.sysinfo import environment

SERVE_FIELDS = [*FIELDS, "request_id", "image_id", "file_name", "method", "class_name", "reference_id", "model_id"]
KINDS = {"map.png": ("maps", ".png"), "map.npy": ("maps", ".npy"), "overlay.png": ("overlays", ".png")}
_ID = re.compile(r"^[0-9a-f]{32}$")
_EXT = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif"}


def map_png16(amap: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A map as 16-bit gray levels over its own [min, max] (value = min + level / 65535 * (max - min))."""
    lo, hi = float(amap.min()), float(amap.max())
    span = hi - lo
    levels = np.zeros(amap.shape, np.uint16) if span <= 0 else np.rint((amap - lo) / span * 65535.0)
    return np.asarray(levels, dtype=np.uint16), lo, hi


class ResultStore:
    """Stored maps, overlays and (with ``out``) uploads and rows of every scored image."""

    def __init__(self, out: Path | None, keep: int = 2000, config: dict[str, Any] | None = None) -> None:
        self.persistent = out is not None
        self.config = config or {}
        self._lock = threading.Lock()
        self._order: deque[str] = deque()
        self.keep = max(1, keep)
        self._run_lock: RunLock | None = None
        self.log: CsvLog | None = None
        if out is not None:
            check_output_dir(out, kind="serve")
            out.mkdir(parents=True, exist_ok=True)
            self._run_lock = RunLock(out)
            self._run_lock.acquire()
            try:
                claim_output(out, {"command": "serve", "format": 1}, "serve", "serve")
                self.log = CsvLog(out / "predictions.csv", SERVE_FIELDS, key=lambda r: r["image_id"], remember=False)
            except BaseException:
                self._run_lock.release()
                raise
            self.root = out
        else:
            self.root = Path(tempfile.mkdtemp(prefix="zsad-serve-"))
        for sub in ("maps", "overlays", *(("images",) if self.persistent else ())):
            (self.root / sub).mkdir(exist_ok=True)

    @staticmethod
    def new_id() -> str:
        """A fresh id for a stored image (128 random bits, hex)."""
        import uuid

        return uuid.uuid4().hex

    def path(self, image_id: str, kind: str) -> Path | None:
        """The stored file of ``kind`` for ``image_id``, or None (unknown id or kind, evicted, never written)."""
        if not _ID.match(image_id) or kind not in KINDS:
            return None
        folder, ext = KINDS[kind]
        p = self.root / folder / f"{image_id}{ext}"
        return p if p.is_file() else None

    def save_image(self, image_id: str, data: bytes, fmt: str) -> Path | None:
        """Keep the uploaded bytes (with ``--out``), named by id and the decoded format, never the client's name."""
        if not self.persistent:
            return None
        path = self.root / "images" / f"{image_id}{_EXT.get(fmt.upper(), '.img')}"
        write_bytes(path, data)
        return path

    def save_result(self, image_id: str, amap: np.ndarray, overlay: np.ndarray | None) -> dict[str, str]:
        """Write the map (.npy float32, 16-bit PNG) and the overlay; returns their paths relative to the root."""
        from PIL import Image

        from zsad.viz import save_png

        rel = {"anomaly_map_path": f"maps/{image_id}.npy"}
        save_npy(self.root / rel["anomaly_map_path"], amap.astype(np.float32))
        levels, _, _ = map_png16(amap)
        Image.fromarray(levels).save(self.root / "maps" / f"{image_id}.png")
        if overlay is not None:
            rel["overlay_path"] = f"overlays/{image_id}.png"
            save_png(self.root / rel["overlay_path"], overlay)
        self._remember(image_id)
        return rel

    def _remember(self, image_id: str) -> None:
        if self.persistent:
            return
        with self._lock:
            self._order.append(image_id)
            while len(self._order) > self.keep:
                old = self._order.popleft()
                for folder, ext in KINDS.values():
                    (self.root / folder / f"{old}{ext}").unlink(missing_ok=True)

    def append_rows(self, rows: list[dict[str, Any]]) -> None:
        """One request's rows to ``predictions.csv`` in one write and fsync (with ``--out``)."""
        if self.log is None:
            return
        with self._lock:
            self.log.append(rows)

    @property
    def rows_written(self) -> int:
        """Rows in ``predictions.csv`` (0 without ``--out``)."""
        return self.log.count if self.log is not None else 0

    def write_manifest(self, models: dict[str, Any], stats: dict[str, Any]) -> None:
        """``manifest.json``: the server's settings, every model that scored (by id) and the counts."""
        if not self.persistent:
            return
        with self._lock:
            manifest = {
                "command": "serve",
                **self.config,
                "models": models,
                "num_images": self.rows_written,
                "stats": stats,
                "environment": environment(),
            }
            write_json(self.root / "manifest.json", manifest)

    def close(self) -> None:
        """Release the folder (with ``--out``) or delete the temporary one."""
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None
        if not self.persistent:
            shutil.rmtree(self.root, ignore_errors=True)
