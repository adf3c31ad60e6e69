"""``zsad detect --model DIR``: score images with a model made by ``zsad export``, torch-free.

Same outputs and the same output-folder rules as the torch path's ``zsad detect`` (``zsad.runs.detect``) where
they apply: ``predictions.csv`` (same columns), one ``.npy`` map per image at the image's own size (bilinear, as
the torch path resizes), ``errors.csv`` for skipped files, ``manifest.json``. The folder is checked before the
model opens (only a new, empty or detect folder, never an input folder), locked for the run and resumable; every
input ends as one row or one error row; rows of inputs that are gone are kept, marked ``input_missing`` and left
out of the thresholds. Overlays are not drawn on this path.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError, one_line


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
    except (ZsadInputError, OSError) as e:  # bad input, a full disk, an unwritable file: the torch path's line
        print(f"error: {one_line(e)}")
        return 2
    except KeyboardInterrupt:
        print("interrupted; the rows written so far are kept: run the same command again to resume")
        return 130


def _run(args: argparse.Namespace) -> int:
    from zsad.data.files import Skipped, collect_images, read_list_file
    from zsad.outputs import RunLock, check_detect_numbers, check_out_not_input, check_output_dir
    from zsad.runtime import ExportedModel

    check_detect_numbers(args.batch_size, args.max_map_size, args.threshold, args.threshold_rule)
    items = list(args.path) + (read_list_file(args.list_file) if args.list_file else [])
    if not items:
        raise ZsadInputError("no images given: pass files, folders or glob patterns, or --list FILE")
    out: Path = args.out
    check_out_not_input(out, items)
    skipped = Skipped()
    files = collect_images(items, recursive=args.recursive, image_glob=args.image_glob, skipped=skipped, exclude=[out])
    check_output_dir(out, kind="detect")  # before the model opens: a foreign folder is refused, not adopted
    model = ExportedModel(args.model, runtime=args.runtime)
    with RunLock(out):
        return _score(args, model, files, skipped)


def _score(args: argparse.Namespace, model: Any, files: list[Path], skipped: Any) -> int:
    """Score what the folder does not hold yet, then thresholds and the manifest over every row (under the lock)."""
    from zsad.data.io import load_image
    from zsad.fileio import save_npy, write_json
    from zsad.outputs import (
        DETECT_FIELDS,
        CsvLog,
        DetectResult,
        OutputNames,
        claim_output,
        detect_row,
        identity,
        is_number,
        kept_on_failure,
        label_rows,
        map_size,
        mark_missing,
        nothing_scored,
    )

    out: Path = args.out
    if skipped:
        print(f"note: passed over in the input folders: {skipped.summary()}")
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
    if log.repair_note():
        print(f"note: {log.repair_note()}; they are scored again")
    names = OutputNames()
    for r in log.rows:
        names.claim(Path(r["anomaly_map_path"]).stem, identity(r["image_path"]))
    done = {r["image_path"] for r in log.rows}
    todo = [f for f in files if str(f) not in done]
    if done:
        print(f"resuming: {len(files) - len(todo)} of {len(files)} images already scored in {out}")
    (out / "errors.csv").unlink(missing_ok=True)  # this run's failures only (earlier ones are retried)
    errors = CsvLog(out / "errors.csv", ["image_path", "error"])
    failed: list[str] = []

    def fail(path: str, error: str) -> None:
        print(f"note: skipped: {error}")
        errors.append([{"image_path": path, "error": error}])
        failed.append(path)

    with kept_on_failure(log, out):
        for start in range(0, len(todo), args.batch_size):
            batch: list[tuple[Path, Any, np.ndarray]] = []
            for f in todo[start : start + args.batch_size]:
                try:
                    img = load_image(f)
                except ZsadInputError as e:  # unreadable, or gone since it was listed
                    if not args.skip_bad:
                        raise
                    fail(str(f), " ".join(str(e).split()))
                    continue
                batch.append((f, img.size, model.preprocess(img)))
            if not batch:
                continue  # every file of the batch failed: each has its error row
            pred = model.predict_arrays(np.stack([b[2] for b in batch]))
            rows = []
            for i, (f, (w, h), _) in enumerate(batch):
                mh, mw = map_size(h, w, args.max_map_size)
                rel = Path("maps") / f"{names.name(str(f))}.npy"
                full = resize_bilinear(pred.anomaly_map[i], (mh, mw))
                try:
                    save_npy(out / rel, full)
                except OSError as e:  # a full disk, an unwritable map: an error row, not a row
                    if not args.skip_bad:
                        raise
                    fail(str(f), f"{f}: cannot write {rel.as_posix()}: {e.strerror or e}")
                    continue
                rows.append(detect_row(str(f), pred.pred_score[i], rel, full, (h, w)))
            log.append(rows)

    missing = mark_missing(log.rows, {str(f) for f in files})  # inputs that vanished keep their row, marked
    current = [r for r in log.rows if r["input_missing"] == "0"]
    base = {
        "command": "detect --model",
        "model": str(args.model),
        "runtime": model.runtime,
        "export_manifest": model.manifest,
        "inputs_skipped": skipped.counts(),
        "num_failed": len(failed),
    }
    if not current:
        write_json(out / "manifest.json", {**base, "num_images": len(log.rows), "num_missing_inputs": len(log.rows)})
        raise nothing_scored(out, len(failed), len(log.rows))
    thr, pthr = thresholds(args, model, current)
    if thr.note:
        print(f"warning: no decision: {thr.note}")
    labels = label_rows(log.rows, thr, pthr, np.array([float(r["pred_score"]) for r in log.rows]))
    log.rewrite()
    write_json(
        out / "manifest.json",
        {
            **base,
            "threshold": vars(thr),
            "pixel_threshold": vars(pthr),
            "num_images": len(log.rows),
            "num_missing_inputs": missing,
        },
    )
    flagged = int(labels.sum()) if labels is not None else None
    result = DetectResult(out, len(log.rows), flagged, thr, len(failed), missing, 0, skipped.summary())
    print(result.summary())
    return result.exit_code


def thresholds(args: argparse.Namespace, model: Any, current: list[dict[str, str]]) -> tuple[Any, Any]:
    """The image and pixel thresholds, as the torch path chooses them for the same export.

    Image: ``--threshold``, else the manifest's (its source kept), else ``--threshold-rule`` fitted to this run's
    scores. Pixel: the manifest's (the export's calibration images: ``normal_quantile`` of their map maxima, as the
    torch path with the same references), else the rule fitted to this run's map maxima. Rows of inputs that are
    gone are left out of the fits; fewer than ``MIN_IMAGES`` images give no threshold (``Threshold.note``).
    """
    from zsad.thresholds import Threshold, choose_threshold

    scores = np.array([float(r["pred_score"]) for r in current])
    maxima = np.array([float(r["map_max"]) for r in current])
    if args.threshold is not None:
        thr = Threshold(float(args.threshold), "manual")
    elif model.threshold is not None:  # recorded at export (or edited since): its source is kept
        thr = Threshold(model.threshold, model.threshold_source)
    else:
        thr = choose_threshold(scores, unlabelled=args.threshold_rule)
    value, source = model.pixel_threshold
    pthr = Threshold(value, source) if value is not None else choose_threshold(maxima, unlabelled=args.threshold_rule)
    return thr, pthr
