"""``zsad detect``: unlabeled images in, scores + maps + overlays out, incrementally and resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from zsad.engine import (
    CsvLog,
    claim_output,
    decode_parts,
    map_filename,
    method_key,
    parts_json,
    resize_map,
    score_dataset,
    write_manifest,
)
from zsad.errors import ZsadInputError
from zsad.methods.base import Method
from zsad.thresholds import Threshold, choose_threshold

FIELDS = [
    "image_path",
    "pred_score",
    "pred_label",
    "threshold",
    "threshold_source",
    "pixel_threshold",
    "anomaly_map_path",
    "overlay_path",
    "map_min",
    "map_max",
    "score_parts",
]


def _stack_images(ds: Any) -> torch.Tensor:
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def run_detect(
    method: Method,
    paths: list[str],
    out: Path,
    *,
    class_name: str | None,
    reference_dir: Path | None,
    k_shot: int,
    threshold: float | None,
    recursive: bool,
    batch_size: int,
    overlays: bool,
    normalize: str,
    skip_bad: bool,
    seed: int,
    progress: Progress,
    console: Console,
) -> int:
    from zsad.data import ImageList

    if normalize not in ("dataset", "per_image"):
        raise ZsadInputError(f"--normalize {normalize!r}: use 'dataset' or 'per_image'")
    bb = method.backbone
    kw = {"image_size": method.image_size, "mean": bb.mean, "std": bb.std}
    ds = ImageList(paths, recursive=recursive, **kw)
    refs = calib = None
    if reference_dir is not None:
        ref_ds = ImageList([str(reference_dir)], recursive=recursive, **kw)
        order = torch.randperm(len(ref_ds), generator=torch.Generator().manual_seed(seed)).tolist()
        all_refs = torch.stack([ref_ds[i]["image"] for i in order])
        if method.supports_few_shot:
            k = k_shot or len(all_refs)
            refs, calib = all_refs[:k], all_refs[k:]  # calibrate on references the method has not memorised
        else:
            calib = all_refs
    method.setup(class_name, reference_images=refs)

    claim_output(out, {**method_key(method), "class_name": method.class_name, "k_shot": method.k_shot})
    (out / "maps").mkdir(exist_ok=True)
    log = CsvLog(out / "predictions.csv", FIELDS)
    done = {r["image_path"] for r in log.rows if (out / r["anomaly_map_path"]).exists()}
    if done:
        console.print(f"resuming: {len(done)} of {len(ds)} images already scored in {out}")
    errors = CsvLog(out / "errors.csv", ["image_path", "error"])

    def on_error(err: dict[str, Any]) -> None:
        console.print(f"[yellow]skipped:[/] {err['error']}", highlight=False)
        errors.append([err])

    todo = len(ds) - len(done & {str(s.image_path) for s in ds.samples})
    task = progress.add_task(f"{method.name}: scoring", total=todo)
    with progress:
        batches = score_dataset(
            method,
            ds,
            batch_size,
            skip_paths=done,
            skip_bad=skip_bad,
            on_error=on_error,
            progress=progress,
        )
        for sb in batches:
            hs, ws = sb.batch["original_size"]
            rows = []
            for i, p in enumerate(sb.paths):
                full = resize_map(sb.maps[i], (int(hs[i]), int(ws[i])))
                rel = Path("maps") / f"{map_filename(p)}.npy"
                np.save(out / rel, full)
                rows.append(
                    {
                        "image_path": p,
                        "pred_score": float(sb.scores[i]),
                        "anomaly_map_path": str(rel),
                        "map_min": float(full.min()),
                        "map_max": float(full.max()),
                        "score_parts": parts_json(sb.parts, i),
                    }
                )
            log.append(rows)
            progress.advance(task, len(rows))

    if method.set_level and method.is_transductive:
        console.print(f"[bold yellow]{method.name}: TRANSDUCTIVE: {method.transductive_note}[/]")
    parts = decode_parts(log.rows)
    final = method.finalize_scores(parts) if parts else None
    if final is not None:  # transductive: scores re-scaled over every image of this run
        console.print(f"[bold yellow]{method.name}: TRANSDUCTIVE scores (re-scaled over all {len(final)} images)[/]")
        for r, v in zip(log.rows, final, strict=True):
            r["pred_score"] = f"{float(v):.8g}"
    scores = np.array([float(r["pred_score"]) for r in log.rows])
    maxima = np.array([float(r["map_max"]) for r in log.rows])
    calib_scores = calib_max = None
    if calib is not None and len(calib):
        pred = method.predict(calib)
        calib_scores = pred.pred_score.cpu().numpy()
        if final is not None:  # the same set statistics as the scored images
            calib_parts = {k: v.cpu().numpy().astype(np.float64) for k, v in pred.score_parts.items()}
            calib_scores = method.finalize_scores(calib_parts, fit=parts)
        calib_max = pred.anomaly_map.flatten(1).amax(1).cpu().numpy()
    thr = choose_threshold(scores, normal_scores=calib_scores, manual=threshold)
    # Pixel decisions: the same rule applied to per-image map maxima (map values need not share the score scale).
    pthr = choose_threshold(maxima, normal_scores=calib_max)
    labels = thr.apply(scores)
    for r, lab in zip(log.rows, labels, strict=True):
        r.update(
            pred_label=str(int(lab)),
            threshold=f"{thr.value:.8g}",
            threshold_source=thr.source,
            pixel_threshold=f"{pthr.value:.8g}",
        )
    if overlays:
        _write_overlays(log.rows, out, normalize, pthr, progress)
    log.rewrite()
    write_manifest(
        out,
        method,
        {
            "command": "detect",
            "inputs": paths,
            "reference_dir": str(reference_dir or ""),
            "threshold": vars(thr),
            "pixel_threshold": vars(pthr),
            "normalize": normalize,
            "num_images": len(log.rows),
            "transductive": method.is_transductive,
        },
    )
    n_bad = len(errors.rows)
    console.print(
        f"{len(log.rows)} images scored, {int(labels.sum())} flagged anomalous "
        f"(threshold {thr.value:.4g}, {thr.source}); results in {out / 'predictions.csv'}"
        + (f"; {n_bad} unreadable files listed in {out / 'errors.csv'}" if n_bad else "")
    )
    return 1 if n_bad else 0


def _write_overlays(rows: list[dict[str, str]], out: Path, normalize: str, pthr: Threshold, progress: Progress) -> None:
    from zsad.data import load_image
    from zsad.viz import render_prediction, save_png

    (out / "overlays").mkdir(exist_ok=True)
    gmin = min(float(r["map_min"]) for r in rows)
    gmax = max(float(r["map_max"]) for r in rows)
    task = progress.add_task(f"overlays ({normalize} colour scale)", total=len(rows))
    with progress:
        for r in rows:
            amap = np.load(out / r["anomaly_map_path"])
            vmin, vmax = (gmin, gmax) if normalize == "dataset" else (float(amap.min()), float(amap.max()))
            img = np.asarray(load_image(r["image_path"]))
            panel = render_prediction(
                img,
                amap,
                vmin,
                vmax,
                pred_mask=pthr.apply(amap),
                score=float(r["pred_score"]),
                label=bool(int(r["pred_label"])),
                scope=normalize,
            )
            rel = Path("overlays") / (Path(r["anomaly_map_path"]).stem + ".png")
            save_png(out / rel, panel)
            r["overlay_path"] = str(rel)
            progress.advance(task)
