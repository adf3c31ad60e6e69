"""``zsad detect --model DIR``: score images with a model made by ``zsad export``, torch-free.

Same outputs, output-folder rules and decisions as the torch path's ``zsad detect`` (``zsad.runs.folder`` and
``zsad.runs.decide``, shared by every front end) where
they apply: ``predictions.csv`` (same columns), one ``.npy`` map per image at the image's own size (bilinear, as
the torch path resizes), ``errors.csv`` for skipped files, ``manifest.json``. The folder is checked before the
model opens (only a new, empty or detect folder, never an input folder), locked for the run and resumable; every
input ends as one row or one error row; rows of inputs that are gone are kept, marked ``input_missing`` and left
out of the thresholds. Overlays are not drawn on this path.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.errors import ZsadInputError, one_line
from zsad.progress import Level, SilentReporter, reporter, using
from zsad.tiling import resize_bilinear

if TYPE_CHECKING:
    from zsad.data.files import Skipped
    from zsad.outputs import DetectResult
    from zsad.runs import Policy
    from zsad.runtime.model import ExportedModel


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="zsad detect --model", description=__doc__)
    ap.add_argument("path", nargs="*", help="image files, folders or glob patterns")
    ap.add_argument("--model", required=True, type=Path, help="folder written by `zsad export`")
    ap.add_argument("--out", type=Path, default=Path("results"), help="output folder (resumes an earlier run)")
    ap.add_argument("--list", dest="list_file", type=Path, default=None, help="text file of image paths")
    ap.add_argument("--recursive", action="store_true", help="look into sub-folders")
    ap.add_argument("--image-glob", default=None, help="which files of the folders to score, e.g. '*.png'")
    ap.add_argument("--threshold", type=float, default=None, help="manual image threshold")
    ap.add_argument(
        "--threshold-rule",
        default="robust_outlier",
        help="with no threshold given or recorded at export: robust_outlier or two_mode",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward (1 to 1024)")
    ap.add_argument("--max-map-size", type=int, default=4096, help="long side cap (px) of written maps; 0 = none")
    ap.add_argument("--skip-bad", action="store_true", help="unreadable files become error rows (exit code 1)")
    ap.add_argument(
        "--runtime", default="auto", help="auto (the export's own), onnxruntime or openvino (reads ONNX exports too)"
    )
    ap.add_argument("--allow-large", action="store_true", help="lift the size bounds (docs/reliability.md)")
    return ap.parse_args(argv)


def run(argv: list[str]) -> int:
    """The command; returns the exit code (0 done, 1 some files skipped, 2 bad input, 130 interrupted)."""
    from zsad.limits import allowing_large

    try:
        args = _parse(argv)
        with allowing_large(args.allow_large):
            return _run(args)
    except (ZsadInputError, OSError) as e:  # bad input, a full disk, an unwritable file: the torch path's line
        print(f"error: {one_line(e)}")
        return 2
    except KeyboardInterrupt:
        print("interrupted; the rows written so far are kept: run the same command again to resume")
        return 130


class PrintReporter(SilentReporter):
    """Messages as plain lines on stdout (``note: ...``), no progress bars: a line PC's log reads them."""

    def message(self, text: str, level: Level = "info") -> None:
        """Print the line, prefixed with its level unless plain information."""
        print(text if level == "info" else f"{level}: {text}")


def _run(args: argparse.Namespace) -> int:
    from zsad.data.files import Skipped, collect_images, read_list_file
    from zsad.outputs import RunLock, check_detect_numbers, check_out_not_input, check_output_dir
    from zsad.runtime.model import ExportedModel

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
    with RunLock(out), using(PrintReporter()):
        return detect_files(model, files, out, args, skipped).exit_code


def detect_files(
    model: ExportedModel, files: list[Path], out: Path, args: argparse.Namespace, skipped: Skipped
) -> DetectResult:
    """Score what the folder does not hold yet, then decisions and the manifest over every row (under the lock)."""
    from zsad.data.io import load_image
    from zsad.outputs import kept_on_failure, map_size
    from zsad.runs import DetectFolder

    if skipped:
        reporter().message(f"passed over in the input folders: {skipped.summary()}", "note")
    key = {
        "engine": "runtime",
        "runtime": model.runtime,
        "model_sha256": model.manifest["model_sha256"],
        "method": model.manifest["method"],
    }
    folder = DetectFolder(out, key, "detect --model")
    todo = folder.pending(files)
    with kept_on_failure(folder.log, out):
        for start in range(0, len(todo), args.batch_size):
            batch: list[tuple[Path, Any, np.ndarray]] = []
            for f in todo[start : start + args.batch_size]:
                try:
                    img = load_image(f)
                except ZsadInputError as e:  # unreadable, or gone since it was listed
                    if not args.skip_bad:
                        raise
                    folder.fail(str(f), " ".join(str(e).split()))
                    continue
                batch.append((f, img.size, model.preprocess(img)))
            if not batch:
                continue  # every file of the batch failed: each has its error row
            pred = model.predict_arrays(np.stack([b[2] for b in batch]))
            rows = []
            for i, (f, (w, h), _) in enumerate(batch):
                full = resize_bilinear(pred.anomaly_map[i], map_size(h, w, args.max_map_size))
                row = folder.write_map(str(f), float(pred.pred_score[i]), full, (h, w), "{}", args.skip_bad)
                if row is not None:
                    rows.append(row)
            folder.log.append(rows)

    base = {
        "command": "detect --model",
        "model": str(args.model),
        "runtime": model.runtime,
        "export_manifest": model.manifest,
        "inputs_skipped": skipped.counts(),
    }
    decision = folder.decide({str(f) for f in files}, policy(args, model), base)
    return folder.close(decision, base, skipped.summary())


def policy(args: argparse.Namespace, model: ExportedModel) -> Policy:
    """How the run decides, as the torch path decides for the same export (``zsad.runs.decide``).

    Image: ``--threshold``, else the threshold recorded at export (from its reference images, or set by hand; its
    source kept), else ``--threshold-rule`` fitted to this run's scores. Pixel: the export's recorded one, else the
    rule fitted to this run's map maxima. Rows of inputs that are gone are left out of the fits; fewer than
    ``MIN_IMAGES`` images give no threshold (``Threshold.note``).
    """
    from zsad.runs import Policy
    from zsad.thresholds import Threshold

    recorded = Threshold(model.threshold, model.threshold_source) if model.threshold is not None else None
    value, source = model.pixel_threshold
    pixel = Threshold(value, source) if value is not None else None
    return Policy(args.threshold, args.threshold_rule, recorded, pixel)
