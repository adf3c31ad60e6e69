"""Run a model made by ``zsad export`` without torch: numpy, Pillow and onnxruntime or OpenVINO (``zsad[runtime]``).

A line PC runs the exported graph, not a research environment. This module must never import torch (a test runs
it with torch hidden): preprocessing is ``zsad.data.io`` decoding plus the same Pillow bicubic squash and the same
float32 normalisation as ``zsad.data.squash_image``, so inputs are identical to the torch path's.

Everything is checked before the first image: the manifest exists and parses, the model file's sha256 matches the
manifest, and the graph's input is the image size the manifest names. Each failure is one line naming the file.

An ONNX export runs on onnxruntime (default) or OpenVINO, which reads ONNX too; an OpenVINO IR export runs on
OpenVINO. OpenVINO is asked for fp32 inference: its CPU plugin would otherwise choose bf16 where the CPU has it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError
from zsad.fileio import sha256_file

MANIFEST = "manifest.json"
RUNTIMES = ("auto", "onnxruntime", "openvino")


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


# OpenVINO's CPU plugin would otherwise pick bf16 on CPUs that have it, silently changing the numbers.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass
class Graph:
    """An opened graph file: ``run(batch) -> (scores, maps)`` and its input shape (dimensions as text)."""

    run: Callable[[np.ndarray], tuple[Any, Any]]
    input_shape: list[str]


def open_graph(model: Path, runtime: str, providers: list[str] | None = None) -> Graph:
    """A graph file on onnxruntime (``providers``, default CPU) or OpenVINO (CPU, fp32 inference), checked to load.

    The one place either runtime is opened: the runtime, the export's self-check and the benchmarks use it.
    """
    if runtime == "openvino":
        try:
            import openvino as ov
        except ImportError as e:
            raise ZsadInputError("OpenVINO is not installed: pip install 'zsad[runtime]'") from e
        try:
            compiled = ov.Core().compile_model(str(model), "CPU", OPENVINO_CONFIG)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types for a bad file
            raise ZsadInputError(f"{model}: OpenVINO cannot load it: {' '.join(str(e).split())[:200]}") from None

        def run_openvino(batch: np.ndarray) -> tuple[Any, Any]:
            res = compiled(batch)
            return res[0], res[1]

        return Graph(run_openvino, [str(d) for d in compiled.inputs[0].get_partial_shape()])
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ZsadInputError("onnxruntime is not installed: pip install 'zsad[runtime]'") from e
    try:
        session = ort.InferenceSession(str(model), providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
        raise ZsadInputError(f"{model}: onnxruntime cannot load it: {' '.join(str(e).split())[:200]}") from None

    def run_onnxruntime(batch: np.ndarray) -> tuple[Any, Any]:
        score, amap = session.run(None, {"image": batch})
        return score, amap

    return Graph(run_onnxruntime, [str(d) for d in session.get_inputs()[0].shape])


class ExportedModel:
    """An exported model folder, checked on opening; ``predict`` takes image files or decoded arrays."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, runtime: str = "auto") -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        model = self.folder / str(self.manifest["model_file"])
        self._check_file(model, "model_sha256")
        if self.manifest.get("weights_file"):
            self._check_file(self.folder / str(self.manifest["weights_file"]), "weights_sha256")
        pre = self.manifest["preprocess"]
        self.image_size = int(pre["image_size"])
        self.mean = np.asarray(pre["mean"], dtype=np.float32)
        self.std = np.asarray(pre["std"], dtype=np.float32)
        fmt = str(self.manifest.get("format", "onnx"))
        if runtime not in RUNTIMES:
            raise ZsadInputError(f"--runtime {runtime}: use one of {', '.join(RUNTIMES)}")
        if fmt == "openvino" and runtime == "onnxruntime":
            raise ZsadInputError(f"{model}: an OpenVINO IR model runs on OpenVINO only (--runtime openvino)")
        self.runtime = "openvino" if fmt == "openvino" or runtime == "openvino" else "onnxruntime"
        graph = open_graph(model, self.runtime, providers)
        self._check_size(model, graph.input_shape)
        self._run = graph.run

    def _check_file(self, path: Path, key: str) -> None:
        if not path.is_file():
            raise ZsadInputError(f"{path}: missing (named by {self.folder / MANIFEST})")
        if sha256_file(path) != self.manifest.get(key):
            raise ZsadInputError(f"{path}: sha256 differs from {self.folder / MANIFEST} (changed or corrupt file)")

    def _check_size(self, model: Path, shape: list[str]) -> None:
        if shape[2:] != [str(self.image_size)] * 2:
            raise ZsadInputError(
                f"{model}: its input is [{', '.join(shape[2:])}] pixels but {self.folder / MANIFEST} says "
                f"{self.image_size}"
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
        score, amap = self._run(np.ascontiguousarray(batch, dtype=np.float32))
        return RuntimePrediction(np.asarray(score, dtype=np.float32), np.asarray(amap, dtype=np.float32))

    def predict(self, paths: list[str | Path], batch_size: int = 8) -> RuntimePrediction:
        """Image files -> scores and maps, in batches."""
        scores, maps = [], []
        for start in range(0, len(paths), batch_size):
            out = self.predict_arrays(np.stack([self.load(p) for p in paths[start : start + batch_size]]))
            scores.append(out.pred_score)
            maps.append(out.anomaly_map)
        return RuntimePrediction(np.concatenate(scores), np.concatenate(maps))
