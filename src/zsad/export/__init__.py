"""``zsad export``: one graph from a normalised image batch to ``pred_score`` and ``anomaly_map``, plus a manifest.

``zsad.export.graph`` traces the set-up method's own forward into the graph (ONNX, or OpenVINO IR converted from
it); ``zsad.export.run`` is the command around it: checks, references and thresholds as ``zsad detect``, the parity
check against torch, and ``manifest.json``. A method that cannot be one per-image graph says why in its class's
``export_refusal``.

``--precision fp16`` exports the image tower's block matmuls in fp16 (``ClipBackbone.set_precision``: casts are
explicit, so the graph holds them) while the residual stream, layer norms and the method's head stay fp32.
"""

from __future__ import annotations

from zsad.export.graph import (
    FORMATS,
    MODEL_FILES,
    OPSET,
    WEIGHTS_FILE,
    ExportedForward,
    Graph,
    share_repeated_weights,
    write_graph,
)
from zsad.export.run import (
    EXPORT_PRECISIONS,
    MANIFEST,
    PRECISION_SCOPE,
    ExportResult,
    check_exportable,
    check_format,
    check_parity,
    export_method,
    export_run,
    refused,
)

__all__ = [
    "EXPORT_PRECISIONS",
    "FORMATS",
    "MANIFEST",
    "MODEL_FILES",
    "OPSET",
    "PRECISION_SCOPE",
    "WEIGHTS_FILE",
    "ExportResult",
    "ExportedForward",
    "Graph",
    "check_exportable",
    "check_format",
    "check_parity",
    "export_method",
    "export_run",
    "refused",
    "share_repeated_weights",
    "write_graph",
]
