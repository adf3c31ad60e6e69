"""Models made by ``zsad export``, run without torch: numpy, Pillow and onnxruntime or OpenVINO (``zsad[runtime]``).

- ``ExportedModel(folder)``: the checked model (``zsad.runtime.model``): ``predict(images)`` for PIL images or
  ``predict_arrays`` for preprocessed ones; ``predict_tiled`` scores a large image tile by tile
  (``zsad.runtime.tiles``, numpy cutting and stitching, as the torch path's ``--tiles``).
- ``zsad.runtime.detect``: ``zsad detect PATHS --model DIR``, the detect run of an exported model (resumable output
  folder, thresholds and rows decided by ``zsad.runs.decide`` as every front end decides them).

Nothing here imports torch (a test runs it with torch hidden; another installs ``zsad[runtime]`` alone).
"""

from zsad.runtime.model import (
    MANIFEST,
    OPENVINO_CONFIG,
    RUNTIMES,
    ExportedModel,
    Graph,
    RuntimePrediction,
    check_manifest,
    open_graph,
    read_manifest,
)

__all__ = [
    "MANIFEST",
    "OPENVINO_CONFIG",
    "RUNTIMES",
    "ExportedModel",
    "Graph",
    "RuntimePrediction",
    "check_manifest",
    "open_graph",
    "read_manifest",
]
