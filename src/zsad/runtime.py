"""Run a model made by ``zsad export`` without torch: numpy, Pillow and onnxruntime (``pip install zsad[runtime]``).

A line PC runs the exported graph, not a research environment. This module must never import torch (a test runs
it with torch hidden): preprocessing is ``zsad.data.io`` decoding plus the same Pillow bicubic squash and the same
float32 normalisation as ``zsad.data.squash_image``, so inputs are identical to the torch path's.

Everything is checked before the first image: the manifest exists and parses, the model file's sha256 matches the
manifest, and the graph's input is the image size the manifest names. Each failure is one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError
from zsad.fileio import sha256_file

MANIFEST = "manifest.json"


@dataclass
class RuntimePrediction:
    """Scores (B,) and maps (B, S, S) at the model's resolution, as the exported graph returns them."""

    pred_score: np.ndarray
    anomaly_map: np.ndarray


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export manifest, checked for the fields the runtime needs."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise ZsadInputError(f"--model {folder}: folder not found")
    if not path.is_file():
        raise ZsadInputError(f"{path}: missing (not a folder written by `zsad export`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZsadInputError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in ("model_file", "model_sha256", "preprocess", "method") if k not in manifest]
    if missing:
        raise ZsadInputError(f"{path}: lacks {', '.join(missing)} (not a `zsad export` manifest)")
    return dict(manifest)


class ExportedModel:
    """An exported model folder, checked on opening; ``predict`` takes image files or decoded arrays."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        model = self.folder / str(self.manifest["model_file"])
        if not model.is_file():
            raise ZsadInputError(f"{model}: missing (named by {self.folder / MANIFEST})")
        if sha256_file(model) != self.manifest["model_sha256"]:
            raise ZsadInputError(f"{model}: sha256 differs from {self.folder / MANIFEST} (changed or corrupt file)")
        pre = self.manifest["preprocess"]
        self.image_size = int(pre["image_size"])
        self.mean = np.asarray(pre["mean"], dtype=np.float32)
        self.std = np.asarray(pre["std"], dtype=np.float32)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ZsadInputError("onnxruntime is not installed: pip install 'zsad[runtime]'") from e
        try:
            self.session = ort.InferenceSession(str(model), providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise ZsadInputError(f"{model}: onnxruntime cannot load it: {' '.join(str(e).split())[:200]}") from None
        shape = self.session.get_inputs()[0].shape
        if list(shape[2:]) != [self.image_size, self.image_size]:
            raise ZsadInputError(
                f"{model}: its input is {shape[2:]} pixels but {self.folder / MANIFEST} says {self.image_size}"
            )

    @property
    def threshold(self) -> float | None:
        """The image threshold recorded at export (None: fit one per run)."""
        value = (self.manifest.get("threshold") or {}).get("value")
        return None if value is None else float(value)

    def preprocess(self, image: Any) -> np.ndarray:
        """A Pillow RGB image -> (3, S, S) float32, exactly as ``zsad.data.squash_image`` computes it."""
        from PIL import Image

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resized = rgb.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        return np.ascontiguousarray(((x - self.mean) / self.std).transpose(2, 0, 1))

    def load(self, path: str | Path) -> np.ndarray:
        """Decode a file as ``zsad`` does (``zsad.data.io``: 16-bit, alpha, CMYK...) and preprocess it."""
        from zsad.data.io import load_image

        return self.preprocess(load_image(path))

    def predict_arrays(self, batch: np.ndarray) -> RuntimePrediction:
        """Normalised images (B, 3, S, S) float32 -> scores and maps."""
        score, amap = self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})
        return RuntimePrediction(np.asarray(score), np.asarray(amap))

    def predict(self, paths: list[str | Path], batch_size: int = 8) -> RuntimePrediction:
        """Image files -> scores and maps, in batches."""
        scores, maps = [], []
        for start in range(0, len(paths), batch_size):
            out = self.predict_arrays(np.stack([self.load(p) for p in paths[start : start + batch_size]]))
            scores.append(out.pred_score)
            maps.append(out.anomaly_map)
        return RuntimePrediction(np.concatenate(scores), np.concatenate(maps))
