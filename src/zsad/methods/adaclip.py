"""AdaCLIP: hybrid (static + dynamic) learnable prompts in both CLIP encoders, trained on auxiliary annotated data.

Paper: Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection",
ECCV 2024; method notes docs/methods/adaclip.md; official code caoyunkang/AdaCLIP @e27ee32.

- Prompts (depth J = 4, length M = 5): static prompts are learnable (J, M, width) tensors (init N(0, 0.02));
  dynamic prompts come from the *frozen* pooled image embedding through M linear heads (one frozen pass more);
  hybrid = static + dynamic. Vision: appended after the patch tokens before block 0, replaced before blocks 1..J-1,
  kept to the end of the tower and excluded from the outputs. Text: positions 1..M replaced before blocks 1..J-1.
- Per tap (quarters of the tower: 6/12/18/24 on ViT-L/14) a Linear(width -> embed) on the raw block output (CLS
  dropped), L2-normalised; the global feature is the pooled embedding through a Linear(embed -> embed).
- Text: 7 normal / 5 anomalous states x 4 templates, encoded with the image's prompts, mean of normalised sentence
  embeddings per state. Map: 100 cos per layer, bilinear (align_corners) to the input size, layer-mean of logits,
  softmax, anomalous probability, Gaussian sigma 4. Training uses a softmax per layer.
- Hybrid semantic fusion (as the official code, which differs from the paper): rank patches by the layer-mean
  softmax, keep the top 5K, k-means (K = 20) on their features concatenated over layers, average each cluster over
  its members and layers, average the K centroids, blend 0.2 centroid + 0.8 global, softmax(100 cos).
- Training: focal on the image score + per layer focal + dice(p_abn, mask) + dice(p_norm, 1 - mask); AdamW lr 0.01,
  betas (0.5, 0.999), 5 epochs, seed 111, fp32 (the authors report fp16 as unstable).

Deliberate differences (``text_placeholders=False`` and ``kmeans="sklearn"``-style init are for side-by-side checks):
- The official code overwrites the first M *word* tokens of each sentence with the text prompts; zsad inserts M
  placeholder tokens ("X") after the start token and overwrites those, so no word of the prompt is lost.
- k-means is batched in torch with a seeded k-means++ init (the official sklearn call draws an unseeded init,
  so its scores vary from run to run); images are no longer forced to batch size 1: each image gets its own text
  prompts inside one batched text pass, which also stops at the longest sentence (exact under the causal mask).
- Dice is one term per image; the official trainer's batch of 1 squeezes the mask to (H, W), so its dice averages
  one term per image *row* (3e-2 on the loss, <= 0.5% on gradients in benchmarks/compare_adaclip.py).
- Prompts stay float32; the official code rounds them to fp16 (up to 1.4e-4 on the score).
- Category names become prompt words with "_" and "-" replaced by spaces (the official code replaces only "-").
- ``static_text[0]`` is unused (no text prompt before block 0), kept so official checkpoints map one to one; AdamW's
  weight decay shrinks it, which changes nothing.
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

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods.base import MethodConfig
from zsad.methods.options import check_range
from zsad.methods.trainable import TrainableMethod, load_tensors, mask_items, read_official
from zsad.ops import gaussian_blur, grid_to_map, kmeans, upsample
from zsad.prompts import build_prompts, get_prompt_set, list_prompt_sets
from zsad.train.loop import TrainConfig, Training
from zsad.types import Prediction


@dataclass
class AdaClipConfig(MethodConfig):
    """AdaCLIP options; the defaults are the official recipe (OpenAI ViT-L/14 at 518 px, hybrid prompts, HSF)."""

    backbone: str = "ViT-L-14-336"
    pretrained: str = "openai"
    image_size: int = 518
    layers: tuple[int, ...] = ()  # taps, 1-indexed; () = quarters of the tower
    prompt_depth: int = 4  # J
    prompt_length: int = 5  # M
    prompting: str = "SD"  # S static, D dynamic, SD hybrid
    branches: str = "VL"  # V vision prompts, L text prompts
    prompt_set: str = "adaclip"
    text_placeholders: bool = True  # ours; False = overwrite the first M word tokens as the official code
    use_hsf: bool = True
    hsf_clusters: int = 20  # K; the top 5K patches are clustered
    hsf_alpha: float = 0.2
    kmeans_seed: int = 0
    logit_scale: float = 100.0
    smoothing_sigma: float = 4.0
    checkpoint: str = ""

    def __post_init__(self) -> None:
        self.layers = tuple(int(v) for v in self.layers)
        if not set(self.prompting) <= {"S", "D"} or not self.prompting:
            raise ZsadInputError(f"adaclip: prompting {self.prompting!r}: use S, D or SD")
        if not set(self.branches) <= {"V", "L"}:
            raise ZsadInputError(f"adaclip: branches {self.branches!r}: use V, L, VL or ''")
        if self.prompt_depth < 1 or self.prompt_length < 1:
            raise ZsadInputError("adaclip: prompt_depth and prompt_length must be >= 1")
        check_range(
            "adaclip",
            hsf_clusters=(self.hsf_clusters, self.hsf_clusters >= 1, ">= 1"),
            hsf_alpha=(self.hsf_alpha, 0 <= self.hsf_alpha <= 1, "in [0, 1]"),
            logit_scale=(self.logit_scale, self.logit_scale > 0, "> 0"),
            smoothing_sigma=(self.smoothing_sigma, self.smoothing_sigma >= 0, ">= 0 (0 disables smoothing)"),
        )
        sets = list_prompt_sets()
        check_range("adaclip", prompt_set=(self.prompt_set, self.prompt_set in sets, f"one of {', '.join(sets)}"))


class AdaClipParams(nn.Module):
    """Every learnable tensor of AdaCLIP (CLIP itself stays frozen)."""

    def __init__(self, width: int, text_width: int, embed: int, n_layers: int, depth: int, length: int) -> None:
        super().__init__()
        self.static_visual = nn.Parameter(torch.randn(depth, length, width) * 0.02)  # (J, M, Wv)
        self.static_text = nn.Parameter(torch.randn(depth, length, text_width) * 0.02)  # (J, M, Wt)
        self.dynamic_visual = nn.ModuleList(nn.Linear(embed, width) for _ in range(length))
        self.dynamic_text = nn.ModuleList(nn.Linear(embed, text_width) for _ in range(length))
        self.patch_proj = nn.ModuleList(nn.Linear(width, embed) for _ in range(n_layers))
        self.global_proj = nn.Linear(embed, embed)


class AdaClip(TrainableMethod):
    """AdaCLIP: learnable hybrid prompts in both encoders; runs only with trained (or imported official) prompts."""

    name = "adaclip"
    config_cls = AdaClipConfig
    config: AdaClipConfig
    export_refusal: ClassVar[str | None] = (
        "its image score clusters each image's patches with k-means (data-dependent iterations); planned: export the "
        "maps and the global feature, with the k-means fusion done by the runtime in numpy"
    )
    backbone: ClipBackbone  # reads text and CLIP-only paths: a vision-only backbone is refused by zsad.runs
    arch_fields = ("layers", "prompt_depth", "prompt_length", "prompting", "branches", "text_placeholders")
    official_checkpoint = "a checkpoint saved by the official AdaCLIP trainer (clip_model.* tensors)"

    def finish_config(self) -> None:
        """Default the taps to the quarters of the tower, and refuse a prompt depth deeper than the tower."""
        n = self.backbone.num_layers
        if not self.config.layers:
            if n % 4:
                raise ZsadInputError(f"adaclip: {n} blocks do not split into 4 taps; pass layers=...")
            self.config = dataclasses.replace(self.config, layers=tuple(n // 4 * i for i in range(1, 5)))
        if self.config.prompt_depth > n:
            raise ZsadInputError(f"adaclip: prompt_depth {self.config.prompt_depth} exceeds {n} blocks")

    @property
    def parts(self) -> nn.Module:
        """The prompts and projections (``AdaClipParams``), built with the method."""
        return self.params

    def build_parts(self, seed: int | None) -> None:
        """Fresh ``AdaClipParams`` sized for the backbone, seeded without disturbing the global random state."""
        bb, cfg = self.backbone, self.config
        text_width = bb.model.token_embedding.weight.shape[1]
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            p = AdaClipParams(bb.width, text_width, bb.embed_dim, len(cfg.layers), cfg.prompt_depth, cfg.prompt_length)
        self.params = p.to(bb.device)

    @classmethod
    def import_official(cls, path: Path, backbone: ClipBackbone, out: Path, trained_on: str) -> Path:
        """Convert a checkpoint saved by the official AdaCLIP trainer (see ``import_official_checkpoint``)."""
        return import_official_checkpoint(path, backbone, out, trained_on)

    # ------------------------------------------------------------------ forward pieces
    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        self.require_trained("prompts")
        self.tokens = self._sentence_tokens(class_name)

    def _sentence_tokens(self, class_name: str) -> tuple[torch.Tensor, int]:
        """Token ids (S, L) of every normal then anomalous sentence, and the number of normal ones."""
        normal, anomalous = build_prompts(get_prompt_set(self.config.prompt_set), class_name.replace("-", " "))
        sentences = normal + anomalous
        if self.config.text_placeholders and "L" in self.config.branches:
            sentences = [" ".join(["X"] * self.config.prompt_length) + " " + s for s in sentences]
        return self.backbone.tokenize(sentences), len(normal)

    def _prompts(self, embedding: torch.Tensor) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Hybrid prompts per prompted block: visual {0..J-1: (B, M, Wv)}, text {1..J-1: (B, M, Wt)}."""
        cfg, p = self.config, self.params
        b = embedding.shape[0]
        vis: dict[int, torch.Tensor] = {}
        txt: dict[int, torch.Tensor] = {}
        dyn_v = torch.stack([h(embedding) for h in p.dynamic_visual], 1) if "D" in cfg.prompting else 0.0
        dyn_t = torch.stack([h(embedding) for h in p.dynamic_text], 1) if "D" in cfg.prompting else 0.0
        for j in range(cfg.prompt_depth):
            sv = p.static_visual[j].expand(b, -1, -1) if "S" in cfg.prompting else 0.0
            st = p.static_text[j].expand(b, -1, -1) if "S" in cfg.prompting else 0.0
            if "V" in cfg.branches:
                vis[j] = sv + dyn_v  # type: ignore[assignment]
            if "L" in cfg.branches and j > 0:
                txt[j] = st + dyn_t  # type: ignore[assignment]
        return vis, txt

    def _text(self, txt_prompts: dict[int, torch.Tensor], b: int) -> torch.Tensor:
        """(B, 2, D) unit state features, each image's sentences encoded with its own text prompts."""
        tokens, n_normal = self.tokens
        if txt_prompts:  # (B, S, D); block 0 has no text prompt, so it runs once for all images
            emb = self.backbone.encode_text_prompt_sets(tokens, txt_prompts)
        else:
            emb = self.backbone.encode_text_tokens(tokens)[None].expand(b, -1, -1)
        emb = F.normalize(emb, dim=-1)
        states = torch.stack([emb[:, :n_normal].mean(1), emb[:, n_normal:].mean(1)], 1)  # (B, 2, D)
        return F.normalize(states, dim=-1)

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, tuple]:
        """Global feature (B, D), per-layer patch features [(B, N, D)], text (B, 2, D), grid."""
        bb = self.backbone
        frozen = images.new_zeros(images.shape[0], bb.embed_dim)
        if "D" in self.config.prompting:  # the extra frozen pass only dynamic prompts need
            with torch.no_grad():
                frozen = bb.encode_image(images, pooled_only=True).embedding
        vis, txt = self._prompts(frozen)
        feats = bb.encode_image(images, layers=self.config.layers, visual_prompts=vis or None)
        patches = [
            F.normalize(proj(feats.tokens[lyr][:, 1:]), dim=-1)
            for proj, lyr in zip(self.params.patch_proj, self.config.layers, strict=True)
        ]
        glob = F.normalize(self.params.global_proj(feats.embedding), dim=-1)
        return glob, patches, self._text(txt, images.shape[0]), feats.grid

    def _logits(self, patches: list[torch.Tensor], text: torch.Tensor) -> list[torch.Tensor]:
        return [self.config.logit_scale * torch.einsum("bnd,bcd->bnc", f, text) for f in patches]  # (B, N, 2)

    def _fused_global(
        self, glob: torch.Tensor, patches: list[torch.Tensor], logits: list[torch.Tensor]
    ) -> torch.Tensor:
        """Hybrid semantic fusion: blend the global feature with the centroid of the most anomalous patches."""
        cfg = self.config
        if not cfg.use_hsf:
            return glob
        with torch.no_grad():
            p_abn = torch.stack(logits).mean(0).softmax(-1)[..., 1]  # (B, N)
            k = min(p_abn.shape[1], 5 * cfg.hsf_clusters)
            top = p_abn.topk(k, dim=1).indices  # (B, k)
        picked = [f.gather(1, top[..., None].expand(-1, -1, f.shape[-1])) for f in patches]  # L x (B, k, D)
        labels, _ = kmeans(torch.cat(picked, -1).detach(), cfg.hsf_clusters, seed=cfg.kmeans_seed)
        onehot = F.one_hot(labels, min(cfg.hsf_clusters, k)).to(glob.dtype)  # (B, k, K)
        members = torch.stack(picked).sum(0)  # (B, k, D): each patch's features summed over layers
        counts = onehot.sum(1) * len(picked)  # (B, K) members x layers
        centroids = (onehot.transpose(1, 2) @ members) / counts.clamp_min(1)[..., None]  # (B, K, D)
        used = (counts > 0).to(glob.dtype)
        centre = F.normalize((centroids * used[..., None]).sum(1) / used.sum(1, keepdim=True), dim=-1)
        return F.normalize(cfg.hsf_alpha * centre + (1 - cfg.hsf_alpha) * glob, dim=-1)

    def _outputs(self, images: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Test: (B, S, S) map, (B,) score. Train: per-layer probabilities (L, B, 2, S, S), (B, 2) probabilities."""
        glob, patches, text, grid = self._features(images)
        logits = self._logits(patches, text)
        img = self._fused_global(glob, patches, logits)
        score = (self.config.logit_scale * torch.einsum("bd,bcd->bc", img, text)).softmax(-1)  # (B, 2)
        if train:
            up = [upsample(grid_to_map(lg, grid), self.image_size, align_corners=True) for lg in logits]
            return torch.stack([u.softmax(1) for u in up]), score
        # the layer mean commutes with bilinear upsampling: one upsample instead of one per layer
        mean = upsample(grid_to_map(torch.stack(logits).mean(0), grid), self.image_size, align_corners=True)
        amap = mean.softmax(1)[:, 1]
        return gaussian_blur(amap, self.config.smoothing_sigma), score[:, 1]

    def _predict(self, images: torch.Tensor) -> Prediction:
        amap, score = self._outputs(images, train=False)
        return Prediction(pred_score=score.float(), anomaly_map=amap.float())

    # ------------------------------------------------------------------ training
    def default_train_config(self) -> TrainConfig:
        """The official recipe: AdamW lr 0.01, betas (0.5, 0.999), 5 epochs, batch size 1, seed 111."""
        # the official recipe; its batch size 1 was forced by its text code, zsad batches any size
        return TrainConfig(
            epochs=5, batch_size=1, lr=0.01, optimizer="adamw", betas=(0.5, 0.999), weight_decay=0.01, seed=111
        )

    def fit(
        self, datasets: Sequence[tuple[str, Any]], train_cfg: TrainConfig, *, class_names: dict[str, str] | None = None
    ) -> Training:
        """Every prompt and projection trains on (category, dataset) pairs with masks; CLIP stays frozen."""
        from zsad.train import dice_loss, focal_loss

        items = mask_items(self.name, datasets)
        names = class_names or {}
        tokens = {cat: self._sentence_tokens(names.get(cat, cat.replace("_", " "))) for cat, _ in datasets}
        self.build_parts(seed=train_cfg.seed)
        dev = self.backbone.device

        def step(params: nn.Module, batch: list[int]) -> dict[str, torch.Tensor]:
            got = [(items[i][0], items[i][1][items[i][2]]) for i in batch]
            total: dict[str, torch.Tensor] = {}
            for cat in dict.fromkeys(c for c, _ in got):
                group = [g for c, g in got if c == cat]
                self.tokens = tokens[cat]
                imgs = torch.stack([g["image"] for g in group]).to(dev)
                gt = (torch.stack([g["gt_mask"] for g in group]) > 0.5).float().to(dev)
                label = torch.tensor([float(g["gt_label"] == 1) for g in group], device=dev)
                probs, score = self._outputs(imgs, train=True)
                zero = torch.zeros((), device=dev)  # a tensor start: sum() of tensors types as a tensor
                terms = {
                    "image": focal_loss(score[:, :, None, None], label[:, None, None]),
                    "focal": sum((focal_loss(p, gt) for p in probs), zero),
                    "dice": sum((dice_loss(p[:, 1], gt) + dice_loss(p[:, 0], 1 - gt) for p in probs), zero),
                }
                w = len(group) / len(got)
                for k, v in terms.items():
                    total[k] = total[k] + w * v if k in total else w * v
            total["loss"] = total["image"] + total["focal"] + total["dice"]
            return total

        return self.image_training(items, step, train_cfg, summary="CLIP frozen, prompts + projections")


# official parameter name (after the "clip_model." prefix) -> ours; {i} is a head / layer / prompt-depth index
_OFFICIAL = {
    "visual_prompter.static_prompts.{i}": "static_visual.{i}",
    "text_prompter.static_prompts.{i}": "static_text.{i}",
    "dynamic_visual_prompt_generator.head.{i}.weight": "dynamic_visual.{i}.weight",
    "dynamic_visual_prompt_generator.head.{i}.bias": "dynamic_visual.{i}.bias",
    "dynamic_text_prompt_generator.head.{i}.weight": "dynamic_text.{i}.weight",
    "dynamic_text_prompt_generator.head.{i}.bias": "dynamic_text.{i}.bias",
    "patch_token_layer.head.{i}.weight": "patch_proj.{i}.weight",
    "patch_token_layer.head.{i}.bias": "patch_proj.{i}.bias",
    "cls_token_layer.head.{i}.weight": "global_proj.weight",
    "cls_token_layer.head.{i}.bias": "global_proj.bias",
}


def import_official_checkpoint(path: Path, backbone: ClipBackbone, out: Path, trained_on: str) -> Path:
    """Convert a checkpoint saved by the official AdaCLIP trainer (a dict of ``clip_model.*`` tensors).

    The official text prompts overwrite the first M word tokens, so the result runs with ``text_placeholders=False``.
    Its released weights were trained on OpenAI CLIP built with exact GELU (not QuickGELU); build the backbone the
    same way to reproduce them. A torch file is read with ``weights_only=True``; safetensors are read as well.
    """
    import re

    path = Path(path)
    raw = read_official(path)
    if not any("prompter" in k for k in raw):
        raise ZsadInputError(f"{path}: no *_prompter tensors (not an official AdaCLIP checkpoint)")
    patterns = [(re.compile(re.escape(o).replace(r"\{i\}", r"(\d+)") + "$"), ours) for o, ours in _OFFICIAL.items()]
    flat: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = key.removeprefix("clip_model.")
        for pat, ours in patterns:
            hit = pat.match(name)
            if hit:
                flat[ours.format(i=hit.group(1))] = value.float()
                break
    depth = len([k for k in flat if k.startswith("static_visual.")])
    length = len([k for k in flat if k.startswith("dynamic_visual.") and k.endswith(".weight")])
    tensors = {k: v for k, v in flat.items() if not k.startswith(("static_visual.", "static_text."))}
    for name in ("static_visual", "static_text"):
        tensors[name] = torch.stack([flat[f"{name}.{j}"] for j in range(depth)])
    method = AdaClip(backbone, text_placeholders=False, prompt_depth=depth, prompt_length=length)
    load_tensors(method.params, tensors, path)
    return method.save_imported(path, out, trained_on, "official AdaCLIP checkpoint")
