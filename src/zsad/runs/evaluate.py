"""Evaluation on labelled data: per-category and mean metrics, the way the field reports them, resumable.

Maps are kept at model input resolution (240 or 518 px) by default, as the papers evaluate (``eval_resolution=
"model"``); ``"native"`` resizes each map to its image's own size and reads the masks as stored, so a defect a few
pixels wide is scored at the resolution it lives at. ``tiles`` scores each image tile by tile (``zsad.tiling``).
Each scored image is written at once (row + ``.npy``), so an interrupted evaluation resumes without recomputing the
backbone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad import limits
from zsad.data.spec import DatasetSpec, gt_masks, native_gt_masks, open_datasets, reference_images, reference_indices
from zsad.errors import ZsadInputError
from zsad.fileio import save_npy, write_json
from zsad.methods.base import Method, SetLevelMethod
from zsad.outputs import (
    CsvLog,
    OutputNames,
    RunLock,
    check_output_dir,
    check_run_key,
    claim_output,
    identity,
    is_number,
    mark_folder,
)
from zsad.progress import Reporter, reporter, using
from zsad.runs.build import (
    BackboneSpec,
    MethodSpec,
    as_int,
    as_methods,
    as_options,
    as_path,
    as_paths,
    method_key,
    route_checkpoints,
    specs_for,
)
from zsad.runs.decide import decode_parts, parts_json
from zsad.runs.leakage import check_unseen, training_images
from zsad.runs.report import EvalResult, title, write_comparison, write_metrics
from zsad.runs.scoring import resize_map, score_dataset
from zsad.runs.tiles import refuse_tiled_rescaling
from zsad.runs.train import prepare_method
from zsad.sysinfo import environment
from zsad.thresholds import choose_threshold
from zsad.tiling import TileSpec, plan_tiles, tile_key

FIELDS = [
    "category",
    "image_path",
    "gt_label",
    "mask_path",
    "pred_score",
    "pred_label",
    "image_threshold",
    "anomaly_map_path",
    "score_parts",
]
EVAL_RESOLUTIONS = ("model", "native")
NATIVE_NOTE = (
    "pixel metrics at native resolution: each map resized to its image's own size, masks as stored "
    "(the papers pool pixels at the model's input size)"
)


def evaluate(
    data: DatasetSpec,
    out: str | Path,
    *,
    methods: Sequence[str | MethodSpec] = ("winclip",),
    options: dict[str, dict[str, Any]] | None = None,
    backbone: BackboneSpec | str | dict[str, Any] | None = None,
    checkpoints: str | Path | Sequence[str | Path] = (),
    batch_size: int = 8,
    overlays: int = 8,
    reporter: Reporter | None = None,
    eval_resolution: str = "model",
    tiles: TileSpec | None = None,
) -> dict[str, EvalResult]:
    """Evaluate one or several methods on ``data``; one folder per method under ``out`` when there are several.

    ``options`` maps a method name to its options; ``checkpoints`` go to the methods their manifests name.
    ``backbone`` is a ``BackboneSpec``, a model name or a dict of its fields (``BackboneSpec.of``). Every input is
    checked before any model loads; each output folder is locked for the run and resumes only the same settings.
    Several methods also get ``comparison.md`` / ``comparison.json`` side by side in ``out``.
    ``eval_resolution``: ``"model"`` (pixels pooled at the model's input size, as the papers) or ``"native"`` (at
    each image's own size). ``tiles``: score each image tile by tile (``TileSpec``); its stitched map is compared at
    the chosen resolution.
    """
    with using(reporter):
        if not isinstance(data, DatasetSpec):
            raise TypeError(f"data: expected a DatasetSpec, not {type(data).__name__}")
        out = as_path(out, "out")
        methods = as_methods(methods, "methods")
        options = as_options(options, "options")
        bb = BackboneSpec.of(backbone, seed=data.seed)
        limits.BATCH_SIZE.check(as_int(batch_size, "batch_size"))
        if as_int(overlays, "overlays") < 0:
            raise ZsadInputError(f"--overlays {overlays}: must be >= 0")
        names = [m.name if isinstance(m, MethodSpec) else m for m in methods]
        routed = route_checkpoints(names, as_paths(checkpoints, "checkpoints"))
        specs = specs_for(methods, options, bb, routed, batch_size)
        extra = eval_key(eval_resolution, tiles)
        if tiles is not None:
            for s in specs:
                refuse_tiled_rescaling(s.cls, s.config, tiles)
        sets = open_datasets(data)  # every folder and file checked before any model loads
        where = {s.name: out if len(specs) == 1 else out / method_folder(s.name) for s in specs}
        check_output_dir(out, kind="eval" if len(specs) == 1 else "comparison")
        for folder in where.values():
            check_output_dir(folder, kind="eval")
        with ExitStack() as locks:
            locks.enter_context(RunLock(out))
            if len(specs) > 1:  # marked before its method folders are made inside it
                mark_folder(out, "comparison", "eval")
            for folder in dict.fromkeys(where.values()):
                if folder != out:
                    locks.enter_context(RunLock(folder))
            for s in specs:
                key = {**s.key(), "data": data.key(), **extra}
                check_run_key(where[s.name], key, sections=[*key, "eval", "tiles"])  # absent is a setting too
            cache: dict[tuple[Any, ...], Any] = {}
            results = {}
            for s in specs:
                m = s.build(cache)
                results[s.name] = run_eval(
                    m,
                    data,
                    where[s.name],
                    batch_size=batch_size,
                    overlays=overlays,
                    sets=sets,
                    eval_resolution=eval_resolution,
                    tiles=tiles,
                )
            if len(specs) > 1:
                write_comparison(results, out)
        return results


def method_folder(name: str) -> str:
    """A method's folder name beside others (``sdp+`` -> ``sdp_plus``: no ``+`` in paths)."""
    return name.replace("+", "_plus")


def eval_key(eval_resolution: str, tiles: TileSpec | None) -> dict[str, Any]:
    """The run-key sections of how maps are made and compared: ``{}`` for the defaults, so older folders resume.

    ``tiles`` as ``detect`` records it (``tile_key``), ``eval.resolution`` only when native. A folder never mixes
    maps of two resolutions or two tilings: resuming with other values is refused.
    """
    if eval_resolution not in EVAL_RESOLUTIONS:
        raise ZsadInputError(f"--eval-resolution {eval_resolution!r}: use model or native")
    if tiles is not None and not isinstance(tiles, TileSpec):
        raise TypeError(f"tiles: expected a TileSpec or None, not {type(tiles).__name__}")
    if tiles is not None:
        tiles.check()
    native = {"eval": {"resolution": eval_resolution}} if eval_resolution != "model" else {}
    return {**tile_key(tiles), **native}


def run_eval(
    method: Method,
    spec: DatasetSpec,
    out: Path,
    *,
    batch_size: int = 8,
    overlays: int = 8,
    sets: list[tuple[str, Any, Any]] | None = None,
    eval_resolution: str = "model",
    tiles: TileSpec | None = None,
) -> EvalResult:
    """Score every category not yet in ``out``, then metrics over all rows (the caller holds ``out``'s lock).

    ``eval_resolution`` and ``tiles`` as in ``evaluate``; both are part of the folder's run key.
    """
    from zsad.metrics import compute_metrics, mean_over_categories

    extra = eval_key(eval_resolution, tiles)
    native = eval_resolution == "native"
    if tiles is not None:
        refuse_tiled_rescaling(type(method), method.config, tiles)
    say = reporter()
    sets = sets if sets is not None else open_datasets(spec)
    pre = method.backbone.preprocess
    for _, ds, refs in sets:
        for d in (ds, refs):
            if d is not None:
                d.with_preprocessing(pre)
    seen = training_images(method)
    notes: list[str] = []
    if method.is_transductive:
        notes.append(f"TRANSDUCTIVE: {method.transductive_note}")
    if native:
        notes.append(NATIVE_NOTE)
    if tiles is not None:
        notes.append(tiles_note(tiles, native, method.image_size))
    for cat, ds, _ in sets:  # refuse leakage before anything is written
        n_seen = check_unseen(method, cat, ds, seen, spec.allow_seen, spec.dataset.lower())
        if n_seen:
            notes.append(f"{cat}: {n_seen} of {len(ds)} images were in the training data (NOT zero-shot)")
    claim_output(out, {**method_key(method), "data": spec.key(), **extra}, "eval", "eval")

    def complete(r: dict[str, str]) -> bool:
        return is_number(r["pred_score"]) and bool(r["anomaly_map_path"]) and (out / r["anomaly_map_path"]).is_file()

    log = CsvLog(
        out / "predictions.csv", FIELDS, key=lambda r: (r["category"], identity(r["image_path"])), complete=complete
    )
    if log.repair_note():
        say.message(f"{log.repair_note()}; they are scored again", "note")
    names = OutputNames()
    for r in log.rows:
        names.claim(Path(r["anomaly_map_path"]).stem, identity(r["image_path"]), scope=r["category"])
    per_cat: dict[str, dict[str, float]] = {}
    for cat, ds, ref_ds in sets:
        class_name = spec.class_name or cat.replace("_", " ")
        if tiles is None:
            refs = reference_images(ref_ds, spec.k_shot, spec.seed) if method.supports_few_shot else None
            prepare_method(method, class_name, refs)
        else:
            prepare_tiled(method, class_name, ref_ds, spec, tiles)
        (out / "maps" / cat).mkdir(parents=True, exist_ok=True)
        done = {r["image_path"] for r in log.rows if r["category"] == cat}
        already = len(done & {str(s.image_path) for s in ds.samples})
        with say.task(f"{method.name} | {cat}", len(ds)) as task:
            task.update(completed=already)
            label = f"{method.name} | {cat}"
            if tiles is None:
                scored = _scored_rows(method, ds, batch_size, done, label, native)
            else:
                scored = scored_tiled_rows(method, ds, batch_size, done, tiles, native, label)
            for batch in scored:
                rows = []
                for r, amap in batch:
                    rel = Path("maps") / cat / f"{names.name(r['image_path'], scope=cat)}.npy"
                    save_npy(out / rel, amap)
                    rows.append({"category": cat, **r, "anomaly_map_path": rel.as_posix()})
                log.append(rows)
                task.advance(len(rows))
        per_cat[cat] = _category_metrics(log, cat, ds, method, out, overlays, compute_metrics, native)
    log.rewrite()
    name = title(method) + (" | pixels at native resolution" if native else "")
    name += f" | tiles {tiles.describe()}" if tiles is not None else ""
    result = EvalResult(method.name, name, per_cat, mean_over_categories(per_cat), notes)
    evaluation = {"resolution": eval_resolution, "tiles": extra.get("tiles")}
    write_metrics(out, result, method, spec.dataset, spec.root, evaluation=evaluation)
    record = {k: str(v) for k, v in vars(spec).items()}
    manifest = {**method.describe(), "command": "eval", "spec": record, "evaluation": evaluation}
    write_json(out / "manifest.json", {**manifest, "environment": environment()})
    for n in notes:
        say.message(n, "warning")
    return result


def tiles_note(tiles: TileSpec, native: bool, size: int) -> str:
    """How a tiled run made and compared its maps, for the notes of its results."""
    where = "at each image's own size" if native else f"resized down to the model's input ({size} px)"
    side = f"{tiles.tile_size} px" if tiles.tile_size else "the input size"
    return (
        f"tiled scoring: --tiles {tiles.describe()}, overlap {tiles.overlap:g}, tiles of {side}, image score "
        f"{tiles.score}; stitched maps compared {where}"
    )


def _scored_rows(
    method: Method, ds: Any, batch_size: int, done: set[str], label: str, native: bool
) -> Iterator[list[tuple[dict[str, Any], np.ndarray]]]:
    """The untiled path: (row without its map path, map) per scored image, batch by batch.

    ``native``: each model-resolution map resized (bilinear) to its image's original size before it is written.
    """
    for sb in score_dataset(method, ds, batch_size, skip_paths=done, label=label):
        out = []
        for i, p in enumerate(sb.paths):
            amap = sb.maps[i]
            if native:
                hs, ws = sb.batch["original_size"]
                amap = resize_map(np.ascontiguousarray(amap), (int(hs[i]), int(ws[i])))
            row = {
                "image_path": p,
                "gt_label": int(sb.batch["gt_label"][i]),
                "mask_path": sb.batch["mask_path"][i],
                "pred_score": float(sb.scores[i]),
                "score_parts": parts_json(sb.parts, i),
            }
            out.append((row, amap))
        yield out


def prepare_tiled(method: Method, class_name: str, ref_ds: Any, spec: DatasetSpec, tiles: TileSpec) -> None:
    """Set a method up for tiled scoring: few-shot references at full size, tiled as the test images are.

    The references are the ones ``reference_images`` picks (same seed, same ``k``), read at their own size. Without
    references this is ``prepare_method`` (a self-training method's cache included). A helper of ``runs.tiles``'
    kind, kept here while that module is being changed.
    """
    from zsad.data import load_image
    from zsad.runs.tiles import setup_tiled

    chosen = reference_indices(ref_ds, spec.k_shot, spec.seed) if method.supports_few_shot else []
    if not chosen:
        prepare_method(method, class_name, None)
        return
    setup_tiled(method, class_name, [load_image(ref_ds.samples[i].image_path) for i in chosen], tiles)


def _tiled_row(s: Any, score: float, parts: str = "{}") -> dict[str, Any]:
    return {
        "image_path": str(s.image_path),
        "gt_label": -1 if s.label is None else int(s.label),
        "mask_path": "" if s.mask_path is None else str(s.mask_path),
        "pred_score": score,
        "score_parts": parts,
    }


def scored_tiled_rows(
    method: Method, ds: Any, batch_size: int, done: set[str], tiles: TileSpec, native: bool, label: str = ""
) -> Iterator[list[tuple[dict[str, Any], np.ndarray]]]:
    """The tiled path: each image read at full size, scored tile by tile, its map stitched at the original size.

    ``native`` keeps the stitched map at that size; otherwise it is resized down to S x S, so that metrics compare
    like with like. An image whose plan is one tile (``1x1``, or ``auto`` on a small image) is the untiled path
    itself: such images are batched ``batch_size`` at a time, scored and resized exactly as without ``--tiles``.
    A set-level method scores the whole category as one set (``score_tiled_set``: every image a partner, those
    already in ``done`` included), and only the missing rows are written. A helper of ``runs.tiles``' kind, kept
    here while that module is being changed.
    """
    from zsad.data import load_image
    from zsad.data.transforms import squash_image
    from zsad.runs.tiles import score_tiled, score_tiled_set

    pre = method.backbone.preprocess
    size = pre.image_size
    samples = list(ds.samples)
    todo = [s for s in samples if str(s.image_path) not in done]
    if not todo:
        return

    def fit(amap: np.ndarray) -> np.ndarray:
        """A stitched map (original size) as written: kept (native) or down to the model's input size."""
        return amap if native or amap.shape == (size, size) else resize_map(np.ascontiguousarray(amap), (size, size))

    if isinstance(method, SetLevelMethod):
        images = [load_image(s.image_path) for s in samples]
        if all(plan_tiles(im.height, im.width, tiles, size).untiled for im in images):
            del images  # one tile per image: exactly the untiled set-level path (score parts included)
            yield from _scored_rows(method, ds, batch_size, done, label, native)
            return
        results = score_tiled_set(method, images, tiles, batch_size, max_map_size=0)
        for note in method.set_notes:
            reporter().message(note, "warning")
        for s, res in zip(samples, results, strict=True):
            if str(s.image_path) not in done:
                yield [(_tiled_row(s, res.score), fit(res.anomaly_map))]
        return

    pending: list[tuple[Any, tuple[int, int], torch.Tensor]] = []

    def flush() -> list[tuple[dict[str, Any], np.ndarray]]:
        """The one-tile images gathered so far, as one batch of the untiled path."""
        with torch.no_grad():
            p = method.predict(torch.stack([t for _, _, t in pending]))
        scores = p.pred_score.detach().cpu().numpy().astype(np.float64)
        maps = p.anomaly_map.detach().cpu().numpy().astype(np.float32)
        parts = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in p.score_parts.items()}
        out = []
        for i, (s, hw, _) in enumerate(pending):
            amap = resize_map(maps[i], hw) if native else maps[i]
            out.append((_tiled_row(s, float(scores[i]), parts_json(parts, i)), amap))
        pending.clear()
        return out

    for s in todo:
        image = load_image(s.image_path)
        hw = (image.height, image.width)
        if plan_tiles(image.height, image.width, tiles, size).untiled:
            pending.append((s, hw, squash_image(image, size, pre.mean, pre.std)))
            if len(pending) >= batch_size:
                yield flush()
            continue
        if pending:
            yield flush()
        res = score_tiled(method, image, tiles, batch_size, max_map_size=0)
        yield [(_tiled_row(s, res.score), fit(res.anomaly_map))]
    if pending:
        yield flush()


def _pick(x: Any, keep: np.ndarray) -> Any:
    """Rows ``keep`` of a stack, or of a list of per-image arrays."""
    return [v for v, k in zip(x, keep, strict=True) if k] if isinstance(x, list) else x[keep]


def _category_metrics(
    log: CsvLog,
    cat: str,
    ds: Any,
    method: Method,
    out: Path,
    overlays: int,
    compute_metrics: Any,
    native: bool = False,
) -> dict[str, float]:
    """Metrics of one category from its rows (set-level re-scoring first), thresholds, overlays.

    Re-scoring (``finalize_scores``) runs only when every row has the same score parts; rows without parts (tiled
    scores) keep their scores as written, which is exact for every method ``--tiles`` accepts (see
    ``runs.tiles.refuse_tiled_rescaling``). ``native``: maps and masks are pooled at each image's own size, as lists.
    """
    size = method.image_size
    index = {str(s.image_path): i for i, s in enumerate(ds.samples)}
    rows = [r for r in log.rows if r["category"] == cat and r["image_path"] in index]
    parts = decode_parts(rows)
    final = method.finalize_scores(parts) if parts else None
    if final is not None:  # set-level (transductive) re-scoring over the whole category
        for r, v in zip(rows, final, strict=True):
            r["pred_score"] = f"{float(v):.8g}"
    scores = np.array([float(r["pred_score"]) for r in rows])
    labels = np.array([int(r["gt_label"]) for r in rows])
    idx = [index[r["image_path"]] for r in rows]
    maps: Any
    masks: Any
    if native:
        maps = [np.load(out / r["anomaly_map_path"]) for r in rows]
        masks, known = native_gt_masks(ds, idx, [m.shape[-2:] for m in maps])
    else:
        maps = np.stack([np.load(out / r["anomaly_map_path"]) for r in rows])
        masks, known = gt_masks(ds, idx, size)
    known_lab = labels >= 0
    metrics = compute_metrics(
        scores[known_lab],
        labels[known_lab],
        _pick(maps, known_lab) if known.any() else None,
        _pick(masks, known_lab) if known.any() else None,
        has_mask=known[known_lab] if known.any() else None,
    )
    thr = choose_threshold(scores, labels=labels)
    for r, lab in zip(rows, thr.apply(scores), strict=True):
        r.update(pred_label=str(int(lab)), image_threshold=f"{thr.value:.8g}")
    if overlays > 0:
        if native:  # drawn on the model-size image: maps and masks at that size
            del masks
            maps = np.stack([m if m.shape == (size, size) else resize_map(m, (size, size)) for m in maps])
            masks, _ = gt_masks(ds, idx, size)
        _overlays(rows, maps, masks, known, ds, index, out / "overlays" / cat, overlays, method.backbone.random_init)
    return metrics


def _overlays(
    rows: list[dict[str, str]],
    maps: np.ndarray,
    masks: np.ndarray,
    known: np.ndarray,
    ds: Any,
    index: dict[str, int],
    folder: Path,
    n: int,
    random_weights: bool = False,
) -> None:
    """Up to ``n`` overlays per category, anomalous ones first, on one colour scale per category.

    With ``random_weights`` each image says so in red: an overlay copied out of the folder must not pass for a result.
    """
    from zsad.data import denormalize
    from zsad.viz import render_prediction, save_png
    from zsad.viz.overlay import RANDOM_WEIGHTS_MARK

    folder.mkdir(parents=True, exist_ok=True)
    vmin, vmax = float(maps.min()), float(maps.max())
    anomalous = [i for i, r in enumerate(rows) if r["gt_label"] == "1"][: (n + 1) // 2]
    normal = [i for i, r in enumerate(rows) if r["gt_label"] != "1"][: n - len(anomalous)]
    for i in anomalous + normal:
        item = ds[index[rows[i]["image_path"]]]
        img = denormalize(item["image"], ds.mean, ds.std)
        panel = render_prediction(
            img,
            maps[i],
            vmin,
            vmax,
            gt_mask=masks[i] if known[i] else None,
            score=float(rows[i]["pred_score"]),
            label=rows[i]["pred_label"] == "1",
            scope="dataset",
            warning=RANDOM_WEIGHTS_MARK if random_weights else None,
        )
        save_png(folder / (Path(rows[i]["anomaly_map_path"]).stem + ".png"), panel)
