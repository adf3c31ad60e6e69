"""Where runs happen: every front end (CLI, service, engines) and Python users call these.

- ``detect(paths, out, method=..., ...)``: unlabeled images -> predictions.csv, maps, overlays (resumable).
- ``evaluate(DatasetSpec(...), out, methods=[...])``: labelled data -> per-category metrics (resumable).
- ``train(method, [DatasetSpec(...)], out)``: a trainable method's parts -> checkpoint folder (resumable).
- ``import_checkpoint(file, method, out, trained_on)``: an official release -> checkpoint folder.
- ``predict_set(method, images)``: one set of images scored with the set-level re-scoring ``evaluate`` applies.
- ``read_predictions(out)`` / ``load_map(out, row)``: a detect folder read back, from either engine.

Each takes ``reporter=`` (``zsad.progress``): silent by default, ``LoggingReporter()`` for logging. Every input is
checked before any model loads; output folders are locked for the run and resume only the same settings.
"""

from zsad.data.spec import DatasetSpec
from zsad.runs.build import BackboneSpec, MethodSpec
from zsad.runs.detect import DetectJob, DetectResult, detect
from zsad.runs.evaluate import evaluate
from zsad.runs.readback import load_map, read_predictions
from zsad.runs.report import EvalResult
from zsad.runs.sets import import_checkpoint, predict_set
from zsad.runs.train import prepare_method, train

__all__ = [
    "BackboneSpec",
    "DatasetSpec",
    "DetectJob",
    "DetectResult",
    "EvalResult",
    "MethodSpec",
    "detect",
    "evaluate",
    "import_checkpoint",
    "load_map",
    "predict_set",
    "read_predictions",
    "prepare_method",
    "train",
]
