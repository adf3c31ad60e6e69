"""Detection runs: unlabeled images in, scores + maps + overlays out, incrementally and resumably.

Two steps: ``DetectJob.validate`` checks every input (files, folder, options, run key) before any model loads;
``run_detect`` then scores only what the output folder does not hold yet, one row and one file set per input.
``detect`` does both, under the output folder's lock.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad.errors import ZsadInputError
from zsad.methods.base import Method
from zsad.outputs import (
    DetectResult,
    RunLock,
    check_detect_numbers,
    check_out_not_input,
    check_output_dir,
    check_run_key,
    kept_on_failure,
    map_size,
)
from zsad.progress import Reporter, reporter, using
from zsad.runs.build import BackboneSpec, MethodSpec, as_options, as_path, as_paths, method_key
from zsad.runs.decide import Normals, Policy, memorised, parts_json
from zsad.runs.folder import DetectFolder
from zsad.runs.scoring import resize_map, score_dataset
from zsad.runs.tiles import refuse_tiled_rescaling
from zsad.runs.train import prepare_method
from zsad.thresholds import Threshold
from zsad.tiling import TileSpec, tile_key

NORMALIZE = ("dataset", "per_image")


@dataclass
class DetectJob:
    """Everything a detect run reads, checked by ``validate`` before the model is built."""

    paths: list[str]
    out: Path
    list_file: Path | None = None
    image_glob: str | None = None
    recursive: bool = False
    class_name: str | None = None
    reference_dir: Path | None = None
    k_shot: int | None = None  # None: decide.REFERENCE_SPLIT (half memorised); 0: every reference memorised
    threshold: float | None = None
    threshold_rule: str = "robust_outlier"
    batch_size: int = 8
    overlays: bool = True
    normalize: str = "dataset"
    skip_bad: bool = False
    seed: int = 0
    max_map_size: int = 4096
    tiles: TileSpec | None = None  # score large images tile by tile (zsad.tiling); None: the whole image squashed
    files: list[Path] = field(default_factory=list)
    references: list[Path] = field(default_factory=list)
    skipped: Any = None  # zsad.data.files.Skipped: what the folder listings passed over

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.list_file = Path(self.list_file) if self.list_file is not None else None
        self.reference_dir = Path(self.reference_dir) if self.reference_dir is not None else None

    def validate(self, cls: type[Method]) -> DetectJob:
        """Inputs, references, numbers and the output folder; then the run key as far as it is known."""
        from zsad.data.datasets import collect_images, read_list_file
        from zsad.data.files import Skipped

        self.check_settings()
        items = list(self.paths) + (read_list_file(self.list_file) if self.list_file is not None else [])
        if not items:
            raise ZsadInputError("no images given: pass files, folders or glob patterns, or --list FILE")
        check_out_not_input(self.out, [*items, *([self.reference_dir] if self.reference_dir else [])])
        self.skipped = Skipped()
        self.files = collect_images(
            items, recursive=self.recursive, image_glob=self.image_glob, skipped=self.skipped, exclude=[self.out]
        )
        self.check_references(cls)
        check_output_dir(self.out, kind="detect")
        return self

    def check_references(self, cls: type[Method]) -> None:
        """The reference folder exists and holds images; ``--k-shot`` only with it, and for few-shot methods."""
        if self.reference_dir is not None:
            self.references = reference_files(self.reference_dir, self.recursive, self.image_glob, self.out)
        check_k_shot(self.k_shot, self.reference_dir, cls)

    def check_settings(self) -> None:
        """The numbers and choices of the job, each refused in one line."""
        if self.normalize not in NORMALIZE:
            raise ZsadInputError(f"--normalize {self.normalize!r}: use 'dataset' or 'per_image'")
        check_detect_numbers(self.batch_size, self.max_map_size, self.threshold, self.threshold_rule)
        if self.tiles is not None:
            if not isinstance(self.tiles, TileSpec):
                raise TypeError(f"tiles: expected a TileSpec or None, not {type(self.tiles).__name__}")
            self.tiles.check()

    def key(self, spec: MethodSpec) -> dict[str, Any]:
        """The run key as known before the build; ``run_detect`` completes and checks it after."""
        cls = spec.cls
        n_refs = len(self.references)
        k = memorised(n_refs, self.k_shot, cls.supports_few_shot)
        return {
            **spec.key(),
            "class_name": (self.class_name or "object") if cls.uses_class_name(spec.config) else "object",
            "k_shot": k,
            "inputs": self.inputs(),
            **tile_key(self.tiles),
        }

    def inputs(self) -> dict[str, Any]:
        """The input spec (not the file list: a folder that gains images resumes and scores the new ones)."""
        return {
            "paths": [os.path.abspath(p) for p in self.paths],
            "list_file": os.path.abspath(self.list_file) if self.list_file else None,
            "image_glob": self.image_glob,
            "recursive": self.recursive,
            "reference_dir": os.path.abspath(self.reference_dir) if self.reference_dir else None,
        }

    def policy(self) -> Policy:
        """How this run decides (``zsad.runs.decide``)."""
        return Policy(self.threshold, self.threshold_rule)

    def check_resume(self, spec: MethodSpec) -> None:
        """Refuse, before the model loads, a folder holding a run with other settings (checked again after)."""
        key = self.key(spec)
        check_run_key(self.out, key, sections=key.keys())


def detect(
    paths: str | Path | Sequence[str | Path] = (),
    out: str | Path = "results",
    *,
    method: str | MethodSpec | Method = "winclip",
    options: dict[str, Any] | None = None,
    backbone: BackboneSpec | str | None = None,
    checkpoint: str | Path | None = None,
    reporter: Reporter | None = None,
    class_name: str | None = None,
    image_glob: str | None = None,
    list_file: str | Path | None = None,
    recursive: bool = False,
    reference_dir: str | Path | None = None,
    k_shot: int | None = None,
    threshold: float | None = None,
    threshold_rule: str = "robust_outlier",
    batch_size: int = 8,
    overlays: bool = True,
    normalize: str = "dataset",
    skip_bad: bool = False,
    seed: int = 0,
    max_map_size: int = 4096,
    tiles: TileSpec | str | None = None,
) -> DetectResult:
    """Score images with no labels into ``out``: ``predictions.csv``, ``.npy`` maps, overlays, ``manifest.json``.

    ``method`` is a registered name (built from ``options``, ``backbone`` — a ``BackboneSpec``, an open_clip
    model name or a dict of its fields, see ``BackboneSpec.of`` — and ``checkpoint``), a ``MethodSpec``, or an
    already built ``Method`` (kept, e.g. by a service). ``tiles``: a ``TileSpec`` or its text (``"auto"``,
    ``"3x4+global"``; docs/high-resolution.md). The other arguments are ``DetectJob``'s fields. Every
    input is checked before any model loads; the folder is locked for the run and resumes only the same settings.
    """
    job = DetectJob(
        [str(p) for p in as_paths(paths, "paths")],
        as_path(out, "out"),
        list_file=as_path(list_file, "list_file") if list_file is not None else None,
        image_glob=image_glob,
        recursive=recursive,
        class_name=class_name,
        reference_dir=as_path(reference_dir, "reference_dir") if reference_dir is not None else None,
        k_shot=k_shot,
        threshold=threshold,
        threshold_rule=threshold_rule,
        batch_size=batch_size,
        overlays=overlays,
        normalize=normalize,
        skip_bad=skip_bad,
        seed=seed,
        max_map_size=max_map_size,
        tiles=TileSpec.parse(tiles) if isinstance(tiles, str) else tiles,
    )
    if isinstance(method, str):
        ckpt = as_path(checkpoint, "checkpoint") if checkpoint is not None else None
        method = MethodSpec(method, BackboneSpec.of(backbone, seed=seed), as_options(options), ckpt)
    return detect_job(method, job, reporter=reporter)


def detect_job(method: MethodSpec | Method, job: DetectJob, *, reporter: Reporter | None = None) -> DetectResult:
    """``detect`` from a typed job: the CLI's entry (``method`` a spec, or a built ``Method`` a service keeps)."""
    if not isinstance(method, MethodSpec | Method):
        raise TypeError(f"method: expected a method name, MethodSpec or Method, not {type(method).__name__}")
    with using(reporter):
        spec = method.validate(batch_size=job.batch_size) if isinstance(method, MethodSpec) else None
        job.validate(method.cls if isinstance(method, MethodSpec) else type(method))
        if spec is not None:
            refuse_tiled_rescaling(spec.cls, spec.config, job.tiles)
        with RunLock(job.out):
            if spec is not None:
                job.check_resume(spec)
            built = spec.build() if spec is not None else method
            assert isinstance(built, Method)
            return run_detect(built, job)


def check_k_shot(k_shot: int | None, reference_dir: Path | None, cls: type[Method]) -> None:
    """``--k-shot``: how many normal images of ``--reference-dir`` a few-shot method memorises (0 = all of them).

    Left out (None), half are memorised and the rest calibrate the threshold (``decide.REFERENCE_SPLIT``).
    """
    if k_shot is None:
        return
    if k_shot < 0:
        raise ZsadInputError(f"--k-shot {k_shot}: must be >= 0 (0 = every reference image)")
    if k_shot and reference_dir is None:
        raise ZsadInputError(f"--k-shot {k_shot}: needs --reference-dir, the folder of normal images to take them from")
    if k_shot and not cls.supports_few_shot:
        raise ZsadInputError(f"--k-shot: method {cls.name} takes no reference images (they only calibrate)")


def reference_files(
    folder: Path, recursive: bool = False, image_glob: str | None = None, out: Path | None = None
) -> list[Path]:
    """The images of ``--reference-dir``; a missing folder is refused in one line."""
    from zsad.data.files import collect_images

    if not Path(folder).is_dir():
        raise ZsadInputError(f"--reference-dir {folder}: folder not found")
    return collect_images([Path(folder)], recursive, image_glob, exclude=[out] if out is not None else [])


def load_references(
    method: Method, files: list[Path], k_shot: int | None, seed: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int]]:
    """(few-shot references, calibration images, seeded order of ``files``) as every run splits them."""
    from zsad.data import ImageList

    if not files:
        return None, None, []
    pre = method.backbone.preprocess
    ds = ImageList(files, image_size=pre.image_size, mean=pre.mean, std=pre.std)
    order = reference_order(len(ds), seed)
    refs, calib = split_references(method.supports_few_shot, torch.stack([ds[i]["image"] for i in order]), k_shot)
    return refs, calib, order


def load_reference_images(
    method: Method, files: list[Path], k_shot: int | None, seed: int
) -> tuple[list[Any], list[Any]]:
    """``load_references`` at full resolution, for tiled runs: (memorised, calibration) PIL images, split alike."""
    from zsad.data import load_image

    refs, calib = split_reference_files(files, k_shot, seed, method.supports_few_shot)
    return [load_image(f) for f in refs], [load_image(f) for f in calib]


def split_reference_files(
    files: Sequence[Path], k_shot: int | None, seed: int, few_shot: bool
) -> tuple[list[Path], list[Path]]:
    """(memorised, calibration) reference files in the seeded order every front end draws them in."""
    ordered = [files[i] for i in reference_order(len(files), seed)]
    k = memorised(len(ordered), k_shot, few_shot)
    return (ordered[:k] if few_shot else []), ordered[k:]


def reference_order(n: int, seed: int = 0) -> list[int]:
    """The seeded order every front end draws ``n`` reference images in (the first ones are memorised)."""
    return [int(i) for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def split_references(
    few_shot: bool, references: torch.Tensor, k_shot: int | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(few-shot references, calibration images) as every front end splits them (``decide.REFERENCE_SPLIT``).

    The threshold is calibrated on the images not memorised only, since a memorised reference scores unrealistically
    low.
    """
    k = memorised(len(references), k_shot, few_shot)
    return (references[:k] if few_shot else None), references[k:]


def normals_of(
    method: Method, calib: torch.Tensor | None, set_parts: dict[str, np.ndarray] | None = None
) -> Normals | None:
    """Scores and map maxima of known-normal images, for the normal-quantile image and pixel thresholds.

    ``set_parts``: the score parts of the scored set when its scores were re-scaled set-wide (transductive), so
    the normal images get the same set statistics as the images they calibrate.
    """
    if calib is None or not len(calib):
        return None
    with torch.no_grad():
        pred = method.predict(calib)
    scores = pred.pred_score.cpu().numpy().astype(np.float64)
    if set_parts:
        calib_parts = {k: v.cpu().numpy().astype(np.float64) for k, v in pred.score_parts.items()}
        rescored = method.finalize_scores(calib_parts, fit=set_parts)
        scores = rescored if rescored is not None else scores
    return Normals(scores, pred.anomaly_map.flatten(1).amax(1).cpu().numpy().astype(np.float64))


def overlay_panel(
    image: Any,
    amap: np.ndarray,
    colour_range: tuple[float, float],
    pthr: Threshold,
    score: float,
    label: bool | None,
    scope: str,
    random_weights: bool = False,
) -> np.ndarray:
    """The [input | heatmap] PNG panel of one result, at the map's size (the image is scaled to it).

    ``label`` None: no decision was made. ``random_weights``: the panel says so in red.
    """
    from PIL import Image

    from zsad.viz import render_prediction
    from zsad.viz.overlay import RANDOM_WEIGHTS_MARK

    if image.size != (amap.shape[1], amap.shape[0]):
        image = image.resize((amap.shape[1], amap.shape[0]), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return render_prediction(
        np.asarray(image),
        amap,
        colour_range[0],
        colour_range[1],
        pred_mask=pthr.apply(amap) if math.isfinite(pthr.value) else None,
        score=score,
        label=label,
        scope=scope,
        warning=RANDOM_WEIGHTS_MARK if random_weights else None,
    )


def run_detect(method: Method, job: DetectJob) -> DetectResult:
    """Score what the folder does not hold yet, then decisions (``zsad.runs.decide``), overlays and the manifest.

    Every input ends as exactly one row (``predictions.csv``) or one error row (``errors.csv``, with
    ``--skip-bad``). Rows of inputs that have since vanished are kept, marked ``input_missing``, labelled by the
    threshold but left out of fitting it and of the colour scale (see docs/reliability.md).
    """
    from zsad.data import ImageList
    from zsad.runs.tiles import setup_tiled, tiled_normals

    pre = method.backbone.preprocess
    ds = ImageList(job.files, image_size=pre.image_size, mean=pre.mean, std=pre.std)
    tiles = job.tiles
    refuse_tiled_rescaling(type(method), method.config, tiles)
    calib_images: list[Any] = []
    calib: torch.Tensor | None = None
    if tiles is None:
        refs, calib, _ = load_references(method, job.references, job.k_shot, job.seed)
        prepare_method(method, job.class_name, refs)
    else:
        ref_images, calib_images = load_reference_images(method, job.references, job.k_shot, job.seed)
        setup_tiled(method, job.class_name, ref_images, tiles)
    say = reporter()
    if job.skipped:
        say.message(f"passed over in the input folders: {job.skipped.summary()}", "note")
    key = {**method_key(method), "class_name": method.class_name, "k_shot": method.k_shot, "inputs": job.inputs()}
    key |= tile_key(tiles)
    folder = DetectFolder(job.out, key, "detect")
    todo = len(folder.pending([s.image_path for s in ds.samples]))

    def on_error(err: dict[str, Any]) -> None:
        folder.fail(str(err["image_path"]), str(err["error"]))

    scored = 0
    with say.task(f"{method.name}: scoring", todo) as task, kept_on_failure(folder.log, job.out):
        results = _untiled if tiles is None else _tiled
        for batch in results(method, ds, job, folder, on_error):
            rows = [row for item in batch if (row := folder.write_map(*item, job.skip_bad)) is not None]
            folder.log.append(rows)
            scored += len(rows)
            task.update(completed=scored + len(folder.failed))
        task.update(completed=scored + len(folder.failed))  # files skipped in the last batch count as done

    base = {
        **method.describe(),
        "command": "detect",
        "inputs": job.inputs(),
        "inputs_skipped": job.skipped.counts() if job.skipped else {},
        "normalize": job.normalize,
        "max_map_size": job.max_map_size,
        **tile_key(tiles),
        "transductive": method.is_transductive,
        "notes": list(method.set_notes),
    }
    if method.set_level and method.is_transductive:
        say.message(f"{method.name}: TRANSDUCTIVE: {method.transductive_note}", "warning")
    decision = folder.decide(
        {str(s.image_path) for s in ds.samples},
        job.policy(),
        base,
        finalize=method.finalize_scores if method.is_transductive else None,
        normals=lambda parts: (
            normals_of(method, calib, parts)
            if tiles is None
            else Normals(*tiled_normals(method, calib_images, tiles, job.batch_size, job.max_map_size))
            if calib_images
            else None
        ),
    )
    if decision.rescaled:
        n = len(decision.scores) - decision.num_missing
        say.message(f"{method.name}: TRANSDUCTIVE scores (re-scaled over all {n} images)", "warning")
    overlay_errors: list[dict[str, str]] = []
    if job.overlays:
        random_weights = bool(getattr(method.backbone, "random_init", False))
        overlay_errors = _write_overlays(folder.log.rows, job.out, job, decision.pixel_threshold, random_weights)
    skipped = job.skipped.summary() if job.skipped else ""
    return folder.close(decision, base, skipped, overlay_errors)


Scored = tuple[str, float, np.ndarray, tuple[int, int], str]  # path, score, map at its written size, (H, W), parts


def _untiled(
    method: Method, ds: Any, job: DetectJob, folder: DetectFolder, on_error: Callable[[dict[str, Any]], None]
) -> Iterator[Iterator[Scored]]:
    """Per batch, its images' results; each map is resized to its written size only as it is written."""
    for sb in score_dataset(method, ds, job.batch_size, skip_paths=folder.done, skip_bad=job.skip_bad,
                            on_error=on_error):  # fmt: skip
        hs, ws = sb.batch["original_size"]

        def items(sb: Any = sb, hs: Any = hs, ws: Any = ws) -> Iterator[Scored]:
            for i, p in enumerate(sb.paths):
                h, w = int(hs[i]), int(ws[i])
                full = resize_map(sb.maps[i], map_size(h, w, job.max_map_size))
                yield p, float(sb.scores[i]), full, (h, w), parts_json(sb.parts, i)

        yield items()


def _tiled(
    method: Method, ds: Any, job: DetectJob, folder: DetectFolder, on_error: Callable[[dict[str, Any]], None]
) -> Iterator[Iterator[Scored]]:
    """Per image, its stitched result (``zsad.runs.tiles``): a batch of one, written as soon as it is scored."""
    from zsad.runs.tiles import score_files_tiled

    assert job.tiles is not None
    paths = [str(s.image_path) for s in ds.samples]
    for r in score_files_tiled(method, paths, job.tiles, job.batch_size, job.max_map_size, skip_paths=folder.done,
                               skip_bad=job.skip_bad, on_error=on_error):  # fmt: skip
        yield iter([(r.path, r.score, r.anomaly_map, r.size, "{}")])


def _write_overlays(
    rows: list[dict[str, str]], out: Path, job: DetectJob, pthr: Threshold, random_weights: bool
) -> list[dict[str, str]]:
    """One PNG per row at the map's size (the image is scaled down with it when capped); returns the failures.

    Rows whose input is gone keep the overlay they had (it cannot be redrawn) and are left out of the colour scale.
    An overlay that cannot be drawn or written stops the run in one line, or with ``--skip-bad`` is listed in the
    manifest: the image was scored, so it keeps its row and is not an error row.
    """
    from zsad.data import load_image
    from zsad.viz import save_png

    (out / "overlays").mkdir(exist_ok=True)
    current = [r for r in rows if r["input_missing"] == "0"]
    gmin = min(float(r["map_min"]) for r in current)
    gmax = max(float(r["map_max"]) for r in current)
    failures: list[dict[str, str]] = []
    with reporter().task(f"overlays ({job.normalize} colour scale)", len(current)) as task:
        for r in rows:
            rel = Path("overlays") / f"{Path(r['anomaly_map_path']).stem}.png"
            if r["input_missing"] == "1":
                r["overlay_path"] = rel.as_posix() if (out / rel).is_file() else ""
                continue
            try:
                amap = np.load(out / r["anomaly_map_path"])
                vmin, vmax = (gmin, gmax) if job.normalize == "dataset" else (float(amap.min()), float(amap.max()))
                score = float(r["pred_score"])
                label = bool(int(r["pred_label"])) if r["pred_label"] else None
                image = load_image(r["image_path"])
                panel = overlay_panel(image, amap, (vmin, vmax), pthr, score, label, job.normalize, random_weights)
                save_png(out / rel, panel)
                r["overlay_path"] = rel.as_posix()
            except (OSError, ZsadInputError) as e:
                if not job.skip_bad:
                    if isinstance(e, OSError) and not e.filename:
                        raise OSError(e.errno, e.strerror or str(e), str(out / rel)) from None
                    raise
                if (out / rel).is_file():  # a stale overlay of an earlier run no longer matches
                    (out / rel).unlink()
                r["overlay_path"] = ""
                why = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
                failures.append({"image_path": r["image_path"], "error": f"overlay {rel}: {why}"})
                reporter().message(f"overlay not written: {r['image_path']}: {why}", "note")
            task.advance()
    return failures
