"""The ``zsad`` command: typer options, rich output and exit codes over ``zsad.runs`` (which does the work).

Exit codes: 0 done; 1 done, but ``--skip-bad`` skipped files (or overlays could not be written); 2 bad input, in
one line (refused before anything is written, or, for a file found unreadable while scoring, after the rows so far,
which are kept); 130 interrupted (rerun the same command to resume). ``ZSAD_DEBUG=1`` shows tracebacks instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from zsad import limits
from zsad.cli.options import (
    AbnormalDir,
    AllowLarge,
    Category,
    Checkpoint,
    Checkpoints,
    Complete,
    ImageDir,
    ImageGlob,
    LabelsCsv,
    MaskDir,
    MethodOpt,
    NormalDir,
    PublicUrl,
    Recursive,
    Rescan,
    RouteOpt,
    Settle,
    SinkOpt,
    TileOverlap,
    Tiles,
    TileScore,
    TileSize,
    Tta,
    parse_options,
    tile_spec,
    with_backbone_options,
)
from zsad.cli.reporting import RichReporter
from zsad.cli.tables import print_table
from zsad.errors import ZsadInputError, one_line
from zsad.limits import allowing_large
from zsad.runs import BackboneSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Zero-/few-shot visual anomaly detection with CLIP.")
console = Console(stderr=True, soft_wrap=True)
ProfileName = Annotated[
    str | None,
    typer.Option(
        help="A station profile (zsad profile list): it decides method, options, backbone, class name, references "
        "and threshold; needs --db."
    ),
]
ProfileDb = Annotated[
    str | None,
    typer.Option(envvar="ZSAD_DB", help="The station's database of --profile (sqlite:///... or postgresql://...)."),
]
ProfileRevision = Annotated[int | None, typer.Option(help="--profile: a revision (default: the current one).")]


def _profile_app() -> None:
    from zsad.cli.profile import app as profile_app
    from zsad.cli.watch import watch_cmd

    app.add_typer(profile_app, name="profile")
    app.command("watch")(watch_cmd)


def _decided_by(prof: dict[str, Any]) -> tuple[Any, ...]:
    """What a profile decides for detect and export: method, backbone, class name, references, k-shot, threshold."""
    return tuple(prof[k] for k in ("method", "backbone", "class_name", "reference_dir", "k_shot", "threshold"))


@contextmanager
def _profile_run(profile: str | None, db: str | None, revision: int | None, given: dict[str, Any]) -> Iterator[Any]:
    """A profile's settings for a detect or export run (None without ``--profile``).

    Its references are written under the cache, in a folder named by the revision's scoring key: the same
    revision always reads the same folder, so a detect run with ``--profile`` resumes like any other.

    The options the profile decides must be left out, so a command never silently mixes two setups.
    """
    if profile is None:
        if db is not None or revision is not None:
            raise ZsadInputError("--db/--profile-revision: only with --profile NAME")
        yield None
        return
    if db is None:
        raise ZsadInputError("--profile: give the station's database with --db URL (or env ZSAD_DB)")
    clash = [k for k, v in given.items() if v not in (None, [], False)]
    if clash:
        raise ZsadInputError(f"--profile {profile} decides {', '.join(clash)}: leave them out")
    from zsad.cli.profile import load, references_cache
    from zsad.runs import profile_settings

    p = load(db, profile, revision, references_cache)
    settings = profile_settings(p["setup"])
    settings.update(reference_dir=p["reference_dir"], profile=p)
    yield settings


def _fail(e: BaseException) -> NoReturn:
    """One line and exit 2; ``ZSAD_DEBUG=1`` shows the traceback instead (for bug reports)."""
    if os.environ.get("ZSAD_DEBUG"):
        raise e
    console.print(f"[red]error:[/] {one_line(e)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _one_line_errors(out: Path | None = None, kept: str = "the rows written so far") -> Iterator[None]:
    """Bad input and file-system errors end in one line (exit 2); Ctrl-C in one line (exit 130), results kept."""
    try:
        yield
    except (ZsadInputError, OSError) as e:
        _fail(e)
    except KeyboardInterrupt:
        where = f"; {kept} are kept in {out}: run the same command again to resume" if out else ""
        console.print(f"[red]interrupted[/]{where}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _reporter() -> RichReporter:
    return RichReporter(console)


@app.command("methods")
def methods_cmd() -> None:
    """List the registered methods."""
    from zsad.methods import get_method_class, list_methods

    table = Table("method", "backbone", "size", "few-shot", "trained", "doc")
    for name in list_methods():
        cls = get_method_class(name)
        cfg = cls.config_cls()
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        table.add_row(
            name,
            f"{cfg.backbone} ({cfg.pretrained})",
            str(cfg.image_size),
            "yes" if cls.supports_few_shot else "no",
            "yes (zsad train)" if cls.trainable else "no",
            doc,
        )
    print_table(table)


@app.command("samples")
def samples_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the generated sample images into.")],
    n_normal: Annotated[int, typer.Option(help="Normal images (0 to 10000).")] = 4,
    n_anomalous: Annotated[int, typer.Option(help="Defective images (0 to 10000).")] = 4,
    size: Annotated[int, typer.Option(help="Side of each image in px (16 to 4096).")] = 256,
    seed: int = 0,
    allow_large: AllowLarge = False,
) -> None:
    """Generate a few synthetic product images (normal + defective, with masks) for a first run."""
    from zsad.data import make_sample_images

    with _one_line_errors(), allowing_large(allow_large):
        limits.SAMPLE_COUNT.check(n_normal, "--n-normal")
        limits.SAMPLE_COUNT.check(n_anomalous, "--n-anomalous")
        limits.SAMPLE_SIZE.check(size)
        root = make_sample_images(out, n_normal=n_normal, n_anomalous=n_anomalous, size=size, seed=seed)
    console.print(f"wrote samples to {root} (good/, defect/, ground_truth/)")


@app.command("detect")
@with_backbone_options
def detect_cmd(
    bb: BackboneSpec,
    path: Annotated[list[str] | None, typer.Argument(help="Image file(s), folder(s) or glob pattern(s).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (resumes if it holds an earlier run).")] = Path("results"),
    method: Annotated[str, typer.Option(help="Method name (see `zsad methods`).")] = "winclip",
    class_name: Annotated[str | None, typer.Option(help="Object name used in prompts (default 'object').")] = None,
    image_glob: Annotated[
        str | None,
        typer.Option(help="Which files of the folders to score, e.g. '*.jpg' (needed when masks lie beside images)."),
    ] = None,
    list_file: Annotated[
        Path | None,
        typer.Option("--list", help="Text file of image paths, one per line (relative to the file's folder)."),
    ] = None,
    reference_dir: Annotated[
        Path | None, typer.Option(help="Folder of NORMAL images: few-shot references and threshold calibration.")
    ] = None,
    k_shot: Annotated[
        int | None,
        typer.Option(help="Reference images a few-shot method memorises (0 = all); default: half, the rest calibrate."),
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Manual image threshold (skips calibration).")] = None,
    threshold_rule: Annotated[
        str,
        typer.Option(
            help="With no threshold and no --reference-dir: robust_outlier (most images normal) or two_mode (Otsu)."
        ),
    ] = "robust_outlier",
    recursive: bool = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward (1 to 1024).")] = 8,
    overlays: Annotated[bool, typer.Option(help="Write PNG overlays.")] = True,
    normalize: Annotated[
        str, typer.Option(help="Heatmap colour scale: dataset (one scale for all) or per_image.")
    ] = "dataset",
    max_map_size: Annotated[
        int,
        typer.Option(
            help="Long side cap (px, up to 16384) of written maps and overlays; larger images are scaled. 0 = none."
        ),
    ] = 4096,
    skip_bad: Annotated[
        bool,
        typer.Option(help="Skip files that cannot be read or written (listed in errors.csv; exit code 1)."),
    ] = False,
    seed: int = 0,
    option: MethodOpt = None,
    checkpoint: Checkpoint = None,
    tta: Tta = False,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data; pip install 'zsad\\[ray]').")] = (
        "local"
    ),
    ray_address: Annotated[
        str | None, typer.Option(help="ray: cluster to join ('auto', 'ray://host:10001'); default: a local Ray.")
    ] = None,
    actors: Annotated[int, typer.Option(help="ray: model actors (one model each).")] = 1,
    gpus_per_actor: Annotated[float, typer.Option(help="ray: GPUs per actor (0 = CPU actors).")] = 0.0,
    group_by: Annotated[
        str | None,
        typer.Option(help="ray: sets of a set-level method: 'parent' (folder) or 'csv:COLUMN' of a --list CSV."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="A folder written by `zsad export`: score with it, torch-free (ONNX/OpenVINO; runs with only "
            "pip install 'zsad\\[runtime]'). Its options: zsad detect --model DIR --help."
        ),
    ] = None,
    profile: ProfileName = None,
    db: ProfileDb = None,
    profile_revision: ProfileRevision = None,
    tiles: Tiles = "none",
    tile_overlap: TileOverlap = 0.25,
    tile_size: TileSize = None,
    tile_score: TileScore = "max_tile",
) -> None:
    """Score images with no labels: predictions.csv, .npy maps and overlays, written incrementally.

    Exit codes: 0 done; 1 done, but some files were skipped (--skip-bad; see errors.csv); 2 bad input, in one line
    (a file found unreadable while scoring stops the run there: the rows so far are kept, rerun to resume); 130
    interrupted (rerun the same command to resume).
    """
    from zsad import runs
    from zsad.methods.options import route_options

    if model is not None:  # `zsad` routes this before torch loads; here for `app` called directly
        from zsad.runtime.detect import run

        raise typer.Exit(run(_runtime_args(locals())))
    decided: dict[str, Any] = {"--class-name": class_name, "--reference-dir": reference_dir, "--k-shot": k_shot}
    decided |= {"--threshold": threshold, "--option": option, "--checkpoint": checkpoint}
    with _one_line_errors(out):
        cut = tile_spec(tiles, tile_overlap, tile_size, tile_score)
    decided["--tiles"] = cut
    with _one_line_errors(out), _profile_run(profile, db, profile_revision, decided) as prof:
        if prof is not None:
            method, bb, class_name, reference_dir, k_shot, threshold = _decided_by(prof)
            threshold_rule = prof["threshold_rule"]
            cut = prof["tiles"]
        opts = route_options([method], parse_options(option, tta))[method] if prof is None else prof["options"]
        if engine not in ("local", "ray"):
            raise ZsadInputError(f"--engine {engine}: use local or ray")
        ray_only = {"--ray-address": ray_address, "--group-by": group_by}
        given = [k for k, v in ray_only.items() if v is not None] + (["--actors"] if actors != 1 else [])
        if engine == "local" and (given or gpus_per_actor):
            raise ZsadInputError(f"{(given or ['--gpus-per-actor'])[0]}: only with --engine ray")
        job = runs.DetectJob(
            list(path or []),
            out,
            list_file=list_file,
            image_glob=image_glob,
            recursive=recursive,
            class_name=class_name,
            reference_dir=reference_dir,
            k_shot=k_shot,
            threshold=threshold,
            threshold_rule=threshold_rule,
            batch_size=batch_size,
            overlays=overlays,
            normalize=normalize,
            skip_bad=skip_bad,
            seed=seed,
            max_map_size=max_map_size,
            tiles=cut,
        )
        spec = runs.MethodSpec(method, bb, opts, checkpoint)
        if engine == "ray":  # bad files always become error rows there; no overlays
            from zsad.engines.ray_data import RayOptions, detect_ray

            ropts = RayOptions(ray_address, actors, gpus_per_actor, group_by=group_by)
            result = detect_ray(spec, job, ropts, reporter=_reporter())
        else:
            result = runs.detect_job(spec, job, reporter=_reporter())
    raise typer.Exit(result.exit_code)


def _runtime_args(given: dict[str, Any]) -> list[str]:
    """``detect --model``'s arguments from the options typer parsed (the runtime reads a subset)."""
    args = [*(given["path"] or []), "--model", str(given["model"]), "--out", str(given["out"])]
    for name in ("list_file", "image_glob", "threshold", "threshold_rule", "batch_size", "max_map_size"):
        if given[name] is not None:
            args += ["--list" if name == "list_file" else "--" + name.replace("_", "-"), str(given[name])]
    if given["tiles"] != "none":
        args += ["--tiles", str(given["tiles"])]
    for name, default in (("tile_overlap", 0.25), ("tile_size", None), ("tile_score", "max_tile")):
        if given[name] != default:
            args += ["--" + name.replace("_", "-"), str(given[name])]
    return args + (["--recursive"] if given["recursive"] else []) + (["--skip-bad"] if given["skip_bad"] else [])


@app.command("export")
@with_backbone_options
def export_cmd(
    bb: BackboneSpec,
    out: Annotated[Path, typer.Option(help="Folder for the model file(s) and manifest.json.")],
    method: Annotated[
        str | None, typer.Option(help="winclip, sdp, sdp+, rwda, anomalyclip or anomalyvfm (see docs/export.md).")
    ] = None,
    class_name: Annotated[str | None, typer.Option(help="Object name baked into the prompts.")] = None,
    reference_dir: Annotated[
        Path | None, typer.Option(help="NORMAL images: few-shot references (baked in) and threshold calibration.")
    ] = None,
    k_shot: Annotated[
        int | None, typer.Option(help="Reference images to memorise (0 = all); default: half, the rest calibrate.")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Image threshold to record (changeable later).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx or openvino (IR: model.xml + model.bin).")] = "onnx",
    option: MethodOpt = None,
    checkpoint: Checkpoint = None,
    seed: int = 0,
    profile: ProfileName = None,
    db: ProfileDb = None,
    profile_revision: ProfileRevision = None,
    tiles: Tiles = "none",
    tile_overlap: TileOverlap = 0.25,
    tile_size: TileSize = None,
    tile_score: TileScore = "max_tile",
) -> None:
    """Export a method as one graph (normalised images -> pred_score, anomaly_map) plus a manifest.

    ``--profile NAME --db URL`` exports exactly that station profile's setup (method, options, backbone, class
    name, references, threshold, tiles). ``--tiles``: references are tiled into the memory, the thresholds
    calibrated on tiled scores, and the tiling recorded as the runtime's default (the graph scores tiles).
    """
    from zsad.export import export_run
    from zsad.methods.options import route_options

    decided: dict[str, Any] = {"--class-name": class_name, "--reference-dir": reference_dir, "--k-shot": k_shot}
    decided |= {"--threshold": threshold, "--option": option}
    with _one_line_errors():
        cut = tile_spec(tiles, tile_overlap, tile_size, tile_score)
    decided["--tiles"] = cut
    with _one_line_errors(), _profile_run(profile, db, profile_revision, decided) as prof:
        if prof is not None:
            method, bb, class_name, reference_dir, k_shot, threshold = _decided_by(prof)
            cut = prof["tiles"]
        if method is None:
            raise ZsadInputError("--method: missing; name a method, or export a station profile with --profile")
        opts = route_options([method], parse_options(option))[method] if prof is None else prof["options"]
        result = export_run(
            method,
            out,
            backbone=bb,
            options=opts,
            checkpoint=checkpoint,
            class_name=class_name,
            reference_dir=reference_dir,
            k_shot=k_shot,
            threshold=threshold,
            fmt=fmt,
            seed=seed,
            tiles=cut,
        )
    par, man = result.parity, result.manifest
    engine = "OpenVINO" if man["format"] == "openvino" else "onnxruntime"
    thr, pthr = man["threshold"], man["pixel_threshold"]
    console.print(
        f"wrote {result.out / man['model_file']} ({man['precision']}); {engine} vs torch on {int(par['batch'])} "
        f"images: max |d| score {par['pred_score_max_abs']:.2g}, map {par['anomaly_map_max_abs']:.2g}; threshold "
        f"{thr['value']} ({thr['source']}); pixel threshold {pthr['value']} ({pthr['source']})"
    )


def _data_spec(args: dict[str, Any], **extra: Any) -> Any:
    """The dataset description shared by `eval` and `train` from a command's arguments."""
    from zsad.data.spec import DatasetSpec, default_root

    args = {**args, "root": args["root"] if args["root"] is not None else default_root(args["dataset"])}

    keys = ("normal_dir", "abnormal_dir", "mask_dir", "image_dir", "labels_csv", "image_glob", "class_name")
    return DatasetSpec(
        dataset=args["dataset"],
        root=args["root"],
        categories=args["category"] or [],
        **{k: args[k] for k in keys},
        **extra,
    )


@app.command("eval")
@with_backbone_options
def eval_cmd(
    bb: BackboneSpec,
    dataset: Annotated[
        str,
        typer.Option(help="A benchmark by name (mvtec, visa, mpdd, btad, ...; docs/datasets.md) or folder."),
    ],
    root: Annotated[
        Path | None, typer.Option(help="Dataset root (elpv: defaults to the installed elpv-dataset package).")
    ] = None,
    category: Category = None,
    method: Annotated[
        list[str] | None, typer.Option(help="Method (repeatable: several give one comparison table). Default winclip.")
    ] = None,
    class_name: Annotated[str | None, typer.Option(help="Prompt object name (default: the category name).")] = None,
    out: Path = Path("results"),
    normal_dir: NormalDir = None,
    abnormal_dir: AbnormalDir = None,
    mask_dir: MaskDir = None,
    image_dir: ImageDir = None,
    labels_csv: LabelsCsv = None,
    image_glob: ImageGlob = "*",
    k_shot: Annotated[int, typer.Option(help="Few-shot: normal reference images from the train split.")] = 0,
    reference_dir: Annotated[Path | None, typer.Option(help="folder: normal reference images (few-shot).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward (1 to 1024).")] = 8,
    overlays: Annotated[int, typer.Option(help="Overlays to write per category.")] = 8,
    seed: int = 0,
    option: MethodOpt = None,
    checkpoint: Checkpoints = None,
    tta: Tta = False,
    allow_seen: Annotated[
        bool, typer.Option(help="Evaluate images a checkpoint was trained on (NOT zero-shot; flagged in results).")
    ] = False,
    eval_resolution: Annotated[
        str,
        typer.Option(
            help="Pixel metrics: model = as the papers, pooled at the model's input size; native = at each image's "
            "own size, for small defects."
        ),
    ] = "model",
    tiles: Tiles = "none",
    tile_overlap: TileOverlap = 0.25,
    tile_size: TileSize = None,
    tile_score: TileScore = "max_tile",
) -> None:
    """Evaluate on a labelled dataset: predictions.csv, metrics.json, metrics.md (per category + mean).

    Several --method give one folder per method under --out and comparison.md / comparison.json side by side.
    With --tiles, each image is scored tile by tile at full size; its stitched map is compared at --eval-resolution.
    """
    from zsad import runs
    from zsad.methods.options import route_options
    from zsad.runs import METRIC_KEYS, pct

    with _one_line_errors(out):
        methods = method or ["winclip"]
        options = route_options(methods, parse_options(option, tta))
        data = _data_spec(locals(), k_shot=k_shot, reference_dir=reference_dir, seed=seed, allow_seen=allow_seen)
        results = runs.evaluate(
            data,
            out,
            methods=methods,
            options=options,
            backbone=bb,
            checkpoints=checkpoint or [],
            batch_size=batch_size,
            overlays=overlays,
            reporter=_reporter(),
            eval_resolution=eval_resolution,
            tiles=tile_spec(tiles, tile_overlap, tile_size, tile_score),
        )
    for r in results.values():
        table = Table("category", *METRIC_KEYS, title=r.title)
        for cat, values in r.rows():
            table.add_row(cat, *values)
        print_table(table)
    if len(results) > 1:
        table = Table("method", *METRIC_KEYS, title="mean over categories")
        for name, r in results.items():
            table.add_row(name, *(pct(r.mean.get(k)) for k in METRIC_KEYS))
        print_table(table)


@app.command("benchmark")
@with_backbone_options
def benchmark_cmd(
    bb: BackboneSpec,
    suite: Annotated[str, typer.Option(help="industrial, medical or anomalyclip17 (docs/datasets.md).")],
    root: Annotated[Path, typer.Option(help="Folder holding the datasets, each in its usual folder name.")],
    out: Annotated[Path, typer.Option(help="Output folder (resumes a killed run).")] = Path("benchmark"),
    method: Annotated[list[str] | None, typer.Option(help="Method (repeatable). Default winclip.")] = None,
    dataset: Annotated[list[str] | None, typer.Option(help="Only these datasets of the suite (repeatable).")] = None,
    k_shot: Annotated[int, typer.Option(help="Few-shot: normal references from each dataset's train split.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward (1 to 1024).")] = 8,
    seed: int = 0,
    option: MethodOpt = None,
    checkpoint: Checkpoints = None,
) -> None:
    """Every dataset of a suite found under --root, every method: one table (table.md, table.json, table.svg)."""
    from zsad.methods.options import route_options
    from zsad.runs import benchmark

    with _one_line_errors(out):
        methods = method or ["winclip"]
        result = benchmark(
            suite,
            root,
            out,
            methods=methods,
            options=route_options(methods, parse_options(option)),
            backbone=bb,
            checkpoints=checkpoint or [],
            datasets=dataset or [],
            k_shot=k_shot,
            batch_size=batch_size,
            seed=seed,
            reporter=_reporter(),
        )
    console.print((out / "table.md").read_text())
    raise typer.Exit(result.exit_code)


@app.command("train")
@with_backbone_options
def train_cmd(
    bb: BackboneSpec,
    method: Annotated[str, typer.Option(help="A trainable method (see `zsad methods`).")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder (resumes an interrupted run with the same settings).")],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            help="Auxiliary annotated data: a benchmark name (docs/datasets.md) or folder (test split). Repeat with "
            "--root for a list. "
            "Not for rwda (text only)."
        ),
    ] = None,
    root: Annotated[
        list[Path] | None, typer.Option(help="Dataset root (one per --dataset, in the same order).")
    ] = None,
    category: Category = None,
    class_name: Annotated[str | None, typer.Option(help="Prompt object name (default: the category name).")] = None,
    normal_dir: NormalDir = None,
    abnormal_dir: AbnormalDir = None,
    mask_dir: MaskDir = None,
    image_dir: ImageDir = None,
    labels_csv: LabelsCsv = None,
    image_glob: ImageGlob = "*",
    epochs: Annotated[int | None, typer.Option(help="Default: the method's recipe.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="1 to 1024. Default: the method's recipe.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate. Default: the method's recipe.")] = None,
    train_seed: Annotated[int | None, typer.Option(help="Training seed. Default: the method's recipe.")] = None,
    option: MethodOpt = None,
) -> None:
    """Train a method's learnable parts on annotated data (CLIP frozen); writes safetensors + manifest.json."""
    from zsad import runs
    from zsad.methods.options import route_options

    with _one_line_errors(out, kept="the finished epochs"):
        opts = route_options([method], parse_options(option))[method]
        if batch_size is not None:
            limits.BATCH_SIZE.check(batch_size)
        dataset, root = dataset or [], root or []
        if len(dataset) != len(root):
            raise ZsadInputError(f"--dataset given {len(dataset)} times but --root {len(root)} times: pair them")
        args = dict(locals())
        data = [_data_spec({**args, "dataset": d, "root": r}) for d, r in zip(dataset, root, strict=True)]
        recipe = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": train_seed}
        path = runs.train(
            method,
            data,
            out,
            options=opts,
            backbone=bb,
            recipe={k: v for k, v in recipe.items() if v is not None},
            class_name=class_name,
            reporter=_reporter(),
        )
    console.print(f"checkpoint written to {path}; use it with --method {method} --checkpoint {path}")


@app.command("import-checkpoint")
@with_backbone_options
def import_cmd(
    bb: BackboneSpec,
    file: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint released with the official code (e.g. train_on_visa.pth; anomalyvfm: the Hugging Face "
            "release folder with config.json + model.safetensors, or its model.pkl)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="zsad checkpoint folder to write.")],
    trained_on: Annotated[str, typer.Option(help="What the released layers were trained on (recorded).")],
    method: Annotated[str, typer.Option(help="sdp+ (CLIP-AD), adaclip, anomalyclip or anomalyvfm.")] = "sdp+",
) -> None:
    """Convert an official release's trained parts into a zsad checkpoint (safetensors + manifest)."""
    from zsad import runs

    with _one_line_errors():
        path = runs.import_checkpoint(file, method, out, trained_on, backbone=bb, reporter=_reporter())
    console.print(f"wrote {path}; use it with --method {method} --checkpoint {path}")


@app.command("serve")
@with_backbone_options
def serve_cmd(
    bb: BackboneSpec,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the service to the network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    method: Annotated[str, typer.Option(help="Default method of requests that name none.")] = "winclip",
    token: Annotated[
        str | None,
        typer.Option(envvar="ZSAD_TOKEN", help="Secret every /v1 route requires as 'Authorization: Bearer ...'."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Also write every scored image here in `zsad detect`'s format (kept when the server stops)."),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="Images gathered into one forward from concurrent requests (1 to 1024).")
    ] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its forward.")] = (
        10.0
    ),
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting beyond this get 503 + Retry-After (1 to 4096).")
    ] = 64,
    max_images: Annotated[int, typer.Option(help="Images per request (1 to 1024).")] = 32,
    max_upload_mb: Annotated[float, typer.Option(help="Request body limit in MiB (413 above; up to 4096).")] = 64.0,
    max_models: Annotated[
        int, typer.Option(help="Prepared models (method, options, class) kept in memory (1 to 64).")
    ] = 4,
    max_map_size: Annotated[
        int, typer.Option(help="Long side cap (px, up to 16384) of returned maps and overlays; 0 = none.")
    ] = 1024,
    option: MethodOpt = None,
    checkpoint: Checkpoints = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    station: Annotated[
        bool,
        typer.Option(
            help="Keep profiles, history and reviews (needs --out): SQLite in OUT/station.db unless --db; the "
            "database replaces predictions.csv."
        ),
    ] = False,
    db: Annotated[
        str | None,
        typer.Option(
            envvar="ZSAD_DB",
            help="The station's database (implies --station): sqlite:///path.db, or postgresql://user@host/db "
            "for several servers sharing one history (pip install 'zsad\\[postgres]').",
        ),
    ] = None,
    keep_days: Annotated[int, typer.Option(help="Station: delete inspections older than this (0 = keep all).")] = 0,
    keep_images: Annotated[
        int, typer.Option(help="Station: only the newest N inspections keep image, map and overlay (0 = all).")
    ] = 0,
    station_name: Annotated[
        str | None, typer.Option(help="Station: how this server's rows name it (default: the host name).")
    ] = None,
    watch: Annotated[
        list[str] | None,
        typer.Option(
            help="Station: score every image written into DIR with profile PROFILE (DIR=PROFILE, repeatable)."
        ),
    ] = None,
    recursive: Recursive = False,
    complete: Complete = "stable",
    settle: Settle = 1.0,
    route: RouteOpt = "none",
    rescan: Rescan = 10.0,
    sink: SinkOpt = None,
    public_url: PublicUrl = None,
    tiles: Tiles = "none",
    tile_overlap: TileOverlap = 0.25,
    tile_size: TileSize = None,
    tile_score: TileScore = "max_tile",
) -> None:
    """Serve the methods over HTTP, with a web page at / and the API docs at /docs.

    ``--tiles`` applies to ad hoc requests; a station profile carries its own tile setting.
    """
    import socket

    from zsad.methods import list_methods
    from zsad.methods.options import route_options

    with _one_line_errors(out, kept="the results scored so far"):
        try:
            from zsad.serve import serve
            from zsad.serve.service import ServeConfig
        except ImportError as e:
            raise ZsadInputError(
                f"zsad serve needs its extra: pip install 'zsad[serve]' ({e.name} is missing)"
            ) from None
        limits.SERVE_UPLOAD_MB.check(max_upload_mb)  # before it becomes bytes: inf or nan cannot
        from zsad.serve.watch import parse_watch

        parsed = [(t or method, k, v) for t, k, v in parse_options(option)]
        routed = route_options(list_methods(), parsed)
        watched = [
            parse_watch(w, recursive=recursive, complete=complete, settle_s=settle, route=route) for w in watch or []
        ]
        config = ServeConfig(
            method=method,
            backbone=bb,
            options={m: o for m, o in routed.items() if o},
            checkpoints=list(checkpoint or []),
            token=token,
            out=out,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_images=max_images,
            max_upload_bytes=max(1, int(max_upload_mb * 2**20)),
            max_models=max_models,
            max_map_size=max_map_size,
            station=station,
            db=db,
            keep_days=keep_days,
            keep_images=keep_images,
            station_name=station_name,
            watch=watched,
            rescan_s=rescan,
            sinks=list(sink or []),
            public_url=public_url,
            tiles=tile_spec(tiles, tile_overlap, tile_size, tile_score),
        )
        config.validate()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:  # a busy port in one line, before anything loads
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise ZsadInputError(f"--host {host} --port {port}: cannot bind ({e.strerror or e})") from None
        if host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"[yellow]note:[/] listening on {host}: reachable from the network", highlight=False)
        if token is None and host not in ("127.0.0.1", "localhost", "::1"):
            console.print("[yellow]note:[/] no --token: anyone who can reach the port can use it", highlight=False)
        from zsad.progress import using

        with using(_reporter()):  # the random-weights warning and notes of the checks, before uvicorn starts
            st = serve(config, host=host, port=port, log_level=log_level).stats()
    where = f"; results in {out}" if out else ""
    console.print(f"stopped: {st['requests']} requests, {st['images_scored']} images scored{where}", highlight=False)


_profile_app()
