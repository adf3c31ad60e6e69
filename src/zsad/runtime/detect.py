"""``zsad detect --model DIR``: score images with a model made by ``zsad export``, torch-free.

Same outputs, output-folder rules and decisions as the torch path's ``zsad detect`` (``zsad.runs.folder`` and
``zsad.runs.decide``, shared by every front end) where
they apply: ``predictions.csv`` (same columns), one ``.npy`` map per image at the image's own size (bilinear, as
the torch path resizes), ``errors.csv`` for skipped files, ``manifest.json``. The folder is checked before the
model opens (only a new, empty or detect folder, never an input folder), locked for the run and resumable; every
input ends as one row or one error row; rows of inputs that are gone are kept, marked ``input_missing`` and left
out of the thresholds. Overlays are not drawn on this path.

``--tiles`` scores large images tile by tile (``zsad.runtime.tiles``, as the torch path's ``--tiles``); left out,
the tiling the export recorded applies (``zsad export --tiles``), and ``--tiles none`` turns it off.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.errors import ZsadInputError, one_line
from zsad.progress import Level, SilentReporter, reporter, using
from zsad.tiling import TileSpec, resize_bilinear, tile_key

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
    ap.add_argument(
        "--tiles",
        default=None,
        help="score large images tile by tile: auto, RxC (e.g. 3x4), either with +global, or none; "
        "default: the tiling recorded at export, else none (docs/high-resolution.md)",
    )
    ap.add_argument("--tile-overlap", default=None, help="overlap of neighbouring tiles, a fraction of a tile (0.25)")
    ap.add_argument("--tile-size", default=None, help="tile side in original pixels (default: the model's input size)")
    ap.add_argument("--tile-score", default=None, help="image score: max_tile (default) or map_max")
    return ap.parse_args(argv)


TILE_FLAGS = {"overlap": "--tile-overlap", "tile_size": "--tile-size", "score": "--tile-score"}


def _given_tile_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The tile fields given on the command line (``TileSpec`` names), each number refused in one line if bad."""
    given: dict[str, Any] = {}
    if args.tile_overlap is not None:
        try:
            given["overlap"] = float(args.tile_overlap)
        except ValueError:
            raise ZsadInputError(
                f"--tile-overlap {args.tile_overlap!r}: a fraction of the tile from 0 to 0.9 (e.g. 0.25)"
            ) from None
    if args.tile_size is not None:
        try:
            given["tile_size"] = int(args.tile_size)
        except ValueError:
            raise ZsadInputError(f"--tile-size {args.tile_size!r}: a whole number of original pixels") from None
    if args.tile_score is not None:
        given["score"] = str(args.tile_score)
    return given


def tile_spec(args: argparse.Namespace, recorded: TileSpec | None) -> TileSpec | None:
    """The run's tiling: ``--tiles`` as given, else the export's ``recorded`` one, else none.

    Left out, ``--tiles`` means the recorded tiling with any tile field given replacing its own. Each bad value, and
    a tile option with no tiling, is refused in one line. ``--tiles`` given starts from the defaults, as on the
    torch path's command line, so the same options mean the same tiling on both paths whatever the export recorded.
    """
    from dataclasses import replace

    given = _given_tile_fields(args)
    if args.tiles is not None:
        spec = TileSpec.parse(args.tiles, **given)
    elif recorded is not None:
        spec = replace(recorded, **given)
        spec.check()
    else:
        spec = None
    if spec is None and given:
        flag = TILE_FLAGS[next(iter(given))]
        also = "" if args.tiles else " or an export that records tiles"
        raise ZsadInputError(f"{flag}: only with --tiles (auto or RxC){also}")
    return spec


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
    tile_spec(args, TileSpec() if args.tiles is None else None)  # the values given, before anything is read
    items = list(args.path) + (read_list_file(args.list_file) if args.list_file else [])
    if not items:
        raise ZsadInputError("no images given: pass files, folders or glob patterns, or --list FILE")
    out: Path = args.out
    check_out_not_input(out, items)
    skipped = Skipped()
    files = collect_images(items, recursive=args.recursive, image_glob=args.image_glob, skipped=skipped, exclude=[out])
    check_output_dir(out, kind="detect")  # before the model opens: a foreign folder is refused, not adopted
    model = ExportedModel(args.model, runtime=args.runtime)
    tiles = tile_spec(args, model.tiles)
    with RunLock(out), using(PrintReporter()):
        return detect_files(model, files, out, args, skipped, tiles=tiles).exit_code


def detect_files(
    model: ExportedModel,
    files: list[Path],
    out: Path,
    args: argparse.Namespace,
    skipped: Skipped,
    *,
    tiles: TileSpec | None = None,
) -> DetectResult:
    """Score what the folder does not hold yet, then decisions and the manifest over every row (under the lock).

    ``tiles``: each image scored tile by tile (``zsad.runtime.tiles``), one image at a time as the torch path does.
    """
    from zsad.outputs import kept_on_failure
    from zsad.runs import DetectFolder

    if skipped:
        reporter().message(f"passed over in the input folders: {skipped.summary()}", "note")
    tiled = tile_key(tiles)  # absent untiled: earlier folders resume unchanged
    key = {
        "engine": "runtime",
        "runtime": model.runtime,
        "model_sha256": model.manifest["model_sha256"],
        "method": model.manifest["method"],
        **tiled,
    }
    folder = DetectFolder(out, key, "detect --model")
    _note_calibration(model, tiles)
    todo = folder.pending(files)
    with kept_on_failure(folder.log, out):
        if tiles is None:
            _score_untiled(model, todo, folder, args)
        else:
            _score_tiled(model, todo, folder, args, tiles)

    base = {
        "command": "detect --model",
        "model": str(args.model),
        "runtime": model.runtime,
        "export_manifest": model.manifest,
        "inputs_skipped": skipped.counts(),
        **tiled,
    }
    decision = folder.decide({str(f) for f in files}, policy(args, model), base)
    return folder.close(decision, base, skipped.summary())


def _note_calibration(model: ExportedModel, tiles: TileSpec | None) -> None:
    """Say so when the export's recorded thresholds were calibrated under another tiling than this run's."""
    from zsad.runtime.tiles import tile_record

    recorded = model.manifest.get("tiles")
    fitted = [(model.manifest.get(k) or {}) for k in ("threshold", "pixel_threshold")]
    calibrated = any(t.get("value") is not None and t.get("source") != "manual" for t in fitted)
    now = tile_record(tiles)
    if calibrated and recorded != now:

        def shown(r: dict[str, Any] | None) -> str:
            return "untiled" if r is None else "tiled ({})".format(", ".join(f"{k} {v}" for k, v in r.items()))

        reporter().message(
            f"the export's thresholds were calibrated on images scored {shown(recorded)}; this run scores {shown(now)}",
            "note",
        )


def _read(f: Path, folder: Any, args: argparse.Namespace) -> Any:
    """The decoded image, or None after its error row (``--skip-bad``): unreadable, or gone since it was listed."""
    from zsad.data.io import load_image

    try:
        return load_image(f)
    except ZsadInputError as e:
        if not args.skip_bad:
            raise
        folder.fail(str(f), " ".join(str(e).split()))
        return None


def _score_tiled(
    model: ExportedModel, todo: list[Path], folder: Any, args: argparse.Namespace, tiles: TileSpec
) -> None:
    """Each image tiled and stitched, its row written as soon as it is scored (a crash loses one image at most)."""
    for f in todo:
        if (img := _read(f, folder, args)) is None:
            continue
        t = model.predict_tiled(img, tiles, args.batch_size, args.max_map_size)
        row = folder.write_map(str(f), t.score, t.anomaly_map, (img.height, img.width), "{}", args.skip_bad)
        if row is not None:
            folder.log.append([row])


def _score_untiled(model: ExportedModel, todo: list[Path], folder: Any, args: argparse.Namespace) -> None:
    """Images squashed to the model's size, ``--batch-size`` per forward; each map resized to its written size."""
    from zsad.outputs import map_size

    for start in range(0, len(todo), args.batch_size):
        batch: list[tuple[Path, Any, np.ndarray]] = []
        for f in todo[start : start + args.batch_size]:
            if (img := _read(f, folder, args)) is not None:
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
