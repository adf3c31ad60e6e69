"""Reading a detect output folder back, whichever engine wrote it: the rows and each image's anomaly map.

``zsad detect`` (local) keeps maps as ``.npy`` files; ``--engine ray`` keeps them inside its Parquet shards, at
model resolution, compressed (``encode_map``). ``read_predictions`` and ``load_map`` hide the difference: the
rows are ``predictions.csv``'s, and a map comes back at the size ``map_size`` states.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError


def encode_map(amap: np.ndarray, dtype: str = "float16") -> bytes:
    """A square map as zlib-compressed little-endian float16 (or float32) bytes."""
    return zlib.compress(np.ascontiguousarray(amap, dtype=np.dtype(dtype).newbyteorder("<")).tobytes(), 1)


def decode_map(blob: bytes, dtype: str = "float16") -> np.ndarray:
    """``encode_map`` undone: the square (S, S) map as float32."""
    flat = np.frombuffer(zlib.decompress(blob), dtype=np.dtype(dtype).newbyteorder("<"))
    side = int(round(len(flat) ** 0.5))
    if side * side != len(flat):
        raise ZsadInputError(f"stored map of {len(flat)} values is not square")
    return flat.reshape(side, side).astype(np.float32)


def read_predictions(out: str | Path) -> list[dict[str, str]]:
    """The rows of ``out/predictions.csv`` (the same columns from either engine; Ray adds ``group``, ``model_id``)."""
    from zsad.outputs import read_csv

    path = Path(out) / "predictions.csv"
    if not path.is_file():
        raise ZsadInputError(f"{out}: no predictions.csv (not a finished detect output folder)")
    return read_csv(path)


def load_map(out: str | Path, row: dict[str, str] | str) -> np.ndarray:
    """One image's anomaly map (float32, ``map_size``), from a row of ``read_predictions`` or its ``image_path``."""
    from zsad.runs.scoring import resize_map

    out = Path(out)
    if isinstance(row, str):
        found = [r for r in read_predictions(out) if r["image_path"] == row]
        if not found:
            raise ZsadInputError(f"{row}: not in {out / 'predictions.csv'}")
        row = found[0]
    where = row["anomaly_map_path"]
    if where.endswith(".npy"):
        return np.load(out / where, allow_pickle=False)
    import pyarrow.parquet as pq

    table = pq.read_table(out / where, columns=["image_uri", "anomaly_map", "error"]).to_pylist()
    blobs = [t["anomaly_map"] for t in table if t["image_uri"] == row["image_path"] and not t["error"]]
    if not blobs:
        raise ZsadInputError(f"{row['image_path']}: no map in {out / where}")
    manifest = json.loads((out / "manifest.json").read_text())
    dtype = str(manifest.get("ray", {}).get("map_dtype", "float16"))
    w, h = (int(v) for v in row["map_size"].split("x"))
    return resize_map(decode_map(blobs[-1], dtype), (h, w))


def shard_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of one Parquet shard (``--engine ray``)."""
    import pyarrow.parquet as pq

    return list(pq.read_table(path, columns=columns).to_pylist())
