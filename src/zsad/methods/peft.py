"""Low-rank adapters (LoRA, DoRA) on frozen linear maps, computed as AnomalyVFM's official wrappers compute them.

Why the frozen weight is an argument of every call instead of a member: the backbone owns it and is shared by every
method of a run, so an adapter never holds (or copies) a ViT's weights; it only holds its own few tensors. The same
adapter therefore works on a row block of open_clip's fused ``in_proj_weight`` (q or v) as on a whole ``out_proj``.

- LoRA: ``y = x Wᵀ + b + s · (x Aᵀ) Bᵀ`` with ``s = alpha / rank``: the low-rank path is added to the output of the
  frozen map, not merged into its weight (the official wrapper computes it that way, which rounds differently).
- DoRA: ``W' = m · (W + s·B A) / (‖W + s·B A‖_row + 1e-8)`` and ``y = x W'ᵀ + b``: a learnt magnitude per output row
  times the unit direction of the low-rank-updated weight; ``m`` starts at the rows' norms of ``W``.

Both start as in the official code: ``A ~ N(0, 0.01²)``, ``B = 0``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

PEFT_KINDS = ("dora", "lora")
DORA_EPS = 1e-8  # added to the row norms, as the official DoRA wrapper does


class LowRankAdapter(nn.Module):
    """The low-rank pair ``lora_A`` (rank, in) and ``lora_B`` (out, rank) with its scaling ``alpha / rank``."""

    kind: ClassVar[str] = ""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(rank, in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The adapted linear map of ``x`` over the frozen ``weight`` and ``bias``."""
        raise NotImplementedError


class LoraAdapter(LowRankAdapter):
    """LoRA: the frozen map plus ``scaling`` times the low-rank path, added to the output."""

    kind = "lora"

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x Wᵀ + b + s · (x Aᵀ) Bᵀ``; the low-rank path runs in the adapter's dtype."""
        base = F.linear(x, weight, bias)
        low = F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return base + (self.scaling * low).to(base.dtype)


class DoraAdapter(LowRankAdapter):
    """DoRA: a learnt per-row magnitude times the unit rows of ``W + s·B A``."""

    kind = "dora"

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, weight: torch.Tensor) -> None:
        super().__init__(out_features, in_features, rank, alpha)
        self.magnitude = nn.Parameter(weight.detach().float().norm(dim=1).clone())

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``m · (W + s·B A) / (‖W + s·B A‖_row + 1e-8)`` in the adapter's dtype (fp32), differentiable."""
        adapted = weight.to(self.lora_A.dtype) + (self.lora_B @ self.lora_A) * self.scaling
        direction = adapted / (adapted.norm(dim=1, keepdim=True) + DORA_EPS)
        return self.magnitude.unsqueeze(1) * direction

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x W'ᵀ + b``; ``W'`` is rebuilt on every call (cheap next to the forward, and it keeps gradients)."""
        return F.linear(x, self.merged_weight(weight).to(x.dtype), bias)


def make_adapter(kind: str, weight: torch.Tensor, rank: int, alpha: float) -> LowRankAdapter:
    """A fresh adapter of ``kind`` for a frozen map of ``weight``'s shape (DoRA reads its row norms)."""
    out_features, in_features = weight.shape
    if kind == "dora":
        return DoraAdapter(out_features, in_features, rank, alpha, weight)
    if kind == "lora":
        return LoraAdapter(out_features, in_features, rank, alpha)
    raise ValueError(f"unknown adapter kind {kind!r}; known: {', '.join(PEFT_KINDS)}")


def adapted_qkv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    q: LowRankAdapter,
    v: LowRankAdapter,
) -> torch.Tensor:
    """A fused ``qkv`` projection (rows q, k, v) with adapters on its q and v row blocks, k frozen.

    Computed as the official QKV wrappers compute it, so a fused tower (DINOv2's ``attn.qkv``) rounds as theirs:
    DoRA merges both adapted row blocks into one ``(3W, W)`` weight and runs one matmul; LoRA runs the frozen fused map
    and adds ``s · (x Aᵀ) Bᵀ`` to its q and v thirds.
    """
    wq, wk, wv = weight.chunk(3, dim=0)
    if isinstance(q, DoraAdapter) and isinstance(v, DoraAdapter):
        merged = torch.cat([q.merged_weight(wq).to(x.dtype), wk.to(x.dtype), v.merged_weight(wv).to(x.dtype)])
        return F.linear(x, merged, bias)
    if isinstance(q, LoraAdapter) and isinstance(v, LoraAdapter):
        oq, ok, ov = F.linear(x, weight, bias).chunk(3, dim=-1)
        xa = x.to(q.lora_A.dtype)
        lq = q.scaling * F.linear(F.linear(xa, q.lora_A), q.lora_B)
        lv = v.scaling * F.linear(F.linear(xa, v.lora_A), v.lora_B)
        return torch.cat([oq + lq.to(oq.dtype), ok, ov + lv.to(ov.dtype)], dim=-1)
    raise TypeError(f"q and v adapters of one kind expected, got {q.kind!r} and {v.kind!r}")
