"""CLIP-AD Staged Dual-Path (SDP): zero-shot maps from v-v attention stages and feature surgery.

Paper: Chen et al., "CLIP-AD: A Language-Guided Staged Dual-Path Model for Zero-shot Anomaly Detection",
arXiv 2311.00453. Method notes: docs/methods/clip-ad.md. What the method is:

- Text: the CLIP-AD prompt set (9 normal / 10 anomalous states x 22 templates), one representative vector per state
  by Representative Vector Selection (``text_aggregation``: mean | pca | kde | dbscan (default) | mean_shift).
- Architecture surgery: every block also computes v-v attention on LN1 of the *original* hidden state; a separate
  surgery stream sums those outputs (no FFN) and restarts at each stage start. The original path is unchanged, so
  one forward gives both. At each stage end the stream's CLS is replaced by the original CLS, then the frozen
  ``ln_post`` + ``proj`` and L2 normalisation are applied.
- Feature surgery per stage: w_c = softmax_c(cls . t_c) / mean_c(.), s_c(f) = w_c (f . t_c) - mean_c' w_c' (f . t_c').
  The anomalous s is summed over stages, upsampled bilinearly (no min-max) and smoothed with a Gaussian (sigma 8).
- Image score = p0 + p1 with p0 = softmax(100 cos(global, t))[anomalous], p1 = max of the map.

Deliberate differences from the official code (ByChelsea/CLIP-AD @f004973), each measured in benchmarks/RESULTS.md:
- The paper's per-category min-max of p0 and p1 over the *test set* is transductive: it is off by default and
  enabled with ``transductive_minmax=True``, which every result it affects prints.
- Stages follow ``layers``: each stage starts after the previous tapped layer. The official code resets at every
  quarter of the tower whatever ``features_list`` is; both agree for the default (3, 6, 9, 12 on 12 blocks).
- p0 uses the final global embedding; the official code uses the CLS of the last *tapped* layer (the same thing
  for the default layers).
- ``compat="official"`` reproduces an in-place update in the official blocks (see ``ClipBackbone.encode_image``,
  ``tap_mode``): its layer taps before the last block already contain the next block's attention residual, which
  reaches SDP through the class weights (the surgery taps' CLS) and SDP+ through its input tokens. It is refused for
  layers other than the quarter points, where the official surgery taps are moved by further in-place additions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from zsad.backbone import ClipBackbone, ImageFeatures, SurgeryConfig
from zsad.errors import ZsadInputError
from zsad.methods.base import Method, TextPromptConfig
from zsad.methods.options import check_range
from zsad.ops import gaussian_blur, grid_to_map, minmax, upsample
from zsad.prompts import state_text
from zsad.types import Prediction


@dataclass
class SdpConfig(TextPromptConfig):
    """SDP options: the paper's text and stages; the official code's quirks only on request (``compat``)."""

    label: ClassVar[str] = "sdp"
    prompt_set: str = "clipad"
    text_aggregation: str = "dbscan"  # the paper's Representative Vector Selection
    layers: tuple[int, ...] = ()  # stage ends, 1-indexed; () = quarters of the tower (3, 6, 9, 12 for 12 blocks)
    logit_scale: float = 100.0  # softmax temperature 1/100 for the global score (CLIP's logit scale)
    smoothing_sigma: float = 8.0  # pixels at model resolution; 0 disables
    transductive_minmax: bool = False  # the paper's per-category test-set min-max of p0 and p1
    compat: str = "none"  # "none" | "official" (reproduce the official code's in-place tap quirk)

    def __post_init__(self) -> None:
        self.layers = tuple(int(v) for v in self.layers)
        if list(self.layers) != sorted(set(self.layers)):
            raise ZsadInputError(f"sdp: layers must be strictly increasing, got {self.layers}")
        if self.compat not in ("none", "official"):
            raise ZsadInputError(f"sdp: unknown compat {self.compat!r}; use 'none' or 'official'")
        check_range(
            "sdp",
            smoothing_sigma=(self.smoothing_sigma, self.smoothing_sigma >= 0, ">= 0 (0 disables smoothing)"),
            logit_scale=(self.logit_scale, self.logit_scale > 0, "> 0"),
        )
        super().__post_init__()


def stage_layers(num_layers: int, layers: tuple[int, ...]) -> tuple[int, ...]:
    """The tapped stage ends: ``layers`` or the four quarter points of the tower."""
    if not layers:
        if num_layers % 4:
            raise ZsadInputError(f"sdp: {num_layers} blocks do not split into 4 stages; pass layers=...")
        q = num_layers // 4
        return (q, 2 * q, 3 * q, 4 * q)
    if layers[0] < 1 or layers[-1] > num_layers:
        raise ZsadInputError(f"sdp: layers {layers} out of range 1..{num_layers}")
    return layers


def surgery_config(num_layers: int, layers: tuple[int, ...], compat: str = "none") -> SurgeryConfig:
    """v-v stream from block 1, restarted after every tapped layer (or, official, at every quarter)."""
    if compat == "official":
        q = num_layers // 4
        resets = tuple(q * i + 1 for i in range(1, 4))
    else:
        resets = tuple(v + 1 for v in layers[:-1])
    return SurgeryConfig(start_layer=1, reset_layers=resets, init="zero", replace_cls=True)


def feature_surgery(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, 1+N, D) unit tokens (CLS first), (2, D) unit text -> (B, N, 2) redundancy-removed similarities."""
    prob = (tokens[:, 0] @ text.T).softmax(-1)  # (B, 2), no temperature (as the paper)
    w = prob / prob.mean(-1, keepdim=True)
    sim = (tokens[:, 1:] @ text.T) * w[:, None]  # (B, N, 2)
    return sim - sim.mean(-1, keepdim=True)


class Sdp(Method):
    """CLIP-AD Staged Dual-Path: training-free maps from the v-v surgery stream of each stage."""

    name = "sdp"
    config_cls = SdpConfig
    config: SdpConfig
    backbone: ClipBackbone  # reads text and CLIP-only paths: a vision-only backbone is refused by zsad.runs

    def __init__(self, backbone: ClipBackbone, config: SdpConfig | None = None, **overrides: Any) -> None:
        super().__init__(backbone, config, **overrides)
        n = self.backbone.num_layers
        if self.config.compat == "official" and n % 4 == 0 and self.stages != stage_layers(n, ()):
            # the official code's in-place updates also move surgery taps that do not end a quarter of the tower
            raise ZsadInputError(
                f"{self.name}: compat='official' is reproduced only for the quarter layers {stage_layers(n, ())}"
            )

    @classmethod
    def transductive_for(cls, config: Any) -> bool:
        """Only with the paper's test-set min-max of the scores (``transductive_minmax``)."""
        return bool(config.transductive_minmax)

    @property
    def stages(self) -> tuple[int, ...]:
        """The 1-indexed layers that end a stage: the configured ones or the quarter points of the tower."""
        return stage_layers(self.backbone.num_layers, self.config.layers)

    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        self.text = state_text(self.backbone, self.config, class_name).to(self.backbone.device)

    def _forward(self, images: torch.Tensor, original_layers: tuple[int, ...] = ()) -> ImageFeatures:
        """One tower pass: global embedding, surgery taps of every stage, raw original taps if asked."""
        stages = self.stages
        return self.backbone.encode_image(
            images,
            layers=original_layers,
            surgery=surgery_config(self.backbone.num_layers, stages, self.config.compat),
            surgery_layers=stages,
            tap_mode="official" if self.config.compat == "official" else "block",
        )

    def _sdp_map(self, feats: ImageFeatures) -> torch.Tensor:
        """Summed feature-surgery anomaly map (B, S, S) before smoothing."""
        sim = sum(
            feature_surgery(F.normalize(self.backbone.project(feats.surgery[lyr]), dim=-1), self.text)
            for lyr in self.stages
        )
        assert isinstance(sim, torch.Tensor)
        return upsample(grid_to_map(sim[..., 1:], feats.grid)[:, 0], self.image_size)

    def _text_prob(self, feats: ImageFeatures) -> torch.Tensor:
        """p0: CLIP's zero-shot anomalous probability of the global embedding, (B,)."""
        emb = F.normalize(feats.embedding, dim=-1)
        return (self.config.logit_scale * emb @ self.text.T).softmax(-1)[:, 1]

    def _finish(self, feats: ImageFeatures, amap: torch.Tensor) -> Prediction:
        amap = gaussian_blur(amap, self.config.smoothing_sigma)
        p0 = self._text_prob(feats)
        p1 = amap.flatten(1).amax(1)
        return Prediction(
            pred_score=(p0 + p1).float(),
            anomaly_map=amap.float(),
            score_parts={"text_prob": p0.float(), "map_max": p1.float()},
        )

    def _predict(self, images: torch.Tensor) -> Prediction:
        feats = self._forward(images)
        return self._finish(feats, self._sdp_map(feats))

    def finalize_scores(
        self, parts: dict[str, np.ndarray], fit: dict[str, np.ndarray] | None = None
    ) -> np.ndarray | None:
        """The paper's transductive score: minmax(p0) + minmax(p1) over the category's test images."""
        if not self.config.transductive_minmax:
            return None
        ref = fit or parts
        return minmax(parts["text_prob"], ref["text_prob"]) + minmax(parts["map_max"], ref["map_max"])
