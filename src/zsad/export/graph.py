"""The exported graph: the method's own forward traced once into ONNX (dynamic batch), optionally OpenVINO IR.

Why the method's own ``predict`` is traced instead of a re-written twin: the graph then computes exactly what the
torch path computes. Text features, few-shot reference features and trained parts are tensors of the set-up method,
so they become constants of the graph. The image size is fixed (the manifest names it and the runtime checks it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsad.errors import ZsadInputError
from zsad.fileio import sha256_file
from zsad.methods.base import Method

FORMATS = ("onnx", "openvino")
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
WEIGHTS_FILE = "model.bin"  # OpenVINO IR's weights, beside model.xml
OPSET = 18


class ExportedForward(nn.Module):
    """images (B, 3, S, S) normalised -> (pred_score (B,), anomaly_map (B, S, S)) through the method's ``predict``."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The method's own prediction (``_predict``: the size check of ``predict`` is the manifest's job)."""
        pred = self.method._predict(images)
        return pred.pred_score.float(), pred.anomaly_map.float()


@dataclass
class Graph:
    """A written graph: the module traced (the parity check runs it again) and the manifest's file fields."""

    module: ExportedForward
    files: dict[str, Any]  # model file and its sha256 (and OpenVINO's weights file with its own)
    seconds: float


def write_graph(method: Method, out: Path, fmt: str, example_batch: int) -> Graph:
    """Trace ``method`` on ``example_batch`` seeded random images into ``out`` in ``fmt``."""
    size = method.image_size
    wrapper = ExportedForward(method).eval()
    example = torch.randn(example_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    example = example.to(method.backbone.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["pred_score", "anomaly_map"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=OPSET,
            external_data=False,
        )
    assert program is not None
    share_repeated_weights(program.model)
    onnx_path = out / MODEL_FILES["onnx"]
    program.save(str(onnx_path))
    files: dict[str, Any] = {"model_file": MODEL_FILES[fmt]}
    if fmt == "openvino":
        files.update(_to_openvino(onnx_path, out))
    files["model_sha256"] = sha256_file(out / MODEL_FILES[fmt])
    return Graph(wrapper, files, time.perf_counter() - t0)


def share_repeated_weights(model: Any, min_elements: int = 1024) -> int:
    """Keep one copy of each repeated weight tensor in the graph; returns how many copies were dropped.

    Why: the exporter writes a constant per use, so a block run twice (WinCLIP's full pass and its window passes,
    the v-v twin of SDP's attention) stores its weights twice: a WinCLIP graph was 2.1x the size it needs, and a
    ViT-L one would pass protobuf's 2 GiB limit. Only tensors of ``min_elements`` or more are shared (weights, text
    features); small shape constants are left as the exporter wrote them.
    """
    import hashlib

    import onnx_ir as ir

    graph = model.graph
    first: dict[tuple[str, tuple[int, ...], str], Any] = {}
    dropped = 0
    for name, value in list(graph.initializers.items()):
        if value.is_graph_input() or value.is_graph_output() or value.const_value is None:
            continue
        arr = np.ascontiguousarray(value.const_value.numpy())
        if arr.size < min_elements:
            continue
        key = (str(arr.dtype), tuple(arr.shape), hashlib.sha256(arr.tobytes()).hexdigest())
        if key not in first:
            first[key] = value
            continue
        ir.convenience.replace_all_uses_with(value, first[key])
        del graph.initializers[name]
        dropped += 1
    return dropped


def _to_openvino(onnx_path: Path, out: Path) -> dict[str, Any]:
    """ONNX -> OpenVINO IR beside it (the ONNX file is removed): the weights file and its hash for the manifest."""
    try:
        import openvino as ov
    except ImportError as e:
        raise ZsadInputError("--format openvino needs OpenVINO: pip install 'zsad[export]'") from e
    model = ov.convert_model(str(onnx_path))
    # the weights keep the graph's own types: fp16 only where --precision fp16 put it
    ov.save_model(model, str(out / MODEL_FILES["openvino"]), compress_to_fp16=False)
    onnx_path.unlink()
    weights = out / WEIGHTS_FILE
    return {"weights_file": weights.name, "weights_sha256": sha256_file(weights)}
