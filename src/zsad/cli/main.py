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
MethodOpt = Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option KEY=VALUE (repeatable).")]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _parse_options(opts: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in opts or []:
        if "=" not in o:
            raise ZsadInputError(f"--option {o!r}: expected KEY=VALUE")
        k, v = o.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
        if isinstance(out[k.strip()], list):
            out[k.strip()] = tuple(out[k.strip()])
    return out


def _build(
    method_name: str,
    backbone: str | None,
    pretrained: str | None,
    weights: Path | None,
    image_size: int | None,
    device: str | None,
    seed: int,
    options: dict[str, Any],
) -> Any:
    from zsad.backbone import ClipBackbone
    from zsad.methods import get_method_class

    cls = get_method_class(method_name)
    defaults = cls.config_cls()
    if weights is None and os.environ.get("ZSAD_WEIGHTS"):
        weights = Path(os.environ["ZSAD_WEIGHTS"])
    tag = pretrained if pretrained is not None else defaults.pretrained
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bb = ClipBackbone.from_pretrained(
        backbone or defaults.backbone,
        tag,
        weights=weights,
        image_size=image_size or defaults.image_size,
        device=dev,
        seed=seed,
    )
    if bb.random_init:
        console.print(
            "[bold red]WARNING: --pretrained none: the backbone has SEEDED RANDOM weights. Scores and maps are "
            "meaningless for detection; use this only for smoke tests, speed and fidelity checks.[/]"
        )
    return cls(bb, **options)


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/] {str(e).splitlines()[0] if str(e) else type(e).__name__}", highlight=False)
    raise typer.Exit(2)


@app.command("methods")
def methods_cmd() -> None:
    """List the registered methods."""
    from zsad.methods import get_method_class, list_methods

    table = Table("method", "backbone", "size", "few-shot", "doc")
    for name in list_methods():
        cls = get_method_class(name)
        cfg = cls.config_cls()
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        table.add_row(
            name,
            f"{cfg.backbone} ({cfg.pretrained})",
            str(cfg.image_size),
            "yes" if cls.supports_few_shot else "no",
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
) -> None:
    """Score images with no labels: predictions.csv, .npy maps and overlays, written incrementally."""
    try:
        from zsad.cli.detect import run_detect

        m = _build(method, backbone, pretrained, weights, image_size, device or None, seed, _parse_options(option))
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
    category: Annotated[list[str] | None, typer.Option(help="Category (repeatable; default: all).")] = None,
    method: str = "winclip",
    class_name: Annotated[str | None, typer.Option(help="Prompt object name (default: the category name).")] = None,
    out: Path = Path("results"),
    normal_dir: Annotated[str | None, typer.Option(help="folder: normal images dir, relative to --root.")] = None,
    abnormal_dir: Annotated[str | None, typer.Option(help="folder: anomalous images dir, relative to --root.")] = None,
    mask_dir: Annotated[str | None, typer.Option(help="folder: masks dir (may equal the image dir).")] = None,
    image_dir: Annotated[str | None, typer.Option(help="folder: one images dir labelled by --labels-csv.")] = None,
    labels_csv: Annotated[str | None, typer.Option(help="folder: CSV of id,label (1 = anomalous).")] = None,
    image_glob: Annotated[str, typer.Option(help="folder: image file pattern, e.g. '*.jpg'.")] = "*",
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
) -> None:
    """Evaluate on a labelled dataset: predictions.csv, metrics.json, metrics.md (per category + mean)."""
    try:
        from zsad.cli.evaluate import EvalSpec, run_eval

        m = _build(method, backbone, pretrained, weights, image_size, device or None, seed, _parse_options(option))
        spec = EvalSpec(
            dataset=dataset,
            root=root,
            categories=category or [],
            class_name=class_name,
            normal_dir=normal_dir,
            abnormal_dir=abnormal_dir,
            mask_dir=mask_dir,
            image_dir=image_dir,
            labels_csv=labels_csv,
            image_glob=image_glob,
            k_shot=k_shot,
            reference_dir=reference_dir,
            seed=seed,
        )
        result = run_eval(m, spec, out, batch_size=batch_size, overlays=overlays, progress=_progress(), console=console)
    except ZsadInputError as e:
        _fail(e)
    Console().print(result)
