"""CLIP-AD SDP+: SDP plus one trained linear layer per stage on the original-path tokens.

Paper: Chen et al., arXiv 2311.00453; method notes docs/methods/clip-ad.md ("SDP+").
Each stage's raw original-path tokens (pre-``ln_post``, CLS dropped) go through ``Linear(width -> embed_dim)``;
the map is softmax over the two states of 100 cos(f, t), upsampled bilinearly with ``align_corners=True``. Training:
focal (gamma 2) + dice on the anomalous probability, per stage, summed; CLIP stays frozen; Adam, lr 1e-4, 5 epochs,
batch 8, seed 42, on the *test split* of an auxiliary dataset (VisA to test MVTec, MVTec to test VisA).
At test time the map is (sum of the stages' trained probabilities) + the SDP map, then Gaussian smoothing
(sigma 8; the paper uses 2 on VisA); the image score is computed as in SDP.

Ours: batches are shuffled every epoch (seeded; the official loader does not shuffle, so it sees each dataset's
categories in order); the frozen backbone runs once per training image (features are cached in memory when they
fit), and training resumes from its last epoch. The checkpoint folder (safetensors + manifest.json +
training_images.txt) records the backbone, layers, prompts and the exact training images, so ``zsad eval`` can
refuse to call seen images zero-shot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from zsad.backbone import ClipBackbone
from zsad.errors import ZsadInputError
from zsad.methods.options import config_record
from zsad.methods.sdp import Sdp, SdpConfig
from zsad.methods.trainable import TrainableMethod, mask_items, read_official
from zsad.ops import grid_to_map, upsample
from zsad.progress import reporter
from zsad.prompts import state_text
from zsad.train.loop import TrainConfig, Training
from zsad.types import Prediction

CACHE_LIMIT_BYTES = 4 << 30  # cache frozen features in RAM up to this size, else recompute them every epoch


@dataclass
class SdpPlusConfig(SdpConfig):
    """SDP's options plus the trained layers' checkpoint and how their maps are upsampled."""

    checkpoint: str = ""  # folder written by `zsad train --method sdp+`
    align_corners: bool = True  # upsampling of the trained maps, as the paper's code


class SdpPlus(Sdp, TrainableMethod):
    """SDP plus one trained linear layer per stage; needs a checkpoint (``zsad train`` or the official release)."""

    name = "sdp+"
    config_cls = SdpPlusConfig
    config: SdpPlusConfig
    arch_fields = ("layers", "compat")  # the layers were trained on these taps: other taps would mismatch
    tensor_prefix = "heads."
    official_checkpoint = "the CLIP-AD release's linear layers (train_on_visa.pth / train_on_mvtec.pth)"

    @property
    def parts(self) -> nn.Module:
        """The per-stage linear layers."""
        return self.heads

    def build_parts(self, seed: int | None) -> None:
        """One fresh ``Linear(width -> embed_dim)`` per stage, seeded on a forked RNG."""
        bb = self.backbone
        with torch.random.fork_rng(devices=[]):  # the layers' init is part of the seeded recipe
            if seed is not None:
                torch.manual_seed(seed)
            heads = nn.ModuleList(nn.Linear(bb.width, bb.embed_dim) for _ in range(len(self.stages)))
        self.heads = heads.to(bb.device)

    def checkpoint_config(self) -> dict[str, Any]:
        """Records the resolved stage layers, so a default ``()`` cannot mean other taps on another backbone."""
        return {**config_record(self.config), "layers": list(self.stages)}

    def loaded(self, manifest: dict[str, Any]) -> None:
        """A prompt choice other than the training one is allowed, and said."""
        for key in ("prompt_set", "text_aggregation"):
            trained = manifest.get("config", {}).get(key)
            now = getattr(self.config, key)
            if trained is not None and trained != now:
                reporter().message(
                    f"note: {manifest.get('method')} checkpoint trained with {key}={trained!r}, running {now!r}", "note"
                )

    def save(self, out: Path, training: dict[str, Any]) -> Path:
        """Write the checkpoint folder (safetensors + manifest) for the current layers."""
        path = super().save(out, training)
        self.config = dataclasses.replace(self.config, layers=tuple(self.stages))
        return path

    def _setup(self, class_name: str, reference_images: torch.Tensor | None) -> None:
        self.require_trained("layers", ", or use --method sdp for the training-free model")
        super()._setup(class_name, reference_images)

    # ------------------------------------------------------------------ inference
    def _trained_probs(self, tokens: Sequence[torch.Tensor], text: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Per-stage anomalous-state probability maps (n_stages, B, 2, S, S) from raw stage tokens (B, N, W).

        ``text`` is (2, D) or (B, 2, D) (one text pair per image during training).
        """
        out = []
        for head, tok in zip(self.heads, tokens, strict=True):
            f = F.normalize(head(tok), dim=-1)  # (B, N, D)
            logits = self.config.logit_scale * (
                f @ text.T if text.ndim == 2 else torch.einsum("bnd,bcd->bnc", f, text)
            )  # (B, N, 2)
            m = upsample(grid_to_map(logits, grid), self.image_size, align_corners=self.config.align_corners)
            out.append(m.softmax(1))
        return torch.stack(out)

    def _predict(self, images: torch.Tensor) -> Prediction:
        stages = self.stages
        feats = self._forward(images, original_layers=stages)
        probs = self._trained_probs([feats.tokens[lyr][:, 1:] for lyr in stages], self.text, feats.grid)
        return self._finish(feats, self._sdp_map(feats) + probs[:, :, 1].sum(0))

    # ------------------------------------------------------------------ training
    def default_train_config(self) -> TrainConfig:
        """The paper's recipe: 5 epochs, batch 8, lr 1e-4, seed 42."""
        return TrainConfig(epochs=5, batch_size=8, lr=1e-4, seed=42)  # the paper's recipe

    def _stage_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen original-path stage tokens without CLS: (B, n_stages, N, W)."""
        stages = self.stages
        tap_mode: Literal["block", "official"] = "official" if self.config.compat == "official" else "block"
        with torch.no_grad():
            feats = self.backbone.encode_image(images, layers=stages, tap_mode=tap_mode)
        return torch.stack([feats.tokens[lyr][:, 1:] for lyr in stages], dim=1)

    def fit(
        self, datasets: Sequence[tuple[str, Any]], train_cfg: TrainConfig, *, class_names: dict[str, str] | None = None
    ) -> Training:
        """The stage layers train on (category, dataset) pairs with masks (frozen features cached when they fit)."""
        from zsad.train import dice_loss, focal_loss

        bb = self.backbone
        dev = bb.device
        items = mask_items(self.name, datasets)
        names = class_names or {}
        text = {cat: state_text(bb, self.config, names.get(cat, cat.replace("_", " "))).to(dev) for cat, _ in datasets}
        n_stage, n_tok = len(self.stages), bb.grid_size()[0] * bb.grid_size()[1]
        size = len(items) * n_stage * n_tok * bb.width * 4
        cache: torch.Tensor | None = None
        masks = torch.zeros(len(items), self.image_size, self.image_size)
        rep = reporter()
        if size <= CACHE_LIMIT_BYTES:
            cache = torch.zeros(len(items), n_stage, n_tok, bb.width)
        with rep.task("frozen CLIP features" if cache is not None else "reading masks", len(items)) as task:
            for start in range(0, len(items), train_cfg.batch_size):
                chunk = items[start : start + train_cfg.batch_size]
                got = [ds[i] for _, ds, i in chunk]
                masks[start : start + len(chunk)] = torch.stack([g["gt_mask"] for g in got])
                if cache is not None:
                    imgs = torch.stack([g["image"] for g in got]).to(dev)
                    cache[start : start + len(chunk)] = self._stage_tokens(imgs).cpu()
                task.advance(len(chunk))
        where = "cached in RAM" if cache is not None else f"recomputed each epoch ({size / 2**30:.1f} GiB > cache)"
        rep.message(f"sdp+: {len(items)} training images, frozen features {where}")
        masks = (masks > 0.5).float()
        self.build_parts(seed=train_cfg.seed)

        def step(heads: nn.Module, batch: list[int]) -> dict[str, torch.Tensor]:
            idx = torch.tensor(batch)
            if cache is not None:
                tok = cache[idx].to(dev)
            else:
                tok = self._stage_tokens(torch.stack([items[i][1][items[i][2]]["image"] for i in batch]).to(dev))
            t = torch.stack([text[items[i][0]] for i in batch])  # (B, 2, D)
            probs = self._trained_probs([tok[:, j] for j in range(n_stage)], t, bb.grid_size())
            gt = masks[idx].to(dev)
            focal = sum(focal_loss(p, gt) for p in probs)
            dice = sum(dice_loss(p[:, 1], gt) for p in probs)
            assert isinstance(focal, torch.Tensor) and isinstance(dice, torch.Tensor)
            return {"loss": focal + dice, "focal": focal, "dice": dice}

        return self.image_training(items, step, train_cfg)

    @classmethod
    def import_official(cls, path: Path, backbone: ClipBackbone, out: Path, trained_on: str) -> Path:
        """Convert the official CLIP-AD release (``{"linear_layers": fc.i.weight/bias}``), torch or safetensors.

        Those layers were trained on taps with the official in-place update, so the result runs with
        ``compat="official"``. A torch file is read with ``weights_only=True`` (no code from it is executed).
        """
        path = Path(path)
        raw = read_official(path)
        state = raw.get("linear_layers", raw)
        if not isinstance(state, dict) or not any(str(k).startswith("fc.") for k in state):
            raise ZsadInputError(f"{path}: no 'linear_layers' with fc.* tensors (not an official CLIP-AD SDP+ file)")
        n = len({k.split(".")[1] for k in state if k.startswith("fc.")})
        method = cls(backbone, compat="official")
        if n != len(method.stages):
            raise ZsadInputError(f"{path}: {n} layers, but this backbone has {len(method.stages)} stages")
        try:
            method.heads.load_state_dict({k.removeprefix("fc."): v.float() for k, v in state.items()})
        except RuntimeError as e:
            raise ZsadInputError(f"{path}: layers do not fit {backbone.model_name}: {str(e).splitlines()[0]}") from e
        return method.save_imported(path, out, trained_on, "official CLIP-AD release")
