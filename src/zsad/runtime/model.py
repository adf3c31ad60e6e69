"""Run a model made by ``zsad export`` without torch: numpy, Pillow and onnxruntime or OpenVINO (``zsad[runtime]``).

A line PC runs the exported graph, not a research environment. This module must never import torch (a test runs
it with torch hidden): preprocessing is ``zsad.data.io`` decoding plus the same Pillow bicubic squash and the same
float32 normalisation as ``zsad.data.squash_image``, so inputs are identical to the torch path's.

Everything is checked before the first image: the manifest exists and parses, every field the runtime reads has
the type and range it needs (a hand-edited threshold of ``"high"`` is named, not a traceback), the model file's
sha256 matches the manifest, and the graph's input is the image size the manifest names. Each failure is one line
naming the file (and the field).

An ONNX export runs on onnxruntime (default) or OpenVINO, which reads ONNX too; an OpenVINO IR export runs on
OpenVINO. OpenVINO is asked for fp32 inference: its CPU plugin would otherwise choose bf16 where the CPU has it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.errors import ZsadInputError
from zsad.fileio import read_json_object, sha256_file

if TYPE_CHECKING:
    from zsad.runtime.tiles import RuntimeTiledScore
    from zsad.tiling import TileSpec

MANIFEST = "manifest.json"
RUNTIMES = ("auto", "onnxruntime", "openvino")


@dataclass
class RuntimePrediction:
    """Scores (B,) and maps (B, S, S) at the model's resolution, as the exported graph returns them."""

    pred_score: np.ndarray
    anomaly_map: np.ndarray


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export manifest, checked for the fields the runtime reads (``check_manifest``)."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise ZsadInputError(f"--model {folder}: folder not found")
    manifest = read_json_object(path, " (not a folder written by `zsad export`)", "a `zsad export` manifest")
    missing = [k for k in ("model_file", "model_sha256", "preprocess", "method") if k not in manifest]
    if missing:
        raise ZsadInputError(f"{path}: lacks {', '.join(missing)} (not a `zsad export` manifest)")
    check_manifest(manifest, path)
    return dict(manifest)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Each field the runtime reads has its type and range, or one line names the manifest, the field and the value.

    Why here: a manifest is meant to be edited by hand (the thresholds), so a typo must not surface as a traceback
    halfway through a run.
    """

    def bad(field: str, value: Any, want: str) -> ZsadInputError:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ZsadInputError(f"{path}: {field} is {shown}, must be {want} (edit it, or export the model again)")

    for key in ("model_file", "model_sha256", "method"):
        if not isinstance(manifest[key], str) or not manifest[key]:
            raise bad(key, manifest[key], "a non-empty string")
    for key in ("weights_file", "weights_sha256"):
        if manifest.get(key) is not None and (not isinstance(manifest[key], str) or not manifest[key]):
            raise bad(key, manifest[key], "a non-empty string")
    if manifest.get("format", "onnx") not in ("onnx", "openvino"):
        raise bad("format", manifest["format"], '"onnx" or "openvino"')
    pre = manifest["preprocess"]
    if not isinstance(pre, dict):
        raise bad("preprocess", pre, "an object with image_size, mean and std")
    size = pre.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise bad("preprocess.image_size", size, "a whole number of pixels >= 1")
    for key in ("mean", "std"):
        v = pre.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) for x in v):
            raise bad(f"preprocess.{key}", v, "a list of 3 finite numbers (R, G, B)")
    if not all(x > 0 for x in pre["std"]):
        raise bad("preprocess.std", pre["std"], "3 numbers > 0 (the images are divided by them)")
    for key in ("threshold", "pixel_threshold"):
        t = manifest.get(key)
        if t is None:
            continue
        if not isinstance(t, dict):
            raise bad(key, t, 'an object such as {"value": 0.5, "source": "manual"}')
        if t.get("value") is not None and not _is_number(t["value"]):
            raise bad(f"{key}.value", t["value"], "a finite number, or null (fit one per run)")
        if not isinstance(t.get("source", ""), str):
            raise bad(f"{key}.source", t["source"], "a string")
    from zsad.runtime.tiles import spec_of_record

    spec_of_record(manifest.get("tiles"), path)  # the recorded default tiling (``zsad export --tiles``)


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
            raise ZsadInputError("OpenVINO is not installed: pip install 'zsad[openvino]'") from e
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
        return self._recorded("threshold")[0]

    @property
    def threshold_source(self) -> str:
        """The rule that chose ``threshold`` (kept from the export, or the one a hand edit names)."""
        return self._recorded("threshold")[1]

    @property
    def pixel_threshold(self) -> tuple[float | None, str]:
        """The pixel threshold (on map values) recorded at export and its source (None: fit one per run).

        Exports made before the pixel threshold was recorded have none: the runtime then fits one per run.
        """
        return self._recorded("pixel_threshold")

    @property
    def tiles(self) -> TileSpec | None:
        """The tiling recorded at export (``zsad export --tiles``): the runtime's default; None: untiled."""
        from zsad.runtime.tiles import spec_of_record

        return spec_of_record(self.manifest.get("tiles"), self.folder / MANIFEST)

    def _recorded(self, key: str) -> tuple[float | None, str]:
        record = self.manifest.get(key) or {}
        value = record.get("value")
        return (None if value is None else float(value)), str(record.get("source") or "manifest")

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

    def predict_tiled(
        self, image: Any, spec: TileSpec, batch_size: int = 8, max_map_size: int = 4096
    ) -> RuntimeTiledScore:
        """One PIL image scored tile by tile and stitched, as ``zsad.runs.tiles.score_tiled`` does with torch."""
        from zsad.runtime.tiles import predict_tiled

        return predict_tiled(self, image, spec, batch_size, max_map_size)
