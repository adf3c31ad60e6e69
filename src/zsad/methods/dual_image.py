"""Dual-Image Enhanced CLIP: test images as visual references for each other, joint vision-language scoring, TTA.

Paper: Zhang et al., "Dual-Image Enhanced CLIP for Zero-Shot Anomaly Detection", arXiv 2405.04782. No public code
exists; docs/methods/dual-image.md lists what the paper states and the reconstruction built here. Every
reconstructed detail is a named option of ``DualImageConfig``:

- Language map M_L: v-v attention tokens (the shared backbone's surgery path, restarted after every tap as SDP) at
  ``layers`` (default: quarters of the tower), frozen ``ln_post`` + ``proj``, softmax(``logit_scale`` cos) against
  [normal, anomalous] text, anomalous probability summed over the layers.
- Visual map M_V(x|y)_i = sum over layers of min_j (1 - cos(f^x_i, f^y_j)) / 2 against a partner image y of the same
  set. Features (``visual_features``): ``raw`` = original-path tokens at the same taps (as WinCLIP+/MuSc compare
  patches) or ``vv`` = the language path's projected v-v tokens. Partners (``pairing``): ``random``, ``nearest``
  (global embedding), each averaged over ``partners`` images so one defective partner cannot hide a defect, or
  ``all``: every other image of the set, per patch the mean of the smallest ``mutual_fraction`` of the per-partner
  distances (MuSc-style), computed in chunks of at most ``chunk_mb`` MiB. ``none`` = language only.
  ``radius`` (ours, off by default; for parts photographed in a fixture): patch i meets only the partner patches
  within ``radius`` patches (Chebyshev) of its own grid position; None = every patch.
- Joint map M = M_L + ``lam`` M_V (``mode``: joint | language | visual for ablations), bilinear to the input size,
  Gaussian ``smoothing_sigma``; image score = global text probability + max(M).
- RsCIN (``rscin``, off by default, ours for this method): MuSc's image-level re-scoring (``zsad.mutual.rscin``)
  over the global embeddings of the set, applied to the final image scores; ``end_set`` then scores the whole set
  once to get them, so pass 2 costs twice its compute (the backbone is not re-run).
- Test-time adaptation (``tta``, off by default): pseudo-anomalies synthesised on a seeded sample of the test images
  (Perlin masks with foreign texture, and cut-paste; ``zsad.synth``), one residual linear adapter per layer on the
  projected v-v patch tokens (zero-initialised, so untrained it changes nothing), trained with focal + dice through
  ``zsad.train.fit``, then every image's M_L is recomputed from the stored tokens (the backbone is not re-run).

The whole set is needed before any image can be scored, so the method is set-level: ``zsad detect``/``eval`` run the
backbone once per image into a ``FeatureBank`` (RAM, then memory-mapped files), then score. ``predict(images)`` pairs
the images of that batch. Scores depend on the other images of the set: every result is flagged TRANSDUCTIVE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zsad.backbone import ClipBackbone, ImageFeatures
from zsad.bank import FeatureBank
from zsad.errors import ZsadInputError
from zsad.limits import check_budget_mb
from zsad.methods.base import SetLevelMethod, TextPromptConfig
from zsad.methods.options import check_range, check_rscin_k
from zsad.methods.sdp import stage_layers, surgery_config
from zsad.mutual import neighbourhood, rscin
from zsad.ops import gaussian_blur, grid_to_map, upsample
from zsad.prompts import state_text
from zsad.types import Prediction

PAIRINGS = ("none", "random", "nearest", "all")
MODES = ("joint", "language", "visual")


@dataclass
class DualImageConfig(TextPromptConfig):
    """Dual-Image options: every detail the paper leaves open is one of them (see the module notes)."""

    label: ClassVar[str] = "dual-image"
    layers: tuple[int, ...] = ()  # taps, 1-indexed; () = quarters of the tower
    logit_scale: float = 100.0
    smoothing_sigma: float = 4.0
    mode: str = "joint"  # joint | language | visual
    lam: float = 1.0  # weight of the visual map in the joint map
    visual_features: str = "raw"  # raw (original-path taps) | vv (the language path's projected v-v tokens)
    pairing: str = "nearest"  # none | random | nearest | all
    partners: int = 3  # random / nearest: partners averaged per image
    mutual_fraction: float = 0.3  # all: mean of the smallest fraction of per-partner distances
    chunk_mb: int = 256  # memory budget of one patch-similarity block
    bank_dtype: str = "float16"  # how the set's features are stored (float32 doubles the RAM)
    seed: int = 0  # random pairing, TTA sample and synthesis
    rscin: bool = False  # MuSc's RsCIN re-scoring of the set's image scores (ours for this method)
    rscin_k: tuple[int, ...] = (1, 2, 3)
    tta: bool = False
    tta_images: int = 16  # test images kept as canvases for synthesis (seeded reservoir sample)
    tta_samples: int = 32  # synthetic images per run
    tta_area: tuple[float, float] = (0.005, 0.05)  # anomalous fraction of a synthetic image
    tta_synthesis: str = "mixed"  # texture | cutpaste | mixed
    tta_epochs: int = 5
    tta_batch: int = 8
    tta_lr: float = 1e-3
    # position-aware visual map (fixtured parts, ours): a patch meets only the partner patches within this many
    # patches of its own position; None = every patch
    radius: float | None = None
    later_fields: ClassVar[tuple[str, ...]] = ("radius",)

    def __post_init__(self) -> None:
        self.layers = tuple(int(v) for v in self.layers)
        self.tta_area = tuple(float(v) for v in self.tta_area)  # type: ignore[assignment]
        self.rscin_k = check_rscin_k("dual-image", self.rscin_k)
        checks = {
            "mode": (self.mode, MODES),
            "pairing": (self.pairing, PAIRINGS),
            "visual_features": (self.visual_features, ("raw", "vv")),
            "bank_dtype": (self.bank_dtype, ("float16", "bfloat16", "float32")),
            "tta_synthesis": (self.tta_synthesis, ("texture", "cutpaste", "mixed")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ZsadInputError(f"dual-image: {name} {value!r}: use one of {', '.join(allowed)}")
        if self.partners < 1:
            raise ZsadInputError("dual-image: partners must be >= 1")
        if not 0 < self.mutual_fraction <= 1:
            raise ZsadInputError("dual-image: mutual_fraction must be in (0, 1]")
        lo, hi = self.tta_area
        check_range(
            "dual-image",
            radius=(self.radius, self.radius is None or self.radius >= 0, ">= 0 patches (or none: everywhere)"),
            logit_scale=(self.logit_scale, self.logit_scale > 0, "> 0"),
            smoothing_sigma=(self.smoothing_sigma, self.smoothing_sigma >= 0, ">= 0 (0 disables smoothing)"),
            lam=(self.lam, self.lam >= 0, ">= 0"),
            tta_images=(self.tta_images, self.tta_images >= 1, ">= 1"),
            tta_samples=(self.tta_samples, self.tta_samples >= 1, ">= 1"),
            tta_area=(list(self.tta_area), 0 < lo <= hi < 1, "two fractions 0 < low <= high < 1"),
            tta_epochs=(self.tta_epochs, self.tta_epochs >= 1, ">= 1"),
            tta_batch=(self.tta_batch, self.tta_batch >= 1, ">= 1"),
            tta_lr=(self.tta_lr, self.tta_lr > 0, "> 0"),
        )
        check_budget_mb("chunk_mb", self.chunk_mb, "dual-image")  # in range and within this machine's memory
        super().__post_init__()
        if self.mode == "visual" and self.pairing == "none":
            raise ZsadInputError("dual-image: mode 'visual' needs a pairing (random, nearest or all)")


def choose_partners(glob: torch.Tensor, pairing: str, k: int, seed: int) -> torch.Tensor:
    """(n, k') partner indices per image (k' = min(k, n - 1), never the image itself); deterministic given seed.

    ``glob`` (n, D) unit global embeddings (used by ``nearest``). ``all`` returns every other image.
    """
    n = glob.shape[0]
    if pairing == "all":
        k = n - 1
    k = min(k, n - 1)
    if k <= 0 or pairing == "none":
        return torch.empty(n, 0, dtype=torch.long)
    eye = torch.eye(n, dtype=torch.bool)
    if pairing == "nearest":
        sim = (glob.float() @ glob.float().T).masked_fill(eye, float("-inf"))
        return (-sim).argsort(dim=1, stable=True)[:, :k]  # ties broken by index
    if pairing == "all":
        draw = torch.arange(n, dtype=torch.float32).expand(n, n).masked_fill(eye, float(n))
    else:
        draw = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)).masked_fill(eye, 2.0)
    return draw.argsort(dim=1, stable=True)[:, :k]


def nearest_patch_distance(
    query: torch.Tensor, partners: torch.Tensor, budget_bytes: int, near: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over layers of min_j (1 - cos(q_i, p_j)) / 2: query (L, N, D), partners (P, L, M, D) unit -> (P, N).

    ``near`` (N, M) bool, position-aware scoring: q_i may only match the p_j where ``near[i, j]``; the others get
    cos = -inf so they never win (each patch's own position is always near, so a min always exists). None: all.
    """
    n_layers, n, _ = query.shape
    p, _, m, _ = partners.shape
    out = query.new_zeros(p, n)
    step = max(1, budget_bytes // max(1, n * m * query.element_size()))
    far = None if near is None else ~near.to(query.device)
    for lyr in range(n_layers):
        for s in range(0, p, step):
            sim = torch.einsum("nd,pmd->pnm", query[lyr], partners[s : s + step, lyr])
            if far is not None:
                sim.masked_fill_(far, float("-inf"))  # in place: the block stays within the budget
            out[s : s + step] += (1 - sim.amax(-1)).clamp_min(0) / 2
    return out


class TokenAdapter(nn.Module):
    """One residual linear map per layer on unit patch tokens; zero-initialised so it starts as the identity."""

    def __init__(self, n_layers: int, dim: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        for lin in self.maps:
            assert isinstance(lin, nn.Linear)
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, N, D) -> (B, L, N, D) unit."""
        return F.normalize(torch.stack([t + m(t) for t, m in zip(tokens.unbind(1), self.maps, strict=True)], 1), dim=-1)


class DualImage(SetLevelMethod):
    """Dual-Image Enhanced CLIP: set-level, each test image is scored with other images of its set as references."""

    name = "dual-image"
    config_cls = DualImageConfig
    config: DualImageConfig
    export_refusal: ClassVar[str | None] = (
        "it scores each image against partner images of its set (set-level); planned: export the per-image features "
        "and pair them in the runtime"
    )
    backbone: ClipBackbone  # reads text and CLIP-only paths: a vision-only backbone is refused by zsad.runs

    def __init__(self, backbone: ClipBackbone, config: DualImageConfig | None = None, **overrides: Any) -> None:
        super().__init__(backbone, config, **overrides)
        self.taps = stage_layers(self.backbone.num_layers, self.config.layers)
        self.adapter: TokenAdapter | None = None
        self.tta_record: dict[str, Any] = {}
        self._canvas: list[torch.Tensor] = []
        self._seen = 0
        self._rescored: torch.Tensor | None = None

    @classmethod
    def transductive_for(cls, config: Any) -> bool:
        """Whether other test images shape a score: as partners (a visual path with pairing), or through TTA."""
        return bool((config.mode != "language" and config.pairing != "none") or config.tta or config.rscin)

    @property
    def transductive_note(self) -> str:
        """Names what made this run transductive: scoring against partner images, TTA, or both."""
        parts = []
        if self.config.mode != "language":
            parts.append(f"each image is scored against other test images of its set (pairing {self.config.pairing})")
        if self.config.tta:
            parts.append("an adapter is trained on anomalies synthesised on the test images (TTA)")
        if self.config.rscin:
            parts.append("image scores are re-scored over the set's nearest neighbours (RsCIN)")
        return "; ".join(parts)

    @property
    def _uses_visual(self) -> bool:
        return self.config.mode != "language" and self.config.pairing != "none"

    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        self.text = state_text(self.backbone, self.config, class_name).to(self.backbone.device)
        self.adapter = None
        self.tta_record = {}

    # ------------------------------------------------------------------ pass 1: features of every image
    def _forward(self, images: torch.Tensor) -> ImageFeatures:
        raw = self.taps if self._uses_visual and self.config.visual_features == "raw" else ()
        return self.backbone.encode_image(
            images,
            layers=raw,
            surgery=surgery_config(self.backbone.num_layers, self.taps),
            surgery_layers=self.taps,
        )

    def _lang_tokens(self, feats: ImageFeatures) -> torch.Tensor:
        """(B, L, N, D) unit projected v-v patch tokens."""
        return torch.stack([F.normalize(self.backbone.project(feats.surgery[t][:, 1:]), dim=-1) for t in self.taps], 1)

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the set keeps per image: global embedding, language tokens, visual tokens (if the visual path runs)."""
        feats = self._forward(images)
        out = {"glob": F.normalize(feats.embedding, dim=-1), "lang": self._lang_tokens(feats)}
        if self._uses_visual and self.config.visual_features == "raw":
            out["vis"] = torch.stack([F.normalize(feats.tokens[t][:, 1:], dim=-1) for t in self.taps], 1)
        if self.config.tta:
            self._keep_canvas(images)
        return out

    def _keep_canvas(self, images: torch.Tensor) -> None:
        """Seeded reservoir sample of ``tta_images`` test images (deterministic given the order of the set)."""
        g = torch.Generator().manual_seed(self.config.seed + self._seen)
        for img in images.detach().cpu():
            self._seen += 1
            if len(self._canvas) < self.config.tta_images:
                self._canvas.append(img)
            else:
                j = int(torch.randint(self._seen, (1,), generator=g))
                if j < self.config.tta_images:
                    self._canvas[j] = img

    def new_bank(self) -> FeatureBank:
        """An empty bank storing features as ``bank_dtype``; also restarts the TTA canvas sample for the new set."""
        self._canvas, self._seen = [], 0
        return FeatureBank(dtype=getattr(torch, self.config.bank_dtype))

    def end_set(self, bank: FeatureBank) -> None:
        """After every image is in the bank: choose partners, run TTA if asked."""
        self.set_size = len(bank)
        self.set_notes = []
        if self.set_size < 2:
            self.set_notes.append(
                "dual-image: a set of 1 image has no partner image: its visual map is 0 and it is scored by the text "
                "prompts alone (score sets of at least 2 images)"
            )
        if self.config.pairing in ("random", "nearest"):  # `all` pairs with the whole bank: no (n, n-1) index
            glob = bank.get(torch.arange(len(bank)), ["glob"])["glob"]
            self.partner_index = choose_partners(glob, self.config.pairing, self.config.partners, self.config.seed)
        if self.config.tta:
            with torch.enable_grad():
                self._adapt()
        self._rescored = None
        if self.config.rscin and self.set_size > 1:
            n = self.set_size
            raw = torch.cat([self.score_in_set(i, bank).pred_score.cpu() for i in torch.arange(n).split(8)])
            glob = F.normalize(bank.get(torch.arange(n), ["glob"])["glob"].float(), dim=-1)
            self._rescored = rscin(raw, glob, self.config.rscin_k).float()

    # ------------------------------------------------------------------ pass 2: score images against the set
    def _language(self, lang: torch.Tensor) -> torch.Tensor:
        """(B, L, N, D) -> (B, N) anomalous probability summed over layers (adapter applied if trained)."""
        if self.adapter is not None:
            lang = self.adapter(lang)
        logits = self.config.logit_scale * torch.einsum("blnd,cd->blnc", lang, self.text)
        return logits.softmax(-1)[..., 1].sum(1)

    def _visual(self, index: torch.Tensor, bank: FeatureBank, query: torch.Tensor) -> torch.Tensor:
        """(B, N) visual map of bank rows ``index`` (their visual tokens ``query`` (B, L, N, D))."""
        cfg, key = self.config, ("vis" if self.config.visual_features == "raw" else "lang")
        budget = cfg.chunk_mb << 20
        dev = self.backbone.device
        out = query.new_zeros(query.shape[0], query.shape[2])
        if self.set_size < 2:  # a set of one image has no partner
            return out
        near = None if cfg.radius is None else neighbourhood(self.backbone.grid_size(), cfg.radius, query.device)
        if cfg.pairing != "all":
            partners = self.partner_index[index]  # (B, k)
            for b in range(query.shape[0]):
                p = F.normalize(bank.get(partners[b], [key], device=dev)[key], dim=-1)
                out[b] = nearest_patch_distance(query[b], p, budget, near).mean(0)
            return out
        m = max(1, round(cfg.mutual_fraction * (self.set_size - 1)))
        best = query.new_full((query.shape[0], query.shape[2], 0), float("inf"))
        per = max(1, budget // max(1, query.shape[2] ** 2 * query.shape[1] * 4))
        for start, chunk in bank.chunks(per, [key], device=dev):
            p = F.normalize(chunk[key], dim=-1)
            d = torch.stack([nearest_patch_distance(query[b], p, budget, near) for b in range(query.shape[0])])
            own = index[:, None] == torch.arange(start, start + p.shape[0])[None]  # an image is not its partner
            d = d.masked_fill(own[..., None].to(d.device), float("inf")).transpose(1, 2)  # (B, N, P)
            best = torch.cat([best, d], -1).topk(min(m, best.shape[-1] + d.shape[-1]), dim=-1, largest=False).values
        return best.mean(-1)

    def score_in_set(self, index: torch.Tensor, bank: FeatureBank) -> Prediction:
        """Predictions for bank rows ``index`` against the whole set."""
        cfg = self.config
        index = torch.as_tensor(index, dtype=torch.long)
        dev = self.backbone.device
        keys = ["glob", "lang"] + (["vis"] if self._uses_visual and cfg.visual_features == "raw" else [])
        rows = bank.get(index, keys, device=dev)
        lang = F.normalize(rows["lang"], dim=-1)
        grid = self.backbone.grid_size()
        zero = lang.new_zeros(lang.shape[0], lang.shape[2])
        m_l = self._language(lang) if cfg.mode != "visual" else zero
        if self._uses_visual:
            vis = F.normalize(rows["vis"], dim=-1) if cfg.visual_features == "raw" else lang
            m_v = self._visual(index, bank, vis)
        else:
            m_v = zero
        joint = m_l + cfg.lam * m_v
        amap = gaussian_blur(upsample(grid_to_map(joint[..., None], grid)[:, 0], self.image_size), cfg.smoothing_sigma)
        p0 = (cfg.logit_scale * rows["glob"] @ self.text.T).softmax(-1)[:, 1]
        p1 = amap.flatten(1).amax(1)
        parts = {
            "text_prob": p0.float(),
            "map_max": p1.float(),
            "language_max": m_l.amax(1).float(),
            "visual_max": m_v.amax(1).float(),
        }
        score = (p0 + p1).float()
        if self._rescored is not None:
            parts["score_before_rscin"] = score
            score = self._rescored[index].to(score.device)
        return Prediction(pred_score=score, anomaly_map=amap.float(), score_parts=parts)

    # ------------------------------------------------------------------ test-time adaptation
    def _adapt(self) -> None:
        """Train the residual token adapter on anomalies synthesised on the kept test images."""
        import time

        from zsad.synth import synthesize
        from zsad.train import TrainConfig, dice_loss, fit, focal_loss

        cfg = self.config
        if not self._canvas:
            return
        t0 = time.perf_counter()
        dev = self.backbone.device
        canvas = torch.stack(self._canvas)
        imgs, masks = synthesize(
            canvas, n=cfg.tta_samples, area=cfg.tta_area, seed=cfg.seed, mode=cfg.tta_synthesis, source=canvas
        )
        with torch.no_grad():
            toks = []
            for s in range(0, len(imgs), max(1, cfg.tta_batch)):
                feats = self._forward(imgs[s : s + cfg.tta_batch].to(dev))
                toks.append(self._lang_tokens(feats))
            tokens = torch.cat(toks)  # (S, L, N, D)
        grid = self.backbone.grid_size()
        adapter = TokenAdapter(len(self.taps), tokens.shape[-1]).to(dev)
        masks = masks.to(dev)

        def step(module: nn.Module, batch: list[int]) -> dict[str, torch.Tensor]:
            t = module(tokens[batch])
            logits = self.config.logit_scale * torch.einsum("blnd,cd->blnc", t, self.text)  # (B, L, N, 2)
            gt = masks[batch]
            focal = dice = torch.zeros((), device=dev)
            for lyr in range(t.shape[1]):
                prob = upsample(grid_to_map(logits[:, lyr], grid), self.image_size).softmax(1)  # (B, 2, S, S)
                focal = focal + focal_loss(prob, gt)
                dice = dice + dice_loss(prob[:, 1], gt) + dice_loss(prob[:, 0], 1 - gt)
            return {"loss": focal + dice, "focal": focal, "dice": dice}

        train_cfg = TrainConfig(
            epochs=cfg.tta_epochs, batch_size=cfg.tta_batch, lr=cfg.tta_lr, optimizer="adam", seed=cfg.seed
        )
        result = fit(adapter, list(range(len(tokens))), step, train_cfg, progress=False, description="dual-image TTA")
        adapter.eval()
        self.adapter = adapter
        self.tta_record = {
            "synthetic_images": len(tokens),
            "canvas_images": len(canvas),
            "seconds": time.perf_counter() - t0,
            "history": result.history,
        }

    def describe(self) -> dict[str, Any]:
        """Adds the TTA record, with the final loss instead of the per-epoch history."""
        d = super().describe()
        if self.tta_record:
            d["tta"] = {k: v for k, v in self.tta_record.items() if k != "history"} | {
                "final_loss": self.tta_record["history"][-1]["loss"] if self.tta_record["history"] else None
            }
        return d
