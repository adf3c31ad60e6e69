"""AnomalyCLIP: object-agnostic learnable text prompts and DPAM (v-v attention) patch tokens, trained on auxiliary data.

Paper: Zhou et al., "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection", ICLR 2024;
method notes docs/methods/anomalyclip.md; official code zqhang/AnomalyCLIP @45ed4dd (the code and its released
checkpoints are followed where the paper differs; the differences are listed in the notes).

- Text: two prompts with no class name, "X x12 object." and "X x12 damaged object."; the 12 "X" token embeddings are
  replaced by learnable context vectors (one set per state, init N(0, 0.02)), and before text blocks 1 .. 8
  (0-indexed) the hidden states at positions 1 .. 4 are overwritten by learnable deep tokens shared by both prompts
  (``deep_depth`` 9 = the input layer + 8 blocks, ``deep_length`` 4). The official code rounds the deep tokens to
  fp16 on insertion (``deep_fp16``).
- Vision (DPAM): from block ``dpam_start`` (6 of 24, i.e. the last 19 blocks as published) a second stream starts
  from the hidden state entering that block and adds, per block, the v-v attention output computed on LN1 of the
  *original* stream, with no MLP: the shared backbone's surgery path with ``init="residual"``. Patch tokens of
  ``layers`` (default: the last block, as every published number uses) are ``ln_post`` + ``proj`` of that stream;
  the global embedding is the original stream's CLS times ``proj`` *without* ``ln_post`` (as the official code).
  The positional embedding is resized bilinearly (``pos_interpolation``), as the official code does.
- Maps: per layer softmax(cos / 0.07) over [normal, abnormal] per patch, bilinear (corners not aligned) to the
  input size, abnormal channel, summed over layers, Gaussian sigma 4. Image score: softmax(cos(global) / 0.07)
  abnormal; the map is not added.
- Training: 4 x (focal + dice(abnormal, mask) + dice(normal, 1 - mask)) per layer + cross-entropy of the image
  logits; Adam lr 1e-3, betas (0.5, 0.999), 15 epochs, batch 8, seed 111; only the prompts learn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zsad.backbone.clip import ClipBackbone, SurgeryConfig
from zsad.bank import FeatureBank
from zsad.errors import ZsadInputError
from zsad.methods.base import MethodConfig
from zsad.methods.options import check_range
from zsad.methods.trainable import TrainableMethod, load_tensors, mask_items, read_official
from zsad.ops import gaussian_blur, grid_to_map, upsample
from zsad.progress import reporter
from zsad.train.loop import TrainConfig, Training
from zsad.types import Prediction


@dataclass
class AnomalyClipConfig(MethodConfig):
    """AnomalyCLIP options; the defaults are the official recipe (OpenAI ViT-L/14-336 at 518 px)."""

    backbone: str = "ViT-L-14-336-quickgelu"  # OpenAI's activation, as the official model
    pretrained: str = "openai"
    image_size: int = 518
    layers: tuple[int, ...] = ()  # DPAM taps, 1-indexed; () = the last block (published: 24 only)
    dpam_start: int = 0  # first DPAM block, 1-indexed; 0 = the last 19 blocks (6 of 24, official DPAM_layer=20)
    n_ctx: int = 12  # learnable context words per prompt
    deep_depth: int = 0  # the input layer + (deep_depth - 1) text blocks with deep tokens; 0 = 9 (published), capped
    deep_length: int = 4
    deep_fp16: bool = True  # the official code rounds the deep tokens to fp16 on insertion
    object_word: str = "object"
    temperature: float = 0.07
    smoothing_sigma: float = 4.0
    pos_interpolation: str = "bilinear"
    local_weight: float = 4.0  # weight of the per-layer map losses (official: 4 with the last layer only)
    checkpoint: str = ""

    def __post_init__(self) -> None:
        self.layers = tuple(int(v) for v in self.layers)
        check_range(
            "anomalyclip",
            n_ctx=(self.n_ctx, self.n_ctx >= 1, ">= 1"),
            deep_depth=(self.deep_depth, self.deep_depth >= 0, ">= 0 (0 = 9 as published, 1 = no deep tokens)"),
            deep_length=(self.deep_length, 1 <= self.deep_length <= self.n_ctx, "between 1 and n_ctx"),
            temperature=(self.temperature, self.temperature > 0, "> 0"),
            smoothing_sigma=(self.smoothing_sigma, self.smoothing_sigma >= 0, ">= 0 (0 disables smoothing)"),
            pos_interpolation=(
                self.pos_interpolation,
                self.pos_interpolation in ("bilinear", "bicubic"),
                "bilinear (official) or bicubic",
            ),
            local_weight=(self.local_weight, self.local_weight >= 0, ">= 0"),
        )


class AnomalyClipParams(nn.Module):
    """The learnable tensors: context words per state and the deep text tokens (CLIP stays frozen)."""

    def __init__(self, text_width: int, n_ctx: int, depth: int, length: int) -> None:
        super().__init__()
        self.ctx_normal = nn.Parameter(torch.randn(n_ctx, text_width) * 0.02)
        self.ctx_abnormal = nn.Parameter(torch.randn(n_ctx, text_width) * 0.02)
        self.deep = nn.Parameter(torch.randn(max(0, depth - 1), length, text_width) * 0.02)


class AnomalyClip(TrainableMethod):
    """AnomalyCLIP: category-agnostic learnt prompts + DPAM; runs with trained or imported official prompts."""

    name = "anomalyclip"
    config_cls = AnomalyClipConfig
    config: AnomalyClipConfig
    backbone: ClipBackbone  # reads text and CLIP-only paths: a vision-only backbone is refused by zsad.runs
    needs_class_name: ClassVar[bool] = False  # object-agnostic: no class name reaches the prompts
    full_precision = {"bf16": "measured: bf16 flipped image decisions beyond the fp32 noise floor, see RESULTS.md"}
    arch_fields = ("layers", "dpam_start", "n_ctx", "deep_depth", "deep_length", "object_word")
    official_checkpoint = "an official AnomalyCLIP epoch_*.pth ({'prompt_learner': ...})"

    def finish_config(self) -> None:
        """Default taps and DPAM start from the tower depth; taps must lie on the DPAM stream."""
        n = self.backbone.num_layers
        cfg = self.config
        start = cfg.dpam_start or max(1, n - 18)
        layers = cfg.layers or (n,)
        if not 1 <= start <= n or any(not start <= t <= n for t in layers):
            raise ZsadInputError(
                f"anomalyclip: layers {list(layers)} must lie in the DPAM blocks {start}..{n} (dpam_start {start})"
            )
        text_blocks = len(self.backbone.model.transformer.resblocks)
        depth = cfg.deep_depth or min(9, text_blocks)
        if depth > text_blocks:
            raise ZsadInputError(f"anomalyclip: deep_depth {depth} exceeds the {text_blocks} text blocks")
        self.config = dataclasses.replace(cfg, layers=tuple(layers), dpam_start=start, deep_depth=depth)

    @property
    def parts(self) -> nn.Module:
        """The prompt learner (``AnomalyClipParams``)."""
        return self.params

    def build_parts(self, seed: int | None) -> None:
        """Fresh prompts, seeded without disturbing the global random state."""
        cfg = self.config
        width = self.backbone.model.token_embedding.weight.shape[1]
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            p = AnomalyClipParams(width, cfg.n_ctx, cfg.deep_depth, cfg.deep_length)
        self.params = p.to(self.backbone.device)
        self._tokens = self.backbone.tokenize(self.sentences())

    @classmethod
    def import_official(cls, path: Path, backbone: ClipBackbone, out: Path, trained_on: str) -> Path:
        """Convert an official checkpoint (see ``import_official_checkpoint``)."""
        return import_official_checkpoint(path, backbone, out, trained_on)

    # ------------------------------------------------------------------ forward pieces
    def sentences(self) -> list[str]:
        """The normal and abnormal prompt, with one "X" placeholder per context word."""
        ctx = " ".join(["X"] * self.config.n_ctx)
        return [f"{ctx} {self.config.object_word}.", f"{ctx} damaged {self.config.object_word}."]

    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        self.require_trained("prompts")
        with torch.no_grad():
            self.text = self.text_features()

    def text_features(self) -> torch.Tensor:
        """(2, D) unit text features [normal, abnormal] from the current prompts (differentiable)."""
        p = self.params
        deep = p.deep[:, None]  # (depth - 1, 1, M, W): one set shared by both prompts
        if self.config.deep_fp16:
            # Rounded after the copy per prompt, as the official code does (it expands, then calls .half()): the
            # backward pass then rounds each prompt's gradient to fp16 before the two are summed, not their sum.
            deep = deep.expand(-1, len(self._tokens), -1, -1).half().to(p.deep.dtype)
        feats = self.backbone.encode_text_tokens(
            self._tokens,
            input_prompts=torch.stack([p.ctx_normal, p.ctx_abnormal]),
            deep_prompts={i + 1: deep[i] for i in range(deep.shape[0])},
        )
        return F.normalize(feats.float(), dim=-1)

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """Unit global embedding (B, D), unit DPAM patch tokens per layer [(B, N, D)], and the grid."""
        bb, cfg = self.backbone, self.config
        last = bb.num_layers
        feats = bb.encode_image(
            images,
            layers=(last,),
            surgery=SurgeryConfig(start_layer=cfg.dpam_start, init="residual", replace_cls=False),
            surgery_layers=cfg.layers,
            pos_interpolation=cfg.pos_interpolation,
        )
        proj = bb.model.visual.proj
        cls = feats.tokens[last][:, 0]
        glob = F.normalize(cls @ proj if proj is not None else cls, dim=-1)  # no ln_post, as the official code
        patches = [F.normalize(bb.project(feats.surgery[t][:, 1:]), dim=-1) for t in cfg.layers]
        return glob, patches, feats.grid

    def outputs(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer upsampled probabilities (L, B, 2, S, S) and the image logits (B, 2), before smoothing."""
        glob, patches, grid = self.image_features(images)
        return self.outputs_from(glob, patches, grid, text)

    def outputs_from(
        self, glob: torch.Tensor, patches: list[torch.Tensor], grid: tuple[int, int], text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``outputs`` from image features already computed (training reuses them: the image side is frozen)."""
        t = 1.0 / self.config.temperature
        probs = [
            upsample(grid_to_map((t * f @ text.T).softmax(-1), grid), self.image_size, align_corners=False)
            for f in patches
        ]
        return torch.stack(probs), t * glob @ text.T

    def _predict(self, images: torch.Tensor) -> Prediction:
        probs, logits = self.outputs(images, self.text.to(images.device))
        amap = gaussian_blur(probs[:, :, 1].sum(0), self.config.smoothing_sigma)
        return Prediction(pred_score=logits.softmax(-1)[:, 1].float(), anomaly_map=amap.float())

    # ------------------------------------------------------------------ training
    def default_train_config(self) -> TrainConfig:
        """The official recipe: Adam lr 1e-3, betas (0.5, 0.999), 15 epochs, batch size 8, seed 111."""
        return TrainConfig(epochs=15, batch_size=8, lr=1e-3, optimizer="adam", betas=(0.5, 0.999), seed=111)

    def loss_terms(self, images: torch.Tensor, gt: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official loss on one batch: image cross-entropy + local_weight x (focal + two dice) per layer."""
        return self.loss_from(self.image_features(images), gt, label)

    def loss_from(
        self, feats: tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]], gt: torch.Tensor, label: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``loss_terms`` from the (frozen) image features: only the text side is recomputed per step."""
        from zsad.train import dice_loss, focal_loss

        probs, logits = self.outputs_from(*feats, self.text_features())
        zero = torch.zeros((), device=gt.device)
        focal = sum((focal_loss(p, gt) for p in probs), zero)
        dice = sum((dice_loss(p[:, 1], gt) + dice_loss(p[:, 0], 1 - gt) for p in probs), zero)
        image = F.cross_entropy(logits, label.long())
        w = self.config.local_weight
        return {"image": image, "focal": focal, "dice": dice, "loss": w * (focal + dice) + image}

    def fit(
        self, datasets: Sequence[tuple[str, Any]], train_cfg: TrainConfig, *, class_names: dict[str, str] | None = None
    ) -> Training:
        """The prompts train on (category, dataset) pairs with masks; no class name is used, CLIP stays frozen."""
        items = mask_items(self.name, datasets)
        self.build_parts(seed=train_cfg.seed)
        dev = self.backbone.device

        # The image side is frozen and the prompts never reach it, so its features are computed once for every
        # epoch (exact: no augmentation); they live in a feature bank (RAM, then memory-mapped files).
        bank = FeatureBank(dtype=torch.float32)
        masks: list[torch.Tensor] = []
        labels: list[int] = []
        grid = self.backbone.grid_size()
        with torch.no_grad(), reporter().task("anomalyclip: frozen image features", len(items)) as task:
            for start in range(0, len(items), train_cfg.batch_size):
                got = [items[i][1][items[i][2]] for i in range(start, min(len(items), start + train_cfg.batch_size))]
                glob, patches, grid = self.image_features(torch.stack([g["image"] for g in got]).to(dev))
                bank.add({"glob": glob, "patch": torch.stack(patches, 1)})
                masks += [(g["gt_mask"] > 0.5).float() for g in got]
                labels += [int(g["gt_label"] == 1) for g in got]
                task.update(completed=len(masks))

        def step(params: nn.Module, batch: list[int]) -> dict[str, torch.Tensor]:
            rows = bank.get(torch.tensor(batch), ["glob", "patch"], device=dev)
            feats = (rows["glob"], list(rows["patch"].unbind(1)), grid)
            gt = torch.stack([masks[i] for i in batch]).to(dev)
            label = torch.tensor([labels[i] for i in batch], device=dev)
            return self.loss_from(feats, gt, label)

        return self.image_training(items, step, train_cfg, summary="CLIP frozen, prompts only", close=bank.close)


def import_official_checkpoint(path: Path, backbone: ClipBackbone, out: Path, trained_on: str) -> Path:
    """Convert an official ``epoch_*.pth`` (``{"prompt_learner": state_dict}``) into a zsad checkpoint.

    Only ``ctx_pos`` (normal), ``ctx_neg`` (abnormal), each (1, 1, n_ctx, width), and ``compound_prompts_text.*``
    ((length, width) each) are read; the frozen token buffers and the unused projections are ignored. Read with
    ``weights_only=True`` (or as safetensors); anything else is refused in one line.
    """
    path = Path(path)
    raw = read_official(path)
    state = raw.get("prompt_learner", raw)
    if not isinstance(state, dict) or "ctx_pos" not in state or "ctx_neg" not in state:
        raise ZsadInputError(f"{path}: no prompt_learner ctx_pos/ctx_neg tensors (not an official AnomalyCLIP file)")
    try:
        ctx_n = torch.as_tensor(state["ctx_pos"]).float().reshape(-1, state["ctx_pos"].shape[-1])
        ctx_a = torch.as_tensor(state["ctx_neg"]).float().reshape(-1, state["ctx_neg"].shape[-1])
        deep_keys = sorted((k for k in state if k.startswith("compound_prompts_text.")), key=lambda k: int(k[22:]))
        deep = [torch.as_tensor(state[k]).float() for k in deep_keys]
    except (AttributeError, TypeError, ValueError, RuntimeError) as e:
        raise ZsadInputError(f"{path}: malformed AnomalyCLIP prompt tensors: {e}") from None
    if ctx_n.shape != ctx_a.shape or len({d.shape for d in deep}) > 1:
        raise ZsadInputError(f"{path}: inconsistent prompt shapes {tuple(ctx_n.shape)}, {tuple(ctx_a.shape)}")
    width = backbone.model.token_embedding.weight.shape[1]
    if ctx_n.shape[1] != width:
        raise ZsadInputError(f"{path}: prompts of width {ctx_n.shape[1]} do not fit this text tower (width {width})")
    length = deep[0].shape[0] if deep else 1
    method = AnomalyClip(backbone, n_ctx=ctx_n.shape[0], deep_depth=len(deep) + 1, deep_length=length)
    tensors = {
        "ctx_normal": ctx_n,
        "ctx_abnormal": ctx_a,
        "deep": torch.stack(deep) if deep else torch.zeros(0, length, width),
    }
    load_tensors(method.params, tensors, path)
    return method.save_imported(path, out, trained_on, "official AnomalyCLIP checkpoint")
