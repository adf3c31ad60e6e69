"""``zsad detect --engine ray``: the same detect run, scaled out on Ray Data.

Pipeline: the driver lists image URIs (strings only) and drops those already written; CPU tasks read and decode
each file and squash it to the model's square (uint8); an actor pool (one built model per actor) scores batches,
or whole groups for set-level methods (``--group-by``), and writes each batch as one Parquet shard atomically;
the driver then reads the scores back (not the maps) for the thresholds and writes ``predictions.parquet``,
``predictions.csv``, ``errors.csv`` and ``manifest.json``. Ray handles backpressure: images are never all in memory.

Exactly once: a shard is complete or absent, a rerun skips the URIs it finds in complete shards, and a URI seen
twice (a retried task) is read once, the newest shard winning. Every listed input ends as one row or one error
row; rows of local inputs that are gone on a rerun are kept and marked ``input_missing`` (as ``zsad detect``
does). The output folder must be visible to every worker (a shared file system, or a ``pyarrow`` file system URI;
only local paths are tested here).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError
from zsad.outputs import (
    DETECT_FIELDS,
    RunLock,
    check_out_not_input,
    check_output_dir,
    check_run_key,
    claim_output,
    csv_text,
    mark_missing,
    nothing_scored,
)
from zsad.progress import Reporter, reporter, using
from zsad.runs import (
    BackboneSpec,
    DetectJob,
    DetectResult,
    MethodSpec,
    conclude,
    decide,
    normals_of,
    prepare_method,
    reference_order,
    split_references,
    write_manifest,
)

SHARDS = "shards"
SHARD_SCHEMA = {
    "image_uri": "string", "group": "string", "pred_score": "float64", "map_min": "float64", "map_max": "float64",
    "image_size": "string", "map_size": "string", "score_parts": "string", "anomaly_map": "binary", "error": "string",
    "model_id": "string", "map_encoding": "string", "map_lo": "float64", "map_hi": "float64", "notes": "string",
}  # fmt: skip  # column -> pyarrow type of every shard (the last four since issue 25; older shards lack them)
TABLE_FIELDS = [*DETECT_FIELDS, "group", "model_id"]  # predictions.csv / .parquet: detect's columns, then Ray's
TABLE_TYPES = {
    "pred_score": "float64", "pred_label": "int64", "threshold": "float64", "pixel_threshold": "float64",
    "map_min": "float64", "map_max": "float64", "input_missing": "int64",
}  # fmt: skip  # predictions.parquet column types (strings otherwise; an empty cell is null)
SUMMARY = ("image_uri", "group", "error", "notes")  # the columns an actor returns to the driver
DECODE_CPUS = 0.5  # reserved per decoding task
INSTALL = "--engine ray needs Ray Data: pip install 'zsad[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: cluster address, actors, GPUs per actor, grouping of set-level methods."""

    address: str | None = None  # None: a local Ray on this machine; "auto" or "ray://host:10001" for a cluster
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: 1, or less so that decoding tasks still fit beside the actors
    group_by: str | None = None  # "parent" or "csv:COLUMN" (a column of the --list CSV)
    map_dtype: str = "float16"  # float16: 16 bits a value (``range16``, levels of the map's range); float32: exact

    @property
    def map_encoding(self) -> str:
        """How new shards store maps (``zsad.runs.readback.MAP_ENCODINGS``)."""
        return "range16" if self.map_dtype == "float16" else "float32"

    def validate(self) -> None:
        """One line per bad setting."""
        from zsad.limits import ACTORS

        ACTORS.check(self.actors)
        if self.gpus_per_actor < 0 or (self.cpus_per_actor is not None and self.cpus_per_actor <= 0):
            raise ZsadInputError("--gpus-per-actor must be >= 0 and --cpus-per-actor > 0")
        if self.group_by is not None and self.group_by != "parent" and not self.group_by.startswith("csv:"):
            raise ZsadInputError(f"--group-by {self.group_by}: use 'parent' or 'csv:COLUMN'")
        if self.map_dtype not in ("float16", "float32"):
            raise ZsadInputError(f"--map-dtype {self.map_dtype}: use float16 or float32")


def import_ray() -> Any:
    """``ray`` and ``ray.data``, or the one line saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ZsadInputError(INSTALL) from None
    return ray


# ---------------------------------------------------------------------------------------------- inputs
def _is_uri(item: str) -> bool:
    return "://" in item and not item.startswith("file://")


def _local(item: str) -> str:
    return item[len("file://") :] if item.startswith("file://") else item


def list_inputs(job: DetectJob, group_by: str | None, skipped: Any = None) -> list[tuple[str, str]]:
    """(URI, group) of every input: local files, folders and globs as ``zsad detect`` lists them, plus URIs.

    Folder listings never enter the output folder, and record what they pass over in ``skipped``.
    """
    from zsad.data.datasets import collect_images

    items: list[str] = [_local(p) for p in job.paths]
    column = group_by[4:] if group_by and group_by.startswith("csv:") else None
    groups: dict[str, str] = {}
    if job.list_file is not None:
        listed = _read_list(job.list_file, column)
        items += [u for u, _ in listed]
        groups = {os.path.abspath(_local(u)) if not _is_uri(u) else u: g for u, g in listed}
    elif column is not None:
        raise ZsadInputError(f"--group-by {group_by}: needs --list FILE.csv with a column {column!r}")
    if not items:
        raise ZsadInputError("no images given: pass files, folders or glob patterns, or --list FILE")
    remote = [u for u in items if _is_uri(u)]
    local = [u for u in items if not _is_uri(u)]
    check_out_not_input(job.out, local)
    found = collect_images(local, job.recursive, job.image_glob, skipped, exclude=[job.out]) if local else []
    uris = [str(p) for p in found]
    uris += _expand_remote(remote, job.recursive)
    out = []
    for u in uris:
        if column is not None:
            g = groups.get(u)
            if g is None:
                raise ZsadInputError(f"{u}: found through a folder of --list, so it has no {column!r} value")
        else:
            g = u.rsplit("/", 1)[0] if group_by == "parent" else ""
        out.append((u, g))
    return out


def _read_list(path: Path, column: str | None) -> list[tuple[str, str]]:
    """A list file (one path per line) or, for ``--group-by csv:COLUMN``, a CSV with ``image_path`` and COLUMN."""
    from zsad.data.datasets import list_entry, read_list_file

    if column is None:
        return [(u, "") for u in read_list_file(path)]
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0] or "image_path" not in rows[0]:
        raise ZsadInputError(f"{path}: --group-by csv:{column} needs a CSV with columns image_path and {column}")
    return [(list_entry(r["image_path"], path.parent), r[column] or "") for r in rows]


def _expand_remote(uris: Sequence[str], recursive: bool) -> list[str]:
    """Files behind URIs of any file system pyarrow knows (``s3://``, ``gs://``...): folders listed, not read."""
    if not uris:
        return []
    from pyarrow import fs as pafs

    from zsad.data import is_image_file

    out = []
    for uri in uris:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        scheme = uri.split("://", 1)[0]
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive))
            out += sorted(
                f"{scheme}://{f.path}" for f in found if f.type == pafs.FileType.File and is_image_file(f.path)
            )
        elif info.type == pafs.FileType.File:
            out.append(uri)
        else:
            raise ZsadInputError(f"{uri}: not found")
    return out


def _read_bytes(uri: str) -> bytes:
    if _is_uri(uri):
        from pyarrow import fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as f:
            return bytes(f.read())
    return Path(uri).read_bytes()


# ---------------------------------------------------------------------------------------------- stages
def decode_batch(batch: dict[str, np.ndarray], image_size: int) -> dict[str, Any]:
    """CPU task: read and decode each file, squash it to the model's square as uint8 (normalised by the actor)."""
    from PIL import Image

    from zsad.data import decode_image

    images, heights, widths, errors = [], [], [], []
    for uri in batch["image_uri"]:
        uri = str(uri)
        try:
            try:
                data = _read_bytes(uri)
            except OSError as e:
                raise ZsadInputError(f"{uri}: cannot read image: {e.strerror or type(e).__name__}") from None
            img, _ = decode_image(data, uri)
            resized = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
            images.append(np.asarray(resized, dtype=np.uint8))
            widths.append(img.size[0])
            heights.append(img.size[1])
            errors.append("")
        except ZsadInputError as e:
            images.append(np.zeros((image_size, image_size, 3), np.uint8))
            heights.append(0)
            widths.append(0)
            errors.append(" ".join(str(e).split()))
    return {
        "image_uri": np.asarray([str(u) for u in batch["image_uri"]], dtype=object),
        "group": np.asarray([str(g) for g in batch["group"]], dtype=object),
        "pixels": np.stack(images),
        "height": np.asarray(heights, dtype=np.int64),
        "width": np.asarray(widths, dtype=np.int64),
        "error": np.asarray(errors, dtype=object),
    }


def normalize(pixels: np.ndarray | Any, method: Any) -> Any:
    """Squashed uint8 (N, S, S, 3) -> the model's normalised float input (N, 3, S, S), as ``squash_image`` makes it."""
    import torch

    pre = method.backbone.preprocess
    x = torch.as_tensor(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)


class Scorer:
    """Actor: one model built once, scoring batches (or whole groups) and writing each as one Parquet shard."""

    def __init__(self, setup: dict[str, Any]) -> None:
        from zsad.limits import allowing_large

        with allowing_large(bool(setup.get("allow_large"))):
            spec = MethodSpec(
                setup["method"], BackboneSpec(**setup["backbone"]), setup["options"],
                Path(setup["checkpoint"]) if setup["checkpoint"] else None,
            ).validate()  # fmt: skip
        import torch

        if setup.get("torch_threads"):  # Ray sets OMP threads to the reserved CPUs (1 here); use the node's share
            torch.set_num_threads(int(setup["torch_threads"]))
        self.method = spec.build()
        self.setup = setup
        refs = setup["references"]
        prepare_method(self.method, setup["class_name"], normalize(refs, self.method) if refs is not None else None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score the batch (one set when grouped), write its shard, return the small summary columns.

        The summary carries each row's group and the set's notes (a set too small for the method), so the driver
        can say them once; the shard keeps them too, for the manifest of a resumed run.
        """
        from zsad.outputs import detect_row, map_size
        from zsad.runs import parts_json, resize_map, score_images
        from zsad.runs.readback import encode_map

        ok = np.asarray([not e for e in batch["error"]], dtype=bool)
        rows: list[dict[str, Any]] = []
        scored = None
        if ok.any():
            scored = score_images(self.method, normalize(batch["pixels"][ok], self.method), self.setup["batch_size"])
        notes = json.dumps(scored.notes if scored is not None else [])
        j = 0
        for i, uri in enumerate(batch["image_uri"]):
            row: dict[str, Any] = {k: None for k in SHARD_SCHEMA}
            row.update(image_uri=str(uri), group=str(batch["group"][i]), error=str(batch["error"][i]))
            row["model_id"] = self.setup["model_id"]
            if ok[i] and scored is not None:
                h, w = int(batch["height"][i]), int(batch["width"][i])
                amap = scored.maps[j]
                full = resize_map(amap, map_size(h, w, self.setup["max_map_size"]))
                encoding = self.setup["map_encoding"] if np.isfinite(amap).all() else "float32"
                blob, lo, hi = encode_map(amap, encoding)
                parts = parts_json(scored.parts, j) if scored.parts else "{}"
                made = detect_row(str(uri), scored.scores[j], Path(""), full, (h, w), parts)  # map_size as written
                row.update(
                    {k: v for k, v in made.items() if k in SHARD_SCHEMA},  # the map itself is stored at model size
                    anomaly_map=blob,
                    map_encoding=encoding,
                    map_lo=lo,
                    map_hi=hi,
                    notes=notes,
                )
                j += 1
            rows.append(row)
        write_shard(Path(self.setup["out"]), rows)
        return {k: np.asarray([r[k] or "" for r in rows], dtype=object) for k in SUMMARY}


class GroupScorer(Scorer):
    """Actor for set-level methods: each call is one group (its URIs), read here and scored as one set."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode the group's files, then score them together (one shard per group)."""
        out: dict[str, list[Any]] = {k: [] for k in SUMMARY}
        for group, uris in zip(batch["group"], batch["uris"], strict=True):
            names = [str(u) for u in uris]
            decoded = decode_batch(
                {"image_uri": np.asarray(names, dtype=object), "group": np.asarray([group] * len(names), dtype=object)},
                self.method.image_size,
            )
            done = super().__call__(decoded)
            for k in SUMMARY:
                out[k] += list(done[k])
        return {k: np.asarray(v, dtype=object) for k, v in out.items()}


def write_shard(out: Path, rows: list[dict[str, Any]]) -> Path:
    """One Parquet file, written whole and renamed into place: a shard is complete or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zsad.fileio import write_bytes

    table = pa.table({k: pa.array([r[k] for r in rows], getattr(pa, t)()) for k, t in SHARD_SCHEMA.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    path = out / SHARDS / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- reading back
def read_shards(out: Path, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every URI once: the newest successful row, else the newest error row (shards in name order = time order)."""
    from zsad.runs.readback import shard_rows

    cols = list(dict.fromkeys(["image_uri", "error", *columns])) if columns is not None else None
    latest: dict[str, dict[str, Any]] = {}
    for path in sorted((out / SHARDS).glob("part-*.parquet")):
        for row in shard_rows(path, cols):
            row["shard"] = path.name
            old = latest.get(row["image_uri"])
            if old is None or not row["error"] or old["error"]:
                latest[row["image_uri"]] = row
    return list(latest.values())


def done_uris(out: Path) -> set[str]:
    """URIs already scored (error rows are tried again, as ``zsad detect`` retries failed files)."""
    if not (out / SHARDS).is_dir():
        return set()
    return {r["image_uri"] for r in read_shards(out, ["image_uri"]) if not r["error"]}


# ---------------------------------------------------------------------------------------------- the run
def detect_ray(
    spec: MethodSpec,
    job: DetectJob,
    ray_options: RayOptions | None = None,
    *,
    reporter: Reporter | None = None,
) -> DetectResult:
    """``zsad.runs.detect_job`` on Ray Data: the same typed job, options and per-image results, in Parquet shards."""
    from zsad.data.files import Skipped
    from zsad.limits import allow_large

    if not isinstance(spec, MethodSpec) or not isinstance(job, DetectJob):
        raise TypeError("detect_ray(spec, job): expected a MethodSpec and a DetectJob (see zsad.runs.detect_job)")
    with using(reporter):
        ropts = ray_options or RayOptions()
        ropts.validate()
        ray = import_ray()
        device_given = spec.backbone.device is not None
        spec.validate(batch_size=job.batch_size)
        job.check_settings()  # as detect, but the inputs may be URIs: listed below
        job.check_references(spec.cls)
        job.skipped = Skipped()
        inputs = list_inputs(job, ropts.group_by, job.skipped)  # refuses an --out that is an input folder
        check_output_dir(job.out, kind="detect")
        with RunLock(job.out):
            key = {**job.key(spec), "engine": "ray", "group_by": ropts.group_by, "map_dtype": ropts.map_dtype}
            check_run_key(job.out, key)
            claim_output(job.out, key, "detect", "detect --engine ray")
            return _run(ray, spec, job, ropts, inputs, device_given, allow_large())


def _actor_backbone(bb: BackboneSpec, ropts: RayOptions, device_given: bool) -> dict[str, Any]:
    """The backbone spec sent to the actors; GPU actors pick their device themselves unless one was given.

    The driver resolved ``device`` on its own machine, which may have no GPU.
    """
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(bb).items()}
    if ropts.gpus_per_actor > 0 and not device_given:
        out["device"] = None
    return out


def _run(
    ray: Any,
    spec: MethodSpec,
    job: DetectJob,
    ropts: RayOptions,
    inputs: list[tuple[str, str]],
    device_given: bool,
    large: bool,
) -> DetectResult:
    import hashlib

    say = reporter()
    out = job.out
    cls = spec.cls
    set_level = cls.set_level and ropts.group_by is not None
    if job.skipped:
        say.message(f"passed over in the input folders: {job.skipped.summary()}", "note")
    done = done_uris(out)
    todo = [(u, g) for u, g in inputs if u not in done]
    if set_level:  # a group is one set: any new image re-scores the whole group
        open_groups = {g for _, g in todo}
        todo = [(u, g) for u, g in inputs if g in open_groups]
    elif cls.set_level:
        raise ZsadInputError(
            f"method {cls.name} scores a set: give --group-by parent (or csv:COLUMN) with --engine ray"
        )
    if done:
        say.message(f"resuming: {len(inputs) - len(todo)} of {len(inputs)} images already scored in {out}")

    references, calib = _references(spec, job)
    model_id = hashlib.sha256(json.dumps(spec.key(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    setup = {
        "method": spec.name,
        "backbone": _actor_backbone(spec.backbone, ropts, device_given),
        "options": spec.options,
        "checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
        "class_name": job.class_name,
        "references": references,
        "batch_size": job.batch_size,
        "max_map_size": job.max_map_size,
        "map_encoding": ropts.map_encoding,
        "out": str(out.resolve()),
        "model_id": model_id,
        "allow_large": large,  # the driver's --allow-large, for actors on other machines
    }
    size = int(spec.backbone.image_size or 0)
    if not ray.is_initialized():
        ray.init(address=ropts.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    if not ropts.gpus_per_actor:  # CPU actors split the CPUs of a node between them
        per_node = max(float(n.get("Resources", {}).get("CPU", 1.0)) for n in ray.nodes() if n.get("Alive"))
        setup["torch_threads"] = max(1, int(per_node // ropts.actors))
    started = time.perf_counter()
    set_notes: list[tuple[str, str]] = []  # (group, notes JSON) of the sets scored now
    (out / SHARDS).mkdir(exist_ok=True)
    if todo:
        remote = {"num_gpus": ropts.gpus_per_actor, "num_cpus": _actor_cpus(ray, ropts)}
        if set_level:
            # one row per group (the driver knows the groups): an actor reads its set and scores it whole, so no
            # shuffle is needed and a set is never split across batches
            groups: dict[str, list[str]] = {}
            for u, g in todo:
                groups.setdefault(g, []).append(u)
            items = [{"group": g, "uris": us} for g, us in groups.items()]
            scored = ray.data.from_items(items).map_batches(
                GroupScorer, fn_constructor_args=(setup,), concurrency=ropts.actors, batch_size=1, **remote
            )
        else:
            ds = ray.data.from_items([{"image_uri": u, "group": g} for u, g in todo])
            # decoding runs as separate CPU tasks (other resources than the actors, so Ray does not fuse them into
            # the actors): files are read and decoded while the actors score
            ds = ds.map_batches(
                decode_batch, fn_kwargs={"image_size": size}, batch_size=job.batch_size, num_cpus=DECODE_CPUS
            )
            scored = ds.map_batches(
                Scorer, fn_constructor_args=(setup,), concurrency=ropts.actors, batch_size=job.batch_size, **remote
            )
        with say.task(f"{spec.name}: scoring on Ray ({ropts.actors} actor(s))", len(todo)) as task:
            n = 0
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                n += len(batch["image_uri"])
                set_notes += [(str(g), str(t)) for g, t in zip(batch["group"], batch["notes"], strict=True) if t]
                task.update(completed=n)
    for note in group_notes(set_notes):  # each once, after the progress bar
        say.message(note, "warning")
    elapsed = time.perf_counter() - started
    scored_now = {u for u, _ in todo}
    return _finish(spec, job, ropts, (references, calib), model_id, inputs, scored_now, elapsed)


def group_notes(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Each distinct set note once, naming the groups it applies to (``pairs``: group, notes JSON of one row)."""
    groups: dict[str, list[str]] = {}
    for group, text in pairs:
        for note in json.loads(text or "[]"):
            named = groups.setdefault(note, [])
            if group not in named:
                named.append(group)
    out = []
    for note, named in groups.items():
        shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        out.append(f"{note} (group {shown})" if len(named) == 1 else f"{note} ({len(named)} groups: {shown})")
    return out


def _actor_cpus(ray: Any, ropts: RayOptions) -> float:
    """CPUs reserved per actor: as asked, else 1 unless the actors would leave no room for the decoding tasks.

    Ray schedules by reservation, not load: actors holding every CPU would starve the readers and hang the job.
    """
    if ropts.cpus_per_actor is not None:
        return ropts.cpus_per_actor
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return max(0.1, min(1.0, (total - DECODE_CPUS) / ropts.actors))


def _references(spec: MethodSpec, job: DetectJob) -> tuple[np.ndarray | None, Any]:
    """The few-shot references (sent to each actor) and the calibration images (scored by the driver)."""
    if not job.references:
        return None, None
    import torch

    size = int(spec.backbone.image_size or 0)
    order = reference_order(len(job.references), job.seed)
    pixels = np.stack([_pixels(job.references[i], size) for i in order])  # the order detect draws them in
    refs, calib = split_references(spec.cls.supports_few_shot, torch.from_numpy(pixels), job.k_shot)
    return (refs.numpy() if refs is not None else None), calib


def _pixels(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    from zsad.data import load_image

    return np.asarray(load_image(path).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def _finish(
    spec: MethodSpec,
    job: DetectJob,
    ropts: RayOptions,
    refs_calib: tuple[np.ndarray | None, Any],
    model_id: str,
    inputs: list[tuple[str, str]],
    scored_now: set[str],
    elapsed: float,
) -> DetectResult:
    """Second, cheap pass: decisions over every written score (``zsad.runs.decide``), the tables, the manifest.

    Every listed input ends as one row or one error row. Error rows are retried by every run, so those of the
    listed inputs are this run's failures; error rows of inputs no longer listed are dropped, as ``zsad detect``
    keeps only this run's ``errors.csv``. Rows of inputs no longer listed, or local files that are gone, are kept
    and marked ``input_missing``: labelled by the threshold, left out of fitting it (URIs are not checked).
    """
    say = reporter()
    out = job.out
    references, calib = refs_calib
    cols = ["group", "pred_score", "map_min", "map_max", "image_size", "map_size", "score_parts", "notes"]
    stored = read_shards(out, cols)
    listed = {u for u, _ in inputs}
    held = {r["image_uri"] for r in stored}
    errors = [
        {"image_path": r["image_uri"], "error": r["error"]} for r in stored if r["error"] and r["image_uri"] in listed
    ]
    # an input no shard holds (which Ray should never produce) becomes an error row rather than vanishing
    errors += [
        {"image_path": u, "error": f"{u}: no result came back from the Ray actors (rerun to retry)"}
        for u in sorted(listed - held)
    ]
    rows = [_row(r, model_id) for r in stored if not r["error"]]
    mark_missing(rows, listed, lambda u: not _is_uri(u))  # URIs are not checked
    done_now = sum(1 for r in rows if r["image_path"] in scored_now)
    rate = done_now / elapsed if elapsed > 0 else 0.0
    say.message(f"{done_now} images scored this run in {elapsed:.1f} s ({rate:.2f} images/s), {len(errors)} failed")
    base: dict[str, Any] = {
        "command": "detect",
        "engine": "ray",
        "ray": {**vars(ropts), "map_encoding": ropts.map_encoding},
        "model_id": model_id,
        "method": spec.name,
        "config": spec.key().get("config"),
        "backbone": spec.backbone.key(),
        "inputs": job.inputs(),
        "inputs_skipped": job.skipped.counts() if job.skipped else {},
        "max_map_size": job.max_map_size,
        "notes": group_notes([(r["group"], r["notes"]) for r in stored if not r["error"] and r["notes"]]),
        "transductive": spec.cls.transductive_for(spec.config),
    }
    current = any(r["input_missing"] == "0" for r in rows)
    method = None
    if current and (spec.cls.transductive_for(spec.config) or calib is not None):
        method = spec.build()  # the driver's copy: set-level re-scaling and calibration (cheap next to the run)
        refs = normalize(references, method) if references is not None else None
        prepare_method(method, job.class_name, refs)  # as the actors: calibration scores what they would score

    def normals(parts: dict[str, np.ndarray] | None) -> Any:
        if method is None or calib is None:
            return None
        return normals_of(method, normalize(calib.numpy(), method), parts)

    finalize = method.finalize_scores if method is not None and method.is_transductive else None
    group = "group" if ropts.group_by is not None else None
    decision = decide(rows, job.policy(), finalize=finalize, normals=normals, group=group)
    _write_tables(out, rows, errors)
    if not current:  # nothing to fit a threshold on: the files say what happened, then one line
        write_manifest(out, {**base, **decision.record(), "num_failed": len(errors)})
        raise nothing_scored(out, len(errors), len(rows))
    for note in decision.notes:
        say.message(note, "warning")
    return conclude(out, decision, base, len(errors), job.skipped.summary() if job.skipped else "")


def _row(stored: dict[str, Any], model_id: str) -> dict[str, Any]:
    """A predictions row from a shard row: detect's columns (the map naming its shard), then Ray's."""
    return {
        **{k: stored.get(k, "") for k in DETECT_FIELDS},
        "image_path": stored["image_uri"],
        "anomaly_map_path": f"{SHARDS}/{stored['shard']}",
        "overlay_path": "",
        "group": stored["group"],
        "model_id": model_id,
    }


def _write_tables(out: Path, table: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
    """``predictions.parquet`` (typed; an empty cell is null), then the spreadsheet-safe CSVs (``csv_text``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zsad.fileio import atomic_write

    def typed(key: str, value: Any) -> Any:
        kind = TABLE_TYPES.get(key, "string")
        if value is None or value == "":
            return None
        return int(value) if kind == "int64" else float(value) if kind == "float64" else str(value)

    schema = pa.schema([(k, getattr(pa, TABLE_TYPES.get(k, "string"))()) for k in TABLE_FIELDS])
    data = {k: [typed(k, r.get(k)) for r in table] for k in TABLE_FIELDS}
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(data, schema=schema), buf)
    atomic_write(out / "predictions.parquet", lambda f: f.write(buf.getvalue()))
    text = csv_text(TABLE_FIELDS, table)
    atomic_write(out / "predictions.csv", lambda f: f.write(text.encode()))
    etext = csv_text(["image_path", "error"], errors)
    atomic_write(out / "errors.csv", lambda f: f.write(etext.encode()))


def load_map(out: str | Path, image_path: str) -> np.ndarray:
    """An image's anomaly map from a Ray output folder (``zsad.runs.readback.load_map``)."""
    from zsad.runs.readback import load_map as load

    return load(out, image_path)
