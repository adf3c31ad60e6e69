"""Evaluation on labelled data: per-category and mean metrics, the way the field reports them, resumable.

Maps are kept at model input resolution (240 or 518 px), as the papers evaluate. Each scored image is written at
once (row + ``.npy``), so an interrupted evaluation resumes without recomputing the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from zsad import limits
from zsad.data.spec import DatasetSpec, gt_masks, open_datasets, reference_images
from zsad.errors import ZsadInputError
from zsad.fileio import save_npy, write_json
from zsad.methods.base import Method
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
from zsad.runs.scoring import score_dataset
from zsad.runs.train import prepare_method
from zsad.sysinfo import environment
from zsad.thresholds import choose_threshold

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
) -> dict[str, EvalResult]:
    """Evaluate one or several methods on ``data``; one folder per method under ``out`` when there are several.

    ``options`` maps a method name to its options; ``checkpoints`` go to the methods their manifests name.
    ``backbone`` is a ``BackboneSpec``, a model name or a dict of its fields (``BackboneSpec.of``). Every input is
    checked before any model loads; each output folder is locked for the run and resumes only the same settings.
    Several methods also get ``comparison.md`` / ``comparison.json`` side by side in ``out``.
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
                key = {**s.key(), "data": data.key()}
                check_run_key(where[s.name], key, sections=key.keys())
            cache: dict[tuple[Any, ...], Any] = {}
            results = {}
            for s in specs:
                m = s.build(cache)
                results[s.name] = run_eval(m, data, where[s.name], batch_size=batch_size, overlays=overlays, sets=sets)
            if len(specs) > 1:
                write_comparison(results, out)
        return results


def method_folder(name: str) -> str:
    """A method's folder name beside others (``sdp+`` -> ``sdp_plus``: no ``+`` in paths)."""
    return name.replace("+", "_plus")


def run_eval(
    method: Method,
    spec: DatasetSpec,
    out: Path,
    *,
    batch_size: int = 8,
    overlays: int = 8,
    sets: list[tuple[str, Any, Any]] | None = None,
) -> EvalResult:
    """Score every category not yet in ``out``, then metrics over all rows (the caller holds ``out``'s lock)."""
    from zsad.metrics import compute_metrics, mean_over_categories

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
    for cat, ds, _ in sets:  # refuse leakage before anything is written
        n_seen = check_unseen(method, cat, ds, seen, spec.allow_seen, spec.dataset.lower())
        if n_seen:
            notes.append(f"{cat}: {n_seen} of {len(ds)} images were in the training data (NOT zero-shot)")
    claim_output(out, {**method_key(method), "data": spec.key()}, "eval", "eval")

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
        refs = reference_images(ref_ds, spec.k_shot, spec.seed) if method.supports_few_shot else None
        prepare_method(method, spec.class_name or cat.replace("_", " "), refs)
        (out / "maps" / cat).mkdir(parents=True, exist_ok=True)
        done = {r["image_path"] for r in log.rows if r["category"] == cat}
        already = len(done & {str(s.image_path) for s in ds.samples})
        with say.task(f"{method.name} | {cat}", len(ds)) as task:
            task.update(completed=already)
            label = f"{method.name} | {cat}"
            for sb in score_dataset(method, ds, batch_size, skip_paths=done, label=label):
                rows = []
                for i, p in enumerate(sb.paths):
                    rel = Path("maps") / cat / f"{names.name(p, scope=cat)}.npy"
                    save_npy(out / rel, sb.maps[i])
                    rows.append(
                        {
                            "category": cat,
                            "image_path": p,
                            "gt_label": int(sb.batch["gt_label"][i]),
                            "mask_path": sb.batch["mask_path"][i],
                            "pred_score": float(sb.scores[i]),
                            "anomaly_map_path": rel.as_posix(),
                            "score_parts": parts_json(sb.parts, i),
                        }
                    )
                log.append(rows)
                task.advance(len(rows))
        per_cat[cat] = _category_metrics(log, cat, ds, method, out, overlays, compute_metrics)
    log.rewrite()
    result = EvalResult(method.name, title(method), per_cat, mean_over_categories(per_cat), notes)
    write_metrics(out, result, method, spec.dataset, spec.root)
    record = {k: str(v) for k, v in vars(spec).items()}
    write_json(
        out / "manifest.json", {**method.describe(), "command": "eval", "spec": record, "environment": environment()}
    )
    for n in notes:
        say.message(n, "warning")
    return result


def _category_metrics(
    log: CsvLog, cat: str, ds: Any, method: Method, out: Path, overlays: int, compute_metrics: Any
) -> dict[str, float]:
    """Metrics of one category from its rows (set-level re-scoring first), thresholds, overlays."""
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
    maps = np.stack([np.load(out / r["anomaly_map_path"]) for r in rows])
    masks, known = gt_masks(ds, [index[r["image_path"]] for r in rows], size)
    known_lab = labels >= 0
    metrics = compute_metrics(
        scores[known_lab],
        labels[known_lab],
        maps[known_lab] if known.any() else None,
        masks[known_lab] if known.any() else None,
        has_mask=known[known_lab] if known.any() else None,
    )
    thr = choose_threshold(scores, labels=labels)
    for r, lab in zip(rows, thr.apply(scores), strict=True):
        r.update(pred_label=str(int(lab)), image_threshold=f"{thr.value:.8g}")
    if overlays > 0:
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
