"""Reading a detect output folder back, whichever engine wrote it: the rows and each image's anomaly map.

``zsad detect`` (local) keeps maps as ``.npy`` files; ``--engine ray`` keeps them inside its Parquet shards, at
model resolution, compressed (``encode_map``). ``read_predictions`` and ``load_map`` hide the difference: the
rows are ``predictions.csv``'s, and a map comes back at the size ``map_size`` states.

Shard maps are stored in one of ``MAP_ENCODINGS``. Shards written before issue 25 hold absolute float16 values
(``float16``) and name no encoding: ``load_map`` then takes the folder's ``ray.map_dtype`` from its manifest.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError

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


def read_predictions(out: str | Path) -> list[dict[str, str]]:
    """The rows of ``out/predictions.csv`` (the same columns from either engine; Ray adds ``group``, ``model_id``)."""
    from zsad.outputs import read_csv
    from zsad.runs.build import as_path

    path = as_path(out, "out") / "predictions.csv"
    if not path.is_file():
        raise ZsadInputError(f"{out}: no predictions.csv (not a finished detect output folder)")
    return read_csv(path)


def load_map(out: str | Path, row: dict[str, str] | str | Path) -> np.ndarray:
    """One image's anomaly map (float32, ``map_size``), from a row of ``read_predictions`` or its ``image_path``."""
    from zsad.runs.build import as_path
    from zsad.runs.scoring import resize_map

    out = as_path(out, "out")
    if isinstance(row, os.PathLike):
        row = os.fspath(row)
    if not isinstance(row, str | dict):
        raise TypeError(
            f"row: expected a row of read_predictions (dict) or an image_path (str), not {type(row).__name__}"
        )
    if isinstance(row, str):
        found = [r for r in read_predictions(out) if r["image_path"] == row]
        if not found:
            raise ZsadInputError(f"{row}: not in {out / 'predictions.csv'}")
        row = found[0]
    where = row["anomaly_map_path"]
    if where.endswith(".npy"):
        return np.load(out / where, allow_pickle=False)
    stored = shard_rows(out / where, ["image_uri", "anomaly_map", "error", "map_encoding", "map_lo", "map_hi"])
    found_rows = [t for t in stored if t["image_uri"] == row["image_path"] and not t["error"]]
    if not found_rows:
        raise ZsadInputError(f"{row['image_path']}: no map in {out / where}")
    t = found_rows[-1]
    encoding = t["map_encoding"] or _folder_map_dtype(out)  # shards before issue 25 name no encoding
    w, h = (int(v) for v in row["map_size"].split("x"))
    return resize_map(decode_map(t["anomaly_map"], encoding, t["map_lo"], t["map_hi"]), (h, w))


def _folder_map_dtype(out: Path) -> str:
    """The absolute dtype of a folder whose shards name no encoding (written before issue 25)."""
    manifest = json.loads((out / "manifest.json").read_text())
    return str(manifest.get("ray", {}).get("map_dtype", "float16"))


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
