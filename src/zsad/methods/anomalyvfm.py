"""AnomalyVFM: a frozen vision foundation model with low-rank adapters, a conv decoder and a linear predictor.

Paper: Fučka, Zavrtanik, Skočaj, "AnomalyVFM — Transforming Vision Foundation Models into Zero-Shot Anomaly
Detectors", CVPR 2026 (arXiv 2601.20524); method notes docs/methods/anomalyvfm.md; official code MaticFuc/AnomalyVFM
@4da96b4. The code, with which the released weights were made, is followed where it differs from the paper.

The four released towers are built; the CLIP variant is the default:
- Tower: OpenAI's CLIP ViT-L/14-336 image tower (QuickGELU) at 672 px, the positional embedding resized bicubically
  (align_corners False) from 24x24 to 48x48 as Hugging Face's ``interpolate_pos_encoding``. Its output is the last
  block's hidden state, *without* ``ln_post`` (HF's ``last_hidden_state``; ``post_layernorm`` only touches the
  pooled output, which the method never reads). No projection, no text tower.
- Adapters in every block: DoRA (or LoRA) of rank 64, alpha 1 (scaling 1/64) on the q and v rows of the attention's
  input projection and on its output projection; k and the MLP stay frozen (``zsad.methods.peft``).
- Image score: sigmoid of a linear map of the class token. Map: the patch tokens as a 48x48 grid into a conv decoder
  (bottleneck of two 3x3 conv + GroupNorm(32) + ReLU, then one block of x2 *nearest* upsampling and two more such
  convs halving the channels, then 1x1 heads for the mask and a confidence that only training reads), sigmoid,
  a 5x5 mean filter (zero padding counted, as the official ``AvgPool2d``) at the decoder's 96x96, then resized to
  the input size (nearest, as the official test code's ``F.interpolate`` default).

The DINOv2 variant (``--backbone timm:vit_large_patch14_reg4_dinov2.lvd142m``, ``zsad.backbone.vision``): Meta's
ViT-L/14 with 4 register tokens and layer scale at 672 px (grid 48x48), ImageNet mean/std. The official code loads
``dinov2_vitl14_reg`` from torch hub, whose positions are resized per forward bicubically *with* antialias to an
explicit size (``interpolate_offset`` 0); timm's load-time resample is that same call, and the importer resizes the
released 37x37 table with ``dinov2_positions`` (the official formula). Adapters wrap the fused ``attn.qkv`` (q and v
row blocks, computed as the official QKV wrappers: ``zsad.methods.peft.adapted_qkv``) and ``attn.proj`` of every
block; the output is ``forward_features`` after the final norm: the score reads ``x_norm_clstoken``, the decoder
``x_norm_patchtokens`` (register tokens dropped).

The RADIO variant (``--backbone timm:vit_large_patch16_radio_v2_5 --image-size 768``, ``zsad.backbone.radio``):
RADIO v2.5-L as the release's ``radio_local.py`` builds it (grid 48x48 at 768 px, OpenAI mean/std, 8 prefix tokens
without positions, no layer scale, no final norm, the 128x128 position table resized bicubically). Patches go into
the bias-free linear embedding as the release computes them; the score reads the first three tokens concatenated
(3 x 1024), the decoder the patches. The official training and test scripts ran NVIDIA's torch hub RADIO instead,
which resizes the table bilinearly: see docs/methods/anomalyvfm.md.

The SigLIP2 variant (``--backbone timm:vit_so400m_patch16_siglip2_naflex --image-size 768``,
``zsad.backbone.siglip2``): the So400m/16 NaFlex vision model at a fixed 768 px ((ph, pw, C)-ordered linear patches,
the 16x16 table resized bilinearly with antialias, tanh GELU, no class token, a final LayerNorm). The score reads
the attention-pooling head's output (``pooler_output``), the decoder the final-norm patches. Adapters on the blocks'
q/v rows and output projections, as CLIP's; the head is never adapted, as in the official forward (see ``_pooled``).

A release's tower can also be the backbone itself: ``--weights release/model.safetensors`` for the RADIO and SigLIP2
towers (their converters read an AnomalyVFM release), which zsad does not download otherwise.

The released weights carry the whole tower. The importer compares it with the backbone's: bit-equal, it is not
stored (the backbone's weights are the released ones); otherwise the released tower is stored in the checkpoint and
used in place of the backbone's (``tower_weights=checkpoint``), so an imported model always runs on the released
weights. ``describe()`` says which (``vision_tower``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from zsad.backbone import Backbone, ClipBackbone
from zsad.backbone.clip import PRECISIONS
from zsad.backbone.loading import wrapped_key
from zsad.backbone.vision import VisionBackbone
from zsad.errors import ZsadInputError
from zsad.methods.base import MethodConfig
from zsad.methods.options import check_range
from zsad.methods.peft import PEFT_KINDS, LowRankAdapter, adapted_qkv, make_adapter
from zsad.methods.trainable import TrainableMethod, load_tensors, mask_items, read_official
from zsad.synth import SYNTH_MODES, synthesize
from zsad.types import Prediction

if TYPE_CHECKING:
    from zsad.train import TrainConfig, Training

UP_BLOCKS = 1  # x2 upsampling blocks of the decoder (official hf_model/test/train: num_up_layers = 1)
NORM_GROUPS = 32  # GroupNorm groups of the decoder
RELEASE_CONFIG = "config.json"
RELEASE_WEIGHTS = "model.safetensors"
# The official loss (train.py): torchvision's sigmoid focal loss defaults, mask focal x5, the map's sigmoid clipped to
# [0.1, 0.9] in the L1 term, confidence c = 1 + exp(conf) weighting each pixel with a 0.1 log c penalty.
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
MASK_FOCAL_WEIGHT = 5.0
L1_CLIP = (0.1, 0.9)
CONFIDENCE_PENALTY = 0.1


# the official README's training commands (``--train-steps``): the loop counts optimiser steps, not epochs
PUBLISHED_STEPS = {"clip": 500, "dinov2": 500, "radio": 200, "siglip2": 300}
DINOV2_BACKBONE = "timm:vit_large_patch14_reg4_dinov2.lvd142m"  # the official dinov2_vitl14_reg, in timm's layout
# DINOv2 position resize of torch hub's dinov2_vitl14_reg (``interpolate_offset``, ``interpolate_antialias``)
DINOV2_OFFSET, DINOV2_ANTIALIAS = 0.0, True


@dataclass(frozen=True)
class TowerLayout:
    """Where a tower family keeps what the adapters wrap: the fused q/k/v weight and the attention's output map."""

    family: str  # clip | dinov2 | radio | siglip2
    qkv: str  # tensor name template of the fused (3W, W) input projection, ``{i}`` the block
    proj: str  # tensor name template of the attention's output projection
    summary: int = 1  # leading tokens the predictor reads, concatenated (RADIO: its first three summary tokens;
    # SigLIP2: one, the attention-pooling head's output)


CLIP_LAYOUT = TowerLayout(
    "clip", "transformer.resblocks.{i}.attn.in_proj_weight", "transformer.resblocks.{i}.attn.out_proj.weight"
)
DINOV2_LAYOUT = TowerLayout("dinov2", "blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.proj.weight")
RADIO_LAYOUT = TowerLayout("radio", "blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.proj.weight", summary=3)
RADIO_BACKBONE = "timm:vit_large_patch16_radio_v2_5"  # RADIO v2.5-L as the release runs it (zsad.backbone.radio)
SIGLIP2_LAYOUT = TowerLayout("siglip2", "blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.proj.weight")
SIGLIP2_BACKBONE = "timm:vit_so400m_patch16_siglip2_naflex"  # the NaFlex checkpoint at 768 px (zsad.backbone.siglip2)


@dataclass
class AnomalyVfmConfig(MethodConfig):
    """AnomalyVFM options; the defaults are the released CLIP model (OpenAI ViT-L/14-336, QuickGELU, 672 px).

    ``backbone`` picks the variant: an open_clip CLIP name (the CLIP variant) or a timm tower: DINOv2
    (``timm:vit_large_patch14_reg4_dinov2.lvd142m``, 672 px as well), RADIO (``timm:vit_large_patch16_radio_v2_5``)
    or SigLIP2 (``timm:vit_so400m_patch16_siglip2_naflex``), both at 768 px (``--image-size 768``).
    """

    backbone: str = "ViT-L-14-336-quickgelu"  # OpenAI's activation, as Hugging Face's CLIP the release was made on
    pretrained: str = "openai"
    image_size: int = 672
    peft: str = "dora"  # dora | lora
    rank: int = 64
    alpha: float = 1.0  # scaling = alpha / rank
    mean_kernel: int = 5  # side of the mean filter on the map (official test --mean-kernel-size 5); 0 or 1: none
    map_upsample: str = "nearest"  # decoder map -> input size: nearest (official F.interpolate default) | bilinear
    tower_weights: str = "backbone"  # backbone | checkpoint (the released tower, stored by the importer)
    train_steps: int = 0  # optimiser steps per zsad epoch; 0: the published count for the tower (PUBLISHED_STEPS)
    grad_checkpointing: bool = True  # training: recompute each block in the backward (batch 32 without accumulation)
    synth: str = "none"  # training: none | texture | cutpaste | mixed: zsad.synth anomalies on normal images
    synth_fraction: float = 0.5  # training: share of each batch's normal images turned into synthetic anomalies
    synth_area: tuple[float, float] = (0.005, 0.05)  # training: anomalous fraction of a synthetic image
    checkpoint: str = ""

    def __post_init__(self) -> None:
        self.synth_area = tuple(float(v) for v in self.synth_area)  # type: ignore[assignment]
        lo, hi = self.synth_area if len(self.synth_area) == 2 else (0.0, 0.0)
        check_range(
            "anomalyvfm",
            peft=(self.peft, self.peft in PEFT_KINDS, " or ".join(PEFT_KINDS)),
            rank=(self.rank, self.rank >= 1, ">= 1"),
            alpha=(self.alpha, self.alpha > 0, "> 0"),
            mean_kernel=(
                self.mean_kernel,
                self.mean_kernel in (0, 1) or (self.mean_kernel > 1 and self.mean_kernel % 2 == 1),
                "an odd size >= 3, or 0 (no smoothing)",
            ),
            map_upsample=(self.map_upsample, self.map_upsample in ("nearest", "bilinear"), "nearest or bilinear"),
            train_steps=(self.train_steps, self.train_steps >= 0, ">= 1, or 0 for the published count"),
            synth=(self.synth, self.synth in ("none", *SYNTH_MODES), "none, " + ", ".join(SYNTH_MODES)),
            synth_fraction=(self.synth_fraction, 0 < self.synth_fraction <= 1, "in (0, 1]"),
            synth_area=(list(self.synth_area), 0 < lo <= hi < 1, "two fractions 0 < low <= high < 1"),
            tower_weights=(
                self.tower_weights,
                self.tower_weights in ("backbone", "checkpoint"),
                "backbone or checkpoint (set by zsad import-checkpoint)",
            ),
        )


# ---------------------------------------------------------------------------------------------- learnable parts
class ConvBlock(nn.Module):
    """Optional x2 nearest upsampling, then twice (3x3 conv, GroupNorm, ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.bn1 = nn.GroupNorm(NORM_GROUPS, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.bn2 = nn.GroupNorm(NORM_GROUPS, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, h, w) -> (B, out, h', w'), h' = 2h when upsampling."""
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class MaskDecoder(nn.Module):
    """Bottleneck, ``UP_BLOCKS`` upsampling blocks halving the channels, and 1x1 mask and confidence heads."""

    def __init__(self, width: int, up_blocks: int = UP_BLOCKS) -> None:
        super().__init__()
        self.bot = ConvBlock(width, width, upsample=False)
        ch, blocks = width, []
        for _ in range(up_blocks):
            blocks.append(ConvBlock(ch, ch // 2, upsample=True))
            ch //= 2
        self.blocks = nn.ModuleList(blocks)
        self.final = nn.Conv2d(ch, 1, 1)
        self.final_conf = nn.Conv2d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features (B, width, gh, gw) -> mask logits and confidence logits, each (B, 1, 2gh, 2gw)."""
        x = self.bot(x)
        for block in self.blocks:
            x = block(x)
        return self.final(x), self.final_conf(x)


class BlockAdapters(nn.Module):
    """The three adapters of one attention: q rows, v rows (of the fused input projection) and the output map."""

    def __init__(self, kind: str, in_proj: torch.Tensor, out_proj: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        wq, _, wv = in_proj.chunk(3, dim=0)
        self.q: LowRankAdapter = make_adapter(kind, wq, rank, alpha)
        self.v: LowRankAdapter = make_adapter(kind, wv, rank, alpha)
        self.out: LowRankAdapter = make_adapter(kind, out_proj, rank, alpha)


class StoredTower(nn.Module):
    """A vision tower's tensors under open_clip's names (``transformer.resblocks.0.attn.in_proj_weight``), frozen.

    Held only when the released tower differs from the backbone's (see the module notes).
    """

    def __init__(self, shapes: dict[str, tuple[torch.Size, torch.dtype]]) -> None:
        super().__init__()
        for name, (shape, dtype) in shapes.items():
            *path, leaf = name.split(".")
            node: nn.Module = self
            for part in path:
                if not hasattr(node, part):
                    node.add_module(part, nn.Module())
                node = getattr(node, part)
            node.register_buffer(leaf, torch.zeros(shape, dtype=dtype))

    def weights(self) -> dict[str, torch.Tensor]:
        """{open_clip name: tensor}, the tensors themselves (no copy)."""
        return dict(self.named_buffers())


class AnomalyVfmParts(nn.Module):
    """Everything AnomalyVFM learns (adapters, decoder, predictor) and, when imported so, the released tower."""

    def __init__(
        self,
        visual: dict[str, torch.Tensor],
        layers: int,
        width: int,
        cfg: AnomalyVfmConfig,
        stored: bool,
        layout: TowerLayout = CLIP_LAYOUT,
    ) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(
            BlockAdapters(
                cfg.peft, visual[layout.qkv.format(i=i)], visual[layout.proj.format(i=i)], cfg.rank, cfg.alpha
            )
            for i in range(layers)
        )
        self.decoder = MaskDecoder(width)
        self.predictor = nn.Linear(width * layout.summary, 1)
        self.tower = StoredTower({k: (v.shape, torch.float32) for k, v in visual.items()}) if stored else None


def timm_tower_keys(layers: int, registers: bool, family: str = "dinov2") -> list[str]:
    """The timm names of a DINOv2, RADIO or SigLIP2 tower's tensors the forward reads (no classifier).

    timm folds DINOv2's class position into ``cls_token`` and keeps ``pos_embed`` for the patches only. RADIO has
    neither a final norm nor layer scale; SigLIP2 has no class token and an attention-pooling head.
    """
    f = TIMM_FAMILIES[family]
    keys = [*(["cls_token"] if f.cls_token else []), *(["reg_token"] if registers else []), "pos_embed"]
    keys += ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    keys += ["norm.weight", "norm.bias"] if f.final_norm else []
    if f.pool:
        keys += ["attn_pool.latent", *(f"attn_pool.{n}.{k}" for n in POOL_LINEARS for k in ("weight", "bias"))]
    block = DINOV2_BLOCK if f.layer_scale else RADIO_BLOCK
    for i in range(layers):
        keys += [f"blocks.{i}.{n}" for n in block]
    return keys


POOL_LINEARS = ("q", "kv", "proj", "norm", "mlp.fc1", "mlp.fc2")  # timm's AttentionPoolLatent (norm: LayerNorm)


DINOV2_BLOCK = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "ls2.gamma",
)
RADIO_BLOCK = tuple(n for n in DINOV2_BLOCK if not n.startswith("ls"))  # v2.5 blocks have no layer scale


def tower_keys(layers: int) -> list[str]:
    """open_clip names of the image-tower tensors the forward reads (``ln_post`` and ``proj`` are never read)."""
    keys = ["conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias"]
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        keys += [
            p + n
            for n in (
                "ln_1.weight",
                "ln_1.bias",
                "attn.in_proj_weight",
                "attn.in_proj_bias",
                "attn.out_proj.weight",
                "attn.out_proj.bias",
                "ln_2.weight",
                "ln_2.bias",
                "mlp.c_fc.weight",
                "mlp.c_fc.bias",
                "mlp.c_proj.weight",
                "mlp.c_proj.bias",
            )
        ]
    return keys


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, W) -> (B, heads, T, W / heads)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def interpolate_positions(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1+g0², W) positional embedding -> (1+gh·gw, W): bicubic, corners not aligned, no antialias (as HF CLIP).

    At the native grid it is returned unchanged (HF skips the interpolation there too).
    """
    g0 = round((pos.shape[0] - 1) ** 0.5)
    if grid == (g0, g0):
        return pos
    patch = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def dinov2_positions(
    patch_pos: torch.Tensor, grid: tuple[int, int], offset: float = DINOV2_OFFSET, antialias: bool = DINOV2_ANTIALIAS
) -> torch.Tensor:
    """(1, M², W) patch positions -> (1, gh·gw, W) as DINOv2's ``interpolate_pos_encoding`` resizes them.

    Bicubic in fp32, antialias as the model says (True for the register models). With ``offset`` 0 the output size is
    given; otherwise the historical scale factor ``(g + offset) / M`` is (which then also sets the kernel's spacing).
    At M² = gh·gw and a square grid it is returned unchanged, as the official code returns its table.
    """
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    m = round(n**0.5)
    if m * m != n:
        raise ValueError(f"{n} patch positions are not a square grid")
    if n == grid[0] * grid[1] and grid[0] == grid[1]:
        return patch_pos
    size: dict[str, Any] = (
        {"scale_factor": ((grid[0] + offset) / m, (grid[1] + offset) / m)} if offset else {"size": grid}
    )
    table = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    out = F.interpolate(table, mode="bicubic", antialias=antialias, **size)
    if tuple(out.shape[-2:]) != tuple(grid):
        raise ValueError(f"positions resized to {tuple(out.shape[-2:])}, not {grid}")
    return out.permute(0, 2, 3, 1).reshape(1, -1, dim).to(patch_pos.dtype)


def tower_layout(backbone: Backbone) -> TowerLayout:
    """The tower family of a backbone: a CLIP, a timm RADIO or SigLIP (its name says so), another timm ViT (DINOv2)."""
    if isinstance(backbone, ClipBackbone):
        return CLIP_LAYOUT
    if isinstance(backbone, VisionBackbone):
        name = backbone.model_name
        return RADIO_LAYOUT if "radio" in name else SIGLIP2_LAYOUT if "siglip" in name else DINOV2_LAYOUT
    raise ZsadInputError(
        f"anomalyvfm: backbone {getattr(backbone, 'model_name', type(backbone).__name__)} is neither a CLIP nor a "
        f"timm DINOv2 ({DINOV2_BACKBONE}), RADIO ({RADIO_BACKBONE}) or SigLIP2 ({SIGLIP2_BACKBONE}) tower"
    )


# ---------------------------------------------------------------------------------------------- the method
class AnomalyVfm(TrainableMethod):
    """AnomalyVFM on a CLIP, DINOv2, RADIO or SigLIP2 tower: attention adapters, a conv decoder, a linear score."""

    name = "anomalyvfm"
    config_cls = AnomalyVfmConfig
    config: AnomalyVfmConfig
    backbone: Any  # ClipBackbone (CLIP variant) or VisionBackbone (DINOv2, RADIO, SigLIP2)
    layout: TowerLayout  # the tower family, from the backbone's type
    needs_class_name: ClassVar[bool] = False  # no text at all
    arch_fields = ("peft", "rank", "alpha", "tower_weights")
    official_checkpoint = (
        "the Hugging Face release of AnomalyVFM CLIP, DINOv2, RADIO or SigLIP2 (a folder with config.json and "
        "model.safetensors), or the Drive model.pkl (read with weights_only=True)"
    )
    official_folder: ClassVar[bool] = True  # ``import_checkpoint`` takes the release folder as it is downloaded
    full_precision = {"bf16": "measured: bf16 flipped image decisions beyond the fp32 noise floor, see RESULTS.md"}

    def __init__(self, backbone: Backbone, config: MethodConfig | None = None, **overrides: Any) -> None:
        self.layout = tower_layout(backbone)
        super().__init__(backbone, config, **overrides)

    @classmethod
    def uses_text(cls, config: Any) -> bool:
        """Vision only: the text tower is never read."""
        return False

    def finish_config(self) -> None:
        """Refuse towers this forward does not reproduce (layer scale, widths GroupNorm(32) cannot split)."""
        bb = self.backbone
        if bb.width % (2 * NORM_GROUPS):
            raise ZsadInputError(
                f"anomalyvfm: the decoder's GroupNorm({NORM_GROUPS}) needs a tower width divisible by "
                f"{2 * NORM_GROUPS}; {bb.model_name} has {bb.width}"
            )
        if self.layout.family != "clip":
            check_timm_tower(bb, self.layout.family)
            return
        for blk in bb.model.visual.transformer.resblocks:
            if not (isinstance(blk.ls_1, nn.Identity) and isinstance(blk.ls_2, nn.Identity)):
                raise ZsadInputError(f"anomalyvfm: {bb.model_name} uses layer scale, which this tower does not have")

    # ------------------------------------------------------------------ the parts
    @property
    def parts(self) -> AnomalyVfmParts:
        """Adapters, decoder, predictor (and the released tower when it differs from the backbone's)."""
        return self._parts

    def build_parts(self, seed: int | None) -> None:
        """Fresh parts (A ~ N(0, 0.01²), B = 0, DoRA magnitudes = row norms), seeded without touching global RNG."""
        bb = self.backbone
        visual = self.backbone_tower()
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            parts = AnomalyVfmParts(
                visual, bb.num_layers, bb.width, self.config, self.config.tower_weights == "checkpoint", self.layout
            )
        self._parts = parts.to(bb.device).eval()

    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        self.require_trained(
            "adapters, decoder and predictor",
            "; or import the released weights with `zsad import-checkpoint --method anomalyvfm`",
        )

    def describe(self) -> dict[str, Any]:
        """The run record, plus which image-tower weights ran (the backbone's, or the released ones stored)."""
        out = super().describe()
        record = ((self.training_manifest or {}).get("training") or {}).get("vision_tower")
        out["vision_tower"] = {
            "weights": self.config.tower_weights,
            "source": (
                "the released tower stored in the checkpoint"
                if self.config.tower_weights == "checkpoint"
                else "the backbone's own weights"
            ),
            "import_check": record,
        }
        return out

    # ------------------------------------------------------------------ forward
    def backbone_tower(self) -> dict[str, torch.Tensor]:
        """{name: tensor} of the backbone's own tower, the tensors the forward reads (open_clip or timm names)."""
        bb = self.backbone
        if self.layout.family != "clip":
            keys = set(timm_tower_keys(bb.num_layers, bb.model.reg_token is not None, self.layout.family))
            return {k: v for k, v in bb.model.named_parameters() if k in keys}
        return {k: v for k, v in bb.model.visual.named_parameters() if k in set(tower_keys(bb.num_layers))}

    def tower_weights(self) -> dict[str, torch.Tensor]:
        """{name: tensor} of the tower this model runs on: the stored release's, else the backbone's."""
        tower = self._parts.tower
        if isinstance(tower, StoredTower):
            return tower.weights()
        if self.layout.family != "clip":
            return self.backbone_tower()
        return dict(self.backbone.model.visual.named_parameters())

    def tower_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, s+N, width): the ``layout.summary`` tokens the predictor reads, then the patches the decoder reads.

        CLIP: the last block's hidden state, no ``ln_post`` (HF CLIP's ``last_hidden_state``). DINOv2: the final
        norm's output (``x_norm_clstoken`` and ``x_norm_patchtokens``), register tokens dropped. RADIO: the last
        block's output (no final norm): summary tokens 0, 1, 2, then the patches. SigLIP2: the pooling head's output,
        then the final-norm patches.
        """
        if self.layout.family != "clip":
            return self._timm_tokens(images)
        bb = self.backbone
        w = self.tower_weights()
        visual = bb.model.visual
        eps = float(visual.ln_pre.eps)
        width = (bb.width,)
        x = F.conv2d(images.to(w["conv1.weight"].dtype), w["conv1.weight"], stride=bb.patch_size)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        cls = w["class_embedding"].to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + interpolate_positions(w["positional_embedding"], grid).to(x.dtype)
        x = F.layer_norm(x, width, w["ln_pre.weight"], w["ln_pre.bias"], eps)
        recompute = self.config.grad_checkpointing and self._parts.training and torch.is_grad_enabled()
        for i in range(len(visual.transformer.resblocks)):
            # recompute: the same ops again in the backward, so only one block's activations are held at a time
            x = checkpoint(self._block, i, x, w, use_reentrant=False) if recompute else self._block(i, x, w)
        return x

    def _timm_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """DINOv2's, RADIO's or SigLIP2's forward on the adapted tower, in timm's layout (``check_timm_tower``).

        The patches are embedded as each official tower computes it: a convolution (DINOv2), a linear map of
        (C, ph, pw)-ordered patches (RADIO) or of (ph, pw, C)-ordered ones (SigLIP2's NaFlex).
        """
        bb = self.backbone
        model, w, family = bb.model, self.tower_weights(), self.layout.family
        pw, p = w["patch_embed.proj.weight"], bb.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        if family == "dinov2":
            x = F.conv2d(images.to(pw.dtype), pw, w["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
        else:  # (B, C, gh, gw, p, p) -> (B, gh·gw, C·p·p) or (B, gh·gw, p·p·C)
            patches = images.to(pw.dtype).unfold(2, p, p).unfold(3, p, p)
            order = (0, 2, 3, 1, 4, 5) if family == "radio" else (0, 2, 3, 4, 5, 1)
            weight = pw if family == "radio" else pw.permute(0, 2, 3, 1)
            patches = patches.permute(*order).flatten(3).flatten(1, 2)
            x = F.linear(patches, weight.flatten(1), w["patch_embed.proj.bias"])
        pos = w["pos_embed"]
        prefix = [w["cls_token"].expand(x.shape[0], -1, -1)] if "cls_token" in w else []
        if "reg_token" in w:
            prefix.append(w["reg_token"].expand(x.shape[0], -1, -1))
        n_prefix = sum(t.shape[1] for t in prefix)
        want = grid[0] * grid[1] + (0 if model.no_embed_class else n_prefix)
        if pos.shape[1] != want:
            raise ZsadInputError(
                f"anomalyvfm: {bb.model_name} holds positions for {bb.image_size} px; got images of "
                f"{tuple(images.shape[-2:])} px (grid {grid})"
            )
        # timm's _pos_embed: without class embedding the prefix tokens get no position (DINOv2's class position
        # is folded into cls_token when the weights are converted, which adds the same two numbers)
        x = torch.cat([*prefix, x + pos], 1) if model.no_embed_class else torch.cat([*prefix, x], 1) + pos
        recompute = self.config.grad_checkpointing and self._parts.training and torch.is_grad_enabled()
        low = bb.precision != "fp32"
        with torch.autocast(x.device.type, PRECISIONS[bb.precision], enabled=low):
            for i in range(bb.num_layers):
                x = (
                    checkpoint(self._dinov2_block, i, x, w, use_reentrant=False)
                    if recompute
                    else self._dinov2_block(i, x, w)
                )
        x = x.float()
        if "norm.weight" in w:
            x = F.layer_norm(x, (x.shape[-1],), w["norm.weight"], w["norm.bias"], float(model.norm.eps))
        if family == "siglip2":
            return torch.cat([self._pooled(x, w), x], 1)
        return torch.cat([x[:, : self.layout.summary], x[:, n_prefix:]], 1)

    def _pooled(self, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """SigLIP2's ``pooler_output`` as (B, 1, W): a learnt probe attends over the tokens, then a residual MLP.

        Never adapted: the official DoRA wrapper on the head's ``out_proj`` has no effect (``nn.MultiheadAttention``
        reads the wrapped layer's own weight), so the release's adapter tensors there are dropped at import.
        """
        pool = self.backbone.model.attn_pool
        heads, b = int(pool.num_heads), x.shape[0]
        q = F.linear(w["attn_pool.latent"].expand(b, -1, -1), w["attn_pool.q.weight"], w["attn_pool.q.bias"])
        k, v = F.linear(x, w["attn_pool.kv.weight"], w["attn_pool.kv.bias"]).chunk(2, dim=-1)
        o = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
        y = F.linear(o.transpose(1, 2).flatten(2), w["attn_pool.proj.weight"], w["attn_pool.proj.bias"])
        h = F.layer_norm(y, (y.shape[-1],), w["attn_pool.norm.weight"], w["attn_pool.norm.bias"], float(pool.norm.eps))
        h = F.gelu(F.linear(h, w["attn_pool.mlp.fc1.weight"], w["attn_pool.mlp.fc1.bias"]), approximate="tanh")
        return y + F.linear(h, w["attn_pool.mlp.fc2.weight"], w["attn_pool.mlp.fc2.bias"])

    def _dinov2_block(self, i: int, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """DINOv2 block ``i``: ``x + ls1 · attn(norm1 x)``, then ``x + ls2 · mlp(norm2 x)``, adapters in ``attn``.

        RADIO's and SigLIP2's blocks are the same without layer scale (no ``ls*.gamma`` in ``w``); SigLIP2's GELU is
        tanh-approximated.
        """
        blk = self.backbone.model.blocks[i]
        p = f"blocks.{i}."
        width = (x.shape[-1],)
        ad: BlockAdapters = self._parts.adapters[i]  # type: ignore[assignment]
        y = F.layer_norm(x, width, w[p + "norm1.weight"], w[p + "norm1.bias"], float(blk.norm1.eps))
        qkv = adapted_qkv(y, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"], ad.q, ad.v)
        heads = int(blk.attn.num_heads)
        q, k, v = qkv.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        a = ad.out(o, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        x = x + (a * w[p + "ls1.gamma"] if p + "ls1.gamma" in w else a)
        y = F.layer_norm(x, width, w[p + "norm2.weight"], w[p + "norm2.bias"], float(blk.norm2.eps))
        gelu = "tanh" if self.layout.family == "siglip2" else "none"
        h = F.gelu(F.linear(y, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]), approximate=gelu)
        h = F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        return x + (h * w[p + "ls2.gamma"] if p + "ls2.gamma" in w else h)

    def _block(self, i: int, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        """Block ``i`` (0-indexed) of the adapted tower on (B, T, width), weights from ``w``."""
        blk = self.backbone.model.visual.transformer.resblocks[i]
        width, eps = (x.shape[-1],), float(blk.ln_1.eps)
        p = f"transformer.resblocks.{i}."
        ad: BlockAdapters = self._parts.adapters[i]  # type: ignore[assignment]
        wdt = w[p + "attn.in_proj_weight"].dtype  # the matmuls' precision (``set_precision``)
        y = F.layer_norm(x, width, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps).to(wdt)
        wq, wk, wv = w[p + "attn.in_proj_weight"].chunk(3, dim=0)
        bq, bk, bv = w[p + "attn.in_proj_bias"].chunk(3, dim=0)
        heads = int(blk.attn.num_heads)
        q, k, v = (_heads(t, heads) for t in (ad.q(y, wq, bq), F.linear(y, wk, bk), ad.v(y, wv, bv)))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + ad.out(o, w[p + "attn.out_proj.weight"], w[p + "attn.out_proj.bias"]).to(x.dtype)
        y = F.layer_norm(x, width, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps).to(wdt)
        h = blk.mlp.gelu(F.linear(y, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"]))
        return x + F.linear(h, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"]).to(x.dtype)

    def heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tower tokens -> score logits (B,), mask and confidence logits (B, 1, 2gh, 2gw): what training reads."""
        tokens, s = tokens.float(), self.layout.summary
        b, n = tokens.shape[0], tokens.shape[1] - s
        gh = gw = round(n**0.5)
        score = self._parts.predictor(tokens[:, :s].flatten(1))[:, 0]
        mask, conf = self._parts.decoder(tokens[:, s:].transpose(1, 2).reshape(b, -1, gh, gw))
        return score, mask, conf

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``heads`` of ``tower_tokens``: one forward."""
        return self.heads(self.tower_tokens(images))

    def finish(self, score: torch.Tensor, mask: torch.Tensor) -> Prediction:
        """Logits -> the prediction as the official test code makes it: sigmoids, mean filter, resize to the input."""
        amap = mask.sigmoid()
        k = self.config.mean_kernel
        if k > 1:  # zero padding counted in the mean, as the official AvgPool2d(k, 1, k // 2)
            amap = F.avg_pool2d(amap, k, stride=1, padding=k // 2)
        size = (self.image_size, self.image_size)
        mode = self.config.map_upsample
        amap = F.interpolate(amap, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        return Prediction(pred_score=score.sigmoid().float(), anomaly_map=amap[:, 0].float())

    def _predict(self, images: torch.Tensor) -> Prediction:
        score, mask, _ = self.logits(images)
        return self.finish(score, mask)

    # ------------------------------------------------------------------ training
    def default_train_config(self) -> TrainConfig:
        """The official recipe: AdamW lr 1e-4, weight decay 1e-2, batch 32, seed 12.

        One epoch is ``train_steps`` steps, by default the published count (500 for CLIP and DINOv2, 200 for RADIO).
        """
        from zsad.train import TrainConfig

        return TrainConfig(epochs=1, batch_size=32, lr=1e-4, weight_decay=1e-2, optimizer="adamw", seed=12)

    def loss_terms(self, images: torch.Tensor, gt: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official loss on one batch: images (B, 3, S, S), masks (B, S, S) in {0, 1}, labels (B,) in {0, 1}."""
        score, mask, conf = self.logits(images)
        return loss_from_logits(score, mask, conf, gt, label)

    def fit(
        self, datasets: Sequence[tuple[str, Any]], train_cfg: TrainConfig, *, class_names: dict[str, str] | None = None
    ) -> Training:
        """Adapters, decoder and predictor train on (category, dataset) pairs with masks; the tower stays frozen.

        The official loop counts optimiser steps, not epochs: a zsad epoch is ``train_steps`` batches drawn from
        passes over the shuffled data (a new shuffle whenever a pass ends, its last batch possibly smaller).
        """
        from zsad.train import Training

        if self.config.tower_weights == "checkpoint":
            raise ZsadInputError(
                "anomalyvfm: training runs on the backbone's own tower; tower_weights=checkpoint holds a released "
                "tower that differs from it (build the backbone from those weights instead)"
            )
        items = mask_items(self.name, datasets)
        self.build_parts(seed=train_cfg.seed)
        self.training_manifest = None
        dev = self.backbone.device
        steps = self.config.train_steps or PUBLISHED_STEPS[self.layout.family]
        bs, n = train_cfg.batch_size, len(items)

        def batches(gen: torch.Generator) -> Iterator[list[int]]:
            order: list[int] = []
            for _ in range(steps):
                if not order:
                    order = torch.randperm(n, generator=gen).tolist()
                batch, order = order[:bs], order[bs:]
                yield batch

        def step(parts: nn.Module, batch: list[int]) -> dict[str, torch.Tensor]:
            got = [items[i][1][items[i][2]] for i in batch]
            images = torch.stack([g["image"] for g in got]).to(dev)
            gt = torch.stack([(g["gt_mask"] > 0.5).float() for g in got]).to(dev)
            label = torch.tensor([float(g["gt_label"] == 1) for g in got], device=dev)
            if self.config.synth != "none":
                images, gt, label = self.synthetic(images, gt, label)
            return self.loss_terms(images, gt, label)

        return Training(
            self._parts,
            batches,  # type: ignore[arg-type]  # the loop takes a callable of batches as well as a sequence
            step,
            train_cfg,
            self.name,
            images=items,
            summary=f"tower frozen, adapters + decoder + predictor; one epoch = {steps} steps of batch {bs}"
            + (f"; {self.config.synth} anomalies synthesised on normal images" if self.config.synth != "none" else ""),
        )

    def synthetic(
        self, images: torch.Tensor, gt: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Turn ``synth_fraction`` of the batch's normal images into ``zsad.synth`` anomalies (label 1, their masks).

        The seed is drawn from torch's global RNG, which the training loop seeds and restores on resume, so a run
        is reproducible and resumes bit for bit.
        """
        normal = (label == 0).nonzero().flatten()
        k = round(len(normal) * self.config.synth_fraction)
        if k == 0:
            return images, gt, label
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        pick = normal[torch.randperm(len(normal), generator=torch.Generator().manual_seed(seed))[:k].to(normal.device)]
        fake, masks = synthesize(images[pick], n=k, area=self.config.synth_area, seed=seed, mode=self.config.synth)
        images, gt, label = images.clone(), gt.clone(), label.clone()
        images[pick], gt[pick], label[pick] = fake, masks.to(gt.dtype), 1.0
        return images, gt, label

    @classmethod
    def import_official(cls, path: Path, backbone: Any, out: Path, trained_on: str) -> Path:
        """Convert the released weights (see ``import_release``)."""
        return import_release(path, backbone, out, trained_on)


@dataclass(frozen=True)
class TimmFamily:
    """What a timm tower of one family must have for ``_timm_tokens`` to compute it exactly."""

    name: str
    backbone: str  # the ``--backbone`` to suggest
    cls_token: bool
    final_norm: bool  # a LayerNorm after the blocks (else none at all)
    layer_scale: bool
    gelu: str  # the MLP's GELU: "none" (exact) or "tanh"
    prefix: int | None  # prefix tokens required (None: any), all without positions when it is > 1
    pool: bool  # a MAP attention-pooling head (SigLIP2's ``pooler_output``)


TIMM_FAMILIES = {
    "dinov2": TimmFamily("DINOv2", DINOV2_BACKBONE, True, True, True, "none", None, False),
    "radio": TimmFamily("RADIO v2.5", RADIO_BACKBONE, True, False, False, "none", 8, False),
    "siglip2": TimmFamily("SigLIP2", SIGLIP2_BACKBONE, False, True, False, "tanh", 0, True),
}


def _gelu_kind(act: object) -> str:
    """The GELU form of an MLP activation: none (exact), tanh (torch's or timm's approximation), or empty."""
    if isinstance(act, nn.GELU):
        return str(act.approximate)
    return "tanh" if type(act).__name__ == "GELUTanh" else ""


def check_timm_tower(bb: VisionBackbone, family: str = "dinov2") -> None:
    """Refuse, in one line, a timm ViT this DINOv2, RADIO v2.5 or SigLIP2 forward does not reproduce.

    The forward computes the block by hand (fused qkv with adapters, SDPA, layer scale where the family has it, a
    Linear-GELU-Linear MLP) and reads the tensors ``timm_tower_keys`` names, so anything else in a timm ViT
    (SwiGLU, q/k norms, pre-norm, patch-embed norm, another GELU, layer scale where the family has none, another
    pooling head) would be silently skipped or added: it is refused instead.
    """
    f, m = TIMM_FAMILIES[family], bb.model
    pool = getattr(m, "attn_pool", None)
    why = ""
    if (getattr(m, "cls_token", None) is not None) != f.cls_token:
        why = "a class token" if not f.cls_token else "no class token"
    elif not isinstance(getattr(m, "norm_pre", nn.Identity()), nn.Identity):
        why = "a norm before the blocks"
    elif not isinstance(getattr(m.patch_embed, "norm", nn.Identity()), nn.Identity):
        why = "a norm in the patch embedding"
    elif f.final_norm and not isinstance(getattr(m, "norm", None), nn.LayerNorm):
        why = "no final LayerNorm"
    elif not f.final_norm and not isinstance(getattr(m, "norm", None), nn.Identity):
        why = "a final norm"
    elif f.prefix is not None and bb.num_prefix_tokens != f.prefix:
        why = f"{bb.num_prefix_tokens} prefix tokens, not {f.prefix}"
    elif f.prefix and f.prefix > 1 and not getattr(m, "no_embed_class", False):
        why = "positions on the prefix tokens"
    elif f.pool != (pool is not None) or (
        pool is not None
        and not (
            pool.latent_len == 1
            and pool.pos_embed is None
            and isinstance(pool.q_norm, nn.Identity)
            and isinstance(pool.k_norm, nn.Identity)
            and isinstance(pool.norm, nn.LayerNorm)
            and pool.mlp is not None
        )
    ):
        why = "another pooling head" if f.pool else "an attention-pooling head"
    for blk in m.blocks:
        if why:
            break
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not isinstance(
            getattr(attn, "proj", None), nn.Linear
        ):
            why = "attention without a fused qkv and a proj"
        elif any(not isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm")):
            why = "q/k or attention norms"
        elif getattr(attn, "gate", None) is not None:
            why = "gated attention"
        elif not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("fc1", "fc2")):
            why = "an MLP other than Linear-GELU-Linear"
        elif _gelu_kind(getattr(mlp, "act", None)) != f.gelu:
            why = f"an MLP activation other than GELU ({'tanh-approximated' if f.gelu == 'tanh' else 'exact'})"
        elif not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
            why = "a norm inside the MLP"
        elif f.layer_scale and not all(hasattr(getattr(blk, n, None), "gamma") for n in ("ls1", "ls2")):
            why = "no layer scale"
        elif not f.layer_scale and not all(isinstance(getattr(blk, n, None), nn.Identity) for n in ("ls1", "ls2")):
            why = f"layer scale ({f.name} has none)"
        elif not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            why = "block norms other than LayerNorm"
    if why:
        raise ZsadInputError(
            f"anomalyvfm: {bb.model_name} is not a {f.name} ViT in timm's layout ({why}); use {f.backbone}"
        )


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise focal loss on logits (Lin et al. 2017): α_t (1 - p_t)^γ BCE, α 0.25, γ 2 (torchvision's)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA


def loss_from_logits(
    score: torch.Tensor, mask: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, label: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The official loss: focal on the image score + the confidence-weighted map loss at the decoder's resolution.

    The masks (B, S, S) are resized to the decoder's 2g x 2g as the official ``T.Resize`` resizes tensors (bilinear,
    antialiased) and binarised at 0.5. Per pixel: ``c · (5 focal + |clip(σ(mask), 0.1, 0.9) - gt|) - 0.1 log c``
    with ``c = 1 + exp(conf)``, averaged; the image term is the mean focal loss of the score logits.
    """
    size = mask.shape[-2:]
    small = F.interpolate(gt[:, None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    small = (small > 0.5).float()
    image = sigmoid_focal(score, label.float()).mean()
    inner = MASK_FOCAL_WEIGHT * sigmoid_focal(mask, small) + (mask.sigmoid().clip(*L1_CLIP) - small).abs()
    c = 1 + conf.exp()
    pixel = (c * inner - CONFIDENCE_PENALTY * c.log()).mean()
    return {"image": image, "mask": pixel, "loss": image + pixel}


# ---------------------------------------------------------------------------------------------- the importer
HF_NET = "model.net."  # hf_model.AnomalyVFM.model (models.clip.CLIP).net: the HF CLIP vision model
ADAPTED = {"q": "q_proj", "v": "v_proj", "out": "out_proj"}
PEFT_TENSORS = ("lora_A", "lora_B", "magnitude")  # what a LoRA (the first two) or DoRA adapter holds
HF_BLOCK = {  # open_clip block tensor <- HF encoder-layer tensor (q/k/v are fused apart)
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
HF_STEM = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
}
HF_UNUSED = ("post_layernorm.weight", "post_layernorm.bias")  # only the pooled output HF never gives the method


def read_release(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(release config, flat state dict with ``model.net.``/``decoder.``/``predictor.`` keys, the weights file).

    Accepts the Hugging Face folder (config.json + model.safetensors), its model.safetensors (config.json beside it,
    if any), or the Drive ``model.pkl`` ({model,decoder,predictor}_state_dict), read with ``weights_only=True``.
    """
    path = Path(path)
    if path.is_dir():
        weights = path / RELEASE_WEIGHTS
        if not weights.is_file():
            raise ZsadInputError(f"{path}: no {RELEASE_WEIGHTS} in this folder (not an AnomalyVFM release folder)")
    else:
        weights = path
    cfg_path = weights.parent / RELEASE_CONFIG
    config: dict[str, Any] = {}
    if cfg_path.is_file() and (path.is_dir() or weights.name == RELEASE_WEIGHTS):
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ZsadInputError(f"{cfg_path}: not a readable JSON config ({type(e).__name__})") from None
        if not isinstance(config, dict):
            raise ZsadInputError(f"{cfg_path}: holds a {type(config).__name__}, not the release's config object")
    raw = read_official(weights)
    if {"model_state_dict", "decoder_state_dict", "predictor_state_dict"} <= set(raw):  # the Drive layout
        flat: dict[str, Any] = {}
        for part, prefix in (("model", "model."), ("decoder", "decoder."), ("predictor", "predictor.")):
            sub = raw[f"{part}_state_dict"]
            if not isinstance(sub, dict):
                raise ZsadInputError(f"{weights}: {part}_state_dict is a {type(sub).__name__}, not a state dict")
            flat.update({prefix + str(k): v for k, v in sub.items()})
        raw = flat
    bad = next((k for k, v in raw.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ZsadInputError(f"{weights}: entry {bad!r} is a {type(raw[bad]).__name__}, not a tensor")
    return config, raw, weights


BUILT_RELEASES = ("clip", "dinov2", "radio", "siglip2")
RADIO_NET = HF_NET + "model."  # models.radio.RADIO.net is the RADIOModel; its ViT is ``.model``
# the Drive model.pkl has no config: the tower is told by its tensors
FAMILY_PROBE = {  # CLIP and SigLIP2 share HF's encoder names: the class embedding and the pooling probe tell them
    "clip": HF_NET + "embeddings.class_embedding",
    "siglip2": HF_NET + "head.probe",
    "dinov2": HF_NET + "blocks.0.attn.qkv.",
    "radio": RADIO_NET + "blocks.0.attn.qkv.",
}
BLOCK_PREFIX = {
    "clip": HF_NET + "encoder.layers.",
    "siglip2": HF_NET + "encoder.layers.",
    "dinov2": HF_NET + "blocks.",
    "radio": RADIO_NET + "blocks.",
}
# first adapter of a release, per family: (key prefix, DoRA marker, LoRA A) - the CLIP wrappers are per projection,
# the DINOv2 and RADIO ones are the fused QKV wrapper (lora_A_q, mag_q, ...)
ADAPTER_PROBE = {
    "clip": (HF_NET + "encoder.layers.0.self_attn.q_proj.", "magnitude", "lora_A"),
    "dinov2": (HF_NET + "blocks.0.attn.qkv.", "mag_q", "lora_A_q"),
    "radio": (RADIO_NET + "blocks.0.attn.qkv.", "mag_q", "lora_A_q"),
    "siglip2": (HF_NET + "encoder.layers.0.self_attn.q_proj.", "magnitude", "lora_A"),
}


def _release_kind(config: dict[str, Any], state: dict[str, torch.Tensor], weights: Path) -> tuple[str, str, int, int]:
    """(tower family, peft kind, rank, layers) of an AnomalyVFM release of a built tower; else one line."""
    found = [f for f, probe in FAMILY_PROBE.items() if any(k.startswith(probe) for k in state)]
    is_release = "predictor.lin.weight" in state and any(k.startswith(HF_NET) for k in state)
    if not is_release:
        raise ZsadInputError(
            f"{weights}: not an AnomalyVFM release (expected model.net.*, decoder.* and predictor.lin.* tensors; "
            f"found e.g. {next(iter(state), 'nothing')!r})"
        )
    name = str(config.get("model_name", found[0] if len(found) == 1 else "unknown"))
    if name not in BUILT_RELEASES:
        raise ZsadInputError(
            f"{weights}: an AnomalyVFM release for backbone {name!r}; zsad builds AnomalyVFM on CLIP, DINOv2, "
            "RADIO and SigLIP2 only so far (DINOv3 and TIPSv2 are not built yet)"
        )
    if found != [name]:
        raise ZsadInputError(
            f"{weights}: config says model_name {name!r} but the tensors hold "
            + (f"a {found[0]} tower" if found else f"no {name} tower (expected {FAMILY_PROBE[name]}*)")
        )
    head, dora_key, lora_key = ADAPTER_PROBE[name]
    if head + dora_key in state:
        kind = "dora"
    elif head + lora_key in state:
        kind = "lora"
    else:
        raise ZsadInputError(
            f"{weights}: no LoRA/DoRA adapters on {head.removeprefix(HF_NET)}* (only dora and lora releases are "
            "supported)"
        )
    given = str(config.get("peft_type", kind))
    if given != kind:
        raise ZsadInputError(f"{weights}: config says peft_type {given!r} but the tensors hold {kind} adapters")
    rank = int(state[head + lora_key].shape[0])
    given_rank = config.get("peft_rank", rank)
    if given_rank != rank:
        raise ZsadInputError(f"{weights}: config says peft_rank {given_rank!r} but the adapters have rank {rank}")
    prefix = BLOCK_PREFIX[name]
    layers = 1 + max(int(k[len(prefix) :].split(".", 1)[0]) for k in state if k.startswith(prefix))
    return name, kind, rank, layers


def convert_release(
    state: dict[str, torch.Tensor], kind: str, layers: int, weights: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(zsad parts tensors, tower tensors under open_clip names) of a release; every tensor must be consumed."""
    left, take, _ = _release_taker(state, weights)
    tower = {oc: take(HF_NET + hf) for oc, hf in HF_STEM.items()}
    left.pop(HF_NET + "embeddings.position_ids", None)  # an index buffer older transformers saved, not a weight
    for key in HF_UNUSED:
        take(HF_NET + key)
    for i in range(layers):
        hf, oc = f"{HF_NET}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        proj = {
            n: (take(f"{hf}self_attn.{n}.weight"), take(f"{hf}self_attn.{n}.bias"))
            if n == "k_proj"
            else (take(f"{hf}self_attn.{n}.layer.weight"), take(f"{hf}self_attn.{n}.layer.bias"))
            for n in ("q_proj", "k_proj", "v_proj", "out_proj")
        }
        shapes = {n: tuple(w.shape) for n, (w, _) in proj.items()}
        if len({shapes["q_proj"], shapes["k_proj"], shapes["v_proj"]}) != 1:
            raise ZsadInputError(f"{weights}: layer {i} has q/k/v projections of different shapes {shapes}")
        tower[oc + "attn.in_proj_weight"] = torch.cat([proj[n][0] for n in ("q_proj", "k_proj", "v_proj")])
        tower[oc + "attn.in_proj_bias"] = torch.cat([proj[n][1] for n in ("q_proj", "k_proj", "v_proj")])
        tower[oc + "attn.out_proj.weight"], tower[oc + "attn.out_proj.bias"] = proj["out_proj"]
        tower.update({oc + o: take(hf + h) for o, h in HF_BLOCK.items()})
    parts = _take_hf_adapters(take, kind, layers)
    _take_heads(parts, left, take, weights)
    return parts, tower


def _take_hf_adapters(take: Callable[[str], torch.Tensor], kind: str, layers: int) -> dict[str, torch.Tensor]:
    """The per-projection adapters of a Hugging Face tower (CLIP, SigLIP2): q_proj, v_proj, out_proj of each layer."""
    return {
        f"adapters.{i}.{z}.{t}": take(f"{HF_NET}encoder.layers.{i}.self_attn.{n}.{t}")
        for i in range(layers)
        for z, n in ADAPTED.items()
        for t in adapter_tensors(kind)
    }


def adapter_tensors(kind: str) -> tuple[str, ...]:
    """The tensors an adapter of ``kind`` holds: LoRA's A and B, and DoRA's magnitudes besides."""
    return PEFT_TENSORS if kind == "dora" else PEFT_TENSORS[:2]


def _take_heads(
    parts: dict[str, torch.Tensor],
    left: dict[str, torch.Tensor],
    take: Callable[[str], torch.Tensor],
    weights: Path,
) -> None:
    """The decoder and predictor (the same in every release), then a refusal of any tensor no one consumed."""
    for key in [k for k in left if k.startswith("decoder.")]:
        parts[key] = take(key)
    parts["predictor.weight"], parts["predictor.bias"] = take("predictor.lin.weight"), take("predictor.lin.bias")
    if left:
        extra = sorted(left)
        raise ZsadInputError(
            f"{weights}: {len(extra)} tensors this importer does not know, e.g. {extra[0]!r} (not the release layout)"
        )


DINOV2_STEM = {  # timm name <- the official DINOv2 module's (torch hub dinov2_vitl14_reg) name, unchanged
    "patch_embed.proj.weight": "patch_embed.proj.weight",
    "patch_embed.proj.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
DINOV2_WRAPPED = {  # zsad adapter tensor <- the official wrapper's: fused QKV (q, v row blocks) and proj
    "q": ("attn.qkv", {"lora_A": "lora_A_q", "lora_B": "lora_B_q", "magnitude": "mag_q"}),
    "v": ("attn.qkv", {"lora_A": "lora_A_v", "lora_B": "lora_B_v", "magnitude": "mag_v"}),
    "out": ("attn.proj", {"lora_A": "lora_A", "lora_B": "lora_B", "magnitude": "magnitude"}),
}


def convert_dinov2_release(
    state: dict[str, torch.Tensor], kind: str, layers: int, grid: tuple[int, int], weights: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(zsad parts tensors, tower tensors under timm names at ``grid``) of a DINOv2 release; every tensor consumed.

    As timm converts Meta's checkpoint: the class position is added to ``cls_token`` (the official forward adds the
    same two numbers), ``register_tokens`` becomes ``reg_token``, ``mask_token`` (masked training only) is read and
    dropped; the 37x37 patch positions are resized to ``grid`` as the official forward resizes them each call.
    """
    left, take, unwrap = _release_taker(state, weights)
    pos, cls = take(HF_NET + "pos_embed"), take(HF_NET + "cls_token")
    take(HF_NET + "mask_token")
    tower = {t: take(HF_NET + o) for t, o in DINOV2_STEM.items()}
    tower["cls_token"] = cls + pos[:, :1]
    if HF_NET + "register_tokens" in left:
        tower["reg_token"] = take(HF_NET + "register_tokens")
    try:
        tower["pos_embed"] = dinov2_positions(pos[:, 1:], grid)
    except ValueError as e:
        raise ZsadInputError(f"{weights}: released pos_embed {tuple(pos.shape)}: {e}") from None
    tower.update({f"blocks.{i}.{n}": unwrap(f"{HF_NET}blocks.{i}.{n}") for i in range(layers) for n in DINOV2_BLOCK})
    parts = _take_adapters(take, HF_NET, kind, layers)
    _take_heads(parts, left, take, weights)
    return parts, tower


def _take_adapters(take: Callable[[str], torch.Tensor], net: str, kind: str, layers: int) -> dict[str, torch.Tensor]:
    """The adapters of the official fused-QKV and proj wrappers of every block under ``net``, as zsad's parts."""
    parts: dict[str, torch.Tensor] = {}
    for i in range(layers):
        for z, (module, names) in DINOV2_WRAPPED.items():
            for t in adapter_tensors(kind):
                parts[f"adapters.{i}.{z}.{t}"] = take(f"{net}blocks.{i}.{module}.{names[t]}")
    return parts


def _release_taker(
    state: dict[str, torch.Tensor], weights: Path
) -> tuple[dict[str, torch.Tensor], Callable[[str], torch.Tensor], Callable[[str], torch.Tensor]]:
    """(what is left, ``take`` by full key, ``tower`` by the tower module's own name under ``net``): both consume.

    ``tower`` finds a wrapped projection's weight under the wrapper's ``.layer.``, as the official save writes it.
    """
    left = dict(state)

    def take(key: str) -> torch.Tensor:
        if key not in left:
            raise ZsadInputError(f"{weights}: tensor {key!r} is missing (an incomplete or foreign release)")
        return left.pop(key).float()

    def tower(key: str) -> torch.Tensor:
        return take(wrapped_key(left, key))

    return left, take, tower


def _release_tower(convert: Callable[[], dict[str, torch.Tensor]], weights: Path) -> dict[str, torch.Tensor]:
    """A tower conversion whose one-line refusals name the release file."""
    try:
        return convert()
    except (ZsadInputError, ValueError) as e:
        text = str(e)
        raise ZsadInputError(text if text.startswith(str(weights)) else f"{weights}: {text}") from None


def convert_radio_release(
    state: dict[str, torch.Tensor], kind: str, layers: int, grid: tuple[int, int], weights: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(zsad parts tensors, tower tensors under timm names at ``grid``) of a RADIO release; every tensor consumed.

    The tower converts as ``zsad.backbone.radio`` converts RADIO's weights (positions resized as the release's
    ``radio_local.py`` resizes them each forward); the summary tokens must be 0, 1, 2 (what the predictor reads).
    """
    from zsad.backbone.radio import radio_to_timm

    left, take, unwrap = _release_taker(state, weights)
    idx = left.pop(HF_NET + "summary_idxs", None)
    if idx is None or idx.tolist() != [0, 1, 2]:
        raise ZsadInputError(f"{weights}: summary_idxs {None if idx is None else idx.tolist()}, not [0, 1, 2]")
    tower = _release_tower(
        lambda: radio_to_timm(
            lambda k: unwrap(RADIO_NET + k), lambda k: take(f"{HF_NET}input_conditioner.{k}"), layers, grid
        ),
        weights,
    )
    parts = _take_adapters(take, RADIO_NET, kind, layers)
    _take_heads(parts, left, take, weights)
    return parts, tower


SIGLIP2_DEAD = HF_NET + "head.attention.out_proj."  # adapters the official forward never applies (see ``_pooled``)


def convert_siglip2_release(
    state: dict[str, torch.Tensor], kind: str, layers: int, grid: tuple[int, int], weights: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(zsad parts tensors, tower tensors under timm names at ``grid``) of a SigLIP2 release; every tensor consumed.

    The tower converts as ``zsad.backbone.siglip2`` converts Hugging Face's weights (positions resized once as
    NaFlex resizes them each forward). The adapters are CLIP's per-projection ones on ``q_proj``, ``v_proj``,
    ``out_proj``; those on the pooling head's ``out_proj`` are read and dropped (they never act, see ``_pooled``).
    """
    from zsad.backbone.siglip2 import hf_to_timm

    left, take, unwrap = _release_taker(state, weights)
    for key in [k for k in left if k.startswith(SIGLIP2_DEAD) and k.rsplit(".", 1)[-1] in PEFT_TENSORS]:
        take(key)  # read and dropped
    tower = _release_tower(lambda: hf_to_timm(lambda k: unwrap(HF_NET + k), layers, grid), weights)
    parts = _take_hf_adapters(take, kind, layers)
    _take_heads(parts, left, take, weights)
    return parts, tower


def import_release(path: Path, backbone: Backbone, out: Path, trained_on: str) -> Path:
    """Convert a released AnomalyVFM (CLIP, DINOv2, RADIO, SigLIP2) into a zsad checkpoint folder (module notes).

    Every tensor of the release is consumed or refused, every shape is checked against ``backbone``; the tower is
    compared with the backbone's and stored only when it differs.
    """
    config, state, weights = read_release(Path(path))
    family, kind, rank, layers = _release_kind(config, state, weights)
    bb: Any = backbone
    timm_family = {"dinov2": DINOV2_BACKBONE, "radio": RADIO_BACKBONE, "siglip2": SIGLIP2_BACKBONE}
    if family in timm_family and tower_layout(bb).family != family:
        shown = {"dinov2": "DINOv2", "radio": "RADIO", "siglip2": "SigLIP2"}[family]
        raise ZsadInputError(
            f"{weights}: an AnomalyVFM {shown} release; backbone {bb.model_name} is not a {shown} tower (pass "
            f"--backbone {timm_family[family]})"
        )
    if family == "clip" and not isinstance(bb, ClipBackbone):
        raise ZsadInputError(
            f"{weights}: an AnomalyVFM CLIP release; backbone {bb.model_name} is not a CLIP (pass --backbone "
            "ViT-L-14-336-quickgelu)"
        )
    if layers != bb.num_layers:
        raise ZsadInputError(f"{weights}: a {layers}-block tower; backbone {bb.model_name} has {bb.num_layers}")
    if family in timm_family:
        convert = {
            "dinov2": convert_dinov2_release,
            "radio": convert_radio_release,
            "siglip2": convert_siglip2_release,
        }[family]
        parts, tower = convert(state, kind, layers, bb.grid_size(), weights)
        visual = dict(bb.model.named_parameters())
        mine, theirs = "reg_token" in tower, getattr(bb.model, "reg_token", None) is not None
        if mine != theirs or (mine and tower["reg_token"].shape != bb.model.reg_token.shape):
            got = tuple(tower["reg_token"].shape) if mine else "no"
            raise ZsadInputError(
                f"{weights}: released register tokens {got}; backbone {bb.model_name} has "
                f"{tuple(bb.model.reg_token.shape) if theirs else 'none'} (use {timm_family[family]})"
            )
    else:
        parts, tower = convert_release(state, kind, layers, weights)
        visual = dict(bb.model.visual.named_parameters())
    for key, t in tower.items():
        if key not in visual or tuple(t.shape) != tuple(visual[key].shape):
            raise ZsadInputError(
                f"{weights}: released {key} has shape {tuple(t.shape)}, backbone {bb.model_name} "
                f"{tuple(visual[key].shape) if key in visual else 'has no such tensor'} (pick the backbone the "
                "release was made on)"
            )
    if family == "clip" and bb.activation != "QuickGELU":
        raise ZsadInputError(
            f"{weights}: the released CLIP runs OpenAI's QuickGELU, backbone {bb.model_name} {bb.activation}; use "
            "--backbone ViT-L-14-336-quickgelu (or another -quickgelu tower)"
        )
    size = config.get("image_size")
    if size is not None and size != bb.image_size:
        raise ZsadInputError(
            f"{weights}: the release runs at {size} px, the backbone at {bb.image_size}; pass --image-size {size}"
        )
    diffs = {k: float((t - visual[k].float()).abs().max()) for k, t in tower.items()}
    differing = sorted(k for k, d in diffs.items() if not torch.equal(tower[k], visual[k].float()))
    stored = bool(differing)
    method = AnomalyVfm(bb, peft=kind, rank=rank, alpha=1.0, tower_weights="checkpoint" if stored else "backbone")
    tensors = dict(parts)
    if stored:
        tensors.update({f"tower.{k}": v for k, v in tower.items()})
    load_tensors(method.parts, tensors, weights)
    from zsad.backbone.loading import file_digest

    record = {
        "source": "official AnomalyVFM release (" + ("Hugging Face" if config else "model.pkl") + ")",
        "file": str(weights.resolve()),
        "sha256": file_digest(weights)["sha256"],
        "release_config": config,
        "dataset": trained_on,
        "vision_tower": {
            "compared_tensors": len(tower),
            "differing_tensors": len(differing),
            "max_abs_diff": max(diffs.values(), default=0.0),
            "stored": stored,
            "first_differing": differing[:3],
        },
    }
    if family == "siglip2":  # the official forward never applies them (``AnomalyVfm._pooled``)
        dead = sorted(k.removeprefix(HF_NET) for k in state if k.startswith(SIGLIP2_DEAD) and "layer." not in k)
        record["vision_tower"]["dropped_adapters"] = dead
    return method.save(Path(out), record)
