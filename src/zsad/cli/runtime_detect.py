"""``zsad detect --model DIR``: score images with a model made by ``zsad export``, torch-free.

Same outputs as the torch path's ``zsad detect`` where they apply: ``predictions.csv`` (same columns), one ``.npy``
map per image at the image's own size (bilinear, as the torch path resizes), ``errors.csv`` for skipped files,
``manifest.json``, a locked and resumable output folder. Overlays are not drawn on this path.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError


def resize_bilinear(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W) bilinear with half-pixel centres and edge clamping: torch's ``align_corners=False``."""
    h, w = amap.shape
    out_h, out_w = size

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, None)
        lo = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo).astype(np.float32)

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    a = amap.astype(np.float32)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return (top * (1 - wy)[:, None] + bottom * wy[:, None]).astype(np.float32)


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="zsad detect --model", description=__doc__)
    ap.add_argument("path", nargs="*", help="image files, folders or glob patterns")
    ap.add_argument("--model", required=True, type=Path, help="folder written by `zsad export`")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--list", dest="list_file", type=Path, default=None)
    ap.add_argument("--recursive", action="store_true")
    ap.add_argument("--image-glob", default=None)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--threshold-rule", default="robust_outlier")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-map-size", type=int, default=4096)
    ap.add_argument("--skip-bad", action="store_true")
    ap.add_argument(
        "--runtime", default="auto", help="auto (the export's own), onnxruntime or openvino (reads ONNX exports too)"
    )
    return ap.parse_args(argv)


def run(argv: list[str]) -> int:
    """The command; returns the exit code (0 done, 1 some files skipped, 2 bad input, 130 interrupted)."""
    try:
        return _run(_parse(argv))
    except ZsadInputError as e:
        print(f"error: {' '.join(str(e).split())}")
        return 2
    except KeyboardInterrupt:
        print("interrupted; the rows written so far are kept: run the same command again to resume")
        return 130


def _run(args: argparse.Namespace) -> int:
    from zsad.data.files import collect_images, read_list_file
    from zsad.data.io import load_image
    from zsad.fileio import save_npy, write_json
    from zsad.outputs import (
        DETECT_FIELDS,
        CsvLog,
        OutputNames,
        claim_output,
        detect_row,
        identity,
        is_number,
        label_rows,
        map_size,
    )
    from zsad.runtime import ExportedModel
    from zsad.thresholds import UNLABELLED_RULES, Threshold, choose_threshold

    if args.batch_size < 1:
        raise ZsadInputError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.threshold_rule not in UNLABELLED_RULES:
        raise ZsadInputError(f"--threshold-rule {args.threshold_rule!r}: use one of {', '.join(UNLABELLED_RULES)}")
    model = ExportedModel(args.model, runtime=args.runtime)
    items = list(args.path) + (read_list_file(args.list_file) if args.list_file else [])
    if not items:
        raise ZsadInputError("no images given: pass files, folders or glob patterns, or --list FILE")
    files = collect_images(items, recursive=args.recursive, image_glob=args.image_glob)
    out: Path = args.out
    key = {
        "engine": "runtime",
        "runtime": model.runtime,
        "model_sha256": model.manifest["model_sha256"],
        "method": model.manifest["method"],
    }
    claim_output(out, key, "detect", "detect --model")
    (out / "maps").mkdir(exist_ok=True)

    def complete(r: dict[str, str]) -> bool:
        return is_number(r["pred_score"]) and bool(r["anomaly_map_path"]) and (out / r["anomaly_map_path"]).is_file()

    log = CsvLog(out / "predictions.csv", DETECT_FIELDS, key=lambda r: identity(r["image_path"]), complete=complete)
    names = OutputNames()
    for r in log.rows:
        names.claim(Path(r["anomaly_map_path"]).stem, identity(r["image_path"]))
    done = {r["image_path"] for r in log.rows}
    todo = [f for f in files if str(f) not in done]
    if done:
        print(f"resuming: {len(files) - len(todo)} of {len(files)} images already scored in {out}")
    (out / "errors.csv").unlink(missing_ok=True)
    errors = CsvLog(out / "errors.csv", ["image_path", "error"])
    failed = 0
    for start in range(0, len(todo), args.batch_size):
        batch: list[tuple[Path, Any, np.ndarray]] = []
        for f in todo[start : start + args.batch_size]:
            try:
                img = load_image(f)
            except ZsadInputError as e:
                if not args.skip_bad:
                    raise
                errors.append([{"image_path": str(f), "error": str(e)}])
                failed += 1
                continue
            batch.append((f, img.size, model.preprocess(img)))
        if not batch:
            continue
        pred = model.predict_arrays(np.stack([b[2] for b in batch]))
        rows = []
        for i, (f, (w, h), _) in enumerate(batch):
            mh, mw = map_size(h, w, args.max_map_size)
            full = resize_bilinear(pred.anomaly_map[i], (mh, mw))
            rel = Path("maps") / f"{names.name(str(f))}.npy"
            save_npy(out / rel, full)
            rows.append(detect_row(str(f), pred.pred_score[i], rel, full, (h, w)))
        log.append(rows)
    if not log.rows:
        raise ZsadInputError(f"no image could be scored; the failures are listed in {out / 'errors.csv'}")
    scores = np.array([float(r["pred_score"]) for r in log.rows])
    maxima = np.array([float(r["map_max"]) for r in log.rows])
    if args.threshold is not None:
        thr = Threshold(float(args.threshold), "manual")
    elif model.threshold is not None:  # recorded at export (or edited since): its source is kept
        thr = Threshold(model.threshold, str(model.manifest["threshold"].get("source", "manifest")))
    else:
        thr = choose_threshold(scores, unlabelled=args.threshold_rule)
    pthr = choose_threshold(maxima)
    labels = label_rows(log.rows, thr, pthr, scores)
    log.rewrite()
    write_json(
        out / "manifest.json",
        {
            "command": "detect --model",
            "model": str(args.model),
            "runtime": model.runtime,
            "export_manifest": model.manifest,
            "threshold": vars(thr),
            "pixel_threshold": vars(pthr),
            "num_images": len(log.rows),
            "num_failed": failed,
        },
    )
    print(
        f"{len(log.rows)} images scored, {int(labels.sum()) if labels is not None else 'none'} flagged "
        f"anomalous (threshold {thr.value:.4g}, "
        f"{thr.source}); results in {out / 'predictions.csv'}"
    )
    return 1 if failed else 0
