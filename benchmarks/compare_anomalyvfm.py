"""zsad's AnomalyVFM (CLIP, DINOv2, RADIO, SigLIP2) against the OFFICIAL code (MaticFuc/AnomalyVFM @4da96b4).

Two processes.

The official code is imported at run time from ``--official-root`` (an extracted checkout; never copied into this
project) by a driver that runs in ``--official-python``, a venv with ``transformers`` (its HF CLIP) and the same
torch as zsad's:

- model: ``hf_model.AnomalyVFM(AnomalyVFMConfig(model_name="clip", image_size=S, peft_type, peft_rank))``, exactly
  the class the Hugging Face release was saved from. Its ``models.clip.CLIP`` calls
  ``AutoModel.from_pretrained("openai/clip-vit-large-patch14-336").vision_model``; with no hub here, the driver
  replaces that one name in ``models.clip`` with a shim that returns ``CLIPModel(CLIPConfig(vision_config=...))``
  built from a config (seeded RANDOM weights) of the ViT-L/14-336 vision tower (QuickGELU, 24 blocks, width 1024),
  or of a smaller tower of the same code path (``--blocks``, ``--image-size``; width 1024 and patch 14 stay, as
  ``models.clip`` fixes them). Everything else is the official code as it is: ``add_peft_clip`` wraps q/v/out_proj
  with DoRA (or LoRA), ``SimpleDecoder(feat_dim, 1, 1)``, ``SimplePredictor``.
- weights: the adapters' ``lora_B`` (zero at init) and DoRA magnitudes are perturbed (seeded) so every adapter
  changes the forward; the decoder and predictor keep their random init. ``model.save_pretrained(dir)`` writes the
  release layout (config.json + model.safetensors, the full state dict) and zsad imports that folder with
  ``zsad.runs.import_checkpoint(..., "anomalyvfm", ...)`` on a seeded random open_clip backbone of the same shape:
  the released tower differs from it, so the importer stores it and the imported model runs on it. A second
  import runs on a backbone built from an open_clip weights file holding the released tower (made from the first
  import): the importer then finds the tower bit-equal and does not store it; both imports must agree exactly.
- one training step (train.py's lines, one micro-batch: a defect image with its mask and a good image, labels 1
  and 0; the tower frozen as train.py freezes it before ``add_peft``): the loss and its two terms, and the
  gradients of every adapter, decoder and predictor tensor, vs zsad's ``loss_terms`` + backward.
- inference (hf_model.forward + test.py): ``last_hidden_state`` of ``net(x, interpolate_pos_encoding=True)``, CLS
  -> predictor -> sigmoid, patches -> (B, 1024, g, g) -> decoder -> sigmoid, ``F.interpolate`` to 2g (test.py's
  mask size; nearest) and ``AvgPool2d(5, 1, 2)``. In fp32 with autocast off (the replayed lines), and through
  ``AnomalyVFM.forward`` itself, which runs under bf16 autocast: its drift is reported separately.
  zsad's map is at the input size (nearest from 2g): the official 2g map is resized the same way for the last row.

Both sides get the same normalised tensor (zsad's ``squash_image``, OpenAI mean/std) of the first ``--images``
MPDD metal_plate defect images; preprocessing is not compared (the official ``Resize`` is bilinear, zsad's bicubic).
CPU, one image per forward.

    # $AVFM: a checkout of github.com/MaticFuc/AnomalyVFM at 4da96b4; $AVFM_VENV: a venv beside zsad's
    git clone https://github.com/MaticFuc/AnomalyVFM "$AVFM" && git -C "$AVFM" checkout 4da96b4
    .venv/bin/python -m venv "$AVFM_VENV"
    "$AVFM_VENV"/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers safetensors
    # quick: 4 blocks at 448 px (grid 32, the 24x24 positions interpolated), about a minute on 2 CPU cores
    .venv/bin/python benchmarks/compare_anomalyvfm.py --official-root "$AVFM" \\
        --official-python "$AVFM_VENV"/bin/python --blocks 4 --image-size 448 --images 2
    # as released: ViT-L/14-336 (24 blocks) at 672 px
    .venv/bin/python benchmarks/compare_anomalyvfm.py --official-root "$AVFM" \\
        --official-python "$AVFM_VENV"/bin/python --images 2
    # cost only (no official side): predict vs the bare tower forward, 3 timed images
    .venv/bin/python benchmarks/compare_anomalyvfm.py --official-root - --official-python - --cost 3

``--backbone dinov2`` compares the DINOv2 variant instead (inference only): the official ``models/dinov2.py`` calls
``torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14_reg")``; with no hub here, the driver points that one call
at a local extract of facebookresearch/dinov2 (``--dinov2-root``, loaded with ``source="local", pretrained=False``:
Meta's own ``DinoVisionTransformer``, seeded RANDOM weights; class and register tokens and the adapters perturbed),
optionally cut to ``--blocks`` blocks (``blocks[:n]`` before ``add_peft``). The official ``save_pretrained`` folder
is imported onto timm's ``vit_large_patch14_reg4_dinov2`` (random, so the released tower is stored; cut to the same
depth below 24 blocks, where ``runs`` cannot build it and the importer is called directly), then once more onto a
timm tower loaded by timm itself from Meta's layout of the released tower (``checkpoint_filter_fn``: class position
folded, 37x37 positions resampled at load), which the importer must find bit-equal (nothing stored).

    # $DINOV2: a checkout of github.com/facebookresearch/dinov2 (hubconf.py and the dinov2 package are read)
    git clone https://github.com/facebookresearch/dinov2 "$DINOV2"
    .venv/bin/python benchmarks/compare_anomalyvfm.py --backbone dinov2 --dinov2-root "$DINOV2" \\
        --official-root "$AVFM" --official-python "$AVFM_VENV"/bin/python --blocks 4 --image-size 448

``--backbone radio``: the official ``hf_model`` builds RADIO with ``use_local=True``, its own ``radio_local.py``
(RADIO v2.5-L: 8 prefix tokens, a 128x128 position table resized bicubically per forward, no final norm), random
weights (the table, zeros at init, perturbed). The driver feeds it 0-1 images (its input conditioner normalises) and
zsad the same images normalised with OpenAI's mean/std; the release is imported onto zsad's
``timm:vit_large_patch16_radio_v2_5``, and once more onto that tower loaded by timm from the released tower's RADIO
names (``zsad.backbone.radio``'s converter).

``--backbone siglip2`` (``--blocks 27`` as released): ``models/siglip2.py`` calls
``AutoModel.from_pretrained("google/siglip2-so400m-patch16-naflex").vision_model``; the driver answers it with
``Siglip2Model(Siglip2Config(...))`` of that checkpoint's vision config (random weights; positions, biases and norm
weights perturbed) and makes the file's ``.cuda()`` calls no-ops on CPU. The file was written for transformers 4.x:
on 5.x its ``vision_model(attention_mask=...)`` call fails, so its venv needs ``transformers<5``:

    "$AVFM_VENV4"/bin/pip install torch==2.14.1 torchvision==0.29.1 "transformers>=4.56,<5" safetensors
    .venv/bin/python benchmarks/compare_anomalyvfm.py --backbone siglip2 --official-root "$AVFM" \\
        --official-python "$AVFM_VENV4"/bin/python --blocks 27 --image-size 768 --images 2
    .venv/bin/python benchmarks/compare_anomalyvfm.py --backbone radio --official-root "$AVFM" \\
        --official-python "$AVFM_VENV"/bin/python --blocks 24 --image-size 768 --images 2

Random weights everywhere: fidelity only, NOT detection quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_results_args, assets_dir  # noqa: E402
from sidebyside import Row, dist_version, file_hashes, maxdiff, run_official, squashed, table  # noqa: E402

OFFICIAL_FILES = ("hf_model.py", "decoder.py", "models/clip.py", "peft_local/dora.py", "peft_local/lora.py")
DINOV2_FILES = (
    "hf_model.py",
    "models/dinov2.py",
    "peft_local/peft_func.py",
    "peft_local/dora.py",
    "peft_local/lora.py",
)
RADIO_FILES = (
    "hf_model.py",
    "models/radio.py",
    "radio_local.py",
    "peft_local/peft_func.py",
    "peft_local/dora.py",
    "peft_local/lora.py",
)
SIGLIP2_FILES = (
    "hf_model.py",
    "models/siglip2.py",
    "peft_local/peft_func.py",
    "peft_local/dora.py",
    "peft_local/lora.py",
)
MEAN_KERNEL = 5  # test.py --mean-kernel-size
FLOAT_TOL = 1e-4  # maps and scores (in [0, 1]): fp32 float error through 24 blocks at 2305 tokens
GRAD_REL_TOL = 1e-5  # gradients, relative to the tensor group's largest official value

PREAMBLE = r"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

root, tmp = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(root))
spec = json.loads((tmp / "spec.json").read_text())
torch.set_num_threads(spec["threads"])
"""


INFERENCE = r"""
keys = ("tokens", "score", "mask_logit", "mask", "smoothed", "score_bf16", "mask_bf16", "smoothed_bf16")
rows = {k: [] for k in keys}
ms = fs * 2  # test.py: mask size = feat_size * 2 ** num_up_layers
pool = torch.nn.AvgPool2d((spec["kernel"], spec["kernel"]), 1, spec["kernel"] // 2)
for i in range(len(x)):
    img = x[i : i + 1]
    with torch.no_grad():  # hf_model.forward's lines, autocast off (fp32)
        summary, ftrs = tower(img)
        tokens = torch.cat([summary.reshape(1, -1, ftrs.shape[-1]), ftrs], 1)  # RADIO: 3 summary tokens
        ftrs = ftrs.permute(0, 2, 1).reshape(1, -1, fs, fs)
        score = model.predictor(summary).sigmoid()
        mask_logit, _ = model.decoder(ftrs)
        mask = mask_logit.sigmoid()
        smoothed = pool(F.interpolate(mask, (ms, ms)).squeeze(1))  # test.py
        score_b, mask_b = model(img)  # the official forward: bf16 autocast
        smoothed_b = pool(F.interpolate(mask_b, (ms, ms)).squeeze(1))
    for k, v in zip(rows, (tokens, score, mask_logit, mask, smoothed, score_b, mask_b, smoothed_b)):
        rows[k].append(v.float())
out.update({k: torch.cat(v) for k, v in rows.items()})
"""


DRIVER = (
    PREAMBLE
    + r'''
import transformers
from transformers import CLIPConfig, CLIPModel

import models.clip as official_clip


class Hub:
    """Stands in for transformers.AutoModel in models.clip only: a CLIPModel built from a config, random weights."""

    @staticmethod
    def from_pretrained(name, *args, **kwargs):
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2}
        return CLIPModel(CLIPConfig(vision_config=spec["vision"], text_config=text, projection_dim=768))


official_clip.AutoModel = Hub
from hf_model import AnomalyVFM, AnomalyVFMConfig

torch.manual_seed(spec["seed"])
cfg = AnomalyVFMConfig(model_name="clip", image_size=spec["image_size"], peft_type=spec["peft"], peft_rank=spec["rank"])
model = AnomalyVFM(cfg).eval()
g = torch.Generator().manual_seed(spec["seed"] + 1)
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        elif name.endswith("magnitude"):
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
model.save_pretrained(tmp / "release")

x = torch.load(tmp / "inputs.pt")
net, fs = model.model.net, model.feat_size
emb = torch.zeros(1, 1 + fs * fs, net.config.hidden_size)
out = {"pos": net.embeddings.interpolate_pos_encoding(emb, spec["image_size"], spec["image_size"])[0]}


def tower(img):
    """HF CLIP's last_hidden_state, split as hf_model.forward splits it: CLS, then the patches."""
    tokens = net(img, interpolate_pos_encoding=True).last_hidden_state
    return tokens[:, 0, :], tokens[:, 1:, :]

'''
    + INFERENCE
    + r"""
# one training step, train.py's lines (one micro-batch; train.py divides it by its 4 accumulation steps, not here)
import torchvision
import torchvision.transforms as TT

tr = torch.load(tmp / "train_inputs.pt")
for name, p in model.named_parameters():  # train.py freezes the tower before add_peft: only the adapters learn
    p.requires_grad_(("lora_" in name or name.endswith("magnitude")) or not name.startswith("model."))
model.train()
mask_gt = torch.where(TT.Resize((ms, ms))(tr["masks"][:, None]) > 0.5, 1.0, 0.0)  # aux_dataset.py + test/train
summary, ftrs = model.model(tr["images"])
ftrs = ftrs.permute(0, 2, 1).reshape(-1, net.config.hidden_size, fs, fs)
mask, c = model.decoder(ftrs)
score = model.predictor(summary).squeeze(1)
l_img = torchvision.ops.sigmoid_focal_loss(score, tr["labels"], reduction="mean")
inner = 5 * torchvision.ops.sigmoid_focal_loss(mask, mask_gt, reduction="none") + torch.nn.L1Loss(reduction="none")(
    mask.sigmoid().clip(0.1, 0.9), mask_gt
)
c = 1 + c.exp()
l_mask = (c * inner - 0.1 * c.log()).mean()
loss = l_img + l_mask
loss.backward()
out["train"] = {
    "loss": loss.detach(), "image": l_img.detach(), "mask": l_mask.detach(), "mask_gt": mask_gt[:, 0],
    "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
}
out["versions"] = {"transformers": transformers.__version__, "torch": torch.__version__}
torch.save(out, tmp / "official.pt")
"""
)


TIMM_TAIL = (
    r"""
tower = model.model
"""
    + INFERENCE
    + r"""
out["wrapped"] = sorted(n for n, mod in net.named_modules() if type(mod).__name__.endswith("Wrapper"))
out["meta_state"] = {  # the released tower in its own module names (the wrappers' inner layers), for timm
    k.replace(".layer.", "."): v.clone()
    for k, v in net.state_dict().items()
    if not any(t in k.rsplit(".", 1)[-1] for t in ("lora_", "mag"))
}
out["versions"] = versions
torch.save(out, tmp / "official.pt")
"""
)


DINOV2_DRIVER = (
    r"""
import os

os.environ["XFORMERS_DISABLED"] = "1"  # the plain torch attention path, as on a machine without xformers
"""
    + PREAMBLE
    + r'''
hub_load = torch.hub.load


def local_hub(repo, name, *args, **kwargs):
    """torch.hub.load("facebookresearch/dinov2", name) -> the local extract, random weights, optionally cut."""
    assert repo == "facebookresearch/dinov2" and name == "dinov2_vitl14_reg", (repo, name)
    net = hub_load(spec["dinov2_root"], name, source="local", pretrained=False)
    if spec["blocks"] < len(net.blocks):
        net.blocks = net.blocks[: spec["blocks"]]
    return net


torch.hub.load = local_hub
from hf_model import AnomalyVFM, AnomalyVFMConfig

torch.manual_seed(spec["seed"])
cfg = AnomalyVFMConfig(
    model_name="dinov2", image_size=spec["image_size"], peft_type=spec["peft"], peft_rank=spec["rank"]
)
model = AnomalyVFM(cfg).eval()
g = torch.Generator().manual_seed(spec["seed"] + 1)
with torch.no_grad():
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("lora_B"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        elif leaf.startswith("mag") :
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
        elif leaf in ("cls_token", "register_tokens"):  # init 1e-6: made visible
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
net = model.model.net
model.save_pretrained(tmp / "release")

x = torch.load(tmp / "inputs.pt")
fs = model.feat_size
emb = torch.zeros(1, 1 + fs * fs, net.embed_dim)
out = {"pos": net.interpolate_pos_encoding(emb, spec["image_size"], spec["image_size"])[0]}
versions = {"torch": torch.__version__}
'''
    + TIMM_TAIL
)


RADIO_DRIVER = (
    PREAMBLE
    + r"""
from hf_model import AnomalyVFM, AnomalyVFMConfig

torch.manual_seed(spec["seed"])
cfg = AnomalyVFMConfig(
    model_name="radio", image_size=spec["image_size"], peft_type=spec["peft"], peft_rank=spec["rank"]
)
model = AnomalyVFM(cfg).eval()  # hf_model builds RADIO with use_local=True: radio_local.RADIOModel
net = model.model.net
if spec["blocks"] < len(net.model.blocks):
    net.model.blocks = net.model.blocks[: spec["blocks"]]
g = torch.Generator().manual_seed(spec["seed"] + 1)
with torch.no_grad():
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("lora_B"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        elif leaf.startswith("mag"):
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
        elif leaf == "pos_embed":  # zeros at init: made visible, so the resize is compared
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
model.save_pretrained(tmp / "release")

x = torch.load(tmp / "inputs.pt")  # 0-1 images: the input conditioner normalises inside
fs = model.feat_size
vit = net.model
emb = torch.zeros(1, vit.num_prefix_tokens + fs * fs, vit.embed_dim)
out = {"pos": vit._interpolate_pos_encoding(emb, spec["image_size"], spec["image_size"])[0, vit.num_prefix_tokens :]}
versions = {"torch": torch.__version__}
"""
    + TIMM_TAIL
)


SIGLIP2_DRIVER = (
    PREAMBLE
    + r'''
torch.Tensor.cuda = lambda self, *args, **kwargs: self  # models/siglip2.py moves its mask and shapes with .cuda()

import transformers
from transformers import Siglip2Config, Siglip2Model

import models.siglip2 as official_siglip2


class Hub:
    """Stands in for AutoModel in models.siglip2 only: google/siglip2-so400m-patch16-naflex's config, random weights."""

    @staticmethod
    def from_pretrained(name, *args, **kwargs):
        assert name == "google/siglip2-so400m-patch16-naflex", name
        vision = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": spec["blocks"],
                  "num_attention_heads": 16, "num_patches": 256, "patch_size": 16,
                  "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2}
        return Siglip2Model(Siglip2Config(vision_config=vision, text_config=text))


official_siglip2.AutoModel = Hub
from hf_model import AnomalyVFM, AnomalyVFMConfig

torch.manual_seed(spec["seed"])
cfg = AnomalyVFMConfig(
    model_name="siglip2", image_size=spec["image_size"], peft_type=spec["peft"], peft_rank=spec["rank"]
)
model = AnomalyVFM(cfg).eval()
net = model.model.net
g = torch.Generator().manual_seed(spec["seed"] + 1)
with torch.no_grad():
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("lora_B"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        elif leaf.startswith("mag"):
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
        elif not name.startswith("model."):
            continue
        elif leaf == "bias" or leaf.endswith("_bias"):  # zeros (or 1e-6) at init: made visible
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        elif "norm" in name and leaf == "weight":  # ones at init
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
        elif "position_embedding" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
model.save_pretrained(tmp / "release")

x = torch.load(tmp / "inputs.pt")
fs = model.feat_size
emb = net.embeddings
table = emb.position_embedding.weight.reshape(emb.position_embedding_size, emb.position_embedding_size, -1)
out = {"pos": emb.resize_positional_embeddings(table, torch.tensor([[fs, fs]]), fs * fs)[0]}
versions = {"torch": torch.__version__, "transformers": transformers.__version__}
'''
    + TIMM_TAIL
)


def vision_config(blocks: int) -> dict[str, Any]:
    """HF CLIPVisionConfig of openai/clip-vit-large-patch14-336 with ``blocks`` encoder layers."""
    return {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": blocks,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
    }


def open_clip_config(blocks: int) -> dict[str, Any]:
    """open_clip's ViT-L-14-336 (QuickGELU) image tower with ``blocks`` blocks and a small text tower."""
    return {
        "embed_dim": 768,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 336, "layers": blocks, "width": 1024, "head_width": 64, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }


def rel(d: float, scale: float) -> str:
    return f"scale {scale:.3g} (rel {d / scale if scale else 0.0:.1e})"


def output_rows(o: dict[str, Any], zsad: tuple[torch.Tensor, ...], s: int, grid: int) -> tuple[list[Row], list[Row]]:
    """The rows every tower shares: zsad's (score, mask logits, sigmoid map, smoothed map, map at ``s``) against
    the official fp32 lines, and the official bf16 forward's drift."""
    score, mask_logit, mask96, smooth96, amap = zsad
    up = F.interpolate(o["smoothed"][:, None], size=(s, s), mode="nearest")[:, 0]
    up_b = F.interpolate(o["smoothed_bf16"][:, None], size=(s, s), mode="nearest")[:, 0]
    scores = ", ".join(f"{v:.6f}" for v in o["score"][:, 0].tolist())
    rows: list[Row] = [
        ("image score (sigmoid)", maxdiff(o["score"][:, 0], score), f"official {scores}"),
        ("mask logits (decoder, 2g x 2g)", maxdiff(o["mask_logit"], mask_logit), f"{2 * grid}x{2 * grid}"),
        ("map: sigmoid (2g)", maxdiff(o["mask"], mask96), "in [0, 1]"),
        (f"map: + AvgPool2d({MEAN_KERNEL}, 1, {MEAN_KERNEL // 2}) (test.py)", maxdiff(o["smoothed"], smooth96), ""),
        (f"map at {s} px (zsad predict; official 2g map resized nearest)", maxdiff(up, amap), "zsad's last step"),
    ]
    drift: list[Row] = [
        ("score: official bf16 forward vs official fp32", maxdiff(o["score_bf16"][:, 0], o["score"][:, 0]), ""),
        ("score: official bf16 forward vs zsad fp32", maxdiff(o["score_bf16"][:, 0], score), ""),
        ("map (2g, sigmoid): official bf16 vs official fp32", maxdiff(o["mask_bf16"], o["mask"]), ""),
        ("map (2g, smoothed): official bf16 vs official fp32", maxdiff(o["smoothed_bf16"], o["smoothed"]), ""),
        (f"map at {s} px: official bf16 vs zsad fp32", maxdiff(up_b, amap), ""),
    ]
    return rows, drift


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-root", type=Path, required=True, help="extracted MaticFuc/AnomalyVFM checkout")
    variants = ("clip", "dinov2", "radio", "siglip2")
    ap.add_argument("--backbone", default="clip", choices=variants, help="the variant to compare")
    ap.add_argument("--dinov2-root", type=Path, help="extracted facebookresearch/dinov2 (hubconf.py + dinov2/)")
    ap.add_argument("--official-python", type=Path, required=True, help="python of a venv with transformers")
    ap.add_argument("--blocks", type=int, default=24, help="encoder blocks (24 = ViT-L as released; SigLIP2: 27)")
    ap.add_argument("--image-size", type=int, default=672)
    ap.add_argument("--images", type=int, default=2, help="first MPDD metal_plate defect images")
    ap.add_argument("--peft", default="dora", choices=("dora", "lora"))
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-weights-pass", action="store_true", help="skip the import onto the released tower")
    ap.add_argument("--cost", type=int, default=0, help="only time N forwards: predict vs the bare tower forward")
    add_results_args(ap)
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.cost:
        cost(args)
        return
    if args.backbone != "clip":
        compare_timm(args, t_start)
        return

    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method
    from zsad.runs import import_checkpoint
    from zsad.runs.build import BackboneSpec
    from zsad.sysinfo import hardware

    s = args.image_size
    picks = sorted((assets_dir() / "mpdd_metal_plate" / "defect").glob("*.png"))[: args.images]
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    x = squashed(picks, s, mean, std)
    with tempfile.TemporaryDirectory(prefix="anomalyvfm_cmp_") as tmpdir:
        tmp = Path(tmpdir)
        torch.save(x, tmp / "inputs.pt")
        tr = train_batch(s, mean, std)
        torch.save(tr, tmp / "train_inputs.pt")
        spec = {
            "vision": vision_config(args.blocks),
            "image_size": s,
            "peft": args.peft,
            "rank": args.rank,
            "seed": args.seed,
            "kernel": MEAN_KERNEL,
            "threads": torch.get_num_threads(),
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        o, t_off = run_official(DRIVER, args.official_python, args.official_root.resolve(), tmp)
        release = tmp / "release"
        release_cfg = json.loads((release / "config.json").read_text())

        cfg_path = tmp / "open_clip_vit_l14_336_quickgelu.json"
        cfg_path.write_text(json.dumps(open_clip_config(args.blocks)))
        name = "ViT-L-14-336-quickgelu" if args.blocks == 24 else str(cfg_path)
        t0 = time.perf_counter()
        ckpt = import_checkpoint(
            release, "anomalyvfm", tmp / "ckpt", "random (fidelity)", backbone=BackboneSpec(name, "none", image_size=s)
        )
        t_imp = time.perf_counter() - t0
        bb = ClipBackbone.from_pretrained(name, "none", image_size=s, seed=0)
        m: Any = create_method("anomalyvfm", bb, checkpoint=str(ckpt))
        m.setup(None)
        record = m.describe()["vision_tower"]

        t0 = time.perf_counter()
        toks, logits, preds = [], [], []
        with torch.no_grad():  # one tower pass per image; ``predict`` is ``finish(*logits)``, as here
            for i in range(len(x)):
                toks.append(m.tower_tokens(x[i : i + 1]))
                logits.append(m.heads(toks[-1]))
                preds.append(m.finish(logits[-1][0], logits[-1][1]))
        t_z = time.perf_counter() - t0
        tokens = torch.cat(toks)
        mask_logit = torch.cat([lg[1] for lg in logits])
        score = torch.cat([p.pred_score for p in preds])
        amap = torch.cat([p.anomaly_map for p in preds])
        grid = s // 14
        mask96 = mask_logit.sigmoid()
        smooth96 = F.avg_pool2d(mask96, MEAN_KERNEL, 1, MEAN_KERNEL // 2)[:, 0]

        # one training step: zsad's loss_terms on the same batch, adapters/decoder/predictor gradients
        m.parts.train()
        t0 = time.perf_counter()
        terms = m.loss_terms(tr["images"], tr["masks"], tr["labels"])
        terms["loss"].backward()
        t_step = time.perf_counter() - t0
        zgrads = {n: p.grad.detach().clone() for n, p in m.parts.named_parameters() if p.grad is not None}
        m.parts.zero_grad(set_to_none=True)
        m.parts.eval()
        small = F.interpolate(tr["masks"][:, None], size=(2 * (s // 14),) * 2, mode="bilinear", antialias=True)
        zmask_gt = (small > 0.5).float()[:, 0]

        second: dict[str, Any] = {}
        if not args.skip_weights_pass:  # the released tower as the backbone's own weights: checked, not stored
            import open_clip

            from zsad.backbone.loading import resolve_model

            oc_name = resolve_model(name)[0]
            oc = open_clip.create_model(oc_name, pretrained=None)
            state = oc.state_dict()
            state.update({f"visual.{k}": v for k, v in m.tower_weights().items()})
            wfile = tmp / "released_tower_open_clip.pt"
            torch.save(state, wfile)
            del oc, state
            spec2 = BackboneSpec(name, "none", weights=wfile, image_size=s)
            ckpt2 = import_checkpoint(release, "anomalyvfm", tmp / "ckpt2", "random (fidelity)", backbone=spec2)
            bb2 = ClipBackbone.from_pretrained(name, "none", weights=wfile, image_size=s)
            m2: Any = create_method("anomalyvfm", bb2, checkpoint=str(ckpt2))
            m2.setup(None)
            with torch.no_grad():
                p2 = [m2.predict(x[i : i + 1]) for i in range(len(x))]
            second = {
                "record": m2.describe()["vision_tower"],
                "score": torch.cat([p.pred_score for p in p2]),
                "map": torch.cat([p.anomaly_map for p in p2]),
            }
            del m2, bb2

    # ------------------------------------------------------------------ report
    heads, drift = output_rows(o, (score, mask_logit, mask96, smooth96, amap), s, grid)
    tok_scale, tok_diff = float(o["tokens"].abs().max()), maxdiff(o["tokens"], tokens)
    rows: list[Row] = [
        (
            "positional embedding, HF interpolate_pos_encoding vs zsad",
            maxdiff(o["pos"], _positions(m, grid)),
            f"{o['pos'].shape[0]} rows, bicubic from 24x24 to {grid}x{grid}",
        ),
        ("last_hidden_state vs tower_tokens (CLS + patches)", tok_diff, rel(tok_diff, tok_scale)),
        *heads,
    ]
    ot = o["train"]
    grad_rows: list[Row] = [
        ("masks at the decoder's grid (T.Resize + > 0.5 vs zsad's resize)", maxdiff(ot["mask_gt"], zmask_gt), ""),
        ("loss (total)", maxdiff(ot["loss"], terms["loss"]), f"official {float(ot['loss']):.6f}"),
        ("loss: image focal", maxdiff(ot["image"], terms["image"]), f"official {float(ot['image']):.6f}"),
        ("loss: confidence-weighted map", maxdiff(ot["mask"], terms["mask"]), f"official {float(ot['mask']):.6f}"),
    ]
    missing = [n for n in zgrads if official_name(n) not in ot["grads"]]
    extra = sorted(set(ot["grads"]) - {official_name(n) for n in zgrads})
    groups: dict[str, list[tuple[float, float]]] = {}
    for n, g in zgrads.items():
        if official_name(n) in ot["grads"]:
            og = ot["grads"][official_name(n)]
            key = n.split(".")[-1] if n.startswith("adapters.") else n.split(".")[0]
            groups.setdefault(key, []).append((maxdiff(og, g), float(og.abs().max())))
    grads_within = not missing and not extra
    for key, vals in sorted(groups.items()):
        d, scale = max(v[0] for v in vals), max(v[1] for v in vals)
        grad_rows.append((f"gradients: {key} ({len(vals)} tensors)", d, rel(d, scale)))
        grads_within = grads_within and d <= GRAD_REL_TOL * scale
    loss_within = all(isinstance(v, float) and v <= FLOAT_TOL for _, v, _ in grad_rows[1:4])
    grad_rows.append(("gradient tensors matched", f"{len(zgrads) - len(missing)} of {len(zgrads)}",
                      f"missing {missing[:2]}, official-only {extra[:2]}"))  # fmt: skip
    within = all(v is not None and not isinstance(v, str) and v <= FLOAT_TOL for _, v, _ in rows[2:])
    imp = record["import_check"]
    lines = [
        f"## AnomalyVFM (CLIP): zsad vs the official code (issue 30, {time.strftime('%Y-%m-%d')}, CPU)",
        "",
        "Command: `.venv/bin/python benchmarks/compare_anomalyvfm.py --official-root $AVFM "
        f"--official-python $AVFM_VENV/bin/python --blocks {args.blocks} --image-size {s} --images {args.images}"
        f"{' --peft lora' if args.peft == 'lora' else ''}` (official: MaticFuc/AnomalyVFM @4da96b4, `hf_model.py`, "
        "`models/clip.py`, `decoder.py`, `peft_local/*` imported from an extracted checkout in their own process; "
        f"files {file_hashes(args.official_root, OFFICIAL_FILES)}).",
        "",
        f"Label: **seeded RANDOM weights (HF CLIPModel init, seed {args.seed}; adapters' lora_B and magnitudes "
        "perturbed), fidelity only, NOT detection quality**. Tower: "
        + (
            "ViT-L/14-336 as released (24 blocks, width 1024, QuickGELU)"
            if args.blocks == 24
            else f"the ViT-L/14-336 code path with {args.blocks} blocks (width 1024, patch 14, QuickGELU)"
        )
        + f" at {s} px (grid {grid}, positions from 24x24); {args.peft} rank {args.rank}, alpha 1. Data: the first "
        f"{len(picks)} MPDD metal_plate defect images ({', '.join(p.name for p in picks)}), one normalised tensor for "
        "both sides.",
        "",
        f"Release written by the official `save_pretrained`: config.json {json.dumps(release_cfg, sort_keys=True)}; "
        f"imported by `zsad import-checkpoint` in {t_imp:.1f} s: {imp['compared_tensors']} tower tensors compared "
        f"with the (random) backbone, {imp['differing_tensors']} differ, so the released tower was stored "
        f"(`tower_weights={m.config.tower_weights}`).",
        "",
        *table("Inference, fp32 on both sides (official: hf_model.forward's lines with autocast off + test.py)", rows),
        *table("bf16: the official forward as it runs (torch.autocast bf16) — drift, not a zsad difference", drift),
        *table(
            "One training step (train.py's lines, fp32, one micro-batch before its / 4 accumulation; batch "
            f"{', '.join(tr['names'])}, labels {tr['labels'].int().tolist()}; zsad: loss_terms + backward "
            f"with gradient checkpointing, {t_step:.0f} s)",
            grad_rows,
        ),
    ]
    if second:
        r2 = second["record"]["import_check"]
        lines += [
            f"Import onto a backbone whose weights file holds the released tower: {r2['differing_tensors']} of "
            f"{r2['compared_tensors']} tensors differ, stored: {r2['stored']} (`tower_weights="
            f"{second['record']['weights']}`); scores and maps vs the stored-tower import: max abs diff "
            f"{maxdiff(second['score'], score):.2e} / {maxdiff(second['map'], amap):.2e}.",
            "",
        ]
    lines += [
        f"Tolerance: maps and scores within {FLOAT_TOL:g} (absolute, both in [0, 1]): "
        + ("**met**." if within else "**NOT met**.")
        + f" Loss terms within {FLOAT_TOL:g} and gradients within {GRAD_REL_TOL:g} of each group's scale: "
        + ("**met**." if loss_within and grads_within else "**NOT met**.")
        + f" Time: official side {t_off:.0f} s (model build, save, fp32 + bf16 forwards, one training step), "
        f"zsad {t_z:.0f} s "
        f"(one tower pass per image), total {time.perf_counter() - t_start:.0f} s.",
        "",
        f"Hardware: {hardware('cpu')}, no GPU. Versions: zsad side torch "
        f"{torch.__version__}, open_clip {dist_version('open_clip_torch')}; official side torch "
        f"{o['versions']['torch']}, transformers {o['versions']['transformers']}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append_results:
        with args.results_file.open("a") as f:
            f.write("\n" + text)


def compare_timm(args: argparse.Namespace, t_start: float) -> None:
    """A timm-tower variant (DINOv2, RADIO, SigLIP2) against the official code: fp32, the bf16 drift, two imports."""
    import timm
    from safetensors.torch import save_file

    from zsad.backbone.radio import OPENAI_MEAN, OPENAI_STD
    from zsad.backbone.vision import IMAGENET_MEAN, IMAGENET_STD, VisionBackbone, timm_name
    from zsad.methods import create_method
    from zsad.methods.anomalyvfm import DINOV2_BACKBONE, RADIO_BACKBONE, SIGLIP2_BACKBONE, AnomalyVfm
    from zsad.runs import import_checkpoint
    from zsad.runs.build import BackboneSpec
    from zsad.sysinfo import hardware

    fam = args.backbone
    radio, siglip = fam == "radio", fam == "siglip2"
    files: tuple[str, ...]
    if fam == "dinov2" and args.dinov2_root is None:
        raise SystemExit("--backbone dinov2 needs --dinov2-root (an extract of facebookresearch/dinov2)")
    backbone = {"dinov2": DINOV2_BACKBONE, "radio": RADIO_BACKBONE, "siglip2": SIGLIP2_BACKBONE}[fam]
    full = 27 if siglip else 24  # the released depth
    depth = min(args.blocks, full)
    s, grid = args.image_size, args.image_size // (14 if fam == "dinov2" else 16)
    picks = sorted((assets_dir() / "mpdd_metal_plate" / "defect").glob("*.png"))[: args.images]
    if radio:  # the official side takes 0-1 images (its input conditioner normalises), zsad the normalised ones
        x_official = squashed(picks, s, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        x = (x_official - torch.tensor(OPENAI_MEAN).view(3, 1, 1)) / torch.tensor(OPENAI_STD).view(3, 1, 1)
    else:
        mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if siglip else (IMAGENET_MEAN, IMAGENET_STD)
        x = x_official = squashed(picks, s, mean, std)
    arch = timm_name(backbone).split(".")[0]

    def tower(**kw: Any) -> VisionBackbone:
        cut = {} if depth == full else {"depth": depth}
        vit = timm.create_model(arch, img_size=s, num_classes=0, **cut, **kw)
        return VisionBackbone(vit, model_name=backbone, pretrained="none", image_size=s)

    with tempfile.TemporaryDirectory(prefix=f"anomalyvfm_{args.backbone}_cmp_") as tmpdir:
        tmp = Path(tmpdir)
        torch.save(x_official, tmp / "inputs.pt")
        spec = {
            "dinov2_root": str(args.dinov2_root.resolve()) if fam == "dinov2" else None,
            "blocks": depth,
            "image_size": s,
            "peft": args.peft,
            "rank": args.rank,
            "seed": args.seed,
            "kernel": MEAN_KERNEL,
            "threads": torch.get_num_threads(),
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        driver = {"dinov2": DINOV2_DRIVER, "radio": RADIO_DRIVER, "siglip2": SIGLIP2_DRIVER}[fam]
        o, t_off = run_official(driver, args.official_python, args.official_root.resolve(), tmp)
        release = tmp / "release"
        release_cfg = json.loads((release / "config.json").read_text())

        t0 = time.perf_counter()
        if depth == full:  # the whole path of `zsad import-checkpoint`
            bb_spec = BackboneSpec(backbone, "none", image_size=s)
            ckpt = import_checkpoint(release, "anomalyvfm", tmp / "ckpt", "random (fidelity)", backbone=bb_spec)
            bb = VisionBackbone.from_pretrained(backbone, "none", image_size=s, seed=0)
        else:  # runs builds timm towers by name only: the importer it calls, on the cut tower
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                bb = tower(pretrained=False)
            ckpt = AnomalyVfm.import_official(release, bb, tmp / "ckpt", "random (fidelity)")
        t_imp = time.perf_counter() - t0
        m: Any = create_method("anomalyvfm", bb, checkpoint=str(ckpt))
        m.setup(None)
        record = m.describe()["vision_tower"]
        t0 = time.perf_counter()
        toks, logits, preds = [], [], []
        with torch.no_grad():
            for i in range(len(x)):
                toks.append(m.tower_tokens(x[i : i + 1]))
                logits.append(m.heads(toks[-1]))
                preds.append(m.finish(logits[-1][0], logits[-1][1]))
        t_z = time.perf_counter() - t0
        tokens = torch.cat(toks)
        mask_logit = torch.cat([lg[1] for lg in logits])
        score = torch.cat([p.pred_score for p in preds])
        amap = torch.cat([p.anomaly_map for p in preds])
        mask96 = mask_logit.sigmoid()
        smooth96 = F.avg_pool2d(mask96, MEAN_KERNEL, 1, MEAN_KERNEL // 2)[:, 0]
        w = m.tower_weights()
        pos_z = w["pos_embed"][0]  # the patch rows (timm keeps no position for the prefix tokens)
        del m, bb

        # timm loads the released tower in its own module names; the importer must then find it bit-equal
        meta_file = tmp / "released_tower.safetensors"
        save_file({k: v.contiguous() for k, v in o["meta_state"].items()}, str(meta_file))
        bb2 = tower(pretrained=True, pretrained_cfg_overlay={"file": str(meta_file)})
        ckpt2 = AnomalyVfm.import_official(release, bb2, tmp / "ckpt2", "random (fidelity)")
        m2: Any = create_method("anomalyvfm", bb2, checkpoint=str(ckpt2))
        m2.setup(None)
        with torch.no_grad():
            p2 = [m2.predict(x[i : i + 1]) for i in range(len(x))]
        second = {"record": m2.describe()["vision_tower"], "score": torch.cat([p.pred_score for p in p2]),
                  "map": torch.cat([p.anomaly_map for p in p2])}  # fmt: skip
        del m2, bb2

    heads, drift = output_rows(o, (score, mask_logit, mask96, smooth96, amap), s, grid)
    tok_scale, tok_diff = float(o["tokens"].abs().max()), maxdiff(o["tokens"], tokens)
    if siglip:
        pos_row = ("patch positions, NaFlex resize_positional_embeddings vs zsad's imported table",
                   f"{grid * grid} rows, bilinear antialiased from 16x16 to {grid}x{grid}")  # fmt: skip
        tok_row = "pooler_output + last_hidden_state vs tower_tokens"
        name, weights_label, files = "SigLIP2", "transformers' Siglip2Model init", SIGLIP2_FILES
        official_how = (
            "`models/siglip2.py` (its `AutoModel.from_pretrained` answered by `Siglip2Model(Siglip2Config(...))` of "
            "google/siglip2-so400m-patch16-naflex's config, its `.cuda()` calls made no-ops on CPU), `decoder.py`, "
            f"`peft_local/*`, in their own process with transformers {o['versions'].get('transformers', '?')}"
        )
        tower_desc = "SigLIP2 So400m/16 NaFlex vision model (width 1152, no class token, MAP head)"
        perturbed = "position table, biases and norm weights"
        data_norm = "one tensor (mean/std 0.5) for both sides"
        load_how = "Hugging Face's names, positions resized by `zsad.backbone.siglip2` at load"
        pos_from = "16x16"
    elif radio:
        pos_row = ("patch positions, radio_local _interpolate_pos_encoding vs zsad's imported table",
                   f"{grid * grid} rows, bicubic (no antialias) from 128x128 to {grid}x{grid}")  # fmt: skip
        tok_row = "summary tokens 0-2 + spatial features vs tower_tokens"
        name, weights_label, files = "RADIO", "radio_local.RADIOModel's init", RADIO_FILES
        official_how = (
            "`models/radio.py`, `radio_local.py` (hf_model builds RADIO with `use_local=True`), `decoder.py`, "
            "`peft_local/*`, in their own process"
        )
        tower_desc = "RADIO v2.5-L as radio_local.py builds it (width 1024, 8 prefix tokens, no layer scale)"
        perturbed = "the 128x128 position table (zeros at init)"
        data_norm = "0-1 for the official side (its conditioner normalises), OpenAI mean/std applied once for zsad"
        load_how = "RADIO's module names, positions resized bicubically by `zsad.backbone.radio` at load"
        pos_from = "128x128"
    else:
        pos_row = ("patch positions, DINOv2 interpolate_pos_encoding vs zsad's imported table",
                   f"{grid * grid} rows, bicubic antialiased from 37x37 to {grid}x{grid}")  # fmt: skip
        tok_row = "x_norm_clstoken + x_norm_patchtokens vs tower_tokens"
        name, weights_label, files = "DINOv2", "Meta's DinoVisionTransformer init", DINOV2_FILES
        official_how = (
            "`models/dinov2.py`, `decoder.py`, `peft_local/*`, in their own process; the tower is "
            "facebookresearch/dinov2 `dinov2_vitl14_reg` from a local checkout (`$DINOV2`), `pretrained=False`"
        )
        tower_desc = "dinov2_vitl14_reg (width 1024, 4 registers, layer scale)"
        perturbed = "class and register tokens"
        data_norm = "one tensor (ImageNet mean/std) for both sides"
        load_how = "Meta's layout, class position folded, positions resampled by timm at load"
        pos_from = "37x37"
    rows: list[Row] = [
        (pos_row[0], maxdiff(o["pos"][-grid * grid :], pos_z), pos_row[1]),
        (tok_row, tok_diff, rel(tok_diff, tok_scale)),
        *heads,
    ]
    within = all(v is not None and not isinstance(v, str) and v <= FLOAT_TOL for _, v, _ in rows[2:])
    imp, r2 = record["import_check"], second["record"]["import_check"]
    wrapped = o["wrapped"]
    kinds = sorted({n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in wrapped})
    cut = "" if depth == full else f", cut to its first {depth} blocks"
    lines = [
        f"## AnomalyVFM ({name}): zsad vs the official code (issue 30, {time.strftime('%Y-%m-%d')}, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/compare_anomalyvfm.py --backbone {args.backbone}"
        + (" --dinov2-root $DINOV2" if fam == "dinov2" else "")
        + f" --official-root $AVFM --official-python {'$AVFM_VENV4' if siglip else '$AVFM_VENV'}/bin/python "
        f"--blocks {args.blocks} --image-size {s} --images {args.images}"
        f"{' --peft lora' if args.peft == 'lora' else ''}` (official: MaticFuc/AnomalyVFM @4da96b4, `hf_model.py`, "
        f"{official_how}; files {file_hashes(args.official_root, files)}).",
        "",
        f"Label: **seeded RANDOM weights ({weights_label}, seed {args.seed}; {perturbed}, the adapters' lora_B and "
        f"magnitudes perturbed), fidelity only, NOT detection quality**. Tower: {tower_desc}{cut}, at {s} px (grid "
        f"{grid}, positions from {pos_from}); {args.peft} rank {args.rank}, alpha 1. The official `add_peft` wrapped "
        f"{len(wrapped)} modules, all named {', '.join(kinds)}. Data: the first {len(picks)} MPDD metal_plate defect "
        f"images ({', '.join(p.name for p in picks)}), {data_norm}.",
        "",
        f"Release written by the official `save_pretrained`: config.json {json.dumps(release_cfg, sort_keys=True)}; "
        f"imported in {t_imp:.1f} s onto a random timm `{arch}`"
        + ("" if depth == full else f" cut to {depth} blocks")
        + f": {imp['compared_tensors']} tower tensors compared, {imp['differing_tensors']} differ, so the released "
        f"tower was stored (`tower_weights={record['weights']}`).",
        "",
        *table("Inference, fp32 on both sides (official: hf_model.forward's lines with autocast off + test.py)", rows),
        *table("bf16: the official forward as it runs (torch.autocast bf16) — drift, not a zsad difference", drift),
        f"Import onto a timm tower that timm itself loaded from the released tower ({load_how}, "
        f"`pretrained_cfg_overlay` file): {r2['differing_tensors']} of {r2['compared_tensors']} tensors differ, "
        f"stored: {r2['stored']} (`tower_weights={second['record']['weights']}`); scores and maps vs the "
        f"stored-tower import: max abs diff {maxdiff(second['score'], score):.2e} / "
        f"{maxdiff(second['map'], amap):.2e}.",
        "",
        f"Tolerance: maps and scores within {FLOAT_TOL:g} (absolute, both in [0, 1]): "
        + ("**met**." if within else "**NOT met**.")
        + f" Time: official side {t_off:.0f} s (model build, save, fp32 + bf16 forwards), zsad {t_z:.0f} s (one "
        f"tower pass per image), total {time.perf_counter() - t_start:.0f} s.",
        "",
        f"Hardware: {hardware('cpu')}, no GPU. Versions: zsad side torch {torch.__version__}, timm "
        f"{dist_version('timm')}; official side torch {o['versions']['torch']}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append_results:
        with args.results_file.open("a") as f:
            f.write("\n" + text)


def cost(args: argparse.Namespace) -> None:
    """Seconds per image of ``predict`` against the bare backbone forward (``encode_image``) at the size.

    Random weights (the cost does not depend on their values); the adapters are DoRA with random B, so the merged
    weights are rebuilt as in a real run. Each is run once to warm up, then ``--cost`` times, one image per call,
    the two alternating so that a change of machine load falls on both; the load average is recorded.
    """
    import os

    import timm

    from zsad.backbone import ClipBackbone
    from zsad.backbone.vision import VisionBackbone, timm_name
    from zsad.methods import create_method
    from zsad.methods.anomalyvfm import DINOV2_BACKBONE, RADIO_BACKBONE, SIGLIP2_BACKBONE
    from zsad.sysinfo import hardware

    s, fam = args.image_size, args.backbone
    bb: Any
    if fam == "clip":
        name = "ViT-L-14-336-quickgelu"
        if args.blocks != 24:
            path = Path(tempfile.mkdtemp(prefix="anomalyvfm_cost_")) / "vit_l14_336_quickgelu.json"
            path.write_text(json.dumps(open_clip_config(args.blocks)))
            name = str(path)
        bb = ClipBackbone.from_pretrained(name, "none", image_size=s, seed=args.seed)
    else:
        backbone = {"dinov2": DINOV2_BACKBONE, "radio": RADIO_BACKBONE, "siglip2": SIGLIP2_BACKBONE}[fam]
        full = 27 if fam == "siglip2" else 24
        cut = {} if args.blocks >= full else {"depth": args.blocks}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            vit = timm.create_model(timm_name(backbone).split(".")[0], img_size=s, num_classes=0, **cut)
        bb = VisionBackbone(vit, model_name=backbone, pretrained="none", image_size=s)
    m: Any = create_method("anomalyvfm", bb, peft=args.peft, rank=args.rank)
    with torch.no_grad():
        for p in m.parts.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    m.training_manifest = {}
    m.setup(None)
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    runs: dict[str, list[float]] = {"bare": [], "predict": []}
    fns = {"bare": lambda: bb.encode_image(x), "predict": lambda: m.predict(x)}
    load = [os.getloadavg()[0]]
    with torch.no_grad():
        for f in fns.values():
            f()
        for _ in range(args.cost):
            for key, f in fns.items():
                t0 = time.perf_counter()
                f()
                runs[key].append(time.perf_counter() - t0)
    load.append(os.getloadavg()[0])
    bare, pred = (sum(v) / len(v) for v in runs.values())
    spread = max(max(v) / min(v) for v in runs.values())
    shown = {"clip": "CLIP", "dinov2": "DINOv2", "radio": "RADIO", "siglip2": "SigLIP2"}[fam]
    text = "\n".join(
        [
            f"## AnomalyVFM ({shown}) cost, ratio to the bare backbone forward ({time.strftime('%Y-%m-%d')}, CPU)",
            "",
            f"Command: `.venv/bin/python benchmarks/compare_anomalyvfm.py --official-root - --official-python - "
            f"--backbone {fam} --cost {args.cost} --blocks {args.blocks} --image-size {s}` (random weights: cost "
            f"only). `{bb.model_name}`, {bb.num_layers} blocks at {s} px, {args.peft} rank {args.rank}, one image "
            f"per call (a seeded random tensor: cost does not depend on the pixels), mean of {args.cost} (alternating) "
            "after one warm-up each; slowest/fastest call within a "
            f"kind: {spread:.2f}x.",
            "",
            "| forward | seconds per image | ratio |",
            "|---|---:|---:|",
            f"| bare backbone (`encode_image`) | {bare:.2f} | 1.00 |",
            f"| anomalyvfm `predict` (adapters, decoder, map) | {pred:.2f} | {pred / bare:.2f} |",
            "",
            f"Hardware: {hardware('cpu')}, no GPU; torch {torch.__version__}; 1-minute load average "
            f"{load[0]:.1f} before, {load[1]:.1f} after (2 cores).",
            "",
        ]
    )
    print(text)
    if args.append_results:
        with args.results_file.open("a") as f:
            f.write("\n" + text)


def train_batch(size: int, mean: Any, std: Any) -> dict[str, Any]:
    """The first MPDD metal_plate defect image with its mask and the first good image (empty mask), labels 1, 0."""
    from PIL import Image

    from zsad.data import squash_mask

    base = assets_dir() / "mpdd_metal_plate"
    defect, good = sorted((base / "defect").glob("*.png"))[0], sorted((base / "good").glob("*.png"))[0]
    with Image.open(base / "masks" / defect.name) as im:
        mask = squash_mask(im, size)
    return {
        "images": squashed([defect, good], size, mean, std),
        "masks": torch.stack([mask, torch.zeros_like(mask)]),
        "labels": torch.tensor([1.0, 0.0]),
        "names": [f"defect/{defect.name}", f"good/{good.name}"],
    }


def official_name(name: str) -> str:
    """The release / official-module name of a zsad parts tensor (as the importer maps them, reversed)."""
    from zsad.methods.anomalyvfm import ADAPTED, HF_NET

    if name.startswith("adapters."):
        _, i, z, t = name.split(".")
        return f"{HF_NET}encoder.layers.{i}.self_attn.{ADAPTED[z]}.{t}"
    return name.replace("predictor.", "predictor.lin.", 1) if name.startswith("predictor.") else name


def _positions(m: Any, grid: int) -> torch.Tensor:
    from zsad.methods.anomalyvfm import interpolate_positions

    return interpolate_positions(m.tower_weights()["positional_embedding"], (grid, grid))


if __name__ == "__main__":
    main()
