"""NVIDIA RADIO v2.5-L as a timm ViT: the tower AnomalyVFM's RADIO release runs on.

timm ships C-RADIO v3/v4 towers, not v2.5, and its RADIO converter resizes the 128x128 position table bilinearly
(square, then cropped) as NVIDIA's own code does. The AnomalyVFM release runs its own re-implementation of v2.5-L
(the official repository's ``radio_local.py``), and that one resizes the table *bicubically* (corners not aligned, no
antialias) straight to the input's grid. So zsad registers its own timm name, ``vit_large_patch16_radio_v2_5``, with
the v2.5-L architecture and a converter that resizes as the release does.

The architecture, as the release's code builds it (and as v2.5-L is described by NVIDIA): ViT-L/16 (width 1024, 24
blocks, 16 heads, exact-GELU MLP of 4096, LayerNorm eps 1e-6, qkv and projection biases), no layer scale, a
bias-free linear patch embedding of (C, ph, pw)-ordered patches, 8 prefix tokens with no position (the first is
timm's ``cls_token``, the other 7 its ``reg_token``), no final norm, and an input conditioner with OpenAI CLIP's
mean/std applied to a 0-1 image (here: the preprocess's mean/std). ``--backbone timm:vit_large_patch16_radio_v2_5``.

Weights: no download (``--weights FILE`` or ``--pretrained none``). The file holds RADIO's module names
(``model.patch_generator.embedder.weight``, ``model.patch_generator.cls_token.token``,
``model.patch_generator.pos_embed``, ``model.blocks.N.*`` as RADIOModel names them; ``radio_model.model.*`` as
timm reads NVIDIA's Hugging Face layout; ``base_model.*`` as NVIDIA's torch hub state dict does, per its hubconf.py:
the last two are not tried on a real file; ``model.net.model.*`` in an AnomalyVFM RADIO release, whose tower it then
reads), with ``input_conditioner.*`` checked against OpenAI's statistics, or timm's names at the model's grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from zsad.backbone.loading import state_reader
from zsad.errors import ZsadInputError

NAME = "vit_large_patch16_radio_v2_5"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX_TOKENS = 8  # RADIO v2.5's ClsToken: its first tokens are the summaries, the rest registers
# where a file keeps the ViT (patch_generator, blocks) and the input conditioner: timm's reading of NVIDIA's Hugging
# Face layout, RADIOModel's own names (radio_local.py, as in the AnomalyVFM release), NVIDIA's torch hub state dict
RADIO_LAYOUTS = (
    ("radio_model.model.", "radio_model.input_conditioner."),
    ("model.", "input_conditioner."),
    ("base_model.", "input_conditioner."),
    ("model.net.model.", "model.net.input_conditioner."),  # an AnomalyVFM RADIO release (its tower; wrappers unwrapped)
)
STEM = "patch_generator."

default_cfgs = generate_default_cfgs(
    {
        NAME: {
            "url": "",
            "num_classes": 0,
            "input_size": (3, 768, 768),
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "interpolation": "bicubic",
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "nvidia-open-model-license",
            "origin_url": "https://github.com/NVlabs/RADIO",
        }
    }
)


def radio_positions(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, M², W) RADIO position table -> (1, gh·gw, W): bicubic, corners not aligned, no antialias, fp32.

    As the AnomalyVFM release's ``radio_local.py`` resizes it each forward (NVIDIA's code resizes bilinearly).
    """
    n, dim = table.shape[1], table.shape[2]
    m = round(n**0.5)
    if m * m != n:
        raise ValueError(f"{n} positions are not a square grid")
    if (m, m) == tuple(grid):
        return table
    t = table.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=grid, mode="bicubic", align_corners=False)
    return t.permute(0, 2, 3, 1).reshape(1, -1, dim).to(table.dtype)


RADIO_BLOCK = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")  # each with weight and bias


def radio_to_timm(
    vit: Callable[[str], torch.Tensor],
    conditioner: Callable[[str], torch.Tensor] | None,
    layers: int,
    grid: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """RADIO v2.5 tensors -> timm names at ``grid``; ``vit`` and ``conditioner`` read them by their own names.

    The bias-free linear patch embedding becomes timm's conv weight with a zero bias, the 8 prefix tokens
    ``cls_token`` + 7 ``reg_token``, the 128x128 table ``radio_positions`` at ``grid``. The input conditioner, when
    there is one, must be OpenAI's mean/std (zsad's preprocess applies it).
    """
    for key, want in (("norm_mean", OPENAI_MEAN), ("norm_std", OPENAI_STD)):
        got = conditioner(key).flatten() if conditioner else torch.tensor(want)
        if not torch.allclose(got.float(), torch.tensor(want), atol=1e-6):
            raise ZsadInputError(f"{NAME}: input_conditioner.{key} is {got.tolist()}, not OpenAI's {list(want)}")
    embed, tokens = vit(STEM + "embedder.weight"), vit(STEM + "cls_token.token")
    width, p = embed.shape[0], round((embed.shape[1] // 3) ** 0.5)
    if 3 * p * p != embed.shape[1] or tuple(tokens.shape) != (PREFIX_TOKENS, width):
        raise ZsadInputError(
            f"{NAME}: patch embedding {tuple(embed.shape)} and prefix tokens {tuple(tokens.shape)} are not RADIO "
            f"v2.5's (W, 3·p·p) and ({PREFIX_TOKENS}, W)"
        )
    out = {"patch_embed.proj.weight": embed.reshape(width, 3, p, p), "patch_embed.proj.bias": embed.new_zeros(width)}
    out["cls_token"], out["reg_token"] = tokens[None, :1], tokens[None, 1:]
    out["pos_embed"] = radio_positions(vit(STEM + "pos_embed"), grid)
    for i in range(layers):
        for n in RADIO_BLOCK:
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{n}.{kind}"] = vit(f"blocks.{i}.{n}.{kind}")
    return out


def convert_radio(state: dict[str, Any], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """The load filter timm calls: RADIO v2.5 module names -> timm names at ``model``'s grid; timm's pass."""
    state = state.get("state_dict_ema") or state.get("state_dict") or state
    if "patch_embed.proj.weight" in state:
        return dict(state)
    layout = next((lay for lay in RADIO_LAYOUTS if lay[0] + STEM + "embedder.weight" in state), None)
    if layout is None:
        raise ZsadInputError(
            f"{NAME}: not RADIO weights (expected {STEM}embedder.weight under model., radio_model.model. or "
            f"base_model.; found e.g. {next(iter(state), 'nothing')!r})"
        )
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    conditioner = state_reader(state, layout[1], NAME) if layout[1] + "norm_mean" in state else None
    return radio_to_timm(state_reader(state, layout[0], NAME), conditioner, len(model.blocks), (grid[0], grid[1]))


@register_model
def vit_large_patch16_radio_v2_5(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-L/16 RADIO v2.5 (see the module notes); positions resized at load as AnomalyVFM's release does."""
    args: dict[str, Any] = {
        "img_size": 768,
        "patch_size": 16,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "class_token": True,
        "reg_tokens": PREFIX_TOKENS - 1,
        "no_embed_class": True,
        "final_norm": False,
        "init_values": None,
    }
    model: VisionTransformer = build_model_with_cfg(
        VisionTransformer, NAME, pretrained, pretrained_filter_fn=convert_radio, **{**args, **kwargs}
    )
    model.zsad_pos_interpolation = "bicubic at load (radio_local.py)"  # type: ignore[assignment]  # the manifest's record of the resize
    return model
