"""The ``zsad`` command: a thin typer layer over the engine; every bad input ends in one line and exit 2."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from zsad.cli.tables import print_table
from zsad.errors import ZsadInputError

if TYPE_CHECKING:
    from zsad.runs.build import BackboneSpec, MethodSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Zero-/few-shot visual anomaly detection with CLIP.")
console = Console(stderr=True, soft_wrap=True)

Pretrained = Annotated[
    str | None,
    typer.Option(
        help="open_clip pretrained tag (downloaded on first use); 'none' = seeded RANDOM weights (smoke "
        "tests only). Default: the method's published weights."
    ),
]
Weights = Annotated[Path | None, typer.Option(help="Local checkpoint file (overrides --pretrained; env ZSAD_WEIGHTS).")]
Backbone = Annotated[str | None, typer.Option(help="open_clip model name. Default: the method's.")]
ImageSize = Annotated[int | None, typer.Option(help="Input resolution (square). Default: the method's.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")]
MethodOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Method option KEY=VALUE or METHOD:KEY=VALUE (repeatable)."),
]
Tta = Annotated[
    bool,
    typer.Option(help="Test-time adaptation on anomalies synthesised on the test images (dual-image; transductive)."),
]
Checkpoint = Annotated[
    Path | None, typer.Option(help="Trained parts of a trainable method (folder made by `zsad train`).")
]
Checkpoints = Annotated[
    list[Path] | None,
    typer.Option(
        "--checkpoint",
        help="Trained parts (folder made by `zsad train`); repeat it for several trainable methods: each checkpoint "
        "goes to the method its manifest names.",
    ),
]
NormalDir = Annotated[str | None, typer.Option(help="folder: normal images dir, relative to --root.")]
AbnormalDir = Annotated[str | None, typer.Option(help="folder: anomalous images dir, relative to --root.")]
MaskDir = Annotated[str | None, typer.Option(help="folder: masks dir (may equal the image dir).")]
ImageDir = Annotated[str | None, typer.Option(help="folder: one images dir labelled by --labels-csv.")]
LabelsCsv = Annotated[str | None, typer.Option(help="folder: CSV of id,label (1 = anomalous).")]
ImageGlob = Annotated[str, typer.Option(help="folder: image file pattern, e.g. '*.jpg'.")]
Category = Annotated[list[str] | None, typer.Option(help="Category (repeatable; default: all).")]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _parse_options(opts: list[str] | None) -> list[tuple[str | None, str, str]]:
    """``KEY=VALUE`` (every method) or ``METHOD:KEY=VALUE`` (one method); values are typed per method later."""
    from zsad.methods.options import parse_option

    return [parse_option(o) for o in opts or []]


def _option_names(method_name: str) -> set[str]:
    """The config fields (``-o`` keys) of a method."""
    import dataclasses

    from zsad.methods import get_method_class
    from zsad.methods.options import BACKBONE_FIELDS

    fields = {f.name for f in dataclasses.fields(get_method_class(method_name).config_cls)}
    return fields - set(BACKBONE_FIELDS)


def _options_for(method_name: str, parsed: list[tuple[str | None, str, Any]], strict: bool) -> dict[str, Any]:
    """The options that apply to one method; ``strict`` (a single method) lets the method reject unknown keys."""
    fields = _option_names(method_name)
    out = {}
    for target, key, value in parsed:
        if target is not None and target.lower() != method_name.lower():
            continue
        if strict or target is not None or key in fields:
            out[key] = value
    return out


def _check_options_used(methods: list[str], parsed: list[tuple[str | None, str, Any]]) -> None:
    """Every option must reach a selected method: a typo in a METHOD: prefix or a key is never silently dropped."""
    from zsad.methods import get_method_class

    selected = {get_method_class(m).name for m in methods}
    known = set().union(*(_option_names(m) for m in methods))
    for target, key, value in parsed:
        if target is not None and target.lower() not in selected:
            raise ZsadInputError(
                f"--option {target}:{key}={value}: {target!r} is not a selected method ({', '.join(sorted(selected))})"
            )
        if target is None and key not in known:
            raise ZsadInputError(f"--option {key}: no selected method ({', '.join(methods)}) has this option")
        if target is not None and key not in _option_names(target.lower()):
            names = ", ".join(sorted(_option_names(target.lower())))
            raise ZsadInputError(f"--option {target}:{key}: {target} has no option {key!r} (known: {names})")


def _backbone(
    backbone: str | None,
    pretrained: str | None,
    weights: Path | None,
    image_size: int | None,
    device: str | None,
    seed: int,
) -> BackboneSpec:
    """The backbone options every command shares (``None``: the method's default)."""
    from zsad.runs.build import BackboneSpec

    return BackboneSpec(backbone, pretrained, weights, image_size, device or None, seed)


def _spec(
    method: str, options: dict[str, Any], bb: BackboneSpec, checkpoint: Path | None = None, *, train: bool = False
) -> MethodSpec:
    """A method spec with every input checked (options, weights, checkpoint), before any model is built."""
    from zsad.runs.build import MethodSpec

    return MethodSpec(method, bb, options, checkpoint).validate(for_training=train)


def _build(spec: MethodSpec, cache: dict[tuple[Any, ...], Any] | None = None) -> Any:
    """Load the backbone (shared through ``cache``) and the method; warn loudly about random weights."""
    fresh = cache is None or spec.backbone.cache_key() not in cache
    m = spec.build(cache)
    if fresh and m.backbone.random_init:
        console.print(
            "[bold red]WARNING: --pretrained none: the backbone has SEEDED RANDOM weights. Scores and maps are "
            "meaningless for detection; use this only for smoke tests, speed and fidelity checks.[/]"
        )
    return m


_DATA_ARGS = ("normal_dir", "abnormal_dir", "mask_dir", "image_dir", "labels_csv", "image_glob", "class_name")


def _data_spec(args: dict[str, Any], **extra: Any) -> Any:
    """The dataset description shared by `eval` and `train` from a command's arguments."""
    from zsad.cli.evaluate import EvalSpec

    return EvalSpec(
        dataset=args["dataset"],
        root=args["root"],
        categories=args["category"] or [],
        **{k: args[k] for k in _DATA_ARGS},
        **extra,
    )


def _fail(e: BaseException) -> NoReturn:
    """One line and exit 2; ``ZSAD_DEBUG=1`` shows the traceback instead (for bug reports)."""
    if os.environ.get("ZSAD_DEBUG"):
        raise e
    if isinstance(e, OSError) and not isinstance(e, ZsadInputError):
        where = f"{e.filename}: " if e.filename else ""
        text = f"{where}{e.strerror or type(e).__name__}"
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    console.print(f"[red]error:[/] {text}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _one_line_errors(out: Path | None = None, kept: str = "the rows written so far") -> Iterator[None]:
    """Bad input and file-system errors end in one line (exit 2); Ctrl-C in one line (exit 130), results kept."""
    try:
        yield
    except ZsadInputError as e:
        _fail(e)
    except OSError as e:
        _fail(e)
    except KeyboardInterrupt:
        where = f"; {kept} are kept in {out}: run the same command again to resume" if out else ""
        console.print(f"[red]interrupted[/]{where}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


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
    n_normal: int = 4,
    n_anomalous: int = 4,
    size: int = 256,
    seed: int = 0,
) -> None:
    """Generate a few synthetic product images (normal + defective, with masks) for a first run."""
    from zsad.data import make_sample_images

    root = make_sample_images(out, n_normal=n_normal, n_anomalous=n_anomalous, size=size, seed=seed)
    console.print(f"wrote samples to {root} (good/, defect/, ground_truth/)")


@app.command("detect")
def detect_cmd(
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
    k_shot: Annotated[int, typer.Option(help="Number of reference images to use (0 = all in --reference-dir).")] = 0,
    threshold: Annotated[float | None, typer.Option(help="Manual image threshold (skips calibration).")] = None,
    recursive: bool = False,
    batch_size: int = 8,
    overlays: Annotated[bool, typer.Option(help="Write PNG overlays.")] = True,
    normalize: Annotated[
        str, typer.Option(help="Heatmap colour scale: dataset (one scale for all) or per_image.")
    ] = "dataset",
    max_map_size: Annotated[
        int, typer.Option(help="Long side cap (px) of written maps and overlays; larger images are scaled. 0 = none.")
    ] = 4096,
    skip_bad: Annotated[
        bool,
        typer.Option(help="Skip files that cannot be read or written (listed in errors.csv; exit code 1)."),
    ] = False,
    backbone: Backbone = None,
    pretrained: Pretrained = None,
    weights: Weights = None,
    image_size: ImageSize = None,
    device: Device = "",
    seed: int = 0,
    option: MethodOpt = None,
    checkpoint: Checkpoint = None,
    tta: Tta = False,
) -> None:
    """Score images with no labels: predictions.csv, .npy maps and overlays, written incrementally.

    Exit codes: 0 done; 1 done, but some files were skipped (--skip-bad; see errors.csv); 2 bad input, nothing
    scored; 130 interrupted (rerun the same command to resume).
    """
    from zsad.cli.detect import DetectJob, run_detect
    from zsad.runs.outputs import RunLock

    with _one_line_errors(out):
        parsed = _parse_options(option) + ([(None, "tta", "true")] if tta else [])
        _check_options_used([method], parsed)
        opts = _options_for(method, parsed, strict=True)
        bb = _backbone(backbone, pretrained, weights, image_size, device, seed)
        spec = _spec(method, opts, bb, checkpoint)
        job = DetectJob(
            paths=list(path or []),
            out=out,
            list_file=list_file,
            image_glob=image_glob,
            recursive=recursive,
            class_name=class_name,
            reference_dir=reference_dir,
            k_shot=k_shot,
            threshold=threshold,
            batch_size=batch_size,
            overlays=overlays,
            normalize=normalize,
            skip_bad=skip_bad,
            seed=seed,
            max_map_size=max_map_size,
        ).validate(spec)
        with RunLock(out):
            job.check_resume(spec)
            code = run_detect(_build(spec), job, new_progress=_progress, console=console)
    raise typer.Exit(code)


@app.command("eval")
def eval_cmd(
    dataset: Annotated[str, typer.Option(help="mvtec | visa | folder")],
    root: Annotated[Path, typer.Option(help="Dataset root.")],
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
    batch_size: int = 8,
    overlays: Annotated[int, typer.Option(help="Overlays to write per category.")] = 8,
    backbone: Backbone = None,
    pretrained: Pretrained = None,
    weights: Weights = None,
    image_size: ImageSize = None,
    device: Device = "",
    seed: int = 0,
    option: MethodOpt = None,
    checkpoint: Checkpoints = None,
    tta: Tta = False,
    allow_seen: Annotated[
        bool, typer.Option(help="Evaluate images a checkpoint was trained on (NOT zero-shot; flagged in results).")
    ] = False,
) -> None:
    """Evaluate on a labelled dataset: predictions.csv, metrics.json, metrics.md (per category + mean).

    Several --method give one folder per method under --out and comparison.md / comparison.json side by side.
    """
    from zsad.cli.evaluate import _datasets, check_eval_resume, run_eval, write_comparison
    from zsad.runs.build import route_checkpoints
    from zsad.runs.outputs import RunLock, check_output_dir

    with _one_line_errors(out):
        methods = method or ["winclip"]
        parsed = _parse_options(option) + ([(None, "tta", "true")] if tta else [])
        _check_options_used(methods, parsed)
        if batch_size < 1:
            raise ZsadInputError(f"--batch-size {batch_size}: must be >= 1")
        data = _data_spec(locals(), k_shot=k_shot, reference_dir=reference_dir, seed=seed, allow_seen=allow_seen)
        routed = route_checkpoints(methods, checkpoint or [])
        bb = _backbone(backbone, pretrained, weights, image_size, device, seed)
        specs = [_spec(n, _options_for(n, parsed, strict=len(methods) == 1), bb, routed.get(n)) for n in methods]
        sets = _datasets(data)  # every folder and file checked before any model loads
        check_output_dir(out)
        where = {s.name: out if len(specs) == 1 else out / s.name.replace("+", "_plus") for s in specs}
        with ExitStack() as locks:
            for folder in dict.fromkeys([out, *where.values()]):
                locks.enter_context(RunLock(folder))
            for s in specs:
                check_eval_resume(s, data, where[s.name])
            cache: dict[tuple[Any, ...], Any] = {}
            results = {}
            for s in specs:
                m = _build(s, cache)
                results[s.name] = run_eval(
                    m,
                    data,
                    where[s.name],
                    batch_size=batch_size,
                    overlays=overlays,
                    new_progress=_progress,
                    console=console,
                    sets=sets,
                )
                print_table(results[s.name].table)
            if len(specs) > 1:
                print_table(write_comparison(results, out))


@app.command("train")
def train_cmd(
    method: Annotated[str, typer.Option(help="A trainable method (see `zsad methods`).")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder (resumes an interrupted run with the same settings).")],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            help="Auxiliary annotated data: mvtec | visa | folder (test split). Repeat with --root for a list. "
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
    batch_size: Annotated[int | None, typer.Option(help="Default: the method's recipe.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate. Default: the method's recipe.")] = None,
    train_seed: Annotated[int | None, typer.Option(help="Training seed. Default: the method's recipe.")] = None,
    backbone: Backbone = None,
    pretrained: Pretrained = None,
    weights: Weights = None,
    image_size: ImageSize = None,
    device: Device = "",
    seed: Annotated[int, typer.Option(help="Seed of --pretrained none backbones.")] = 0,
    option: MethodOpt = None,
) -> None:
    """Train a method's learnable parts on annotated data (CLIP frozen); writes safetensors + manifest.json."""
    from zsad.cli.train import prepare_training, run_train
    from zsad.runs.outputs import RunLock, check_output_dir

    with _one_line_errors(out, kept="the finished epochs"):
        opts = _options_for(method, _parse_options(option), strict=True)
        bb = _backbone(backbone, pretrained, weights, image_size, device, seed)
        spec = _spec(method, {**opts, "checkpoint": ""}, bb, train=True)
        dataset, root = dataset or [], root or []
        if len(dataset) != len(root):
            raise ZsadInputError(f"--dataset given {len(dataset)} times but --root {len(root)} times: pair them")
        for flag, value in (("--epochs", epochs), ("--batch-size", batch_size)):
            if value is not None and value < 1:
                raise ZsadInputError(f"{flag} {value}: must be >= 1")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ZsadInputError(f"--lr {lr}: must be a finite number > 0")
        args = dict(locals())
        data = [_data_spec({**args, "dataset": d, "root": r}) for d, r in zip(dataset, root, strict=True)]
        listed = prepare_training(spec.cls, data)  # every folder and file checked before any model loads
        check_output_dir(out)
        overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": train_seed}
        kept = {k: v for k, v in overrides.items() if v is not None}
        with RunLock(out):
            path = run_train(_build(spec), data, out, kept, console=console, class_name=class_name, listed=listed)
    console.print(f"checkpoint written to {path}; use it with --method {method} --checkpoint {path}")


@app.command("import-checkpoint")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="Checkpoint released with the official code (e.g. train_on_visa.pth).")],
    out: Annotated[Path, typer.Option(help="zsad checkpoint folder to write.")],
    trained_on: Annotated[str, typer.Option(help="What the released layers were trained on (recorded).")],
    method: Annotated[str, typer.Option(help="sdp+ (CLIP-AD) or adaclip.")] = "sdp+",
    backbone: Backbone = None,
    pretrained: Pretrained = None,
    weights: Weights = None,
    image_size: ImageSize = None,
    device: Device = "",
    seed: int = 0,
) -> None:
    """Convert an official release's trained layers into a zsad checkpoint (safetensors + manifest)."""
    import importlib

    from zsad.runs.outputs import RunLock, check_output_dir

    with _one_line_errors():
        importers = {"sdp+": "zsad.methods.sdp_plus", "adaclip": "zsad.methods.adaclip"}
        if method not in importers:
            raise ZsadInputError(f"--method {method}: official checkpoints can be imported for {', '.join(importers)}")
        if not file.is_file():
            raise ZsadInputError(f"{file}: file not found")
        bb = _backbone(backbone, pretrained, weights, image_size, device, seed)
        spec = _spec(method, {"checkpoint": ""}, bb, train=True)
        check_output_dir(out)
        with RunLock(out):
            m = _build(spec)
            path = importlib.import_module(importers[method]).import_official_checkpoint(
                file, m.backbone, out, trained_on
            )
    console.print(f"wrote {path}; use it with --method {method} --checkpoint {path}")
