"""Where runs happen: every front end (CLI, service, engines, the runtime) and Python users call these.

- ``detect(paths, out, method=..., ...)``: unlabeled images -> predictions.csv, maps, overlays (resumable);
  ``detect_job(spec, DetectJob(...))`` is the same run from a typed job (the CLI's entry).
- ``evaluate(DatasetSpec(...), out, methods=[...])``: labelled data -> per-category metrics (resumable).
- ``train(method, [DatasetSpec(...)], out)``: a trainable method's parts -> checkpoint folder (resumable).
- ``import_checkpoint(file, method, out, trained_on)``: an official release -> checkpoint folder.
- ``predict_set(method, images)``: one set of images scored with the set-level re-scoring ``evaluate`` applies.
- ``read_predictions(out)`` / ``load_map(out, row)``: a detect folder read back, from either engine.

The stages a front end composes: scoring (``score_dataset``, ``score_images``), references (``load_references``,
``split_references``, ``normals_of``), decisions (``decide``, ``Policy``, ``Normals``: ``zsad.runs.decide``) and
output folders (``DetectFolder``). Front ends import only these names, never the modules behind them
(docs/architecture.md). Names load on first use: the decision and folder stages need no torch, so the torch-free
runtime imports them as they are.

Each run takes ``reporter=`` (``zsad.progress``): silent by default, ``LoggingReporter()`` for logging. Every
input is checked before any model loads; output folders are locked for the run and resume only the same settings.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zsad.data.spec import DatasetSpec
    from zsad.runs.benchmark import benchmark
    from zsad.runs.build import RANDOM_WEIGHTS_WARNING, BackboneSpec, MethodSpec, method_key, route_checkpoints
    from zsad.runs.decide import REFERENCE_SPLIT, Decision, Normals, Policy, decide, memorised, parts_json, thresholds
    from zsad.runs.detect import (
        DetectJob,
        DetectResult,
        check_k_shot,
        detect,
        detect_job,
        load_references,
        normals_of,
        overlay_panel,
        reference_files,
        reference_order,
        split_references,
    )
    from zsad.runs.evaluate import evaluate
    from zsad.runs.folder import DetectFolder, conclude, write_manifest
    from zsad.runs.profiles import (
        THRESHOLD_RULES,
        backbone_record,
        check_profile_name,
        make_setup,
        profile_backbone,
        profile_policy,
        profile_settings,
        profile_source,
        profile_uses_normals,
        revise_setup,
        write_profile_references,
    )
    from zsad.runs.readback import load_map, read_predictions
    from zsad.runs.report import METRIC_KEYS, EvalResult, pct
    from zsad.runs.scoring import ScoredBatch, resize_map, score_dataset, score_images
    from zsad.runs.sets import import_checkpoint, predict_set
    from zsad.runs.shards import SHARD_SCHEMA, SHARDS, done_uris, encode_map, read_shards, write_shard
    from zsad.runs.tiles import TiledScore, score_tiled, score_tiled_set, setup_tiled
    from zsad.runs.train import prepare_method, train

_WHERE = {
    "DatasetSpec": "zsad.data.spec",
    **dict.fromkeys(
        ["RANDOM_WEIGHTS_WARNING", "BackboneSpec", "MethodSpec", "method_key", "route_checkpoints"], "zsad.runs.build"
    ),
    **dict.fromkeys(
        ["REFERENCE_SPLIT", "Decision", "Normals", "Policy", "decide", "memorised", "parts_json", "thresholds"],
        "zsad.runs.decide",
    ),
    **dict.fromkeys(
        [
            "DetectJob",
            "DetectResult",
            "check_k_shot",
            "detect",
            "detect_job",
            "load_references",
            "normals_of",
            "overlay_panel",
            "reference_files",
            "reference_order",
            "split_reference_files",
            "split_references",
            "tile_key",
        ],
        "zsad.runs.detect",
    ),
    "benchmark": "zsad.runs.benchmark",
    "evaluate": "zsad.runs.evaluate",
    **dict.fromkeys(["DetectFolder", "conclude", "write_manifest"], "zsad.runs.folder"),
    **dict.fromkeys(
        [
            "THRESHOLD_RULES",
            "backbone_record",
            "check_profile_name",
            "make_setup",
            "profile_backbone",
            "profile_policy",
            "profile_source",
            "profile_settings",
            "profile_tiles",
            "profile_uses_normals",
            "revise_setup",
            "write_profile_references",
        ],
        "zsad.runs.profiles",
    ),
    **dict.fromkeys(["load_map", "read_predictions"], "zsad.runs.readback"),
    **dict.fromkeys(["METRIC_KEYS", "EvalResult", "pct"], "zsad.runs.report"),
    **dict.fromkeys(["ScoredBatch", "resize_map", "score_dataset", "score_images"], "zsad.runs.scoring"),
    **dict.fromkeys(["import_checkpoint", "predict_set"], "zsad.runs.sets"),
    **dict.fromkeys(
        ["SHARD_SCHEMA", "SHARDS", "done_uris", "encode_map", "read_shards", "write_shard"], "zsad.runs.shards"
    ),
    **dict.fromkeys(
        ["TiledScore", "refuse_tiled_rescaling", "score_tiled", "score_tiled_set", "setup_tiled", "tiled_normals"],
        "zsad.runs.tiles",
    ),
    **dict.fromkeys(["prepare_method", "train"], "zsad.runs.train"),
}

__all__ = [
    "BackboneSpec",
    "DatasetSpec",
    "Decision",
    "DetectFolder",
    "DetectJob",
    "DetectResult",
    "EvalResult",
    "METRIC_KEYS",
    "MethodSpec",
    "Normals",
    "Policy",
    "RANDOM_WEIGHTS_WARNING",
    "REFERENCE_SPLIT",
    "SHARDS",
    "SHARD_SCHEMA",
    "ScoredBatch",
    "THRESHOLD_RULES",
    "TiledScore",
    "backbone_record",
    "benchmark",
    "check_k_shot",
    "check_profile_name",
    "conclude",
    "decide",
    "detect",
    "detect_job",
    "done_uris",
    "encode_map",
    "evaluate",
    "import_checkpoint",
    "load_map",
    "load_references",
    "make_setup",
    "memorised",
    "method_key",
    "normals_of",
    "overlay_panel",
    "parts_json",
    "pct",
    "predict_set",
    "prepare_method",
    "profile_backbone",
    "profile_policy",
    "profile_source",
    "profile_settings",
    "profile_tiles",
    "profile_uses_normals",
    "read_predictions",
    "read_shards",
    "reference_files",
    "reference_order",
    "refuse_tiled_rescaling",
    "resize_map",
    "revise_setup",
    "route_checkpoints",
    "score_dataset",
    "score_images",
    "score_tiled",
    "score_tiled_set",
    "setup_tiled",
    "split_reference_files",
    "split_references",
    "thresholds",
    "tile_key",
    "tiled_normals",
    "train",
    "write_manifest",
    "write_profile_references",
    "write_shard",
]


class _Face(types.ModuleType):
    """The package keeps its run functions when a submodule of the same name loads (``detect``, ``train``...).

    Importing ``zsad.runs.detect`` makes Python set the package attribute ``detect`` to that module; the functions
    are the public face, so such an assignment is dropped (the module stays reachable as ``sys.modules`` holds it,
    and ``from zsad.runs.detect import X`` works as ever).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == value.__name__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (torch only when the name needs it)."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'zsad.runs' has no attribute {name!r}")
