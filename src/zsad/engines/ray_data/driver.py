"""The Ray driver: checks and lists the inputs, runs the actor pool, then ends the run as every front end does.

The end (``_finish``) reads the shards' numbers back (not the maps), decides with ``zsad.runs.decide`` and writes
``predictions.parquet``, ``predictions.csv``, ``errors.csv`` and ``manifest.json``. A tiled run's maps are the
exception: a stitched map is already at its written size, which a shard's square maps cannot hold, so the driver
copies each one out once as ``maps/<name>.npy``, as ``zsad detect`` names and writes it.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsad.engines.ray_data.actors import TILED_MAP_ENCODING, GroupScorer, Scorer, decode_batch, normalize, set_up
from zsad.engines.ray_data.inputs import is_uri, list_inputs
from zsad.engines.ray_data.options import RayOptions, import_ray
from zsad.errors import ZsadInputError
from zsad.outputs import (
    DETECT_FIELDS,
    OutputNames,
    RunLock,
    check_output_dir,
    check_run_key,
    claim_output,
    csv_text,
    mark_missing,
    nothing_scored,
)
from zsad.progress import Reporter, reporter, using
from zsad.runs import (
    SHARDS,
    BackboneSpec,
    DetectJob,
    DetectResult,
    MethodSpec,
    Normals,
    conclude,
    decide,
    done_uris,
    normals_of,
    read_shards,
    reference_order,
    refuse_tiled_rescaling,
    split_reference_files,
    split_references,
    tile_key,
    tiled_normals,
    write_manifest,
)

TABLE_FIELDS = [*DETECT_FIELDS, "group", "model_id"]  # predictions.csv / .parquet: detect's columns, then Ray's


TABLE_TYPES = {
    "pred_score": "float64", "pred_label": "int64", "threshold": "float64", "pixel_threshold": "float64",
    "map_min": "float64", "map_max": "float64", "input_missing": "int64",
}  # fmt: skip  # predictions.parquet column types (strings otherwise; an empty cell is null)


DECODE_CPUS = 0.5  # reserved per decoding task


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
        refuse_tiled_rescaling(spec.cls, spec.config, job.tiles)
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
        "tiles": job.tiles,
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
                decode_batch,
                fn_kwargs={"image_size": size, "full": job.tiles is not None},
                batch_size=job.batch_size,
                num_cpus=DECODE_CPUS,
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


def _references(spec: MethodSpec, job: DetectJob) -> tuple[Any, Any]:
    """The few-shot references (sent to each actor) and the calibration images (scored by the driver).

    Untiled: squashed uint8 (N, S, S, 3) and a tensor of the rest. Tiled: the memorised references at full
    resolution (uint8 arrays, for ``setup_tiled``) and the calibration files' paths (read at the end, when they
    are scored tiled), drawn and split as ``zsad detect --tiles`` does (``load_reference_images``).
    """
    if not job.references:
        return None, None
    if job.tiles is not None:
        from zsad.data import load_image

        refs, calib = split_reference_files(job.references, job.k_shot, job.seed, spec.cls.supports_few_shot)
        return [np.asarray(load_image(f), dtype=np.uint8) for f in refs], calib
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
    refs_calib: tuple[Any, Any],
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
    if job.tiles is not None:
        maps = _write_tiled_maps(out, [r for r in stored if not r["error"]], scored_now)
        for r in rows:
            r["anomaly_map_path"] = maps[r["image_path"]]
    mark_missing(rows, listed, lambda u: not is_uri(u))  # URIs are not checked
    done_now = sum(1 for r in rows if r["image_path"] in scored_now)
    rate = done_now / elapsed if elapsed > 0 else 0.0
    say.message(f"{done_now} images scored this run in {elapsed:.1f} s ({rate:.2f} images/s), {len(errors)} failed")
    base: dict[str, Any] = {
        "command": "detect",
        "engine": "ray",
        "ray": {**vars(ropts), "map_encoding": ropts.map_encoding if job.tiles is None else TILED_MAP_ENCODING},
        "model_id": model_id,
        "method": spec.name,
        "config": spec.key().get("config"),
        "backbone": spec.backbone.key(),
        "inputs": job.inputs(),
        "inputs_skipped": job.skipped.counts() if job.skipped else {},
        "max_map_size": job.max_map_size,
        **tile_key(job.tiles),
        "notes": group_notes([(r["group"], r["notes"]) for r in stored if not r["error"] and r["notes"]]),
        "transductive": spec.cls.transductive_for(spec.config),
    }
    current = any(r["input_missing"] == "0" for r in rows)
    method = None
    if current and (spec.cls.transductive_for(spec.config) or (calib is not None and len(calib) > 0)):
        method = spec.build()  # the driver's copy: set-level re-scaling and calibration (cheap next to the run)
        set_up(method, job.class_name, references, job.tiles)  # as the actors: calibration scores what they would

    def normals(parts: dict[str, np.ndarray] | None) -> Any:
        if method is None or calib is None:
            return None
        if job.tiles is not None:  # scored tiled, as the images they calibrate
            if not calib:
                return None
            from zsad.data import load_image

            images = [load_image(p) for p in calib]
            return Normals(*tiled_normals(method, images, job.tiles, job.batch_size, job.max_map_size))
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


def _write_tiled_maps(out: Path, stored: list[dict[str, Any]], scored_now: set[str]) -> dict[str, str]:
    """Each stitched map as ``maps/<name>.npy`` (named as ``zsad detect`` names it); URI -> the map's path.

    Written for the URIs scored now and any whose file is missing (a driver stopped before this step), so a
    rerun completes them; read from its shard one row at a time, so one map is in memory at a time.
    """
    import zlib

    import pyarrow.parquet as pq

    from zsad.fileio import save_npy

    names = OutputNames()
    paths: dict[str, str] = {}
    todo: dict[str, dict[str, str]] = {}  # shard -> URI -> map path
    for r in stored:
        rel = f"maps/{names.name(r['image_uri'])}.npy"
        paths[r["image_uri"]] = rel
        if r["image_uri"] in scored_now or not (out / rel).is_file():
            todo.setdefault(r["shard"], {})[r["image_uri"]] = rel
    (out / "maps").mkdir(exist_ok=True)
    for shard, wanted in todo.items():
        cols = ["image_uri", "anomaly_map", "map_encoding", "map_size", "error"]
        for part in pq.ParquetFile(out / SHARDS / shard).iter_batches(batch_size=1, columns=cols):
            for t in part.to_pylist():
                where = wanted.get(t["image_uri"])
                if where is None or t["error"]:
                    continue
                if t["map_encoding"] != TILED_MAP_ENCODING:  # only this engine writes these shards
                    raise AssertionError(f"{shard}: a tiled map stored as {t['map_encoding']}")
                w, h = (int(v) for v in t["map_size"].split("x"))
                amap = np.frombuffer(zlib.decompress(t["anomaly_map"]), dtype="<f4").reshape(h, w)
                save_npy(out / where, amap.astype(np.float32))
    return paths


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
