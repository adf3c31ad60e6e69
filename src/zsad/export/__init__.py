"""``zsad export``: one graph from a normalised image batch to ``pred_score`` and ``anomaly_map``, plus a manifest.

Why the method's own ``predict`` is exported instead of a re-written twin: the graph then computes exactly what the
torch path computes (the export is checked against it on the spot, and the difference is recorded). Text features,
few-shot reference features and trained parts are tensors of the set-up method, so they become constants of the
graph. The batch axis is dynamic; the image size is fixed (the manifest names it and the runtime checks it).

The thresholds are not in the graph: the image threshold and the pixel threshold (on map values) live in
``manifest.json`` with their sources and can be changed later.

``--format openvino`` converts the same ONNX graph to OpenVINO IR (``model.xml`` + ``model.bin``); ``--precision
fp16`` exports the image tower's block matmuls in fp16 (``ClipBackbone.set_precision``: casts are explicit, so the
graph holds them) while the residual stream, layer norms and the method's head stay fp32.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsad.errors import ZsadInputError
from zsad.fileio import sha256_file
from zsad.methods.base import Method
from zsad.methods.options import config_record
from zsad.outputs import check_output_dir, mark_folder
from zsad.runtime import open_graph

FORMATS = ("onnx", "openvino")
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
WEIGHTS_FILE = "model.bin"  # OpenVINO IR's weights, beside model.xml
MANIFEST = "manifest.json"
OPSET = 18
# bf16 graphs are not offered: onnxruntime's CPU and CUDA providers lack bf16 kernels for most ops.
EXPORT_PRECISIONS = ("fp32", "fp16")


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
class ExportResult:
    """What ``export_method`` wrote and measured."""

    out: Path
    manifest: dict[str, Any]
    parity: dict[str, float] = field(default_factory=dict)


def check_exportable(cls: type[Method], config: Any = None) -> None:
    """One line for a method (its ``export_refusal``) or configuration whose forward is not one per-image graph."""
    if cls.export_refusal is not None:
        raise ZsadInputError(f"zsad export: method {cls.name} cannot be exported yet: {cls.export_refusal}")
    if config is not None and cls.transductive_for(config):
        raise ZsadInputError(
            f"zsad export: method {cls.name} with these options re-scales scores over the whole test set "
            "(transductive), which a per-image graph cannot do; export it without that option"
        )


def refused() -> dict[str, str]:
    """{method: why} for every registered method ``zsad export`` refuses (its class's ``export_refusal``)."""
    from zsad.methods import get_method_class, list_methods

    return {n: why for n in list_methods() if (why := get_method_class(n).export_refusal) is not None}


def __getattr__(name: str) -> Any:
    """``REFUSED`` (read by benchmarks/bench_export.py) is ``refused()``: built from the classes when asked."""
    if name == "REFUSED":
        return refused()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def export_method(
    method: Method,
    out: Path,
    *,
    fmt: str = "onnx",
    threshold: dict[str, Any] | None = None,
    references: list[str] | None = None,
    check_batch: int = 2,
    pixel_threshold: dict[str, Any] | None = None,
) -> ExportResult:
    """Export a set-up method to ``out`` (``model.onnx`` + ``manifest.json``) and check it against torch.

    ``threshold`` and ``pixel_threshold`` are ``{"value": v, "source": s}`` (recorded, not baked in);
    ``references`` names the few-shot images whose features are baked in. The check runs ``check_batch`` seeded
    random images through both paths and records the largest differences of scores and maps in the manifest.

    Re-exporting into an export folder first removes its manifest and model files, so a half-written export is
    never described by the old manifest and a model file of another format never stays behind.
    """
    check_format(fmt, method.backbone.precision)
    check_exportable(type(method), method.config)
    if method.class_name is None:
        raise ZsadInputError("zsad export: set the method up (class name, references) before exporting")
    out = Path(out)
    mark_folder(out, "export", "export")  # a foreign folder is refused, never overwritten
    for stale in (MANIFEST, *MODEL_FILES.values(), WEIGHTS_FILE):
        (out / stale).unlink(missing_ok=True)
    size = method.image_size
    wrapper = ExportedForward(method).eval()
    example = torch.randn(check_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
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
    seconds = time.perf_counter() - t0
    parity = check_parity(out, fmt, wrapper, size, check_batch + 1)
    pre = method.backbone.preprocess
    manifest = {
        "format": fmt,
        **files,
        "opset": OPSET,
        "precision": method.backbone.precision,
        "precision_scope": PRECISION_SCOPE if method.backbone.precision != "fp32" else "everything fp32",
        "inputs": {"image": ["batch", 3, size, size]},
        "outputs": {"pred_score": ["batch"], "anomaly_map": ["batch", size, size]},
        "preprocess": {
            "image_size": size,
            "resize": "squash, PIL bicubic",
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
        "method": method.name,
        "options": config_record(method.config),
        "class_name": method.class_name,
        "k_shot": method.k_shot,
        "references": references or [],
        "backbone": method.backbone.manifest(),
        "transductive": method.is_transductive,
        "threshold": threshold or {"value": None, "source": "none"},
        "pixel_threshold": pixel_threshold or {"value": None, "source": "none"},
        "export_seconds": round(seconds, 2),
        "parity": parity,
        "zsad_version": _version(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return ExportResult(out, manifest, parity)


PRECISION_SCOPE = (
    "image-tower block matmuls (attention projections, MLP) in this precision; patch embedding, residual stream, "
    "layer norms and the method's head in fp32"
)


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


def check_format(fmt: str, precision: str) -> None:
    """One line for an unknown format or a precision graphs are not exported in."""
    if fmt not in FORMATS:
        raise ZsadInputError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ZsadInputError(
            f"--precision {precision}: graphs are exported in {' or '.join(EXPORT_PRECISIONS)} (onnxruntime has "
            "few bf16 kernels); run bf16 on the torch path"
        )


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


def check_parity(folder: Path, fmt: str, wrapper: ExportedForward, size: int, batch: int) -> dict[str, float]:
    """Largest |torch - exported| of scores and maps on seeded random images (a batch size not exported with)."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        score, amap = wrapper(x.to(wrapper.method.backbone.device))
    runtime = "openvino" if fmt == "openvino" else "onnxruntime"
    got_score, got_map = open_graph(folder / MODEL_FILES[fmt], runtime).run(x.numpy())
    return {
        "batch": float(batch),
        "pred_score_max_abs": float(np.abs(np.asarray(got_score) - score.cpu().numpy()).max()),
        "anomaly_map_max_abs": float(np.abs(np.asarray(got_map) - amap.cpu().numpy()).max()),
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zsad")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def export_run(
    method_name: str,
    out: Path,
    *,
    backbone: Any = None,
    options: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    class_name: str | None = None,
    reference_dir: Path | None = None,
    k_shot: int = 0,
    threshold: float | None = None,
    fmt: str = "onnx",
    seed: int = 0,
) -> ExportResult:
    """Build, set up and export a method as ``zsad detect`` would run it, with the thresholds it would use.

    References are split as in ``zsad detect`` (a seeded order; a few-shot method memorises the first ``k_shot``,
    the rest calibrate): the threshold is ``--threshold`` if given, else the 0.99-quantile of the calibration
    images' scores (``normal_quantile``), else none (the runtime then fits its rule to each run's scores). The
    pixel threshold is, as in ``zsad detect``, the 0.99-quantile of the calibration images' map maxima, else none
    (the runtime fits its rule to each run's map maxima). Every argument is checked before the model is built.
    """
    from zsad.methods import get_method_class
    from zsad.runs.build import BackboneSpec, MethodSpec
    from zsad.runs.detect import calibrate, check_k_shot, load_references, reference_files
    from zsad.runs.train import prepare_method
    from zsad.thresholds import choose_threshold

    check_format(fmt, (backbone or BackboneSpec()).precision)
    cls = get_method_class(method_name)
    check_k_shot(k_shot, reference_dir, cls)
    check_exportable(cls)  # before anything else: no point asking for a checkpoint
    spec = MethodSpec(method_name, backbone or BackboneSpec(seed=seed), dict(options or {}), checkpoint).validate()
    check_exportable(cls, spec.config)
    check_output_dir(Path(out), kind="export")
    ref_files = reference_files(Path(reference_dir)) if reference_dir is not None else []
    method = spec.build()
    refs, calib, order = load_references(method, ref_files, k_shot, seed)
    used = [str(ref_files[i]) for i in order[: len(refs)]] if refs is not None else []
    prepare_method(method, class_name, refs)
    calib_scores, calib_max = calibrate(method, calib)
    thr = choose_threshold(np.array([]), normal_scores=calib_scores, manual=threshold)
    pthr = choose_threshold(np.array([]), normal_scores=calib_max)

    def record(t: Any, what: str) -> dict[str, Any]:
        if t.source == "none":
            return {"value": None, "source": f"none (the runtime fits its --threshold-rule to each run's {what})"}
        return {"value": t.value, "source": t.source}

    return export_method(
        method,
        Path(out),
        fmt=fmt,
        threshold=record(thr, "scores"),
        references=used,
        pixel_threshold=record(pthr, "map maxima"),
    )
