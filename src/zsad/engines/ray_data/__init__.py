"""``zsad detect --engine ray``: the same detect run, scaled out on Ray Data.

Pipeline: the driver lists image URIs (strings only) and drops those already written; CPU tasks read and decode each
file and squash it to the model's square (uint8; kept at full resolution with ``--tiles``); an actor pool (one built
model per actor) scores batches, or whole groups for set-level methods (``--group-by``), and writes each batch as
one Parquet shard atomically; the driver then reads the scores back (not the maps) for the thresholds and writes
``predictions.parquet``, ``predictions.csv``, ``errors.csv`` and ``manifest.json``. Ray handles backpressure: images
are never all in memory.

Exactly once: a shard is complete or absent, a rerun skips the URIs it finds in complete shards, and a URI seen
twice (a retried task) is read once, the newest shard winning. Every listed input ends as one row or one error
row; rows of local inputs that are gone on a rerun are kept and marked ``input_missing`` (as ``zsad detect``
does). The output folder must be visible to every worker (a shared file system, or a ``pyarrow`` file system URI;
only local paths are tested here).
"""

from zsad.engines.ray_data.driver import TABLE_FIELDS, _actor_backbone, detect_ray, group_notes
from zsad.engines.ray_data.options import INSTALL, RayOptions, import_ray
from zsad.runs import load_map

__all__ = [
    "INSTALL",
    "TABLE_FIELDS",
    "RayOptions",
    "_actor_backbone",
    "detect_ray",
    "group_notes",
    "import_ray",
    "load_map",
]
