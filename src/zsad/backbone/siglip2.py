"""SigLIP2 So400m/16 (the NaFlex checkpoint) as a fixed-size timm ViT: the tower AnomalyVFM's SigLIP2 release runs on.

The release adapts Hugging Face's ``google/siglip2-so400m-patch16-naflex`` vision model at 768 px. NaFlex embeds
patches with a linear map of (ph, pw, C)-ordered pixels and resizes its 16x16 position table to each image's grid
*bilinearly with antialias* (corners not aligned); its ``pooler_output`` is an attention-pooling head (a learnt probe
attending over the final-norm tokens, then a residual MLP). timm's ``vit_so400m_patch16_siglip_*`` has the same
blocks and head, but its load-time position resample is bicubic; so zsad registers its own timm name,
``vit_so400m_patch16_siglip2_naflex``, whose converter resizes the table as NaFlex does, once, for the model's square
grid (768 px: 48x48). ``--backbone timm:vit_so400m_patch16_siglip2_naflex``.

Architecture (the checkpoint's config): width 1152, 27 blocks, 16 heads, MLP 4304 with tanh-approximated GELU,
LayerNorm eps 1e-6, no class token, a final LayerNorm (``post_layernorm``), the MAP head; mean/std 0.5.

Weights: no download (``--weights FILE`` or ``--pretrained none``). The file holds Hugging Face's vision names
(``embeddings.patch_embedding.weight``, ``encoder.layers.N.self_attn.q_proj.weight``, ``head.probe``, ...; under
``vision_model.`` in a full SigLIP2 checkpoint, under ``model.net.`` in an AnomalyVFM SigLIP2 release, whose tower it
then reads) or timm's names at the model's grid.
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

NAME = "vit_so400m_patch16_siglip2_naflex"
MEAN = STD = (0.5, 0.5, 0.5)
HF_PREFIXES = ("vision_model.", "", "model.net.")  # a full SigLIP2 checkpoint, the vision model, an AnomalyVFM release
PROBE = "embeddings.patch_embedding.weight"

default_cfgs = generate_default_cfgs(
    {
        NAME: {
            "url": "",
            "num_classes": 0,
            "input_size": (3, 768, 768),
            "mean": MEAN,
            "std": STD,
            "interpolation": "bilinear",
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "apache-2.0",
            "origin_url": "https://huggingface.co/google/siglip2-so400m-patch16-naflex",
        }
    }
)


def naflex_positions(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(M², W) NaFlex position table -> (1, gh·gw, W): bilinear, antialiased, corners not aligned, in fp32.

    What Hugging Face's Siglip2 embeddings compute for an image of that grid (``resize_positional_embeddings``).
    """
    n, dim = table.shape[-2], table.shape[-1]
    m = round(n**0.5)
    if m * m != n:
        raise ValueError(f"{n} positions are not a square grid")
    t = table.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=grid, mode="bilinear", align_corners=False, antialias=True)
    return t.permute(0, 2, 3, 1).reshape(1, -1, dim).to(table.dtype)


def hf_to_timm(take: Callable[[str], torch.Tensor], layers: int, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Hugging Face SigLIP2 vision tensors (read through ``take``, by their names) -> timm names at ``grid``.

    Patch embedding: the linear (W, ph·pw·C) map becomes timm's conv weight (W, C, ph, pw); q, k, v are fused into
    ``qkv``; the head's ``nn.MultiheadAttention`` input projection is split into timm's ``q`` and ``kv``.
    """
    embed = take("embeddings.patch_embedding.weight")
    width, p = embed.shape[0], round((embed.shape[1] // 3) ** 0.5)
    if 3 * p * p != embed.shape[1]:
        raise ZsadInputError(f"{NAME}: patch embedding {tuple(embed.shape)} is not SigLIP2's (W, p·p·3)")
    out = {
        "patch_embed.proj.weight": embed.reshape(width, p, p, 3).permute(0, 3, 1, 2).contiguous(),
        "patch_embed.proj.bias": take("embeddings.patch_embedding.bias"),
        "pos_embed": naflex_positions(take("embeddings.position_embedding.weight"), grid),
        "norm.weight": take("post_layernorm.weight"),
        "norm.bias": take("post_layernorm.bias"),
        "attn_pool.latent": take("head.probe"),
    }
    for i in range(layers):
        h, t = f"encoder.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{t}attn.qkv.{kind}"] = torch.cat([take(f"{h}self_attn.{x}_proj.{kind}") for x in "qkv"])
            for theirs, mine in SIGLIP2_BLOCK.items():
                out[f"{t}{mine}.{kind}"] = take(f"{h}{theirs}.{kind}")
    for kind in ("weight", "bias"):
        fused = take(f"head.attention.in_proj_{kind}")
        out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = fused[:width], fused[width:]
        for theirs, mine in SIGLIP2_HEAD.items():
            out[f"attn_pool.{mine}.{kind}"] = take(f"head.{theirs}.{kind}")
    return out


SIGLIP2_BLOCK = {  # HF encoder-layer module -> timm block module (q/k/v are fused apart)
    "layer_norm1": "norm1",
    "self_attn.out_proj": "attn.proj",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
SIGLIP2_HEAD = {"attention.out_proj": "proj", "layernorm": "norm", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def convert_siglip2(state: dict[str, Any], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """The load filter timm calls: Hugging Face SigLIP2 vision names -> timm names at ``model``'s grid."""
    if "patch_embed.proj.weight" in state:
        return dict(state)
    prefix = next((p for p in HF_PREFIXES if p + PROBE in state), None)
    if prefix is None:
        raise ZsadInputError(
            f"{NAME}: not SigLIP2 vision weights (expected {PROBE}, optionally under vision_model.; found e.g. "
            f"{next(iter(state), 'nothing')!r})"
        )
    grid = tuple(int(g) for g in model.patch_embed.grid_size)

    return hf_to_timm(state_reader(state, prefix, NAME), len(model.blocks), (grid[0], grid[1]))


@register_model
def vit_so400m_patch16_siglip2_naflex(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """SigLIP2 So400m/16 NaFlex at a fixed square size (see the module notes); positions resized at load."""
    args: dict[str, Any] = {
        "img_size": 768,
        "patch_size": 16,
        "embed_dim": 1152,
        "depth": 27,
        "num_heads": 16,
        "mlp_ratio": 3.7362,  # 4304 hidden units
        "class_token": False,
        "global_pool": "map",
        "act_layer": "gelu_tanh",
    }
    model: VisionTransformer = build_model_with_cfg(
        VisionTransformer, NAME, pretrained, pretrained_filter_fn=convert_siglip2, **{**args, **kwargs}
    )
    model.zsad_pos_interpolation = "bilinear antialiased at load (NaFlex)"  # type: ignore[assignment]  # the manifest's record of the resize
    return model
