"""The ``zsad`` command: a thin typer layer over the engine; every bad input ends in one line and exit 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from zsad.errors import ZsadInputError

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


def _parse_options(opts: list[str] | None) -> list[tuple[str | None, str, Any]]:
    """``KEY=VALUE`` (every method) or ``METHOD:KEY=VALUE`` (one method); VALUE is JSON when it parses."""
    out: list[tuple[str | None, str, Any]] = []
    for o in opts or []:
        if "=" not in o:
            raise ZsadInputError(f"--option {o!r}: expected KEY=VALUE or METHOD:KEY=VALUE")
        k, v = o.split("=", 1)
        target, _, key = k.strip().rpartition(":")
        try:
            value: Any = json.loads(v)
        except json.JSONDecodeError:
            value = v
        out.append((target or None, key.strip(), tuple(value) if isinstance(value, list) else value))
    return out


def _option_names(method_name: str) -> set[str]:
    """The config fields (``-o`` keys) of a method."""
    import dataclasses

    from zsad.methods import get_method_class

    return {f.name for f in dataclasses.fields(get_method_class(method_name).config_cls)}


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
    known = set().union(*(_option_names(m) for m in methods))
    for target, key, _ in parsed:
        if target is None and key not in known:
            raise ZsadInputError(f"--option {key}: no selected method ({', '.join(methods)}) has this option")


def _build(
    method_name: str,
    backbone: str | None,
    pretrained: str | None,
    weights: Path | None,
    image_size: int | None,
    device: str | None,
    seed: int,
    options: dict[str, Any],
    checkpoint: Path | None = None,
    cache: dict[tuple[Any, ...], Any] | None = None,
) -> Any:
    """Build a method on its backbone; ``cache`` shares one backbone between methods that ask for the same one."""
    from zsad.backbone import ClipBackbone
    from zsad.methods import get_method_class

    cls = get_method_class(method_name)
    defaults = cls.config_cls()
    if weights is None and os.environ.get("ZSAD_WEIGHTS"):
        weights = Path(os.environ["ZSAD_WEIGHTS"])
    tag = pretrained if pretrained is not None else defaults.pretrained
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (backbone or defaults.backbone, tag, str(weights), image_size or defaults.image_size, dev, seed)
    bb = cache.get(key) if cache is not None else None
    if bb is None:
        bb = ClipBackbone.from_pretrained(key[0], tag, weights=weights, image_size=key[3], device=dev, seed=seed)
        if cache is not None:
            cache[key] = bb
        if bb.random_init:
            console.print(
                "[bold red]WARNING: --pretrained none: the backbone has SEEDED RANDOM weights. Scores and maps are "
                "meaningless for detection; use this only for smoke tests, speed and fidelity checks.[/]"
            )
    if checkpoint is not None:
        if not cls.trainable:
            raise ZsadInputError(f"--checkpoint: method {method_name} has no trained parts")
        options = {**options, "checkpoint": str(checkpoint)}
    elif cls.trainable and cls.requires_checkpoint and "checkpoint" not in options:
        raise ZsadInputError(
            f"method {method_name} needs trained parts: pass --checkpoint DIR (made by `zsad train --method "
            f"{method_name} ...`)"
        )
    return cls(bb, **options)


def _route_checkpoints(methods: list[str], paths: list[Path]) -> dict[str, Path]:
    """Each --checkpoint to the method its manifest names; one checkpoint and one trainable method always pair."""
    from zsad.methods import get_method_class
    from zsad.train import read_manifest

    trainable = [m for m in methods if get_method_class(m).trainable]
    if not paths:
        return {}
    if not trainable:
        raise ZsadInputError(f"--checkpoint: none of the methods {', '.join(methods)} has trained parts")
    if len(paths) == 1 and len(trainable) == 1:
        return {trainable[0]: paths[0]}  # the loader names a method mismatch
    routed: dict[str, Path] = {}
    for path in paths:
        owner = read_manifest(path)[1].get("method")
        if owner not in trainable:
            raise ZsadInputError(
                f"--checkpoint {path}: trained for method {owner!r}, which is not among the trainable --method "
                f"{', '.join(trainable)}"
            )
        if owner in routed:
            raise ZsadInputError(f"--checkpoint: two checkpoints for method {owner}: {routed[owner]} and {path}")
        routed[owner] = path
    return routed


_DATA_ARGS = ("normal_dir", "abnormal_dir", "mask_dir", "image_dir", "labels_csv", "image_glob", "class_name")


def _spec(args: dict[str, Any], **extra: Any) -> Any:
    """The dataset description shared by `eval` and `train` from a command's arguments."""
    from zsad.cli.evaluate import EvalSpec

    return EvalSpec(
        dataset=args["dataset"],
        root=args["root"],
        categories=args["category"] or [],
        **{k: args[k] for k in _DATA_ARGS},
        **extra,
    )


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/] {str(e).splitlines()[0] if str(e) else type(e).__name__}", highlight=False)
    raise typer.Exit(2)


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
    Console().print(table)


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
    path: Annotated[list[str], typer.Argument(help="Image file(s), folder(s) or glob pattern(s).")],
    out: Annotated[Path, typer.Option(help="Output folder (resumes if it holds an earlier run).")] = Path("results"),
    method: Annotated[str, typer.Option(help="Method name (see `zsad methods`).")] = "winclip",
    class_name: Annotated[str | None, typer.Option(help="Object name used in prompts (default 'object').")] = None,
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
    skip_bad: Annotated[
        bool, typer.Option(help="Skip unreadable images (listed in errors.csv) instead of stopping.")
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
    """Score images with no labels: predictions.csv, .npy maps and overlays, written incrementally."""
    try:
        from zsad.cli.detect import run_detect

        parsed = _parse_options(option) + ([(None, "tta", True)] if tta else [])
        _check_options_used([method], parsed)
        opts = _options_for(method, parsed, strict=True)
        m = _build(method, backbone, pretrained, weights, image_size, device or None, seed, opts, checkpoint)
        code = run_detect(
            m,
            path,
            out,
            class_name=class_name,
            reference_dir=reference_dir,
            k_shot=k_shot,
            threshold=threshold,
            recursive=recursive,
            batch_size=batch_size,
            overlays=overlays,
            normalize=normalize,
            skip_bad=skip_bad,
            seed=seed,
            progress=_progress(),
            console=console,
        )
    except ZsadInputError as e:
        _fail(e)
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
    try:
        from zsad.cli.evaluate import run_eval, write_comparison

        methods = method or ["winclip"]
        parsed = _parse_options(option) + ([(None, "tta", True)] if tta else [])
        _check_options_used(methods, parsed)
        spec = _spec(locals(), k_shot=k_shot, reference_dir=reference_dir, seed=seed, allow_seen=allow_seen)
        cache: dict[tuple[Any, ...], Any] = {}
        results = {}
        routed = _route_checkpoints(methods, checkpoint or [])
        for name in methods:
            ckpt = routed.get(name)
            opts = _options_for(name, parsed, strict=len(methods) == 1)
            m = _build(name, backbone, pretrained, weights, image_size, device or None, seed, opts, ckpt, cache)
            where = out if len(methods) == 1 else out / name.replace("+", "_plus")
            results[name] = run_eval(
                m, spec, where, batch_size=batch_size, overlays=overlays, progress=_progress(), console=console
            )
            Console().print(results[name].table)
        if len(methods) > 1:
            table = write_comparison(results, out)
            Console().print(table)
    except ZsadInputError as e:
        _fail(e)


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
    try:
        from zsad.cli.train import run_train

        opts = _options_for(method, _parse_options(option), strict=True)
        m = _build(method, backbone, pretrained, weights, image_size, device or None, seed, {**opts, "checkpoint": ""})
        dataset, root = dataset or [], root or []
        if len(dataset) != len(root):
            raise ZsadInputError(f"--dataset given {len(dataset)} times but --root {len(root)} times: pair them")
        args = dict(locals())
        specs = [_spec({**args, "dataset": d, "root": r}) for d, r in zip(dataset, root, strict=True)]
        overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": train_seed}
        kept = {k: v for k, v in overrides.items() if v is not None}
        path = run_train(m, specs, out, kept, console=console, class_name=class_name)
    except ZsadInputError as e:
        _fail(e)
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
    try:
        importers = {"sdp+": "zsad.methods.sdp_plus", "adaclip": "zsad.methods.adaclip"}
        if method not in importers:
            raise ZsadInputError(f"--method {method}: official checkpoints can be imported for {', '.join(importers)}")
        import importlib

        m = _build(method, backbone, pretrained, weights, image_size, device or None, seed, {"checkpoint": ""})
        path = importlib.import_module(importers[method]).import_official_checkpoint(file, m.backbone, out, trained_on)
    except ZsadInputError as e:
        _fail(e)
    console.print(f"wrote {path}; use it with --method {method} --checkpoint {path}")
