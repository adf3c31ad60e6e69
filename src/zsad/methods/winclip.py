"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023).

Paper: compositional prompt ensemble (7 normal x 4 anomalous states x 21 templates), ViT-B/16+ at 240 px,
window embeddings of 2x2 and 3x3 patches obtained by re-running the tower on the window's tokens only,
softmax with temperature 0.07, per-patch harmonic mean over the windows covering it and over scales
(with the image score as the coarsest scale), bilinear upsampling, no smoothing. WinCLIP+ adds, with k normal
reference images, a visual association score min_j (1 - cos(f, r_j)) / 2 at patch and window scale, averaged
with the zero-shot map (and its max with the image score).

Our choices where the paper is silent (all are config fields):
- Text features are the mean of *normalised* sentence embeddings (``text_aggregation="mean"``).
- Patch-scale few-shot features are the last block's tokens after ``ln_post`` without ``proj``, as anomalib does.
- ``window_stride`` (default 1, the paper's) may be raised to trade accuracy for speed; each scale uses
  ``min(window_stride, scale)`` so that no patch falls between windows.
- ``radius`` (position-aware few-shot memory, for parts photographed in a fixture; off by default): a query patch
  meets only the reference patches within ``radius`` patches (Chebyshev) of its own grid position, in all K
  references; a window meets only the reference windows of its scale whose centre (in patch units, from
  ``window_centres``) is within ``radius`` of its own centre. None pools every position (the paper's).

``compat="anomalib"`` reproduces anomalib's ``WinClipModel`` numbers (its mean of *unnormalised* text embeddings
and its duplicated "jpeg corrupted" template); ``benchmarks/compare_anomalib_winclip.py`` checks it side by side.
Windows are computed as one batched forward over all windows of all images (``encode_token_subsets``), never one
forward per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods.base import Method, TextPromptConfig
from zsad.methods.options import check_range
from zsad.mutual import neighbourhood, within_radius
from zsad.ops import upsample
from zsad.prompts import state_text
from zsad.types import Prediction


@dataclass
class WinClipConfig(TextPromptConfig):
    """WinCLIP options: the paper's settings by default, anomalib's prompts and text mean with ``compat="anomalib"``."""

    label: ClassVar[str] = "winclip"
    scales: tuple[int, ...] = (2, 3)
    window_stride: int = 1  # capped at each window's size, so every patch is covered at every scale
    temperature: float = 0.07
    compat: str = "none"  # "none" | "anomalib"
    window_chunk: int = 2048  # windows per batched tower forward (memory bound)
    # position-aware few-shot memory (fixtured parts, WinCLIP+ only): a patch or window meets only the reference
    # patches or windows within this many patches of its own position; None = every position (the paper's)
    radius: float | None = None
    later_fields: ClassVar[tuple[str, ...]] = ("radius",)

    def __post_init__(self) -> None:
        if self.compat == "anomalib":
            self.prompt_set, self.text_aggregation = "winclip-anomalib", "raw_mean"
        elif self.compat != "none":
            raise ZsadInputError(f"winclip: unknown compat {self.compat!r}; use 'none' or 'anomalib'")
        self.scales = tuple(int(s) for s in self.scales)
        check_range(
            self.label,
            scales=(list(self.scales), bool(self.scales) and min(self.scales) >= 1, "a non-empty list of sizes >= 1"),
            window_stride=(self.window_stride, self.window_stride >= 1, ">= 1"),
            temperature=(self.temperature, self.temperature > 0, "> 0 (the softmax divides by it)"),
            window_chunk=(self.window_chunk, self.window_chunk >= 1, ">= 1"),
            radius=(self.radius, self.radius is None or self.radius >= 0, ">= 0 patches (or none: everywhere)"),
        )
        if self.radius is not None and self.label != "winclip":  # a subclass (RWDA) takes no reference images
            raise ZsadInputError(
                f"{self.label}: option radius is for WinCLIP+'s reference memory; {self.label} has none"
            )
        super().__post_init__()


def window_indices(grid: tuple[int, int], scale: int, stride: int = 1) -> torch.Tensor:
    """(n_windows, scale*scale) patch indices (row-major patch numbering) of every window, row-major order.

    Every patch is covered by a window of every scale: the stride is capped at the window size (a 2x2 window every
    3 patches would leave every third row and column unscored, a blind grid that the harmonic mean turns into
    zeros), and the last row/column of windows is added at the border.
    """
    gh, gw = grid
    if scale > min(gh, gw):
        raise ZsadInputError(f"winclip: window scale {scale} exceeds the patch grid {gh}x{gw}")
    step = min(stride, scale)

    def starts(g: int) -> list[int]:
        s = list(range(0, g - scale + 1, step))
        return s if s[-1] == g - scale else [*s, g - scale]

    offs = torch.arange(scale)
    rows = []
    for r in starts(gh):
        for c in starts(gw):
            rows.append(((r + offs)[:, None] * gw + (c + offs)[None, :]).reshape(-1))
    return torch.stack(rows)


def window_centres(index: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(n_windows, 2) (row, col) centre of each window of ``window_indices``, in patch units.

    The centre, not the top-left corner, so that a window's position is where its patches are whatever its size;
    a 2x2 window's centre lies between patches (r + 0.5, c + 0.5). Windows are only compared within one scale.
    """
    gw = grid[1]
    return torch.stack([(index // gw).float().mean(1), (index % gw).float().mean(1)], 1)


def membership(index: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(n_windows, num_patches) 0/1 matrix: window w covers patch p."""
    m = torch.zeros(index.shape[0], num_patches)
    m.scatter_(1, index, 1.0)
    return m


def harmonic_aggregation(window_scores: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it: (B, W) -> (B, P).

    A patch no window covers gets 0 (as anomalib's ``nan_to_num``).
    """
    count = member.sum(0)  # (P,)
    out = count / ((1.0 / window_scores) @ member)
    return torch.where(count > 0, out, torch.zeros_like(out)).nan_to_num(posinf=0.0)


def class_scores(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Anomalous-class probability softmax(cos / T)[..., 1] for (..., D) embeddings and (2, D) unit text."""
    return (F.normalize(embeddings, dim=-1) @ text.T / temperature).softmax(-1)[..., 1]


def association_scores(
    embeddings: torch.Tensor, reference: torch.Tensor, near: torch.Tensor | None = None
) -> torch.Tensor:
    """Min over references of (1 - cos) / 2: (B, P, C) vs (R, C) -> (B, P).

    ``near`` (P, M) bool, position-aware memory: the R = K x M references are K images' M positions (image-major,
    as ``reshape(-1, C)`` of (K, M, C) pools them) and query p may only match the positions m where ``near[p, m]``;
    the others get cos = -inf (distance +inf) so they never win the min. None: every reference (the paper's).
    """
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(reference, dim=-1).T
    if near is not None:
        b, p, r = cos.shape
        cos.view(b, p, r // near.shape[1], near.shape[1]).masked_fill_(~near[None, :, None, :], float("-inf"))
    return (1.0 - cos).amin(-1) / 2.0


class WinClip(Method):
    """WinCLIP zero-shot, and WinCLIP+ when ``setup`` is given k normal reference images."""

    name = "winclip"
    config_cls = WinClipConfig
    supports_few_shot = True
    config: WinClipConfig
    backbone: ClipBackbone  # reads text and CLIP-only paths: a vision-only backbone is refused by zsad.runs

    def _windows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale: token indices with CLS prepended (n_win, 1+s*s) and the membership matrix."""
        grid = self.backbone.grid_size()
        n = grid[0] * grid[1]
        out = []
        dev = self.backbone.device
        for s in self.config.scales:
            idx = window_indices(grid, s, self.config.window_stride)
            tok = torch.cat([torch.zeros(idx.shape[0], 1, dtype=torch.long), idx + 1], dim=1)
            out.append((tok.to(dev), membership(idx, n).to(dev)))
        return out

    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        cfg = self.config
        bb = self.backbone
        self.text = state_text(bb, cfg, class_name)  # (2, D) unit vectors
        self.windows = self._windows()
        self.reference: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self.near: list[torch.Tensor | None] = [None] * (1 + len(cfg.scales))  # patch scale, then each window scale
        self.k_shot = 0
        if reference_images is not None and len(reference_images) > 0:
            _, patches, wins = self._encode(reference_images.to(bb.device), final_tokens=True)
            assert patches is not None
            # Pool every reference image's features: nearest neighbour over all K images. Pooled image-major, so
            # row k * M + m is image k's position m: the position masks of ``near`` stay (M, M) per scale.
            self.reference = (patches.reshape(-1, patches.shape[-1]), [w.reshape(-1, w.shape[-1]) for w in wins])
            self.k_shot = int(reference_images.shape[0])
            if cfg.radius is not None:
                self.near = [neighbourhood(bb.grid_size(), cfg.radius, bb.device)]
                for s in cfg.scales:
                    centres = window_centres(window_indices(bb.grid_size(), s, cfg.window_stride), bb.grid_size())
                    self.near.append(within_radius(centres, centres, cfg.radius).to(bb.device))

    def _encode(
        self, images: torch.Tensor, final_tokens: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """Global embedding (B, D), last-layer patch tokens (B, N, W) if asked, window embeddings per scale."""
        feats = self.backbone.encode_image(images, keep_embeds=True, final_tokens=final_tokens)
        assert feats.embeds is not None
        chunk = self.config.window_chunk
        wins = [self.backbone.encode_token_subsets(feats.embeds, tok, chunk) for tok, _ in self.windows]
        return feats.embedding, feats.final_tokens, wins

    def _zero_shot_prob(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Anomalous probability of (..., D) image or window embeddings (RWDA swaps in its classifier)."""
        return class_scores(embeddings, self.text, self.config.temperature)

    def _predict(self, images: torch.Tensor) -> Prediction:
        b = images.shape[0]
        gh, gw = self.backbone.grid_size()
        embedding, patches, wins = self._encode(images, final_tokens=self.reference is not None)
        image_scores = self._zero_shot_prob(embedding)  # (B,)
        scale_maps = [image_scores[:, None].expand(b, gh * gw)]
        for w, (_, member) in zip(wins, self.windows, strict=True):
            scale_maps.append(harmonic_aggregation(self._zero_shot_prob(w), member))
        patch_map = len(scale_maps) / (1.0 / torch.stack(scale_maps)).sum(0)  # harmonic mean over scales
        if self.reference is not None and patches is not None:
            ref_patches, ref_wins = self.reference
            few = [association_scores(patches, ref_patches, self.near[0])]
            for w, rw, (_, member), near in zip(wins, ref_wins, self.windows, self.near[1:], strict=True):
                few.append(harmonic_aggregation(association_scores(w, rw, near), member))
            few_map = torch.stack(few).mean(0)
            patch_map = (patch_map + few_map) / 2
            image_scores = (image_scores + few_map.amax(-1)) / 2
        s = self.image_size
        amap = upsample(patch_map.reshape(b, gh, gw), s)
        return Prediction(pred_score=image_scores.float(), anomaly_map=amap.float())
