"""The export run: what ``zsad export`` checks, sets up and records around the graph (``zsad.export.graph``).

The method is built and set up as ``zsad detect`` would run it (references split the same way, thresholds from the
calibration images); the graph is checked against the torch path on the spot and the difference recorded. The
thresholds are not in the graph: the image threshold and the pixel threshold (on map values) live in
``manifest.json`` with their sources and can be changed later.

With ``tiles`` the graph is the same (a tile is an image at the model's size); the references are tiled into the
memory and the calibration images scored tiled, as ``zsad detect --tiles`` does, so the recorded thresholds are
tiled ones, and the manifest records the tiling as the runtime's default (``zsad.runtime.tiles``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zsad.errors import ZsadInputError
from zsad.export.graph import FORMATS, MODEL_FILES, OPSET, WEIGHTS_FILE, ExportedForward, write_graph
from zsad.methods.base import Method
from zsad.methods.options import config_record
from zsad.outputs import check_output_dir, mark_folder
from zsad.runtime import open_graph
from zsad.runtime.tiles import tile_record
from zsad.tiling import TileSpec

if TYPE_CHECKING:
    from zsad.runs import Normals
    from zsad.runs.build import BackboneSpec

MANIFEST = "manifest.json"
# how the tiled calibration images are scored: ``zsad detect``'s defaults, so the recorded thresholds are its own
CALIBRATION_BATCH = 8
CALIBRATION_MAX_MAP_SIZE = 4096
# bf16 graphs are not offered: onnxruntime's CPU and CUDA providers lack bf16 kernels for most ops.
EXPORT_PRECISIONS = ("fp32", "fp16")


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


def export_method(
    method: Method,
    out: Path,
    *,
    fmt: str = "onnx",
    threshold: dict[str, Any] | None = None,
    references: list[str] | None = None,
    check_batch: int = 2,
    pixel_threshold: dict[str, Any] | None = None,
    tiles: TileSpec | None = None,
) -> ExportResult:
    """Export a set-up method to ``out`` (``model.onnx`` + ``manifest.json``) and check it against torch.

    ``threshold`` and ``pixel_threshold`` are ``{"value": v, "source": s}`` (recorded, not baked in);
    ``references`` names the few-shot images whose features are baked in; ``tiles`` is recorded as the runtime's
    default tiling (the method set up, and the thresholds calibrated, tiled alike). The check runs ``check_batch``
    seeded random images through both paths and records the largest differences of scores and maps in the manifest.

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
    graph = write_graph(method, out, fmt, check_batch)
    parity = check_parity(out, fmt, graph.module, size, check_batch + 1)
    pre = method.backbone.preprocess
    manifest = {
        "format": fmt,
        **graph.files,
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
        "tiles": tile_record(tiles),
        "export_seconds": round(graph.seconds, 2),
        "parity": parity,
        "zsad_version": _version(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return ExportResult(out, manifest, parity)


PRECISION_SCOPE = (
    "image-tower block matmuls (attention projections, MLP) in this precision; patch embedding, residual stream, "
    "layer norms and the method's head in fp32"
)


def check_format(fmt: str, precision: str) -> None:
    """One line for an unknown format or a precision graphs are not exported in."""
    if fmt not in FORMATS:
        raise ZsadInputError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ZsadInputError(
            f"--precision {precision}: graphs are exported in {' or '.join(EXPORT_PRECISIONS)} (onnxruntime has "
            "few bf16 kernels); run bf16 on the torch path"
        )


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
    backbone: BackboneSpec | None = None,
    options: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    class_name: str | None = None,
    reference_dir: Path | None = None,
    k_shot: int | None = None,
    threshold: float | None = None,
    fmt: str = "onnx",
    seed: int = 0,
    tiles: TileSpec | None = None,
) -> ExportResult:
    """Build, set up and export a method as ``zsad detect`` would run it, with the thresholds it would use.

    References are split as in ``zsad detect`` (a seeded order; a few-shot method memorises the first ``k_shot``,
    the rest calibrate): the threshold is ``--threshold`` if given, else the 0.99-quantile of the calibration
    images' scores (``normal_quantile``), else none (the runtime then fits its rule to each run's scores). The
    pixel threshold is, as in ``zsad detect``, the 0.99-quantile of the calibration images' map maxima, else none
    (the runtime fits its rule to each run's map maxima). Every argument is checked before the model is built.

    ``tiles``: as ``zsad detect --tiles`` with the same references, the memorised ones are tiled into the memory
    (``setup_tiled``) and the calibration ones scored tiled (``tiled_normals``), so the thresholds are tiled ones;
    the manifest records the tiling, which ``zsad detect --model`` then applies unless told otherwise.
    """
    from zsad.methods import get_method_class
    from zsad.runs import (
        BackboneSpec,
        MethodSpec,
        Policy,
        check_k_shot,
        load_references,
        normals_of,
        prepare_method,
        reference_files,
        thresholds,
    )

    bb = BackboneSpec.of(backbone, seed=seed)
    check_format(fmt, bb.precision)
    if tiles is not None:
        if not isinstance(tiles, TileSpec):
            raise TypeError(f"tiles: expected a TileSpec or None, not {type(tiles).__name__}")
        tiles.check()
    cls = get_method_class(method_name)
    check_k_shot(k_shot, reference_dir, cls)
    check_exportable(cls)  # before anything else: no point asking for a checkpoint
    spec = MethodSpec(method_name, bb, dict(options or {}), checkpoint).validate()
    check_exportable(cls, spec.config)
    check_output_dir(Path(out), kind="export")
    ref_files = reference_files(Path(reference_dir)) if reference_dir is not None else []
    method = spec.build()
    if tiles is None:
        refs, calib, order = load_references(method, ref_files, k_shot, seed)
        used = [str(ref_files[i]) for i in order[: len(refs)]] if refs is not None else []
        prepare_method(method, class_name, refs)
        normals = normals_of(method, calib)
    else:
        used, normals = _setup_tiled(method, class_name, ref_files, k_shot, seed, tiles)
    none = np.array([])  # no scored set at export: manual, else the references' normal quantile, else none
    thr, pthr = thresholds(none, none, normals, Policy(threshold))

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
        tiles=tiles,
    )


def _setup_tiled(
    method: Method, class_name: str | None, ref_files: list[Path], k_shot: int | None, seed: int, tiles: TileSpec
) -> tuple[list[str], Normals | None]:
    """(memorised reference files, tiled calibration normals) with ``method`` set up tiled, as ``run_detect`` does.

    The references are split in the same seeded order as untiled (``load_reference_images``).
    """
    from zsad.runs import Normals, reference_order, setup_tiled, tiled_normals
    from zsad.runs.detect import load_reference_images

    refs, calib = load_reference_images(method, ref_files, k_shot, seed)
    setup_tiled(method, class_name, refs, tiles)
    order = reference_order(len(ref_files), seed)
    used = [str(ref_files[i]) for i in order[: len(refs)]]  # the first ones of the seeded order are memorised
    if not calib:
        return used, None
    scores, maxima = tiled_normals(method, calib, tiles, CALIBRATION_BATCH, CALIBRATION_MAX_MAP_SIZE)
    return used, Normals(scores, maxima)
