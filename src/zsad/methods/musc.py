"""MuSc: zero-shot anomaly maps and scores by mutual scoring of the unlabelled test images, no text, no training.

Paper: Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of the
Unlabeled Images", ICLR 2024. The scoring itself (LNAMD, MSM, RsCIN) is ``zsad.mutual``; this module runs it on
the shared backbone and the set-level path:

- pass 1 (``encode``): one backbone forward per image; the raw tokens of ``layers`` (default: the quarters of the
  tower, 1-indexed 6/12/18/24 on ViT-L/14-336 as published) and the unit global embedding go to the feature bank;
- ``end_set``: for every degree r in ``degrees`` (1, 3, 5) and every layer, LNAMD features of each image are scored
  against every other image (MSM, the ``interval`` of the sorted per-image nearest-patch distances, (0, 0.3) as
  published), in blocks of at most ``block_mb`` MiB; the patch scores are averaged over layers and degrees, upsampled
  bilinearly (corners aligned, as published) to the input size; the image score is the map maximum, re-scored with
  RsCIN over the global embeddings (``rscin_k`` (1, 2, 3) as published for MVTec AD; ``rscin=false`` keeps the
  maximum);
- ``score_in_set`` returns the stored results.

Ours: sets of 1 to 4 images (see ``zsad.mutual``), block-wise scoring, storing tokens as ``bank_dtype``, and the
optional ``language`` fusion (off by default): the image score becomes (1 - ``language_weight``) x the mutual score
(min-max over the set when RsCIN is off, RsCIN's output is already in [0, 1]) + ``language_weight`` x the zero-shot
anomalous probability of the same global embedding under SDP's or WinCLIP's prompts and temperature, exactly as that
method computes it; it needs the class name, and no extra forward (docs/methods/musc.md). Scores
depend on the whole set: every result is TRANSDUCTIVE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from zsad.backbone import Backbone
from zsad.bank import FeatureBank
from zsad.errors import ZsadInputError
from zsad.limits import check_budget_mb
from zsad.methods.base import Method, MethodConfig, SetLevelMethod
from zsad.methods.options import check_range, check_rscin_k
from zsad.mutual import lnamd, mutual_scores, rscin
from zsad.progress import reporter
from zsad.types import Prediction

LANGUAGES = ("none", "sdp", "winclip")


@dataclass
class MuScConfig(MethodConfig):
    """MuSc options; the published values are the defaults (see the module notes)."""

    backbone: str = "ViT-L-14-336"
    pretrained: str = "openai"
    image_size: int = 518
    layers: tuple[int, ...] = ()  # 1-indexed taps; () = quarters of the tower
    degrees: tuple[int, ...] = (1, 3, 5)  # LNAMD aggregation degrees r
    interval: tuple[float, float] = (0.0, 0.3)  # MSM: fractions of the other images, sorted by distance
    rscin: bool = True
    rscin_k: tuple[int, ...] = (1, 2, 3)
    block_mb: int = 256  # memory budget of one block of patch distances
    bank_dtype: str = "float16"
    language: str = "none"  # none | sdp | winclip: fuse that method's zero-shot image probability (ours)
    language_weight: float = 0.5  # its weight in the image score when language is on
    # position-aware scoring (fixtured parts): a patch meets only patches within this many patches of its own
    # position in the other images; None = everywhere (the published method)
    radius: float | None = None
    later_fields: ClassVar[tuple[str, ...]] = ("radius",)

    def __post_init__(self) -> None:
        self.layers = tuple(int(v) for v in self.layers)
        self.degrees = tuple(int(v) for v in self.degrees)
        self.rscin_k = check_rscin_k("musc", self.rscin_k)
        self.interval = tuple(float(v) for v in self.interval)  # type: ignore[assignment]
        if not self.degrees or any(r < 1 or r % 2 == 0 for r in self.degrees):
            raise ZsadInputError(f"musc: degrees {list(self.degrees)}: odd numbers >= 1")
        lo, hi = self.interval
        if not 0 <= lo < hi <= 1:
            raise ZsadInputError(f"musc: interval {list(self.interval)}: need 0 <= low < high <= 1")
        if self.bank_dtype not in ("float16", "bfloat16", "float32"):
            raise ZsadInputError(f"musc: bank_dtype {self.bank_dtype!r}: use float16, bfloat16 or float32")
        if self.language not in LANGUAGES:
            raise ZsadInputError(f"musc: language {self.language!r}: use one of {', '.join(LANGUAGES)}")
        check_range(
            "musc",
            language_weight=(self.language_weight, 0 <= self.language_weight <= 1, "in [0, 1]"),
            radius=(self.radius, self.radius is None or self.radius >= 0, ">= 0 patches (or none: everywhere)"),
        )
        check_budget_mb("block_mb", self.block_mb, "musc")  # in range and within this machine's memory


class MuSc(SetLevelMethod):
    """Mutual scoring of the unlabelled images of a set (vision only: no class name, no text)."""

    name = "musc"
    config_cls = MuScConfig
    config: MuScConfig
    needs_class_name: ClassVar[bool] = False
    transductive: ClassVar[bool] = True
    export_refusal: ClassVar[str | None] = (
        "it scores a whole set of images against each other (set-level); planned: export the backbone taps and run "
        "the mutual scoring in the runtime"
    )

    def __init__(self, backbone: Backbone, config: MethodConfig | None = None, **overrides: Any) -> None:
        super().__init__(backbone, config, **overrides)
        n = self.backbone.num_layers
        self.layers = self.config.layers or tuple(max(1, round(n * q / 4)) for q in (1, 2, 3, 4))
        self._maps: torch.Tensor | None = None
        self._scores: torch.Tensor | None = None
        self._parts: dict[str, torch.Tensor] = {}
        self._named_class = "object"
        self._language: Method | None = None

    @classmethod
    def uses_text(cls, config: Any) -> bool:
        """Mutual scoring is vision only; the optional language fusion reads text."""
        return bool(config.language != "none")

    @property
    def transductive_note(self) -> str:
        """What makes every score depend on the set."""
        return "each image is scored against every other image of its set (mutual scoring)"

    def setup(self, class_name: str | None = None, reference_images: torch.Tensor | None = None) -> None:
        """Mutual scoring reads no class name; the optional language fusion does, so it is kept for that."""
        self._named_class = class_name or "object"
        super().setup(class_name, reference_images)

    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        self._maps = self._scores = None
        self._parts = {}
        if self.config.language != "none":
            from zsad.methods.registry import create_method

            self._language = create_method(self.config.language, self.backbone, image_size=self.image_size)
            self._language.setup(self._named_class)

    def language_prob(self, glob: torch.Tensor) -> torch.Tensor:
        """The language method's zero-shot anomalous probability of unit global embeddings (n, D), as it computes it."""
        lang: Any = self._language  # an SDP or a WinCLIP instance: both keep (2, D) unit text in ``text``
        assert lang is not None
        text = lang.text.to(glob.device, glob.dtype)
        scale = 1 / lang.config.temperature if self.config.language == "winclip" else lang.config.logit_scale
        return (scale * glob @ text.T).softmax(-1)[:, 1]

    def new_bank(self) -> FeatureBank:
        """An empty bank storing tokens as ``bank_dtype``."""
        return FeatureBank(dtype=getattr(torch, self.config.bank_dtype))

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw tokens of the taps (B, layers, N, C) and the unit global embedding (B, D)."""
        feats = self.backbone.encode_image(images, layers=self.layers)
        tok = torch.stack([feats.tokens[t][:, 1:] for t in self.layers], 1)
        return {"tok": tok, "glob": F.normalize(feats.embedding, dim=-1)}

    def end_set(self, bank: FeatureBank) -> None:
        """Score the whole set now (maps at token resolution, then image scores and RsCIN)."""
        n = len(bank)
        cfg = self.config
        grid = self.backbone.grid_size()
        dev = self.backbone.device
        budget = cfg.block_mb << 20
        tok_shape = bank.get(torch.arange(1), ["tok"])["tok"].shape  # (1, L, N, C)
        per = max(1, budget // max(1, tok_shape[1] * tok_shape[2] * tok_shape[3] * 4))
        total = torch.zeros(n, grid[0] * grid[1], dtype=torch.float64)
        self._say_small_set(n)
        work = len(cfg.degrees) * len(self.layers)
        with reporter().task(f"musc: mutual scoring of {n} images", work * n) as task:
            done = 0
            for r in cfg.degrees:
                for li in range(len(self.layers)):
                    # LNAMD features of every image once per (degree, layer), in their own bank (RAM, then disk)
                    feats = FeatureBank(dtype=torch.float32)
                    try:
                        for _, chunk in bank.chunks(per, ["tok"], device=dev):
                            feats.add({"z": lnamd(chunk["tok"][:, li], grid, r)})

                        def keys(feats: FeatureBank = feats) -> Any:
                            for start, block in feats.chunks(per, ["z"], device=dev):
                                yield start, block["z"]

                        for start, block in feats.chunks(per, ["z"], device=dev):
                            q = block["z"]
                            idx = torch.arange(start, start + q.shape[0])
                            lo, hi = cfg.interval
                            total[idx] += (
                                mutual_scores(q, idx, keys, n, lo, hi, block_bytes=budget, radius=cfg.radius, grid=grid)
                                .double()
                                .cpu()
                            )
                            done += q.shape[0]
                            task.update(completed=done)
                    finally:
                        feats.close()
        patch = (total / work).float().reshape(n, 1, *grid)
        self._maps = F.interpolate(patch, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)[
            :, 0
        ]
        scores = self._maps.flatten(1).amax(1)
        self._parts = {"map_max": scores}
        use_rscin = cfg.rscin and n > 1
        if not use_rscin and self._language is None:
            self._scores = scores
            return
        glob = bank.get(torch.arange(n), ["glob"])["glob"].float()  # read only when RsCIN or the fusion needs it
        if use_rscin:
            scores = rscin(scores, glob, cfg.rscin_k).float()
        if self._language is not None:
            if not use_rscin:
                span = scores.max() - scores.min()
                scores = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
            self._parts["mutual"] = scores  # in [0, 1], as it enters the fusion
            prob = self.language_prob(F.normalize(glob, dim=-1)).cpu()
            self._parts["text_prob"] = prob
            w = cfg.language_weight
            scores = ((1 - w) * scores + w * prob).float()
        self._scores = scores

    def _say_small_set(self, n: int) -> None:
        """Sets too small for the published interval are scored by a documented fallback: say which."""
        lo, hi = self.config.interval
        self.set_notes = []
        if n == 1:
            self.set_notes.append(
                "musc: a set of 1 image has no other image to compare with: map and score are 0 (score sets of at "
                "least 2 images)"
            )
        elif min(int((n - 1) * hi) if hi < 1 else int(hi), n - 1) <= (int((n - 1) * lo) if lo < 1 else int(lo)):
            self.set_notes.append(
                f"musc: a set of {n} images: the interval {list(self.config.interval)} of the {n - 1} other images "
                "holds none, so each patch is scored against its single nearest other image (the official code "
                "gives NaN here)"
            )

    def score_in_set(self, index: torch.Tensor, bank: FeatureBank) -> Prediction:
        """The stored map and score of bank rows ``index``."""
        if self._maps is None or self._scores is None:
            raise ZsadInputError("musc: end_set(bank) must run before score_in_set")
        index = torch.as_tensor(index, dtype=torch.long)
        dev = self.backbone.device
        parts = {k: v[index].to(dev) for k, v in self._parts.items()}
        return Prediction(
            pred_score=self._scores[index].to(dev), anomaly_map=self._maps[index].to(dev), score_parts=parts
        )
