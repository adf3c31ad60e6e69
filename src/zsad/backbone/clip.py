"""``ClipBackbone``: the one CLIP wrapper every method shares.

Why our own block loop instead of ``model.encode_image``: methods need layer taps, a v-v ("surgery")
path, any input resolution and forwards over token subsets (WinCLIP windows) in *one* pass, without
forward hooks or in-place edits of the loaded model. The loop reuses the open_clip module weights
as they are (``ln_1``, ``attn.in_proj_*``, ``attn.out_proj``, ``ls_*``, ``ln_2``, ``mlp``), and a test
checks it reproduces ``model.encode_image`` to float error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from zsad.backbone.loading import _RANDOM_TAGS, _open_clip, load_model
from zsad.backbone.text import TextTower
from zsad.errors import ZsadInputError
from zsad.types import OPENAI_MEAN, OPENAI_STD, Preprocess

# --precision names -> the dtype the image tower's block matmuls run in (see ``ClipBackbone.set_precision``).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a ``--precision`` name, or the one-line refusal every front end shows."""
    if precision not in PRECISIONS:
        raise ZsadInputError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


@dataclass(frozen=True)
class SurgeryConfig:
    """The v-v attention path (CLIP Surgery / SDP / DPAM).

    Each block from ``start_layer`` on adds its v-v attention output, computed on LN1 of the
    *original* hidden state, to a separate surgery stream that has no FFN. The stream restarts at
    each layer in ``reset_layers`` (SDP stages) from zero (``init="zero"``) or from the original
    hidden state entering that block (``init="residual"``, DPAM style). Layers are 1-indexed.
    """

    start_layer: int = 1
    reset_layers: tuple[int, ...] = ()
    init: Literal["zero", "residual"] = "zero"
    replace_cls: bool = True  # tap's CLS comes from the original path (SDP)


@dataclass
class ImageFeatures:
    """One forward's outputs. Token tensors are (B, 1+N, width) with CLS first, N = gh*gw."""

    embedding: torch.Tensor  # (B, D) pooled + projected, not L2-normalised
    tokens: dict[int, torch.Tensor]  # layer -> raw hidden state after that block
    surgery: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> surgery stream
    grid: tuple[int, int] = (0, 0)
    embeds: torch.Tensor | None = None  # (B, 1+N, width) tokens entering ln_pre (for window re-runs)
    final_tokens: torch.Tensor | None = None  # (B, N, width) last layer after ln_post (no proj)


class ClipBackbone(TextTower, nn.Module):
    """Frozen open_clip CLIP with cached text features and a multi-output image forward."""

    model: Any  # the open_clip model: its modules are untyped attribute bags, so the boundary is typed once, here

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        model_name: str,
        pretrained: str | None,
        image_size: int | None = None,
        weights_info: dict[str, Any] | None = None,
        pos_interpolation: str = "bicubic",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained
        self.random_init = pretrained in _RANDOM_TAGS and weights_info is None
        self.weights_info = weights_info
        # Random weights are defined by their seed: trained checkpoints must match it.
        self.seed = seed if self.random_init else None
        self.pos_interpolation = pos_interpolation
        visual = self.model.visual
        self._check_supported(visual)
        native = visual.image_size
        self.native_image_size = int(native[0] if isinstance(native, tuple | list) else native)
        self.image_size = int(image_size or self.native_image_size)
        ps = visual.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, tuple | list) else ps)
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        self.num_layers = len(visual.transformer.resblocks)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean: tuple[float, float, float] = tuple(float(v) for v in cfg.get("mean", OPENAI_MEAN))  # type: ignore[assignment]
        self.std: tuple[float, float, float] = tuple(float(v) for v in cfg.get("std", OPENAI_STD))  # type: ignore[assignment]
        self._text_cache: dict[str, torch.Tensor] = {}
        self.model_config: dict[str, Any] | None = None  # set when built from a model-config JSON or folder
        self.precision = "fp32"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_name: str = "ViT-B-16-plus-240",
        pretrained: str | None = "laion400m_e31",
        *,
        weights: str | os.PathLike[str] | None = None,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> ClipBackbone:
        """Build by name: pretrained tag (open_clip download), local ``weights`` file, or seeded random.

        ``model_name`` may also be an open_clip model-config JSON, or a folder holding one and its weights (a custom
        or fine-tuned architecture, no open_clip registration needed). ``pretrained="none"`` gives seeded random
        weights of the real architecture: for smoke tests and speed/fidelity checks only, never detection quality.
        """
        built = load_model(str(model_name), pretrained, weights=weights, device=device, seed=seed, cache_dir=cache_dir)
        bb = cls(
            built.model,
            built.tokenizer,
            model_name=built.name,
            pretrained=built.tag,
            image_size=image_size,
            weights_info=built.weights_info,
            seed=seed,
        )
        bb.model_config = built.config
        return bb

    @classmethod
    def from_model(
        cls, model: nn.Module, model_name: str, pretrained: str | None = "none", image_size: int | None = None
    ) -> ClipBackbone:
        """Wrap an already-built open_clip CLIP (shared, not copied)."""
        return cls(
            model,
            _open_clip().get_tokenizer(model_name),
            model_name=model_name,
            pretrained=pretrained,
            image_size=image_size,
        )

    @staticmethod
    def _check_supported(visual: nn.Module) -> None:
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or getattr(visual, "attn_pool", None) is not None:
            raise ZsadInputError(f"{type(visual).__name__}: only plain ViT image towers are supported")
        for b in blocks:
            if not isinstance(getattr(b, "attn", None), nn.MultiheadAttention):
                raise ZsadInputError(f"{type(b).__name__}: unsupported attention block (need nn.MultiheadAttention)")

    def manifest(self) -> dict[str, Any]:
        """What a run needs to record to be reproducible."""
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "random_init": self.random_init,
            "weights": self.weights_info,
            "image_size": self.image_size,
            "pos_interpolation": self.pos_interpolation,
            "seed": self.seed,
            "activation": self.activation,
            "model_config": getattr(self, "model_config", None),
            "precision": self.precision,
        }

    def set_precision(self, precision: str) -> ClipBackbone:
        """Run the image tower's block matmuls (attention projections, MLP) in ``fp32``, ``bf16`` or ``fp16``.

        Why weights are cast rather than autocast: the casts are explicit, so an exported graph holds them too, and
        the weights take half the memory. Only the visual blocks' linear layers change: the residual stream, layer
        norms, patch embedding, text tower and every method head stay fp32 (the tower's outputs are fp32), because
        scores are softmaxes over 100x logits, k-means and smoothed maps, which half precision would shift.
        """
        dtype = precision_dtype(precision)
        if precision == self.precision:
            return self
        if self.precision != "fp32":  # the fp32 weights are gone: going back would keep the rounding
            raise ZsadInputError(f"--precision {precision}: this backbone was already cast to {self.precision}")
        for blk in self.model.visual.transformer.resblocks:
            blk.attn.to(dtype)
            blk.mlp.to(dtype)
        self.precision = precision
        return self

    @property
    def activation(self) -> str:
        """MLP activation of the image tower, recorded so a run says which one it used.

        OpenAI trained with QuickGELU, but open_clip's ``ViT-L-14-336`` config (and both official CLIP-AD at 518 px
        and AdaCLIP) run its weights with exact GELU; ``-quickgelu`` names fix that.
        """
        mlp = self.model.visual.transformer.resblocks[0].mlp
        return type(getattr(mlp, "gelu", mlp[1] if isinstance(mlp, nn.Sequential) else mlp)).__name__

    @property
    def preprocess(self) -> Preprocess:
        """Input size and normalisation of this backbone, for datasets and runs."""
        return Preprocess(self.image_size, self.mean, self.std)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live; inputs and text embeddings are moved here."""
        return self.model.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the image tower's weights; images are cast to it before the patch embedding."""
        return self.model.visual.conv1.weight.dtype

    def grid_size(self, image_size: int | None = None) -> tuple[int, int]:
        """Patch grid (rows, columns) of a square input; by default at the backbone's own input size."""
        s = image_size or self.image_size
        return s // self.patch_size, s // self.patch_size

    # ------------------------------------------------------------------ image
    def positional_embedding(self, grid: tuple[int, int], mode: str | None = None) -> torch.Tensor:
        """(1+gh*gw, width) positional embedding for a grid, interpolated without touching the model.

        ``mode`` overrides the backbone's ``pos_interpolation`` for one call (AnomalyCLIP resizes bilinearly).
        """
        pos = self.model.visual.positional_embedding
        n0 = pos.shape[0] - 1
        g0 = int(round(n0**0.5))
        if grid == (g0, g0):
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        patch_pos = patch_pos.reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=grid, mode=mode or self.pos_interpolation, align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
        return torch.cat([cls_pos, patch_pos], dim=0)

    def embed(self, images: torch.Tensor, pos_interpolation: str | None = None) -> torch.Tensor:
        """Patch + class + position embedding: (B, 1+N, width), the tokens entering ``ln_pre``."""
        visual = self.model.visual
        x = visual.conv1(images.to(self.dtype))  # (B, W, gh, gw)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        return x + self.positional_embedding(grid, pos_interpolation).to(x.dtype)

    @staticmethod
    def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, c = t.shape
        return t.view(b, n, heads, c // heads).transpose(1, 2)  # (B, h, N, c/h)

    @staticmethod
    def _merge_heads(t: torch.Tensor) -> torch.Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def block_attention(
        self,
        index: int,
        x: torch.Tensor,
        *,
        need_vv: bool = False,
        cls_only: bool = False,
        tower: Literal["visual", "text"] = "visual",
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention residual ``ls_1(attn(ln_1(x)))`` of block ``index`` (0-indexed) and optionally its v-v twin.

        ``cls_only`` computes the residual for the CLS token alone (keys/values still use all tokens);
        ``attn_mask`` is an additive (T, T) mask (the text tower's causal mask).
        """
        blk = self._blocks(tower)[index]
        attn: nn.MultiheadAttention = blk.attn
        h = attn.num_heads
        wdt = attn.in_proj_weight.dtype  # the matmuls' precision (``set_precision``); a no-op cast in fp32
        y = blk.ln_1(x).to(wdt)
        qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        if cls_only:
            q = q[:, :1]
        qh, kh, vh = (self._split_heads(t, h) for t in (q, k, v))
        mask = None if attn_mask is None else attn_mask.to(qh.dtype)
        o = attn.out_proj(self._merge_heads(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)))
        o = blk.ls_1(o.to(x.dtype))
        vv = None
        if need_vv:  # two separate calls: measured faster on CPU than one batched call of both attentions
            vv = blk.ls_1(attn.out_proj(self._merge_heads(F.scaled_dot_product_attention(vh, vh, vh))).to(x.dtype))
        return o, vv

    def _blocks(self, tower: str) -> Any:
        """The residual blocks of a tower (open_clip modules: untyped)."""
        return (self.model.visual.transformer if tower == "visual" else self.model.transformer).resblocks

    def block_mlp(self, index: int, x: torch.Tensor, tower: Literal["visual", "text"] = "visual") -> torch.Tensor:
        """``x`` plus the MLP residual ``ls_2(mlp(ln_2(x)))`` of block ``index``: the second half of a block."""
        blk = self._blocks(tower)[index]
        wdt = blk.attn.in_proj_weight.dtype
        return x + blk.ls_2(blk.mlp(blk.ln_2(x).to(wdt)).to(x.dtype))

    def block_forward(
        self, index: int, x: torch.Tensor, *, need_vv: bool = False, cls_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One residual block (0-indexed) on (B, T, W); optionally also its v-v attention output."""
        o, vv = self.block_attention(index, x, need_vv=need_vv, cls_only=cls_only)
        base = x[:, :1] if cls_only else x
        return self.block_mlp(index, base + o), vv

    @property
    def _pools_cls(self) -> bool:
        """The global embedding reads the CLS token alone, so a last block may compute only that token."""
        return getattr(self.model.visual, "pool_type", "tok") == "tok"

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final hidden state (B, T, W) -> projected global embedding (B, D), as open_clip pools."""
        visual = self.model.visual
        # open_clip >= 2.26 has ``_pool``; older releases inline the same logic (attention pooling is rejected).
        if getattr(visual, "final_ln_after_pool", False):
            pooled = visual.ln_post(visual._global_pool(x)[0])
        else:
            pooled = visual._global_pool(visual.ln_post(x))[0]
        return pooled @ visual.proj if visual.proj is not None else pooled

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen ``ln_post`` + ``proj`` on any tokens (B, T, W) -> (B, T, D)."""
        visual = self.model.visual
        t = visual.ln_post(tokens)
        return t @ visual.proj if visual.proj is not None else t

    def encode_image(
        self,
        images: torch.Tensor,
        layers: Iterable[int] = (),
        *,
        surgery: SurgeryConfig | None = None,
        surgery_layers: Iterable[int] = (),
        keep_embeds: bool = False,
        final_tokens: bool = False,
        tap_mode: Literal["block", "official"] = "block",
        visual_prompts: dict[int, torch.Tensor] | None = None,
        pooled_only: bool = False,
        pos_interpolation: str | None = None,
    ) -> ImageFeatures:
        """One forward: global embedding + raw tokens of ``layers`` (1-indexed) + surgery taps.

        Returning raw tokens and projecting on demand (``project``) keeps unused projections free.
        ``tap_mode="official"`` reproduces CLIP-AD's released code, whose in-place residual update makes a tap of
        layer k < L hold block k's output *plus* block k+1's attention residual (the surgery taps' CLS, copied from
        the original path after the whole forward, inherits it). Only for side-by-side fidelity with that code.
        ``visual_prompts`` {block index (0-indexed): (B or 1, M, width)} are deep visual prompts (AdaCLIP): appended
        after the patch tokens before the first of those blocks, replacing the previous ones before each later one,
        carried to the end of the tower, and left out of every tap, ``final_tokens`` and the pooled embedding.
        ``pooled_only`` (only ``embedding`` is wanted) lets the last block compute the CLS token alone.
        ``pos_interpolation`` overrides how the positional embedding is resized for this forward.
        """
        layers, surgery_layers = sorted(set(layers)), sorted(set(surgery_layers))
        for lyr in (*layers, *surgery_layers):
            if not 1 <= lyr <= self.num_layers:
                raise ZsadInputError(f"layer {lyr} out of range 1..{self.num_layers} for {self.model_name}")
        if surgery_layers and surgery is None:
            surgery = SurgeryConfig()
        embeds = self.embed(images, pos_interpolation)
        grid = self.grid_size(images.shape[-1])
        x = self.model.visual.ln_pre(embeds)
        taps: dict[int, torch.Tensor] = {}
        streams: dict[int, torch.Tensor] = {}
        cls_src: dict[int, torch.Tensor] = {}  # original-path CLS for each surgery tap
        s: torch.Tensor | None = None
        last_s = max(surgery_layers, default=0)
        official = tap_mode == "official"
        vp = visual_prompts or {}
        n_tok = x.shape[1]  # tokens without prompts
        if vp and (surgery_layers or official or keep_embeds):
            raise ZsadInputError("visual prompts cannot be combined with the surgery path or token re-runs")
        for i in range(self.num_layers):
            lyr = i + 1
            if i in vp:
                p = vp[i].to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :n_tok], p], dim=1)
            use_vv = surgery is not None and surgery.start_layer <= lyr <= last_s
            if use_vv and surgery is not None and (s is None or lyr in surgery.reset_layers):
                s = torch.zeros_like(x) if surgery.init == "zero" else x.clone()
            last_cls = (
                pooled_only
                and i == self.num_layers - 1
                and not (use_vv or lyr in layers or final_tokens)
                and self._pools_cls
            )
            o, vv = self.block_attention(i, x, need_vv=use_vv, cls_only=last_cls)
            mid = (x[:, :1] if last_cls else x) + o
            if official:  # the previous tap is updated in place by this block's attention residual
                if lyr - 1 in taps:
                    taps[lyr - 1] = mid
                if lyr - 1 in cls_src:
                    cls_src[lyr - 1] = mid[:, :1]
            if vv is not None and s is not None:
                s = s + vv
            x = self.block_mlp(i, mid)
            if lyr in layers:
                taps[lyr] = x[:, :n_tok]
            if lyr in surgery_layers and s is not None:
                streams[lyr] = s
                cls_src[lyr] = x[:, :1]
        staps = {
            lyr: torch.cat([cls_src[lyr], st[:, 1:]], dim=1) if surgery is not None and surgery.replace_cls else st
            for lyr, st in streams.items()
        }
        visual = self.model.visual
        x = x[:, :n_tok]
        emb = self.pool(x)  # (with pooled_only the sequence is the CLS alone, which is what "tok" pooling reads)
        fin = visual.ln_post(x)[:, 1:] if final_tokens else None
        return ImageFeatures(
            embedding=emb,
            tokens=taps,
            surgery=staps,
            grid=grid,
            embeds=embeds if keep_embeds else None,
            final_tokens=fin,
        )

    def encode_token_subsets(self, embeds: torch.Tensor, index: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
        """Re-run the tower on subsets of the tokens (WinCLIP windows): (B, S, D) pooled embeddings.

        ``embeds`` (B, 1+N, W) come from ``embed``; ``index`` (S, T) lists the token indices of each
        subset (CLS = 0 first). All B*S subsets go through the blocks as one batch (chunked to bound
        memory); the last block computes the CLS alone.
        """
        b = embeds.shape[0]
        s, t = index.shape
        flat = embeds[:, index.reshape(-1)].reshape(b * s, t, -1)  # (B*S, T, W)
        outs = []
        ln_pre = self.model.visual.ln_pre
        n = self.num_layers
        cls_last = self._pools_cls
        # An exported graph takes any batch size, so it cannot loop over a batch-dependent count of chunks.
        starts = [0] if torch.compiler.is_exporting() else range(0, flat.shape[0], chunk_size)
        for start in starts:
            x = ln_pre(flat if torch.compiler.is_exporting() else flat[start : start + chunk_size])
            for i in range(n):
                x, _ = self.block_forward(i, x, cls_only=cls_last and i == n - 1)
            outs.append(self.pool(x))
        return torch.cat(outs).reshape(b, s, -1)
