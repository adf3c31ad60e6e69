"""The Parquet shard format of ``zsad detect --engine ray``: its one owner.

Written by the Ray actors, read back by the driver (for the decisions) and by ``zsad.runs.readback`` (maps), so
one module knows the columns and the map encodings.

A shard is one Parquet file written whole and renamed into place (complete or absent); its rows are one per input
URI: the per-image numbers of a detect row, the map at model resolution (``encode_map``) or the error. A URI seen
in several shards (a retried task) is read once, the newest success winning.

Shard maps are stored in one of ``MAP_ENCODINGS``. Shards written before issue 25 hold absolute float16 values
(``float16``) and name no encoding: readers then take the folder's ``ray.map_dtype`` from its manifest.
"""

from __future__ import annotations

import io
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError

SHARDS = "shards"


SHARD_SCHEMA = {
    "image_uri": "string", "group": "string", "pred_score": "float64", "map_min": "float64", "map_max": "float64",
    "image_size": "string", "map_size": "string", "score_parts": "string", "anomaly_map": "binary", "error": "string",
    "model_id": "string", "map_encoding": "string", "map_lo": "float64", "map_hi": "float64", "notes": "string",
}  # fmt: skip  # column -> pyarrow type of every shard (the last four since issue 25; older shards lack them)

# How a map's values are stored. ``range16``: 16-bit levels of the map's own [lo, hi] (lo and hi kept beside
# it as float64), so the error is at most (hi - lo) / 131070 whatever the values' magnitude; absolute float16
# lost up to 1.5 % of a narrow map's range (values near 0.55 spanning 0.02, as the tiny model's maps do; see
# docs/ray.md for the measurement).
MAP_ENCODINGS = ("range16", "float32", "float16")


LEVELS = 65535


def encode_map(amap: np.ndarray, encoding: str = "range16") -> tuple[bytes, float | None, float | None]:
    """A square map as zlib-compressed little-endian bytes, and the (lo, hi) a ``range16`` map needs back.

    A map with a non-finite value cannot be stored as levels of its range: pass ``float32`` for it.
    """
    if encoding == "range16":
        a = np.asarray(amap, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scale = (hi - lo) / LEVELS if hi > lo else 1.0
        levels = np.rint((a - lo) / scale).clip(0, LEVELS).astype("<u2")
        return zlib.compress(np.ascontiguousarray(levels).tobytes(), 1), lo, hi
    if encoding in ("float16", "float32"):
        data = np.ascontiguousarray(amap, dtype=np.dtype(encoding).newbyteorder("<")).tobytes()
        return zlib.compress(data, 1), None, None
    raise ZsadInputError(f"map encoding {encoding!r}: use one of {', '.join(MAP_ENCODINGS)}")


def decode_map(blob: bytes, encoding: str = "float16", lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``encode_map`` undone: the square (S, S) map as float32, in absolute values (``range16`` needs lo, hi)."""
    if encoding == "range16":
        if lo is None or hi is None:
            raise ZsadInputError("a range16 map needs the lo and hi stored beside it")
        flat = np.frombuffer(zlib.decompress(blob), dtype="<u2").astype(np.float64)
        flat = lo + flat * ((hi - lo) / LEVELS if hi > lo else 0.0)
    elif encoding in ("float16", "float32"):
        flat = np.frombuffer(zlib.decompress(blob), dtype=np.dtype(encoding).newbyteorder("<"))
    else:
        raise ZsadInputError(f"stored map encoding {encoding!r}: this zsad reads {', '.join(MAP_ENCODINGS)}")
    side = int(round(len(flat) ** 0.5))
    if side * side != len(flat):
        raise ZsadInputError(f"stored map of {len(flat)} values is not square")
    return flat.reshape(side, side).astype(np.float32)


def write_shard(out: Path, rows: list[dict[str, Any]]) -> Path:
    """One Parquet file, written whole and renamed into place: a shard is complete or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zsad.fileio import write_bytes

    table = pa.table({k: pa.array([r[k] for r in rows], getattr(pa, t)()) for k, t in SHARD_SCHEMA.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    path = out / SHARDS / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    write_bytes(path, buf.getvalue())
    return path


def shard_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of one Parquet shard (``--engine ray``); columns an older shard lacks come back as None."""
    import pyarrow.parquet as pq

    if columns is None:
        return list(pq.read_table(path).to_pylist())
    have = set(pq.read_schema(path).names)
    rows = pq.read_table(path, columns=[c for c in columns if c in have]).to_pylist()
    lacking = [c for c in columns if c not in have]
    for r in rows:
        r.update(dict.fromkeys(lacking))
    return list(rows)


def read_shards(out: Path, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every URI once: the newest successful row, else the newest error row (shards in name order = time order)."""
    cols = list(dict.fromkeys(["image_uri", "error", *columns])) if columns is not None else None
    latest: dict[str, dict[str, Any]] = {}
    for path in sorted((out / SHARDS).glob("part-*.parquet")):
        for row in shard_rows(path, cols):
            row["shard"] = path.name
            old = latest.get(row["image_uri"])
            if old is None or not row["error"] or old["error"]:
                latest[row["image_uri"]] = row
    return list(latest.values())


def done_uris(out: Path) -> set[str]:
    """URIs already scored (error rows are tried again, as ``zsad detect`` retries failed files)."""
    if not (out / SHARDS).is_dir():
        return set()
    return {r["image_uri"] for r in read_shards(out, ["image_uri"]) if not r["error"]}
