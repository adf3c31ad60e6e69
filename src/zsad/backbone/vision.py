"""``VisionBackbone``: a vision-only ViT from timm (DINOv2, DINO, plain ViTs) for methods that need no text.

MuSc scores patches against patches and reads no text, and its authors publish DINOv2 as the alternative to CLIP.
This wrapper gives such a method what it reads from ``ClipBackbone``: ``encode_image(images, layers)`` with raw
block outputs (CLS first, register tokens dropped) and a global embedding (the final-norm CLS token), the patch
grid, the preprocessing and a manifest. It has no text tower: ``runs`` refuses a text method on it before loading.

Names are ``timm:<model>`` (e.g. ``timm:vit_large_patch14_dinov2.lvd142m``; zsad adds
``timm:vit_large_patch16_radio_v2_5`` and ``timm:vit_so400m_patch16_siglip2_naflex``, ``zsad.backbone.radio`` and
``zsad.backbone.siglip2``). Weights: ``--weights FILE`` (timm or
Meta's own checkpoint layout, converted by timm's filter; loaded with ``weights_only`` semantics by timm), a named
download (any ``--pretrained`` other than ``none``: timm's Hugging Face hub copy), or seeded random weights.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from zsad.backbone.clip import PRECISIONS, ImageFeatures, precision_dtype
from zsad.backbone.loading import _RANDOM_TAGS, _load_error, check_weights_file, file_digest
from zsad.errors import ZsadInputError
from zsad.types import Preprocess

PREFIX = "timm:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_vision_only(model_name: str | None) -> bool:
    """Whether a ``--backbone`` names a timm vision-only model."""
    return bool(model_name) and str(model_name).startswith(PREFIX)


def timm_name(model_name: str) -> str:
    """``timm:vit_small_patch14_dinov2.lvd142m`` -> ``vit_small_patch14_dinov2.lvd142m``, checked against timm."""
    name = model_name[len(PREFIX) :]
    try:
        import timm

        import zsad.backbone.radio  # noqa: F401  registers RADIO v2.5-L (AnomalyVFM's tower) under timm's names
        import zsad.backbone.siglip2  # noqa: F401  and SigLIP2 NaFlex at a fixed size
    except ImportError as e:  # pragma: no cover - timm comes with open_clip
        raise ZsadInputError(f"--backbone {model_name}: timm is not installed (pip install timm)") from e
    if not name or not timm.is_model(name):
        raise ZsadInputError(f"--backbone {model_name}: timm has no model {name!r}; see timm.list_models('*dino*')")
    return name


def check_timm_pretrained(model_name: str, timeout: float = 5.0) -> None:
    """Named timm weights must be in the Hugging Face cache or downloadable; else one line naming the way out."""
    import timm

    from zsad.backbone.loading import _hub_host, _unreachable

    name = timm_name(model_name)
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ZsadInputError(f"--backbone {model_name}: timm publishes no weights for it; pass --weights FILE")
    why = _unreachable(_hub_host(), timeout)
    if why is None:
        return
    from huggingface_hub import try_to_load_from_cache

    for file in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub_id, file), str):
            return
    raise ZsadInputError(
        f"cannot download the {model_name} weights ({why}); use a local copy with --weights FILE or "
        "ZSAD_WEIGHTS=FILE, or --pretrained none for seeded random weights (smoke tests only)"
    )


class VisionBackbone(nn.Module):
    """A frozen timm ViT with the image side of ``ClipBackbone``'s interface (no text)."""

    has_text = False
    model: Any  # the timm VisionTransformer, typed once at the boundary as for open_clip

    def __init__(
        self,
        model: nn.Module,
        *,
        model_name: str,
        pretrained: str | None,
        image_size: int,
        weights_info: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        if not hasattr(self.model, "blocks") or not hasattr(self.model, "patch_embed"):
            raise ZsadInputError(f"--backbone {model_name}: not a ViT (needs patch_embed and blocks)")
        self.model_name = model_name
        self.pretrained = pretrained
        self.weights_info = weights_info
        self.random_init = pretrained in _RANDOM_TAGS and weights_info is None
        self.seed = seed if self.random_init else None
        self.image_size = int(image_size)
        ps = self.model.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, tuple | list) else ps)
        self.num_layers = len(self.model.blocks)
        self.width = self.embed_dim = int(self.model.embed_dim)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 1))
        cfg = dict(getattr(self.model, "pretrained_cfg", None) or {})
        self.mean: tuple[float, float, float] = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, float, float] = tuple(cfg.get("std", IMAGENET_STD))
        self.model_config = None

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        pretrained: str | None = "none",
        *,
        weights: str | os.PathLike[str] | None = None,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> VisionBackbone:
        """Build ``timm:<name>`` at ``image_size`` (positions resampled by timm), from a file, a download or a seed."""
        import timm

        name = timm_name(model_name)
        kwargs: dict[str, Any] = {"num_classes": 0}
        if image_size:
            kwargs["img_size"] = int(image_size)
        info = None
        if weights is not None:
            path = check_weights_file(weights)
            info = file_digest(path)
            try:
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
            except (RuntimeError, KeyError, ValueError) as e:
                raise _load_error(path, model_name, e) from e
            tag: str | None = str(path)
        elif pretrained in _RANDOM_TAGS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(name, pretrained=False, **kwargs)
            tag = "none"
        else:
            model = timm.create_model(name, pretrained=True, **kwargs)
            tag = str(pretrained)
        vit: Any = model
        size = int(image_size or vit.patch_embed.img_size[0])
        return cls(vit.to(device), model_name=model_name, pretrained=tag, image_size=size, weights_info=info, seed=seed)

    def manifest(self) -> dict[str, Any]:
        """What a run records to be reproducible (the same keys as ``ClipBackbone.manifest``)."""
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "random_init": self.random_init,
            "weights": self.weights_info,
            "image_size": self.image_size,
            "pos_interpolation": getattr(self.model, "zsad_pos_interpolation", "timm"),
            "seed": self.seed,
            "activation": type(getattr(self.model.blocks[0].mlp, "act", nn.Identity())).__name__,
            "model_config": None,
            "precision": self.precision,
        }

    precision = "fp32"

    def set_precision(self, precision: str) -> VisionBackbone:
        """Blocks under torch autocast in ``bf16``/``fp16``; taps and the embedding stay fp32 (see ClipBackbone)."""
        precision_dtype(precision)
        self.precision = precision
        return self

    @property
    def preprocess(self) -> Preprocess:
        """Input size and the model's own normalisation (ImageNet statistics for DINO/DINOv2)."""
        return Preprocess(self.image_size, self.mean, self.std)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the weights."""
        return next(self.model.parameters()).dtype

    def grid_size(self, image_size: int | None = None) -> tuple[int, int]:
        """Patch grid of a square input."""
        s = image_size or self.image_size
        return s // self.patch_size, s // self.patch_size

    def encode_image(self, images: torch.Tensor, layers: tuple[int, ...] | list[int] = ()) -> ImageFeatures:
        """The steps of timm's ``forward_features``, tapping the raw output of blocks ``layers`` (1-indexed).

        Taps are (B, 1+N, width) with CLS first and register tokens removed, like ``ClipBackbone``'s; the embedding
        is the CLS token after the final norm (DINOv2's ``x_norm_clstoken``).
        """
        m = self.model
        want = {int(t) for t in layers}
        if any(t < 1 or t > self.num_layers for t in want):
            raise ZsadInputError(f"{self.model_name}: layers {sorted(want)} outside 1..{self.num_layers}")
        x = m.patch_embed(images.to(self.device, self.dtype))
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        taps: dict[int, torch.Tensor] = {}
        p = self.num_prefix_tokens
        low = self.precision != "fp32"
        with torch.autocast(self.device.type, PRECISIONS[self.precision], enabled=low):
            for i, block in enumerate(m.blocks, start=1):
                x = block(x)
                if i in want:
                    taps[i] = torch.cat([x[:, :1], x[:, p:]], 1).float()
        x = m.norm(x.float())
        return ImageFeatures(
            embedding=x[:, 0], tokens=taps, grid=self.grid_size(images.shape[-1]), final_tokens=x[:, p:]
        )

    def encode_text(self, *_: Any, **__: Any) -> torch.Tensor:
        """A vision-only backbone has no text tower."""
        raise ZsadInputError(f"--backbone {self.model_name}: vision-only (no text tower); use a CLIP backbone")
