"""Reading a detect output folder back, whichever engine wrote it: the rows and each image's anomaly map.

``zsad detect`` (local) keeps maps as ``.npy`` files; ``--engine ray`` keeps them inside its Parquet shards, at
model resolution, compressed (the shard format is ``zsad.runs.shards``'). ``read_predictions`` and ``load_map``
hide the difference: the rows are ``predictions.csv``'s, and a map comes back at the size ``map_size`` states.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from zsad.errors import ZsadInputError
from zsad.runs.shards import decode_map, shard_rows


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
