"""``Backbone``: the image side every method may rely on, whichever wrapper (CLIP or a vision-only ViT) serves it.

Why a protocol and not a base class: ``ClipBackbone`` and ``VisionBackbone`` share no code, only this surface. A
method that accepts either (MuSc) types its backbone as ``Backbone``; one that reads text, projections or v-v
paths types it ``ClipBackbone``, and ``zsad.runs`` refuses a vision-only backbone for it before anything loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from zsad.backbone.clip import ImageFeatures
from zsad.types import Preprocess


@runtime_checkable
class Backbone(Protocol):
    """What methods, runs and exports read from a built backbone."""

    model_name: str
    pretrained: str | None  # the weights tag ("none": seeded random) or the weights file given
    image_size: int  # side of the square inputs
    num_layers: int  # blocks of the image tower (layer taps are 1-indexed up to it)
    embed_dim: int  # size of the global embedding
    precision: str  # fp32 | bf16 | fp16: the image tower's block matmuls
    random_init: bool  # seeded random weights: plumbing only, said in every result

    @property
    def device(self) -> torch.device:
        """Where the weights live: inputs are moved here."""
        ...

    @property
    def preprocess(self) -> Preprocess:
        """Input size and normalisation, for datasets, runs and exports."""
        ...

    def grid_size(self, image_size: int | None = None) -> tuple[int, int]:
        """Patch grid of a square input (by default at ``image_size``)."""
        ...

    def encode_image(self, images: torch.Tensor, layers: tuple[int, ...] = ()) -> ImageFeatures:
        """One forward: the global embedding and the raw tokens of ``layers`` (CLS first)."""
        ...

    def manifest(self) -> dict[str, Any]:
        """What a run records to be reproducible (the same keys for every backbone)."""
        ...


if TYPE_CHECKING:
    from zsad.backbone.clip import ClipBackbone
    from zsad.backbone.vision import VisionBackbone

    def _both_conform(clip: ClipBackbone, vision: VisionBackbone) -> tuple[Backbone, Backbone]:
        """Never called: mypy fails here the day either wrapper stops satisfying the protocol."""
        return clip, vision
