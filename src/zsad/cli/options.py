"""The command-line options shared by several commands, defined once.

``with_backbone_options`` adds the backbone options (``--backbone``, ``--model-config``, ``--pretrained``,
``--weights``, ``--image-size``, ``--device``, ``--seed``) to a command; they reach it as one ``BackboneSpec``.
It also adds ``--allow-large``, which lifts the size bounds of ``zsad.limits`` for the whole command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from zsad.limits import ALLOW_LARGE_ENV, ALLOW_LARGE_FLAG, allowing_large
from zsad.runs import BackboneSpec

Pretrained = Annotated[
    str | None,
    typer.Option(
        help="open_clip pretrained tag (downloaded on first use); 'none' = seeded RANDOM weights (smoke "
        "tests only). Default: the method's published weights."
    ),
]
Weights = Annotated[Path | None, typer.Option(help="Local checkpoint file (overrides --pretrained; env ZSAD_WEIGHTS).")]
Backbone = Annotated[str | None, typer.Option(help="open_clip model name. Default: the method's.")]
ModelConfig = Annotated[
    Path | None,
    typer.Option(
        help="open_clip model-config JSON, or a folder holding one (and its weights): a custom or fine-tuned "
        "architecture without registering it in open_clip. Replaces --backbone."
    ),
]
ImageSize = Annotated[
    int | None,
    typer.Option(help="Input resolution (square), 32 to 2048 px unless --allow-large. Default: the method's."),
]
AllowLarge = Annotated[
    bool,
    typer.Option(
        ALLOW_LARGE_FLAG,
        help=f"Lift the size bounds (--image-size, --batch-size, --max-map-size, ... and the memory estimate; "
        f"docs/reliability.md). Also env {ALLOW_LARGE_ENV}=1.",
    ),
]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")]
Seed = Annotated[int, typer.Option(help="Seed of --pretrained none backbones and of reference sampling.")]
Precision = Annotated[
    str,
    typer.Option(
        help="fp32, bf16 or fp16: the image tower's matmuls in that precision (heads stay fp32). bf16 is the CPU's "
        "fast path, fp16 a GPU's; docs/export.md lists each method's measured drift."
    ),
]
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

_BACKBONE_PARAMS: list[tuple[str, Any, Any]] = [
    ("backbone", Backbone, None),
    ("model_config", ModelConfig, None),
    ("pretrained", Pretrained, None),
    ("weights", Weights, None),
    ("image_size", ImageSize, None),
    ("device", Device, ""),
    ("seed", Seed, 0),
    ("precision", Precision, "fp32"),
    ("allow_large", AllowLarge, False),
]


def with_backbone_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the shared backbone options; it receives them as ``bb: BackboneSpec`` (and ``seed``)."""
    sig = inspect.signature(command, eval_str=True)  # typer reads __signature__ as is: real annotations
    own = [p for p in sig.parameters.values() if p.name != "bb"]
    wants_seed = "seed" in sig.parameters
    own = [p for p in own if p.name != "seed"]
    extra = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in _BACKBONE_PARAMS
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name, _, _ in _BACKBONE_PARAMS}
        model = str(values["model_config"]) if values["model_config"] is not None else values["backbone"]
        bb = BackboneSpec(
            model,
            values["pretrained"],
            values["weights"],
            values["image_size"],
            values["device"] or None,
            values["seed"],
            values["precision"],
        )
        if wants_seed:
            kwargs["seed"] = values["seed"]
        with allowing_large(values["allow_large"]):
            return command(*args, bb=bb, **kwargs)

    params = [*(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own), *extra]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def parse_options(opts: list[str] | None, tta: bool = False) -> list[tuple[str | None, str, str]]:
    """``-o KEY=VALUE`` / ``-o METHOD:KEY=VALUE`` (values are typed per method later); ``--tta`` is ``tta=true``."""
    from zsad.methods.options import parse_option

    return [parse_option(o) for o in opts or []] + ([(None, "tta", "true")] if tta else [])


# Watched folders and sinks: `zsad watch` and `zsad serve --watch` take them alike.
Recursive = Annotated[bool, typer.Option(help="Watch subfolders too (routing's ok/ ng/ error/ are never watched).")]
Complete = Annotated[
    str,
    typer.Option(
        help="When a file is complete: stable (size and mtime unchanged for --settle), rename (the writer renames "
        "a finished temp file into place), marker (NAME.done appears beside it). docs/station.md says which "
        "cameras do what."
    ),
]
Settle = Annotated[float, typer.Option(help="Seconds a file must stay unchanged (--complete stable).")]
RouteOpt = Annotated[
    str, typer.Option("--route", help="After scoring: none, move or copy each file into ok/, ng/, unlabelled/, error/.")
]
Rescan = Annotated[float, typer.Option(help="Seconds between full rescans (the safety net under OS file events).")]
SinkOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sink",
        help="Where each decision's event goes (repeatable): mqtt://HOST[:PORT]/TOPIC, mqtts://..., "
        "https://HOOK, file:PATH.jsonl; options after '#', e.g. '#only=anomalous&min_score=0.8'.",
    ),
]
PublicUrl = Annotated[
    str | None, typer.Option(help="How clients reach this server (https://host:port): events carry absolute links.")
]

# Tiled scoring of large images (zsad.tiling): `detect`, `eval`, `serve` and `export` take them alike.
Tiles = Annotated[
    str,
    typer.Option(
        help="Score large images tile by tile at the backbone's input scale: auto (grid from the image size), RxC "
        "(e.g. 3x4), either with +global (the whole image as one more tile), or none. docs/high-resolution.md.",
    ),
]
TileOverlap = Annotated[float, typer.Option(help="--tiles: overlap of neighbouring tiles, a fraction of a tile.")]
TileSize = Annotated[
    int | None,
    typer.Option(help="--tiles: tile side in original pixels (default: the backbone's input size, seen 1:1)."),
]
TileScore = Annotated[
    str,
    typer.Option(help="--tiles: image score = max_tile (highest tile score) or map_max (stitched map's maximum)."),
]


def tile_spec(tiles: str, overlap: float, size: int | None, score: str) -> Any:
    """The ``TileSpec`` of the tile options (None: no tiling), each bad value refused in one line."""
    from zsad.errors import ZsadInputError
    from zsad.tiling import TileSpec

    spec = TileSpec.parse(tiles, overlap, size, score)
    if spec is None:
        given = {"--tile-overlap": overlap != TileSpec.overlap, "--tile-size": size is not None}
        given["--tile-score"] = score != TileSpec.score
        for name, set_ in given.items():
            if set_:
                raise ZsadInputError(f"{name}: only with --tiles (auto or RxC)")
    return spec
