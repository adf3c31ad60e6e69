"""Where the service's results live: server-made ids only, ``zsad detect``'s layout with ``--out``.

No file name, extension or path a client sends reaches the file system: every stored file is named by a random
hex id made here, and ``path`` accepts only such ids and a fixed set of kinds. With ``--out`` the folder is
``zsad detect``'s format (``predictions.csv`` rows written and fsync'd before the response is sent, ``maps/``,
``overlays/``, ``manifest.json``), plus ``images/`` holding the uploads so each row can be re-scored; without it
results go to a temporary folder that keeps the newest ``keep`` images and is removed when the server stops.

A server restarted on the same ``--out`` resumes it only with the same run key (backbone, weights, server options,
checkpoints: what decides the scores); the manifest accumulates, so every ``model_id`` in ``predictions.csv`` stays
described, and lists the sessions that wrote the rows. A folder of the first serve format (a key that recorded
nothing) is adopted: its key is upgraded and its manifest's models are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from zsad._version import __version__
from zsad.errors import ZsadInputError
from zsad.fileio import save_npy, write_bytes, write_json
from zsad.outputs import DETECT_FIELDS, RUN_KEY, CsvLog, RunLock, check_output_dir, claim_output, read_csv
from zsad.sysinfo import environment

SERVE_FIELDS = [
    *DETECT_FIELDS,
    "request_id",
    "image_id",
    "file_name",
    "method",
    "class_name",
    "reference_id",
    "model_id",
]
ERROR_FIELDS = ["request_id", "file_name", "error"]  # uploads a skip_bad request could not read
OLD_KEY = {"command": "serve", "format": 1}  # the first serve format: its key recorded nothing that decides scores
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

    def __init__(
        self,
        out: Path | None,
        keep: int = 2000,
        config: dict[str, Any] | None = None,
        key: dict[str, Any] | None = None,
        station: bool = False,
    ) -> None:
        self.persistent = out is not None
        self.station = station  # rows go to the station's database; uploads are named by content
        self.config = config or {}
        self.key = key or {"command": "serve"}
        self._lock = threading.Lock()
        self._order: deque[str] = deque()
        self.keep = max(1, keep)
        self._run_lock: RunLock | None = None
        self.log: CsvLog | None = None
        self.errors: CsvLog | None = None
        self.started = _now()
        self.adopted = False  # a folder of the first serve format, taken over
        self._models: dict[str, Any] = {}  # earlier sessions' models, by id
        self._sessions: list[dict[str, Any]] = []
        self._undescribed: list[str] = []
        if out is not None:
            check_output_dir(out, kind="serve")
            out.mkdir(parents=True, exist_ok=True)
            self._run_lock = RunLock(out)
            self._run_lock.acquire()
            try:
                self.adopted = _read_json(out / RUN_KEY) == OLD_KEY
                if self.adopted:  # under the lock: nobody else upgrades it meanwhile
                    write_json(out / RUN_KEY, json.loads(json.dumps(self.key, default=str)))
                claim_output(out, self.key, "serve", "serve")
                if not station:
                    self.log = CsvLog(
                        out / "predictions.csv", SERVE_FIELDS, key=lambda r: r["image_id"], remember=False
                    )
                self.errors = CsvLog(out / "errors.csv", ERROR_FIELDS, remember=False)
                self._resume(out)
            except BaseException:
                self._run_lock.release()
                raise
            self.root = out
        else:
            self.root = Path(tempfile.mkdtemp(prefix="zsad-serve-"))
        self.rows_at_start = self.rows_written
        for sub in ("maps", "overlays", *(("images",) if self.persistent else ())):
            (self.root / sub).mkdir(exist_ok=True)

    def _resume(self, out: Path) -> None:
        """What earlier sessions wrote into ``manifest.json``: their models (kept described) and sessions."""
        path = out / "manifest.json"
        before = _read_json(path)
        if path.exists() and not before:  # its models describe the rows: never overwrite them with nothing
            raise ZsadInputError(
                f"{path}: unreadable, so the rows' model_ids would lose their description; use another --out"
            )
        models = before.get("models")
        self._models = dict(models) if isinstance(models, dict) else {}
        sessions = before.get("sessions")
        if isinstance(sessions, list):
            self._sessions = [s for s in sessions if isinstance(s, dict)]
        elif before:  # a first-format manifest: one session, whose times were not recorded
            found = before.get("stats")
            stats: dict[str, Any] = found if isinstance(found, dict) else {}
            self._sessions = [
                {
                    "started": None,
                    "stopped": None,
                    "requests": stats.get("requests"),
                    "images_scored": stats.get("images_scored"),
                    "models": sorted(self._models),
                    "note": "written by an earlier zsad serve, which recorded no times and kept the last session only",
                }
            ]
        if self.adopted and (out / "predictions.csv").is_file():  # rows of sessions that manifest forgot
            ids = {r.get("model_id", "") for r in read_csv(out / "predictions.csv")}
            self._undescribed = sorted(i for i in ids if i and i not in self._models)

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

    def save_image(self, image_id: str, data: bytes, fmt: str) -> tuple[Path | None, str]:
        """Keep the uploaded bytes (with ``--out``), never under the client's name; returns the path and sha256.

        For a station the file is named by its sha256 (the same part sent twice is one file, and a confirmed
        normal becomes a reference by that hash); otherwise by the result's id, as ``zsad detect`` folders are.
        """
        sha = hashlib.sha256(data).hexdigest()
        if not self.persistent:
            return None, sha
        ext = _EXT.get(fmt.upper(), ".img")
        path = self.root / "images" / f"{sha if self.station else image_id}{ext}"
        if not (self.station and path.is_file()):
            write_bytes(path, data)
        return path, sha

    def relative(self, path: Path | None) -> str | None:
        """``path`` relative to the results folder (how the station's rows name files), or None."""
        return None if path is None else path.relative_to(self.root).as_posix()

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

    def append_errors(self, rows: list[dict[str, Any]]) -> None:
        """A ``skip_bad`` request's unreadable uploads to ``errors.csv`` (with ``--out``): a row or an error each."""
        if self.errors is None or not rows:
            return
        with self._lock:
            self.errors.append(rows)

    @property
    def rows_written(self) -> int:
        """Rows in ``predictions.csv`` (0 without ``--out``)."""
        return self.log.count if self.log is not None else 0

    @property
    def errors_written(self) -> int:
        """Rows in ``errors.csv`` (0 without ``--out``)."""
        return self.errors.count if self.errors is not None else 0

    def write_manifest(self, models: dict[str, Any], stats: dict[str, Any], *, stopped: bool = False) -> None:
        """``manifest.json``: settings, run key, every model that ever scored into the folder, sessions, counts.

        Models are by id, earlier sessions' too, so every ``model_id`` in ``predictions.csv`` stays described.
        """
        if not self.persistent:
            return
        with self._lock:
            session = {
                "started": self.started,
                "stopped": _now() if stopped else None,  # None: running, or killed
                "zsad": __version__,
                "requests": stats.get("requests"),
                "images_scored": stats.get("images_scored"),
                "images_failed": stats.get("images_failed"),
                "rows_before": self.rows_at_start,
                "models": sorted(models),
            }
            manifest: dict[str, Any] = {
                "command": "serve",
                **self.config,
                "run_key": self.key,
                "models": {**self._models, **models},
                "num_images": self.rows_written,
                "num_failed": self.errors_written,
                "sessions": [*self._sessions, session],
                "stats": stats,
                "environment": environment(),
            }
            if self.adopted:
                manifest["adopted"] = (
                    "this folder was written by an earlier zsad serve whose manifest kept only its last session's "
                    "models; rows with the model_ids in undescribed_model_ids have no description"
                )
                manifest["undescribed_model_ids"] = self._undescribed
            write_json(self.root / "manifest.json", manifest)

    def close(self) -> None:
        """Release the folder (with ``--out``) or delete the temporary one."""
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None
        if not self.persistent:
            shutil.rmtree(self.root, ignore_errors=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
