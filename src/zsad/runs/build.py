"""Backbone + method construction, split so that every input is checked before any weights load.

``MethodSpec.validate`` turns names, options, weights and checkpoints into a checked spec in about a second
(open_clip import included); ``build`` then spends the seconds a model takes to load. A typo therefore costs a
second, not a model load, and the run key of an output folder can be checked before the load too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from zsad import limits
from zsad.errors import ZsadInputError
from zsad.methods.base import Method, MethodConfig
from zsad.methods.options import config_record, make_config
from zsad.progress import reporter

_RANDOM = {None, "none", "random", ""}  # as ClipBackbone reads --pretrained
# Said whenever a backbone with random weights is built (and by ``zsad serve`` at start, which builds later).
RANDOM_WEIGHTS_WARNING = (
    "WARNING: --pretrained none: the backbone has SEEDED RANDOM weights. Scores and maps are meaningless for "
    "detection; use this only for smoke tests, speed and fidelity checks."
)


@dataclass(frozen=True)
class BackboneSpec:
    """What the user asked for; ``None`` fields take the method's published defaults (``resolve``)."""

    model_name: str | None = None
    pretrained: str | None = None
    weights: Path | None = None
    image_size: int | None = None
    device: str | None = None
    seed: int = 0
    precision: str = "fp32"

    @classmethod
    def of(cls, value: Any, *, arg: str = "backbone", **defaults: Any) -> BackboneSpec:
        """What a user types, as a spec: a spec as is; None the defaults; a name (or model-config path); a dict.

        ``defaults`` (e.g. the run's ``seed``) fill the fields a name or dict leaves out. A dict with an unknown key
        is refused in one line; any other type is a ``TypeError`` naming ``arg``.
        """
        if isinstance(value, BackboneSpec):
            return value
        if value is None:
            return cls(**defaults)
        if isinstance(value, str | os.PathLike):
            return cls(**{**defaults, "model_name": os.fspath(value)})
        if isinstance(value, Mapping):
            known = [f.name for f in fields(cls)]
            unknown = [str(k) for k in value if k not in known]
            if unknown:
                raise ZsadInputError(f"{arg}: unknown field(s) {', '.join(map(repr, unknown))}; use {', '.join(known)}")
            given = dict(value)
            if given.get("weights") is not None:
                given["weights"] = as_path(given["weights"], f"{arg}['weights']")
            return cls(**{**defaults, **given})
        raise TypeError(
            f"{arg}: expected a BackboneSpec, a model name (str), a dict of BackboneSpec fields or None, "
            f"not {type(value).__name__}"
        )

    def resolve(self, defaults: MethodConfig) -> BackboneSpec:
        """Defaults filled in: the method's backbone, ``ZSAD_WEIGHTS``, the best device."""
        from zsad.backbone.loading import resolve_model

        weights = self.weights
        if weights is None and os.environ.get("ZSAD_WEIGHTS"):
            weights = Path(os.environ["ZSAD_WEIGHTS"])
        from zsad.backbone.vision import is_vision_only

        name = self.model_name or defaults.backbone
        beside = None if is_vision_only(name) else resolve_model(name)[2]  # a model-config JSON/folder: its weights
        if weights is None and beside is not None:
            weights = beside
        return BackboneSpec(
            model_name=name,
            pretrained=self.pretrained if self.pretrained is not None else defaults.pretrained,
            weights=weights,
            image_size=self.image_size if self.image_size is not None else defaults.image_size,
            device=self.device or ("cuda" if torch.cuda.is_available() else "cpu"),
            seed=self.seed,
            precision=self.precision,
        )

    @property
    def random_init(self) -> bool:
        """Whether the backbone gets seeded random weights: no weights file and ``--pretrained none`` (or alike)."""
        return self.weights is None and self.pretrained in _RANDOM

    def validate(self, batch_size: int = 1) -> None:
        """One line for an unknown model, a bad size or weights file, or named weights that cannot be fetched.

        ``batch_size`` images of ``image_size`` must also fit the device's memory (``check_memory``).
        """
        from zsad.backbone.loading import _open_clip, check_pretrained, check_weights_file
        from zsad.backbone.vision import check_timm_pretrained, is_vision_only, timm_name

        assert self.model_name is not None and self.image_size is not None, "resolve() first"
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ZsadInputError(f"--image-size {self.image_size!r}: must be a whole number of pixels")
        if self.image_size <= 0:
            raise ZsadInputError(f"--image-size {self.image_size}: must be a positive number of pixels")
        limits.IMAGE_SIZE.check(self.image_size)
        limits.BATCH_SIZE.check(batch_size)
        if self.device is not None:
            check_device(self.device)
        from zsad.backbone.clip import precision_dtype

        precision_dtype(self.precision)
        if is_vision_only(self.model_name):
            timm_name(self.model_name)
            self.check_memory(batch_size)
            if self.weights is not None:
                check_weights_file(self.weights)
            elif not self.random_init:
                check_timm_pretrained(self.model_name)
            return
        if self.registered_name not in _open_clip().list_models():
            raise ZsadInputError(f"--backbone {self.model_name}: unknown model; see open_clip.list_models()")
        self.check_memory(batch_size)
        if self.weights is not None:
            check_weights_file(self.weights)
        elif not self.random_init:
            check_pretrained(self.registered_name, str(self.pretrained))

    def vision_shape(self) -> tuple[int, int, int, int] | None:
        """(patch size, width, layers, heads) of the image tower, from its config; None where it says none (a CNN)."""
        from zsad.backbone.vision import is_vision_only

        assert self.model_name is not None, "resolve() first"
        if is_vision_only(self.model_name):
            return _timm_vit_shape(self.model_name)
        from zsad.backbone.loading import _open_clip

        cfg = (_open_clip().get_model_config(self.registered_name) or {}).get("vision_cfg", {})
        layers, width, patch = cfg.get("layers"), cfg.get("width"), cfg.get("patch_size")
        if "timm_model_name" in cfg or not all(isinstance(v, int) for v in (layers, width, patch)):
            return None
        return int(patch), int(width), int(layers), max(1, int(width) // int(cfg.get("head_width", 64)))

    def memory_estimate(self, batch_size: int = 1) -> int | None:
        """``limits.vit_activation_bytes`` of ``batch_size`` images; None for a tower of unknown shape (a CNN)."""
        shape = self.vision_shape()
        if shape is None or self.image_size is None:
            return None
        patch, width, layers, heads = shape
        return limits.vit_activation_bytes(self.image_size, patch, width, layers, heads, batch_size)

    def check_memory(self, batch_size: int = 1, batch_option: str = "--batch-size") -> None:
        """One line when ``batch_size`` images at ``image_size`` cannot fit the device (``--allow-large`` lifts it).

        The device is this machine's RAM, or the GPU's own memory for ``cuda``: a run that cannot fit there would
        grow until the machine swaps or the process is killed, long after the command was accepted.
        """
        need = self.memory_estimate(batch_size)
        if need is None:
            return
        have, where = device_memory(self.device or "cpu")
        tokens = limits.vit_tokens(self.image_size or 0, (self.vision_shape() or (1,))[0])
        limits.check_memory(
            need,
            have,
            f"--image-size {self.image_size} with {batch_option} {batch_size} ({self.model_name}, {tokens} tokens "
            "an image)",
            where,
            f"lower --image-size or {batch_option}",
            "a rough upper bound of its activations",
        )

    @property
    def registered_name(self) -> str:
        """The open_clip name: the model name, or the name a model-config JSON is registered under."""
        from zsad.backbone.loading import resolve_model
        from zsad.backbone.vision import is_vision_only

        assert self.model_name is not None, "resolve() first"
        return self.model_name if is_vision_only(self.model_name) else resolve_model(self.model_name)[0]

    def key(self) -> dict[str, Any]:
        """The backbone part of a run key, equal to what the built ``ClipBackbone.manifest()`` will say."""
        from zsad.backbone.loading import file_digest

        info = file_digest(Path(self.weights)) if self.weights is not None else None
        tag = str(self.weights) if self.weights is not None else ("none" if self.random_init else self.pretrained)
        key = {
            "model_name": self.registered_name,
            "pretrained": tag,
            "image_size": self.image_size,
            "weights": info,
            "seed": self.seed if self.random_init else None,
        }
        if self.precision != "fp32":  # fp32 keys stay as they were before --precision existed (folders resume)
            key["precision"] = self.precision
        return key

    def cache_key(self) -> tuple[Any, ...]:
        """Identifies a loaded backbone, so methods asking for the same one in a run share it."""
        return (
            self.model_name,
            self.pretrained,
            str(self.weights),
            self.image_size,
            self.device,
            self.seed,
            self.precision,
        )


# timm ViT sizes (width, layers, heads) by the size word of their names, for the memory estimate
_TIMM_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1536, 40, 24),
    "gigantic": (1664, 48, 16),
}


def _timm_vit_shape(model_name: str) -> tuple[int, int, int, int] | None:
    """(patch, width, layers, heads) from a timm ViT's name (``timm:vit_large_patch14_dinov2``); None if not one."""
    m = re.search(r"vit_([a-z]+)_patch(\d+)", model_name)
    if m is None or m.group(1) not in _TIMM_SIZES:
        return None
    width, layers, heads = _TIMM_SIZES[m.group(1)]
    return int(m.group(2)), width, layers, heads


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, words) of the memory a run on ``device`` has: a CUDA GPU's own, else this machine's RAM."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return 0, device
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory), f"the memory of cuda:{index}"
    return limits.physical_memory(), "this machine's memory"


def as_path(value: Any, arg: str) -> Path:
    """A path argument as typed (str or ``os.PathLike``); anything else a ``TypeError`` naming ``arg``."""
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise TypeError(f"{arg}: expected a path (str or pathlib.Path), not {type(value).__name__}")


def as_paths(value: Any, arg: str) -> list[Path]:
    """One path or several (a list of str/Path); a lone str is one path, not its characters."""
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        return [as_path(v, f"{arg}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{arg}: expected a path or a list of paths (str or pathlib.Path), not {type(value).__name__}")


def as_int(value: Any, arg: str) -> int:
    """A whole-number argument; a bool or a float is a ``TypeError`` naming ``arg`` (3.0 images is a mistake)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg}: expected an int, not {type(value).__name__}")
    return value


def as_options(value: Any, arg: str = "options") -> dict[str, Any]:
    """A dict argument (None = empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{arg}: expected a dict, not {type(value).__name__}")
    return dict(value)


def as_names(value: Any, arg: str, what: str = "a name (str)", allowed: tuple[type, ...] = (str,)) -> list[Any]:
    """One name or a list of names: a lone name is one item, not its characters; anything else a ``TypeError``."""
    items = [value] if isinstance(value, allowed) else value
    if isinstance(items, Iterable) and not isinstance(items, bytes | Mapping):
        out = list(items)
        for i, m in enumerate(out):
            if not isinstance(m, allowed):
                raise TypeError(f"{arg}[{i}]: expected {what}, not {type(m).__name__}")
        return out
    raise TypeError(f"{arg}: expected {what} or a list of them, not {type(value).__name__}")


def as_methods(value: Any, arg: str = "methods") -> list[str | MethodSpec]:
    """Methods as names or ``MethodSpec``s (``evaluate``'s ``methods``)."""
    return as_names(value, arg, "a method name (str) or a MethodSpec", (str, MethodSpec))


def check_device(name: str) -> None:
    """One line for a device torch does not know, or one this machine does not have (before any model loads)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ZsadInputError(f"--device {name}: unknown device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ZsadInputError(
                f"--device {name}: no CUDA GPU is visible to torch on this machine (torch.cuda.is_available() is "
                "False); use --device cpu, or leave --device out to take the GPU when there is one"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ZsadInputError(f"--device {name}: this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ZsadInputError(f"--device {name}: Apple's MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ZsadInputError(f"--device {name}: zsad runs on cpu, cuda or mps, not {device.type}")


@dataclass
class MethodSpec:
    """A method with checked options (and checkpoint manifest) on a resolved backbone spec."""

    name: str
    backbone: BackboneSpec = field(default_factory=BackboneSpec)  # or a name or dict: ``BackboneSpec.of``
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    config: Any = field(default=None, init=False)  # set by validate()

    def __post_init__(self) -> None:
        """Accept what a user types: a backbone name or dict (``BackboneSpec.of``), a str checkpoint path."""
        if not isinstance(self.name, str):
            raise TypeError(f"method: expected a method name (str), not {type(self.name).__name__}")
        self.backbone = BackboneSpec.of(self.backbone)
        self.options = as_options(self.options)
        if self.checkpoint is not None:
            self.checkpoint = as_path(self.checkpoint, "checkpoint")

    @classmethod
    def of(cls, value: Any, *, arg: str = "method", **parts: Any) -> MethodSpec:
        """A spec as is, or a method name with ``parts`` (``backbone``, ``options``, ``checkpoint``)."""
        if isinstance(value, MethodSpec):
            return value
        if isinstance(value, str):
            return cls(value, **parts)
        raise TypeError(f"{arg}: expected a method name (str) or a MethodSpec, not {type(value).__name__}")

    @property
    def cls(self) -> type[Method]:
        """The method class registered under ``name``."""
        from zsad.methods import get_method_class

        return get_method_class(self.name)

    @property
    def untrained(self) -> bool:
        """A method that refuses to run untrained and was given no trained parts (checkpoint or option)."""
        cls = self.cls
        return (
            cls.trainable and cls.requires_checkpoint and self.checkpoint is None and not self.options.get("checkpoint")
        )

    def validate(self, *, for_training: bool = False, batch_size: int = 1) -> MethodSpec:
        """Check everything that can be checked without weights; returns the spec with its backbone resolved.

        ``batch_size``: the images of one forward, for the memory check of the backbone.
        """
        cls = self.cls
        self.name = cls.name
        self.backbone = self.backbone.resolve(cls.config_cls())
        self.config = make_config(cls.config_cls, self.options, cls.name)
        if self.checkpoint is not None:
            if not cls.trainable:
                raise ZsadInputError(f"--checkpoint: method {cls.name} has no trained parts")
            _check_checkpoint(self.checkpoint, cls.name, self.backbone)
        from zsad.backbone.vision import is_vision_only

        if is_vision_only(self.backbone.model_name) and cls.uses_text(self.config):
            raise ZsadInputError(
                f"--backbone {self.backbone.model_name}: vision-only (no text tower), but method {cls.name} reads text"
                " with these options; use a CLIP backbone"
            )
        elif self.untrained and not for_training:
            raise ZsadInputError(
                f"method {cls.name} needs trained parts: pass --checkpoint DIR (made by `zsad train --method "
                f"{cls.name} ...`)"
            )
        self.backbone.validate(batch_size)
        why = cls.full_precision.get(self.backbone.precision)
        if why:  # before the run key is made: key, manifest and model all say fp32
            reporter().message(f"--precision {self.backbone.precision}: method {cls.name} runs in fp32 ({why})", "note")
            self.backbone = replace(self.backbone, precision="fp32")
        return self

    def key(self) -> dict[str, Any]:
        """The method part of a run key, as far as it is known before the build (a checkpoint may set options)."""
        key: dict[str, Any] = {"method": self.name, "backbone": self.backbone.key()}
        if self.checkpoint is None:
            key["config"] = config_record(self.config)
        return key

    def build(self, cache: dict[tuple[Any, ...], Any] | None = None) -> Method:
        """Load the backbone (shared through ``cache`` between methods that ask for the same one) and the method."""
        from zsad.backbone import ClipBackbone
        from zsad.backbone.vision import VisionBackbone, is_vision_only

        b = self.backbone
        bb = cache.get(b.cache_key()) if cache is not None else None
        if bb is None:
            assert b.model_name is not None
            # a method reads the image side only of a vision-only backbone (uses_text was checked in validate)
            load: Any = VisionBackbone.from_pretrained if is_vision_only(b.model_name) else ClipBackbone.from_pretrained
            bb = load(
                b.model_name,
                b.pretrained,
                weights=b.weights,
                image_size=b.image_size,
                device=b.device or "cpu",
                seed=b.seed,
            )
            bb.set_precision(b.precision)
            if b.precision == "fp16" and bb.device.type == "cpu":
                reporter().message(
                    "--precision fp16 on a CPU: half-precision matmuls are emulated there and run slower than fp32;"
                    " bf16 is the CPU's fast path (fp16 is for GPUs and exported graphs)",
                    "note",
                )
            if cache is not None:
                cache[b.cache_key()] = bb
            if bb.random_init:
                reporter().message(RANDOM_WEIGHTS_WARNING, "alert")
        options = dict(self.options)
        if self.checkpoint is not None:
            options["checkpoint"] = str(self.checkpoint)
        return self.cls(bb, **options)


def _check_checkpoint(path: Path, method: str, backbone: BackboneSpec) -> None:
    """The checkpoint's manifest names this method and the backbone it will run on (bytes are checked at load)."""
    from zsad.train import read_manifest
    from zsad.train.checkpoint import check_compatible

    _, manifest = read_manifest(path)
    check_compatible(path, manifest, method=method, backbone={**backbone.key(), "random_init": backbone.random_init})


def route_checkpoints(methods: list[str], paths: list[Path]) -> dict[str, Path]:
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


def method_key(method: Method) -> dict[str, Any]:
    """What decides a built method's scores: name, options, backbone weights (the resume key of an output folder)."""
    d = method.describe()
    bb = {k: d["backbone"].get(k) for k in ("model_name", "pretrained", "image_size", "weights", "seed")}
    if d["backbone"].get("precision", "fp32") != "fp32":  # as BackboneSpec.key: fp32 keys are the old ones
        bb["precision"] = d["backbone"]["precision"]
    return {"method": d["method"], "config": d["config"], "backbone": bb}


def specs_for(
    methods: Sequence[str | MethodSpec],
    options: dict[str, dict[str, Any]],
    backbone: BackboneSpec,
    checkpoints: dict[str, Path],
    batch_size: int = 1,
) -> list[MethodSpec]:
    """Checked specs for several methods: names take ``options[name]``, the shared backbone and their checkpoint."""
    out = []
    for m in methods:
        spec = m if isinstance(m, MethodSpec) else MethodSpec(m, backbone, dict(options.get(m, {})))
        if spec.checkpoint is None:
            spec.checkpoint = checkpoints.get(spec.name)
        out.append(spec.validate(batch_size=batch_size))
    return out
