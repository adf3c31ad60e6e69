"""zsad AdaCLIP side by side with the OFFICIAL AdaCLIP code: same weights, same prompts, same inputs, two processes.

AdaCLIP (Cao et al., ECCV 2024; public repository caoyunkang/AdaCLIP @e27ee32) is compared stage by stage with
``zsad.methods.adaclip`` (registered as "adaclip"). **Nothing of the official repository is vendored, copied or
adapted into this project**: the official side is a short driver script that this file writes to a temporary folder
at run time; it only imports and calls the official code from ``--official-root`` (like a test calls a third-party
library), runs in a subprocess, and is deleted after the run. The official tree is not modified.

Run from the repository root in zsad's environment (the official code runs in the same environment by default:
it needs torch, torchvision, scikit-learn, scipy, ftfy, regex, which zsad's venv has; ``--official-python`` picks
another interpreter):

    python benchmarks/compare_adaclip.py --official-root ../ref/adaclip --images 2 --seed 0 [--append-results]

(a few minutes on the 2-core CPU machine; ``--append-results`` appends the report to ``benchmarks/RESULTS.md`` or
``--results-file``; without it nothing is written.)

What both sides get: the state dict of zsad's seeded random ``ViT-B-16`` (``pretrained="none"``, seed ``--seed``,
224 px, exact GELU like the official model), loaded into the official ``CLIP`` with ``strict=True``; all 38 learnable
tensors drawn once from seed ``--seed + 1`` (static prompts N(0, 0.02) as the official init, linear heads with
PyTorch's default init) and loaded into both (official names -> zsad's ``m.params``); ``--images`` Magnetic Tile
images (half MT_Free, half MT_Crack) squashed to 224 px by ``zsad.data.squash_image`` once and saved as one tensor;
class name "magnetic tile"; for the training step the first MT_Crack image with its mask (``squash_mask``), label 1.
Random weights: these numbers are plumbing/fidelity only, NOT detection quality.

k-means: zsad's HSF k-means is torch Lloyd with a seeded k-means++ init, the official one sklearn ``KMeans(20,
n_init="auto")`` without ``random_state``. For a like-for-like HSF comparison both sides start from the same 20
points: seeded random positions among zsad's top-100 patches, passed to both sides as feature rows; each side maps
them to its own top-100 rows by nearest neighbour (distance reported) and runs its own algorithm from there (zsad:
``kmeans(init=...)`` through a wrapper around ``zsad.methods.adaclip.kmeans``; official: sklearn ``KMeans(20,
init=rows, n_init=1)`` in place of ``HSF.cluster_performer``). Scores with each side's own init are reported too.

What is patched in the official process, and why (no official file is edited; every patch lives in the driver):

- ``method/__init__.py`` is bypassed (a bare package module with ``__path__`` = ``method/``): it imports
  ``trainer.py`` at once, which needs cv2/tensorboard-era modules. To call the real ``AdaCLIP_Trainer.
  train_one_batch`` the driver then imports ``method.trainer`` with stubs for the module-level names it never uses
  in that function (``cv2``, ``tools``, ``method.custom_clip``: the latter builds a tokenizer from a missing BPE
  file at import).
- ``pkg_resources`` is shimmed when setuptools lacks it (``adaclip.py`` only uses ``pkg_resources.packaging``).
- The BPE vocabulary default of ``SimpleTokenizer`` points at open_clip's bundled file (the repository's copy is a
  git-lfs pointer to the same file).
- Their ``CLIP`` is built directly (``create_model`` asserts ``pretrained="openai"``, downloads the OpenAI JIT
  archive and reads ``model_configs/``, absent from the extracted tree): ``CLIP(**open_clip's ViT-B-16 config,
  cast_dtype=None)`` (identical content to the repository's ``model_configs/ViT-B-16.json``; no ``quick_gelu``
  -> ``nn.GELU``), their ``resize_pos_embed``, ``load_state_dict(strict=True)``.
- ``torch.Tensor.half`` is the identity during fp32 passes (``adaclip.py`` rounds the prompt tokens to fp16 even on
  CPU); one extra pass keeps it to measure that rounding. CUDA autocast is a no-op on CPU.
- ``HSF.cluster_performer`` is the same-init sklearn KMeans above, or the shipped ``KMeans`` object with
  ``np.random.seed(s)`` before the call for the own-init runs.
- Training step: ``torch.Tensor.norm`` runs on a clone (``x /= x.norm()`` on tensors that need grad fails in fp32
  backward; under CUDA autocast ``norm`` works on a cast copy, so values are unchanged), and the trainer's optimizer
  is a stub (``zero_grad`` sets grads to None, ``step`` does nothing) so the gradients of the real
  ``train_one_batch`` can be read.
- Recording wrappers (instance attributes that call the official method and keep a detached copy of its result) on
  ``encode_image``, ``encode_text``, ``extract_feat``, ``HSF.forward``, and a ``torch.nn.functional`` proxy bound to
  the name ``F`` inside ``method.adaclip`` only, which records ``normalize`` outputs (the fused global feature).

zsad side: ``create_method("adaclip", bb, text_placeholders=False)`` with a checkpoint round trip, parameters
copied, then its own pieces (``_prompts``, ``_features``, ``_logits``, ``_fused_global``, ``_outputs``,
``predict``); the training loss is composed from ``zsad.train.focal_loss`` / ``dice_loss`` exactly as
``AdaClip.fit``'s step does.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad.sysinfo import hardware

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sidebyside import (  # noqa: E402
    Row,
    add_common_args,
    as_tensor,
    dist_version,
    drop_temp,
    file_hashes,
    magnetic_tile_dir,
    magnetic_tile_picks,
    maxdiff,
    publish,
    run_official,
    safe,
    squashed,
    table,
)

MODEL = "ViT-B-16"
IMAGE_SIZE = 224
CLASS_NAME = "magnetic tile"
DEPTH = 4  # J
LENGTH = 5  # M
K_CLUSTERS = 20
TOP_K = 5 * K_CLUSTERS
SIGMA = 4
OWN_SEEDS = (0, 1, 2, 3, 4)
PIPELINE_SEED = 111  # the official setup_seed(111) at import of test.py
POS_CHECK_GRID = (18, 18)  # 288 px: where a positional-embedding resize happens
SECTION = "## AdaCLIP: zsad vs the official AdaCLIP code"
LABEL = "seeded random weights, ViT-B-16 at 224 px — plumbing/fidelity only, NOT detection quality"
OFFICIAL_FILES = (
    "method/adaclip.py",
    "method/clip_model.py",
    "method/transformer.py",
    "method/trainer.py",
    "method/simple_tokenizer.py",
    "loss.py",
)
LEARNABLE = (
    "text_prompter",
    "visual_prompter",
    "patch_token_layer",
    "cls_token_layer",
    "dynamic_visual_prompt_generator",
    "dynamic_text_prompt_generator",
)

# ----------------------------------------------------------------------------------------------------------------
# The official-side driver. Written by zsad for this harness; it contains no official code: it imports the official
# modules from argv[1] and calls them. Runs with cwd = the official root.
OFFICIAL_DRIVER = r'''
import contextlib
import platform
import sys
import types
import warnings

ROOT, WORK = sys.argv[1], sys.argv[2]
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore")

import numpy as np
import scipy
import sklearn
import torch
from scipy.ndimage import gaussian_filter
from sklearn.cluster import KMeans

inp = torch.load(f"{WORK}/inputs.pt", weights_only=False)
torch.set_num_threads(inp["threads"])
res = {"errors": {}}
res["versions"] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                   "scipy": scipy.__version__, "sklearn": sklearn.__version__}

# ---------------------------------------------------------------- imports (see the harness docstring)
try:
    import pkg_resources  # noqa: F401
    res["pkg_resources"] = "real"
except ImportError:
    import packaging
    import packaging.version  # noqa: F401
    shim = types.ModuleType("pkg_resources")
    shim.packaging = packaging
    sys.modules["pkg_resources"] = shim
    res["pkg_resources"] = "shim (setuptools without pkg_resources)"
pkg = types.ModuleType("method")
pkg.__path__ = [f"{ROOT}/method"]
sys.modules["method"] = pkg
from method import simple_tokenizer

simple_tokenizer.SimpleTokenizer.__init__.__defaults__ = (inp["bpe"],)
from method import adaclip, clip_model

sys.modules["cv2"] = types.ModuleType("cv2")
tools = types.ModuleType("tools")
tools.visualization = tools.calculate_metric = tools.calculate_average_metric = None
sys.modules["tools"] = tools
cc = types.ModuleType("method.custom_clip")
cc.create_model_and_transforms = None
sys.modules["method.custom_clip"] = cc
from method import trainer
from loss import BinaryDiceLoss, FocalLoss

res["adaclip_file"] = adaclip.__file__

S, CLS = inp["image_size"], inp["class_name"]


@contextlib.contextmanager
def no_half():
    orig = torch.Tensor.half
    torch.Tensor.half = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.half = orig


@contextlib.contextmanager
def norm_on_copy():
    orig = torch.Tensor.norm
    torch.Tensor.norm = lambda self, *a, **k: orig(self.clone(), *a, **k)
    try:
        yield
    finally:
        torch.Tensor.norm = orig


# ---------------------------------------------------------------- model
cfg = inp["cfg"]
clip = clip_model.CLIP(**cfg, cast_dtype=None)
sd = torch.load(f"{WORK}/weights.pt")
pos_native = sd["visual.positional_embedding"].clone()
clip_model.resize_pos_embed(sd, clip)
res["pos_resized_at_load"] = not torch.equal(pos_native, sd["visual.positional_embedding"])
res["load"] = str(clip.load_state_dict(sd, strict=True))
clip.eval()
res["activation"] = {
    tower: sorted({type(mod).__name__ for blk in t.resblocks for mod in blk.mlp.children()
                   if not isinstance(mod, torch.nn.Linear)})
    for tower, t in (("visual", clip.visual.transformer), ("text", clip.transformer))
}
stub = types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=tuple(inp["pos_grid"])))
sd2 = {"visual.positional_embedding": pos_native.clone()}
clip_model.resize_pos_embed(sd2, stub)
res["pos_resized"] = sd2["visual.positional_embedding"]

model = adaclip.AdaCLIP(freeze_clip=clip, text_channel=cfg["embed_dim"], visual_channel=cfg["vision_cfg"]["width"],
                        prompting_length=inp["length"], prompting_depth=inp["depth"], prompting_branch="VL",
                        prompting_type="SD", use_hsf=True, k_clusters=inp["k"], output_layers=list(inp["layers"]),
                        device="cpu", image_size=S)
learn = {n: p for n, p in model.named_parameters() if any(k in n for k in inp["learnable"])}
missing = sorted(set(learn) - set(inp["params"]))
extra = sorted(set(inp["params"]) - set(learn))
if missing or extra:
    raise SystemExit(f"learnable tensors differ: missing {missing}, unexpected {extra}")
r = model.load_state_dict(inp["params"], strict=False)
assert not r.unexpected_keys, r.unexpected_keys
model.eval()
res["learnable"] = {n: tuple(p.shape) for n, p in learn.items()}

# ---------------------------------------------------------------- recording wrappers
rec = {}


def clone(t):
    return t.detach().clone()


orig_encode_image = model.encode_image


def encode_image(image):
    pooled, taps, emb = orig_encode_image(image)
    rec["pooled"], rec["taps"] = clone(pooled), [clone(t) for t in taps]
    return pooled, taps, emb


orig_encode_text = model.encode_text


def encode_text(text):
    out = orig_encode_text(text)
    rec.setdefault("token_ids", []).append(text.clone())
    rec.setdefault("sentence_emb", []).append(clone(out))  # cloned before the caller's in-place normalisation
    return out


orig_extract = model.extract_feat


def extract_feat(image, cls_name):
    out = orig_extract(image, cls_name)
    rec["feat"] = out
    rec["global"], rec["patches"], rec["text"] = clone(out[0]), [clone(t) for t in out[1]], clone(out[2])
    return out


orig_hsf = model.HSF.forward


def hsf_forward(patch_tokens, anomaly_maps):
    rec["logits"] = [clone(t) for t in anomaly_maps]  # the list is overwritten in place after HSF returns
    out = orig_hsf(patch_tokens, anomaly_maps)
    rec["centroid"] = clone(out)
    return out


class RecordingF(types.ModuleType):
    """torch.nn.functional for method.adaclip only; records what normalize returns (last = fused feature)."""

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def normalize(self, *a, **k):
        y = torch.nn.functional.normalize(*a, **k)
        rec.setdefault("normalize", []).append(clone(y))
        return y


model.encode_image, model.encode_text, model.extract_feat = encode_image, encode_text, extract_feat
model.HSF.forward = hsf_forward
adaclip.F = RecordingF("F")
shipped_kmeans = model.HSF.cluster_performer


class SameInitKMeans:
    """sklearn KMeans(k, init=rows, n_init=1): rows = the harness's init points, matched to this X by nearest row."""

    def __init__(self, rows):
        self.rows = rows

    def fit_predict(self, X):
        d = torch.cdist(torch.as_tensor(self.rows).double(), torch.as_tensor(X).double())
        idx = d.argmin(1).numpy()
        lab = KMeans(n_clusters=len(idx), init=X[idx], n_init=1).fit_predict(X)
        dist = float(d.min(1).values.max())
        rec["kmeans"] = {"X": X.copy(), "labels": lab.copy(), "init_idx": idx, "match_dist": dist}
        return lab


class ShippedKMeans:
    def __init__(self, seed):
        self.seed = seed

    def fit_predict(self, X):
        if self.seed is not None:
            np.random.seed(self.seed)
        lab = shipped_kmeans.fit_predict(X)
        rec.setdefault("shipped_labels", []).append(lab.copy())
        return lab


images = inp["images"]


def test_pass(b, half):
    """model(image, [cls], aggregation=True) for image b with the same-init k-means; all recorded intermediates."""
    rec.clear()
    model.HSF.cluster_performer = SameInitKMeans(inp["init_rows"][b])
    ctx = contextlib.nullcontext() if half else no_half()
    with ctx, torch.no_grad():
        amap, score = model(images[b:b + 1], [CLS], aggregation=True)
    out = {k: v for k, v in rec.items() if k not in ("feat", "normalize")}
    out["fused"] = rec["normalize"][-1]
    out["dyn_visual"] = clone(model.visual_prompter.dynamic_prompts)
    out["dyn_text"] = clone(model.text_prompter.dynamic_prompts)
    out["map"], out["score"] = clone(amap), clone(score)
    out["smoothed"] = gaussian_filter(amap[0].numpy(), sigma=inp["sigma"])  # as test.py / trainer.evaluation
    feat = rec["feat"]
    if not half:
        with no_half(), torch.no_grad():  # train-path outputs of the same features, same init
            maps, sc = model.visual_text_similarity(*feat, aggregation=False)
            out["train_maps"], out["train_score"] = [clone(m) for m in maps], clone(sc)
            own = []
            for s in inp["own_seeds"]:  # the shipped KMeans object, numpy's global RNG seeded before the fit
                model.HSF.cluster_performer = ShippedKMeans(s)
                own.append(float(model.visual_text_similarity(*feat, aggregation=True)[1]))
            out["own_scores"] = own
        out["feat"] = tuple(feat)
    return out


runs = {"fp32": [], "half": []}
for b in range(images.shape[0]):
    runs["fp32"].append(test_pass(b, half=False))
    runs["half"].append(test_pass(b, half=True))
# test.py's order: setup_seed(111) once, then the images one after the other, unseeded KMeans
np.random.seed(inp["pipeline_seed"])
pipeline = []
with no_half(), torch.no_grad():
    for b in range(images.shape[0]):
        model.HSF.cluster_performer = ShippedKMeans(None)
        pipeline.append(float(model.visual_text_similarity(*runs["fp32"][b]["feat"], aggregation=True)[1]))
for r in runs["fp32"]:
    del r["feat"]
res["runs"], res["pipeline_scores"] = runs, pipeline


# ---------------------------------------------------------------- one training step (batch 1)
class StubOptimizer:
    def __init__(self, params):
        self.params = params

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        pass


t = inp["train"]
names = list(learn)
try:
    items = {"img": images[t["index"]:t["index"] + 1].clone(), "cls_name": [CLS],
             "img_mask": t["mask"][None, None].clone(), "anomaly": torch.tensor([float(t["label"])])}
    ns = types.SimpleNamespace(clip_model=model, device="cpu", loss_focal=FocalLoss(), loss_dice=BinaryDiceLoss(),
                               optimizer=StubOptimizer(list(learn.values())))
    rec.clear()
    model.HSF.cluster_performer = SameInitKMeans(inp["init_rows"][t["index"]])
    model.train()
    with no_half(), norm_on_copy():
        loss = trainer.AdaCLIP_Trainer.train_one_batch(ns, items)
    tr = {"loss_shipped": float(loss), "kmeans_labels": rec["kmeans"]["labels"]}
    tr["grad_shipped"] = {n: None if learn[n].grad is None else learn[n].grad.clone() for n in names}
    # the same step recomposed with the official loss classes, dice per image (mask kept (1, H, W)) and per row
    rec.clear()
    model.HSF.cluster_performer = SameInitKMeans(inp["init_rows"][t["index"]])
    with no_half(), norm_on_copy():
        maps, score = model(items["img"], [CLS], aggregation=False)
        gt_rows = t["mask"].clone()  # (H, W): what trainer.train_one_batch's gt.squeeze() leaves for batch 1
        gt_img = gt_rows[None]  # (1, H, W): one dice term per image
        y = torch.tensor([float(t["label"])])
        focal, dice = FocalLoss(), BinaryDiceLoss()
        cls_loss = focal(score, y.unsqueeze(1))
        focal_sum = sum(focal(m, gt_rows) for m in maps)
        dice_rows = sum(dice(m[:, 1], gt_rows) + dice(m[:, 0], 1 - gt_rows) for m in maps)
        dice_img = sum(dice(m[:, 1], gt_img) + dice(m[:, 0], 1 - gt_img) for m in maps)
        loss_img = cls_loss + focal_sum + dice_img
        grads = torch.autograd.grad(loss_img, [learn[n] for n in names], allow_unused=True)
    model.eval()
    tr.update({"image": float(cls_loss), "focal": float(focal_sum), "dice_rows": float(dice_rows),
               "dice_img": float(dice_img), "loss_rows": float(cls_loss + focal_sum + dice_rows),
               "loss_img": float(loss_img)})
    tr["grad_img"] = {n: None if g is None else g.clone() for n, g in zip(names, grads)}
    res["train"] = tr
except Exception as e:
    import traceback
    res["errors"]["train"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"

torch.save(res, f"{WORK}/official.pt")
print("official side done")
'''


# ---------------------------------------------------------------------------------------------------- helpers


def magnitude(a: Any) -> float:
    t = as_tensor(a)
    return float(t.abs().max()) if t.numel() else 0.0


def load_images(
    n: int, assets: Path, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, list[str], torch.Tensor, int]:
    """(n, 3, S, S) images (half MT_Free, half MT_Crack), names, the first crack image's mask and its index."""
    from PIL import Image

    from zsad.data.transforms import squash_mask

    picks, n_free = magnetic_tile_picks(n, assets)
    if len(picks) != n or n < 1 or n_free == n:
        raise SystemExit(f"need at least one MT_Crack image under {assets} (found {len(picks)} images)")
    with Image.open(picks[n_free].with_suffix(".png")) as m:
        mask = squash_mask(m, IMAGE_SIZE)
    return squashed(picks, IMAGE_SIZE, mean, std), [f"{p.parent.parent.name}/{p.name}" for p in picks], mask, n_free


# -------------------------------------------------------------------------------------------- shared parameters
def random_params(bb: Any, seed: int) -> dict[str, torch.Tensor]:
    """The 38 learnable tensors under their official names: static N(0, 0.02), heads with PyTorch's default init."""
    wv, e = bb.width, bb.embed_dim
    wt = bb.model.token_embedding.weight.shape[1]
    out: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for branch, w in (("visual_prompter", wv), ("text_prompter", wt)):
            for j in range(DEPTH):
                out[f"{branch}.static_prompts.{j}"] = torch.randn(LENGTH, w) * 0.02
        heads = {
            "patch_token_layer": [torch.nn.Linear(wv, e) for _ in range(4)],
            "cls_token_layer": [torch.nn.Linear(e, e)],
            "dynamic_visual_prompt_generator": [torch.nn.Linear(e, wv) for _ in range(LENGTH)],
            "dynamic_text_prompt_generator": [torch.nn.Linear(e, wt) for _ in range(LENGTH)],
        }
    for name, layers in heads.items():
        for i, lin in enumerate(layers):
            for k, v in lin.state_dict().items():
                out[f"{name}.head.{i}.{k}"] = v.detach().clone()
    return out


def zsad_name(official: str) -> tuple[str, int | None]:
    """Official learnable tensor name -> (zsad ``m.params`` name, index into its first dim or None)."""
    parts = official.split(".")
    if parts[1] == "static_prompts":
        return ("static_visual" if parts[0] == "visual_prompter" else "static_text"), int(parts[2])
    head = {
        "patch_token_layer": "patch_proj",
        "dynamic_visual_prompt_generator": "dynamic_visual",
        "dynamic_text_prompt_generator": "dynamic_text",
    }
    if parts[0] == "cls_token_layer":
        return f"global_proj.{parts[3]}", None
    return f"{head[parts[0]]}.{parts[2]}.{parts[3]}", None


def load_into_zsad(m: Any, params: dict[str, torch.Tensor]) -> None:
    named = dict(m.params.named_parameters())
    covered = set()
    with torch.no_grad():
        for k, v in params.items():
            zk, j = zsad_name(k)
            target = named[zk] if j is None else named[zk][j]
            if target.shape != v.shape:
                raise SystemExit(f"{k} -> {zk}[{j}]: shape {tuple(v.shape)} vs {tuple(target.shape)}")
            target.copy_(v)
            covered.add(zk)
    if covered != set(named):
        raise SystemExit(f"zsad tensors not covered by the official ones: {sorted(set(named) - covered)}")
    m.params.eval()


def make_method(bb: Any, params: dict[str, torch.Tensor], tmp: Path, **opts: Any) -> Any:
    """create_method("adaclip") with a checkpoint round trip (predict needs a training manifest), then the values."""
    from zsad.methods import create_method

    ck = tmp / ("ckpt_" + "_".join(f"{k}-{v}" for k, v in sorted(opts.items())))
    create_method("adaclip", bb, **opts).save(ck, {"note": "compare_adaclip.py: random parameters"})
    m = create_method("adaclip", bb, checkpoint=str(ck), **opts)
    load_into_zsad(m, params)
    m.setup(CLASS_NAME)
    return m


class KmeansProbe:
    """Wraps ``zsad.methods.adaclip.kmeans``: records inputs/labels; with ``init_rows`` (B, K, C) set, starts zsad's
    k-means from the nearest rows of its own input (the harness's shared init points)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.init_rows: torch.Tensor | None = None
        self.calls: list[dict[str, Any]] = []

    def __call__(self, x: torch.Tensor, k: int, **kw: Any) -> Any:
        rec: dict[str, Any] = {"X": x.detach().cpu().clone()}
        if self.init_rows is not None:
            d = torch.cdist(self.init_rows.double(), x.detach().cpu().double())  # (B, K, N)
            kw["init"] = d.argmin(-1).to(x.device)
            rec["init_idx"], rec["match_dist"] = d.argmin(-1), float(d.min(-1).values.max())
        labels, centers = self.fn(x, k, **kw)
        rec["labels"] = labels.cpu().clone()
        self.calls.append(rec)
        return labels, centers


def floats(values: Any, digits: int = 6) -> str:
    return ", ".join(f"{float(v):.{digits}f}" for v in values)


def rms(t: Any) -> str:
    return f"rms {float(as_tensor(t).pow(2).mean().sqrt()):.2f}"


def fp16_flips(params: dict[str, torch.Tensor], z: dict, off_runs: list[dict], n_img: int) -> tuple[float, str]:
    """How the fp16 rounding of the prompt tokens amplifies float error: static + dynamic of each side, rounded."""
    worst, flips, total = 0.0, 0, 0
    for b in range(n_img):
        for branch, key, blocks in (("visual", "dyn_visual", range(DEPTH)), ("text", "dyn_text", range(1, DEPTH))):
            for j in blocks:
                static = params[f"{branch}_prompter.static_prompts.{j}"]
                ours = (static + z[key][b]).half()
                theirs = (static + off_runs[b][key][0]).half()
                worst = max(worst, maxdiff(ours, theirs))
                flips += int((ours != theirs).sum())
                total += ours.numel()
    return worst, (
        f"{flips} of {total} prompt values round to a different fp16 value (one fp16 step) although the fp32 "
        "inputs differ by float error only: the reason the rows below are 1e-6, not 1e-7"
    )


def with_config(m: Any, **changes: Any) -> Any:
    return dataclasses.replace(m.config, **changes)


def zsad_pass(m: Any, x: torch.Tensor, probe: KmeansProbe, init_rows: torch.Tensor | None) -> dict[str, Any]:
    """Every comparable zsad quantity for one configuration (features computed once, then reused by _outputs)."""
    bb = m.backbone
    out: dict[str, Any] = {}
    with torch.no_grad():
        frozen = bb.encode_image(x, pooled_only=True).embedding
        out["dyn_visual"] = torch.stack([h(frozen) for h in m.params.dynamic_visual], 1)
        out["dyn_text"] = torch.stack([h(frozen) for h in m.params.dynamic_text], 1)
        vis, txt = m._prompts(frozen)
        feats = bb.encode_image(x, layers=m.config.layers, visual_prompts=vis)
        out["pooled"], out["taps"] = feats.embedding, [feats.tokens[k] for k in m.config.layers]
        tokens = m.tokens[0]
        out["token_ids"] = tokens.cpu()
        out["sentence_emb"] = [
            bb.encode_text_tokens(tokens, deep_prompts={j: t[b : b + 1] for j, t in txt.items()})
            for b in range(x.shape[0])
        ]
        glob, patches, text, grid = m._features(x)
        out["global"], out["patches"], out["text"] = glob, patches, text
        logits = m._logits(patches, text)
        out["logits"] = logits
    cfg0 = m.config
    m._features = lambda images: (glob, patches, text, grid)  # the same features for every output below
    try:
        with torch.no_grad():
            probe.init_rows = init_rows
            probe.calls.clear()
            out["fused"] = m._fused_global(glob, patches, logits)
            out["kmeans"] = probe.calls[-1]
            m.config = with_config(m, hsf_alpha=1.0)
            out["centroid"] = m._fused_global(glob, patches, logits)
            m.config = with_config(m, hsf_alpha=cfg0.hsf_alpha, smoothing_sigma=0.0)
            out["map_raw"], out["score"] = m._outputs(x, train=False)
            m.config = cfg0
            out["map"], _ = m._outputs(x, train=False)
            out["train_maps"], out["train_score"] = m._outputs(x, train=True)
            probe.init_rows = None
            own = []
            for s in OWN_SEEDS:
                m.config = with_config(m, kmeans_seed=s)
                own.append(m._outputs(x, train=False)[1])
            out["own_scores"] = torch.stack(own, 1)  # (B, seeds)
    finally:
        m.config = cfg0
        probe.init_rows = None
        del m._features
    return out


def zsad_train_step(m: Any, x: torch.Tensor, mask: torch.Tensor, label: int, probe: KmeansProbe, rows: Any) -> dict:
    """Loss and gradients of one batch, with the loss composed as AdaClip.fit's step does."""
    from zsad.train import dice_loss, focal_loss

    m.params.zero_grad(set_to_none=True)
    probe.init_rows = rows
    probe.calls.clear()
    try:
        probs, score = m._outputs(x, train=True)
    finally:
        probe.init_rows = None
    gt = (mask[None] > 0.5).float()
    lab = torch.tensor([float(label)])
    terms = {
        "image": focal_loss(score[:, :, None, None], lab[:, None, None]),
        "focal": sum(focal_loss(p, gt) for p in probs),
        "dice": sum(dice_loss(p[:, 1], gt) + dice_loss(p[:, 0], 1 - gt) for p in probs),
    }
    loss = terms["image"] + terms["focal"] + terms["dice"]
    loss.backward()
    named = dict(m.params.named_parameters())
    return {
        "loss": float(loss.detach()),
        **{k: float(v.detach()) for k, v in terms.items()},
        "grads": {k: None if p.grad is None else p.grad.detach().clone() for k, p in named.items()},
        "kmeans_labels": probe.calls[-1]["labels"],
    }


def zsad_grad(grads: dict[str, torch.Tensor | None], official: str) -> torch.Tensor | None:
    zk, j = zsad_name(official)
    g = grads[zk]
    return None if g is None else (g if j is None else g[j])


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, "AdaCLIP", 2, "seed of the random CLIP weights (parameters: seed + 1)", Path(sys.executable))
    args = ap.parse_args()

    assets = magnetic_tile_dir(args.assets)
    root = args.official_root.resolve()
    if not (root / "method" / "adaclip.py").is_file():
        raise SystemExit(f"{root}: not the official AdaCLIP repository (method/adaclip.py missing)")
    threads = max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)

    import open_clip

    import zsad.methods.adaclip as zsad_adaclip
    from zsad.backbone import ClipBackbone

    t0 = time.perf_counter()
    bb = ClipBackbone.from_pretrained(MODEL, "none", seed=args.seed, image_size=IMAGE_SIZE)
    x, names, mask, train_index = load_images(args.images, assets, bb.mean, bb.std)
    params = random_params(bb, args.seed + 1)
    cfg = copy.deepcopy(open_clip.get_model_config(MODEL))
    cfg["vision_cfg"]["image_size"] = IMAGE_SIZE
    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    zsad_act = {
        tower: sorted(
            {
                type(mod).__name__
                for blk in t.resblocks
                for mod in blk.mlp.children()
                if not isinstance(mod, torch.nn.Linear)
            }
        )
        for tower, t in (("visual", bb.model.visual.transformer), ("text", bb.model.transformer))
    }

    probe = KmeansProbe(zsad_adaclip.kmeans)
    zsad_adaclip.kmeans = probe  # run-time wrapper in this process only
    tmp = Path(tempfile.mkdtemp(prefix="adaclip_cmp_"))
    try:
        # ---- zsad side first: it fixes the shared k-means init points
        t_z = time.perf_counter()
        m = make_method(bb, params, tmp, text_placeholders=False)
        with torch.no_grad():  # zsad's top-100 rows (B, 100, 4E), from its own pieces
            glob, patches, text, _ = m._features(x)
            m._fused_global(glob, patches, m._logits(patches, text))
        x_own = probe.calls[-1]["X"]
        g = torch.Generator().manual_seed(args.seed + 2)
        init_pos = torch.stack([torch.randperm(x_own.shape[1], generator=g)[:K_CLUSTERS] for _ in range(x.shape[0])])
        init_rows = torch.stack([x_own[b, init_pos[b]] for b in range(x.shape[0])])  # (B, K, 4E)
        z = zsad_pass(m, x, probe, init_rows)
        pred = m.predict(x)  # the public entry point, zsad's own k-means init (seed 0)
        # fp16-rounded prompts on the zsad side (what the official .half() does to its prompt tokens)
        orig_prompts = m._prompts
        m._prompts = lambda e: tuple({k: v.half().float() for k, v in d.items()} for d in orig_prompts(e))
        try:
            z16 = zsad_pass(m, x, probe, init_rows)
        finally:
            del m._prompts
        mp = make_method(bb, params, tmp)  # zsad default: text_placeholders=True
        zp = zsad_pass(mp, x, probe, init_rows)
        tr_z = zsad_train_step(
            m, x[train_index : train_index + 1], mask, 1, probe, init_rows[train_index : train_index + 1]
        )
        t_z = time.perf_counter() - t_z

        # ---- official side
        torch.save(bb.model.state_dict(), tmp / "weights.pt")
        torch.save(
            {
                "images": x,
                "image_size": IMAGE_SIZE,
                "class_name": CLASS_NAME,
                "cfg": cfg,
                "bpe": bpe,
                "depth": DEPTH,
                "length": LENGTH,
                "k": K_CLUSTERS,
                "layers": list(m.config.layers),
                "learnable": LEARNABLE,
                "params": params,
                "init_rows": [r.numpy() for r in init_rows],
                "own_seeds": OWN_SEEDS,
                "pipeline_seed": PIPELINE_SEED,
                "sigma": SIGMA,
                "threads": threads,
                "pos_grid": POS_CHECK_GRID,
                "train": {"index": train_index, "mask": mask, "label": 1},
            },
            tmp / "inputs.pt",
        )
        off, t_off = run_official(OFFICIAL_DRIVER, args.official_python, root, tmp)
    finally:
        zsad_adaclip.kmeans = probe.fn
        drop_temp(tmp, args.keep_temp)
    if not off["adaclip_file"].startswith(str(root)):
        raise SystemExit(f"official side imported {off['adaclip_file']}, not the official tree")

    n_img = x.shape[0]
    o32, o16 = off["runs"]["fp32"], off["runs"]["half"]
    errors = off["errors"]
    sections: list[list[str]] = []

    def per_image(get_off: Callable[[dict], Any], get_z: Callable[[int], Any], runs: list[dict] = o32) -> float:
        """Max over the images of max |zsad - official| (official runs are one image each)."""
        return max(maxdiff(get_z(b), get_off(runs[b])) for b in range(n_img))

    def scale_of(get_off: Callable[[dict], Any], runs: list[dict] = o32) -> str:
        return f"max abs of official {max(magnitude(get_off(r)) for r in runs):.2e}"

    # ---- setup
    rows: list[Row] = []
    rows.append(("MLP activation, visual / text towers", f"zsad {zsad_act}", f"official {off['activation']}"))
    rows.append(("CLIP weights into the official CLIP", "strict", off["load"]))
    safe(
        rows,
        "positional embedding at 224 px (14x14 grid)",
        lambda: "no resize" if not off["pos_resized_at_load"] else "resized",
        "neither side interpolates at the native grid",
    )
    safe(
        rows,
        f"positional embedding resized 14x14 -> {POS_CHECK_GRID[0]}x{POS_CHECK_GRID[1]} (288 px)",
        lambda: maxdiff(bb.positional_embedding(POS_CHECK_GRID), off["pos_resized"]),
        "official resize_pos_embed (once, at load; bicubic, align_corners=False, no antialias) vs zsad "
        "ClipBackbone.positional_embedding (per call, same interpolation)",
    )
    n_par = sum(v.numel() for v in params.values())
    rows.append(
        (
            "learnable tensors",
            f"{len(params)} / {len(off['learnable'])}",
            f"zsad-side draw / official model; {n_par:,} values; names mapped to zsad m.params",
        )
    )
    sections.append(table("Setup", rows))

    # ---- forward, fp32, same k-means init
    rows = []
    safe(
        rows,
        "dynamic visual prompts (B, 5, 768)",
        lambda: per_image(lambda r: r["dyn_visual"], lambda b: z["dyn_visual"][b : b + 1]),
        lambda: rms(z["dyn_visual"]) + " (static prompts: rms 0.02)",
    )
    safe(
        rows,
        "dynamic text prompts (B, 5, 512)",
        lambda: per_image(lambda r: r["dyn_text"], lambda b: z["dyn_text"][b : b + 1]),
        lambda: rms(z["dyn_text"]),
    )
    safe(
        rows,
        "pooled embedding of the prompted pass (before the global Linear)",
        lambda: per_image(lambda r: r["pooled"], lambda b: z["pooled"][b : b + 1]),
        lambda: scale_of(lambda r: r["pooled"]),
    )
    for i, k in enumerate(m.config.layers):
        safe(
            rows,
            f"raw tap tokens, block {k} (CLS + patches, prompts excluded)",
            lambda i=i: per_image(lambda r: r["taps"][i], lambda b: z["taps"][i][b : b + 1]),
            lambda i=i: scale_of(lambda r: r["taps"][i]),
        )
    safe(
        rows,
        "global feature g (Linear + L2)",
        lambda: per_image(lambda r: r["global"], lambda b: z["global"][b : b + 1]),
    )
    for i, k in enumerate(m.config.layers):
        safe(
            rows,
            f"patch features, tap {k} (Linear + L2)",
            lambda i=i: per_image(lambda r: r["patches"][i], lambda b: z["patches"][i][b : b + 1]),
        )

    def token_check() -> str:
        theirs = torch.cat([t.long() for t in o32[0]["token_ids"]])
        ours = z["token_ids"].long()
        w = ours.shape[1]
        same = theirs.shape[0] == ours.shape[0] and torch.equal(theirs[:, :w], ours) and not theirs[:, w:].any()
        return f"{'identical' if same else 'DIFFER'} ({theirs.shape[0]} sentences)"

    safe(
        rows,
        "token ids of the prompt sentences",
        token_check,
        "official SimpleTokenizer, padded to 77; zsad open_clip tokenizer (text_placeholders=False)",
    )
    safe(
        rows,
        "per-sentence text embeddings (48 x 512, before normalisation)",
        lambda: per_image(lambda r: torch.cat(r["sentence_emb"]), lambda b: z["sentence_emb"][b]),
        lambda: (
            "zsad runs sentences in groups of equal length, each cut after its end token (causal mask); "
            "official runs all 77 positions; " + scale_of(lambda r: torch.cat(r["sentence_emb"]))
        ),
    )
    for c, state in enumerate(("normal", "anomalous")):
        safe(
            rows,
            f"text feature, {state} state",
            lambda c=c: per_image(lambda r: r["text"][0, :, c], lambda b: z["text"][b, c]),
        )
    for i, k in enumerate(m.config.layers):
        safe(
            rows,
            f"logits 100 cos, tap {k} (B, 196, 2)",
            lambda i=i: per_image(lambda r: r["logits"][i], lambda b: z["logits"][i][b : b + 1]),
            lambda i=i: scale_of(lambda r: r["logits"][i]),
        )
    safe(
        rows,
        "HSF k-means input: top-100 rows x 4 taps (2048-d)",
        lambda: per_image(lambda r: r["kmeans"]["X"], lambda b: z["kmeans"]["X"][b]),
        "same top-100 order needed for this to be small",
    )
    safe(
        rows,
        "shared init points matched to each side's rows (max distance)",
        lambda: max(max(r["kmeans"]["match_dist"] for r in o32), z["kmeans"]["match_dist"]),
        lambda: (
            "official init rows = zsad's top-100 positions: "
            + str(
                all(
                    np.array_equal(o32[b]["kmeans"]["init_idx"], z["kmeans"]["init_idx"][b].numpy())
                    for b in range(n_img)
                )
            )
        ),
    )
    safe(
        rows,
        "k-means labels differing, same init (count of 100 per image)",
        lambda: str(
            [int((torch.as_tensor(o32[b]["kmeans"]["labels"]) != z["kmeans"]["labels"][b]).sum()) for b in range(n_img)]
        ),
        "sklearn Lloyd (tol 1e-4) vs zsad torch Lloyd (until labels stop changing)",
    )
    safe(
        rows,
        "HSF centroid F_c (same init)",
        lambda: per_image(lambda r: r["centroid"], lambda b: z["centroid"][b : b + 1]),
        "zsad: _fused_global with hsf_alpha = 1",
    )
    safe(
        rows,
        "fused global feature normalize(0.2 F_c + 0.8 g) (same init)",
        lambda: per_image(lambda r: r["fused"], lambda b: z["fused"][b : b + 1]),
    )
    safe(
        rows,
        "image score (same init)",
        lambda: per_image(lambda r: r["score"], lambda b: z["score"][b : b + 1]),
        lambda: "official " + ", ".join(f"{float(r['score']):.6f}" for r in o32),
    )
    for i, k in enumerate(m.config.layers):
        safe(
            rows,
            f"train path: upsampled per-layer softmax, tap {k} (B, 2, 224, 224)",
            lambda i=i: per_image(lambda r: r["train_maps"][i], lambda b: z["train_maps"][i][b : b + 1]),
        )
    safe(
        rows,
        "train path: image probabilities (B, 2)",
        lambda: per_image(lambda r: r["train_score"], lambda b: z["train_score"][b : b + 1]),
    )
    safe(
        rows,
        "test map before smoothing",
        lambda: per_image(lambda r: r["map"], lambda b: z["map_raw"][b : b + 1]),
        lambda: (
            "official (p_abn + 1 - p_norm)/2 of the mean of upsampled logits; zsad p_abn of the upsampled mean; "
            + scale_of(lambda r: r["map"])
        ),
    )
    safe(
        rows,
        f"smoothed map (sigma {SIGMA})",
        lambda: per_image(lambda r: r["smoothed"][None], lambda b: z["map"][b : b + 1]),
        "official scipy gaussian_filter (test.py); zsad ops.gaussian_blur",
    )
    safe(
        rows,
        "smoothed map from zsad predict() (own k-means init)",
        lambda: per_image(lambda r: r["smoothed"][None], lambda b: pred.anomaly_map[b : b + 1]),
        "the map does not depend on k-means",
    )
    sections.append(
        table(f"Forward, fp32, same k-means init (max over {n_img} images; official batch 1 per image)", rows)
    )

    # ---- own init
    rows = []
    off_own = np.array([r["own_scores"] for r in o32])  # (B, seeds)
    z_own = z["own_scores"].double().numpy()
    rows.append(
        (
            "official score spread over np.random.seed 0..4 (shipped KMeans, n_init='auto')",
            float((off_own.max(1) - off_own.min(1)).max()),
            "max over images of max - min; " + "; ".join(", ".join(f"{v:.5f}" for v in r) for r in off_own),
        )
    )
    rows.append(
        (
            "zsad score spread over kmeans_seed 0..4",
            float((z_own.max(1) - z_own.min(1)).max()),
            "; ".join(", ".join(f"{v:.5f}" for v in r) for r in z_own),
        )
    )
    safe(
        rows,
        "zsad predict() score (seed 0) vs official test.py order (setup_seed(111), unseeded KMeans)",
        lambda: maxdiff(pred.pred_score, off["pipeline_scores"]),
        lambda: f"official {floats(off['pipeline_scores'])}; zsad {floats(pred.pred_score)}",
    )
    safe(
        rows,
        "zsad own-init scores vs official own-init scores, all seed pairs",
        lambda: float(np.abs(z_own[:, :, None] - off_own[:, None, :]).max()),
        "different algorithms and inits: bounded by the two spreads",
    )
    sections.append(table("Image score with each side's own k-means init", rows))

    # ---- deliberate differences
    rows = []
    for c, state in enumerate(("normal", "anomalous")):
        safe(
            rows,
            f"text_placeholders=True (zsad default): text feature, {state}",
            lambda c=c: per_image(lambda r: r["text"][0, :, c], lambda b: zp["text"][b, c]),
            "zsad inserts 5 'X' tokens; official overwrites the words 'a bad photo of a' etc.",
        )
    safe(
        rows,
        "text_placeholders=True: logits tap 12",
        lambda: per_image(lambda r: r["logits"][-1], lambda b: zp["logits"][-1][b : b + 1]),
    )
    safe(
        rows,
        "text_placeholders=True: map before smoothing",
        lambda: per_image(lambda r: r["map"], lambda b: zp["map_raw"][b : b + 1]),
    )
    safe(
        rows,
        f"text_placeholders=True: smoothed map (sigma {SIGMA})",
        lambda: per_image(lambda r: r["smoothed"][None], lambda b: zp["map"][b : b + 1]),
    )
    safe(
        rows,
        "text_placeholders=True: image score (same init points)",
        lambda: per_image(lambda r: r["score"], lambda b: zp["score"][b : b + 1]),
        lambda: "zsad " + ", ".join(f"{float(v):.6f}" for v in zp["score"]),
    )
    safe(
        rows,
        "official .half() prompts vs official fp32: text features",
        lambda: max(maxdiff(o16[b]["text"], o32[b]["text"]) for b in range(n_img)),
        "official code both sides (CPU: the prompt tokens are rounded to fp16, the rest stays fp32)",
    )
    safe(
        rows,
        "official .half() vs fp32: map before smoothing",
        lambda: max(maxdiff(o16[b]["map"], o32[b]["map"]) for b in range(n_img)),
    )
    safe(
        rows,
        "official .half() vs fp32: image score (same init)",
        lambda: max(maxdiff(o16[b]["score"], o32[b]["score"]) for b in range(n_img)),
    )
    safe(
        rows,
        "zsad fp32 vs official as shipped (.half()): map before smoothing",
        lambda: per_image(lambda r: r["map"], lambda b: z["map_raw"][b : b + 1], o16),
    )
    safe(
        rows,
        "zsad fp32 vs official as shipped (.half()): image score",
        lambda: per_image(lambda r: r["score"], lambda b: z["score"][b : b + 1], o16),
    )
    safe(
        rows,
        "hybrid prompt tokens after fp16 rounding, zsad vs official inputs",
        lambda: fp16_flips(params, z, o32, n_img)[0],
        lambda: fp16_flips(params, z, o32, n_img)[1],
    )
    safe(
        rows,
        "zsad prompts cast to fp16 and back vs official .half(): text features",
        lambda: per_image(lambda r: r["text"][0].T, lambda b: z16["text"][b], o16),
    )
    safe(
        rows,
        "zsad prompts cast to fp16 and back vs official .half(): map before smoothing",
        lambda: per_image(lambda r: r["map"], lambda b: z16["map_raw"][b : b + 1], o16),
    )
    safe(
        rows,
        "zsad prompts cast to fp16 and back vs official .half(): image score",
        lambda: per_image(lambda r: r["score"], lambda b: z16["score"][b : b + 1], o16),
    )
    sections.append(table("Deliberate differences: zsad text placeholders; the official fp16 prompt rounding", rows))

    # ---- training step
    rows = []
    tr = off.get("train")
    if tr is None:
        rows.append(("training step", None, f"n/a: {errors.get('train', 'no result')}"))
    else:
        rows.append(
            (
                "loss: zsad vs official train_one_batch as shipped",
                abs(tr_z["loss"] - tr["loss_shipped"]),
                f"zsad {tr_z['loss']:.6f}, official {tr['loss_shipped']:.6f}: the official dice is per ROW for batch 1",
            )
        )
        rows.append(
            (
                "loss: zsad vs official with per-image dice (mask kept (1, H, W))",
                abs(tr_z["loss"] - tr["loss_img"]),
                f"official {tr['loss_img']:.6f}",
            )
        )
        rows.append(
            (
                "official recomposed (row dice) vs train_one_batch",
                abs(tr["loss_rows"] - tr["loss_shipped"]),
                "sanity: the recomposition is the trainer's loss",
            )
        )
        rows.append(("image focal term", abs(tr_z["image"] - tr["image"]), f"{tr['image']:.6f}"))
        rows.append(("per-layer focal, summed", abs(tr_z["focal"] - tr["focal"]), f"{tr['focal']:.6f}"))
        rows.append(
            (
                "per-layer dice (both terms), summed: zsad vs official per image",
                abs(tr_z["dice"] - tr["dice_img"]),
                f"official per image {tr['dice_img']:.6f}, per row (shipped) {tr['dice_rows']:.6f}",
            )
        )
        rows.append(
            (
                "k-means labels differing in the training pass (of 100)",
                str(int((torch.as_tensor(tr["kmeans_labels"]) != tr_z["kmeans_labels"][0]).sum())),
                "same init points",
            )
        )
        for name in off["learnable"]:
            go, gs, gz = tr["grad_img"][name], tr["grad_shipped"][name], zsad_grad(tr_z["grads"], name)
            if go is None:
                zero = gz is None or not bool(gz.abs().max() > 0)
                rows.append(
                    (
                        f"grad {name}",
                        "no grad",
                        f"official: no gradient (unused); zsad: {'none/zero' if zero else 'NONZERO'}",
                    )
                )
                continue
            safe(
                rows,
                f"grad {name}",
                lambda go=go, gz=gz: maxdiff(gz, go),
                lambda go=go, gs=gs, gz=gz: (
                    f"vs per-image dice; max abs {magnitude(go):.2e}; vs shipped (row dice) {maxdiff(gz, gs):.2e}"
                ),
            )
    sections.append(
        table("One training step (batch 1: the MT_Crack image, its mask, label 1; same k-means init)", rows)
    )

    # ---- report
    ver = off["versions"]
    header = [
        f"{SECTION} ({datetime.date.today().isoformat()})",
        "",
        f"Label: **{LABEL}**.",
        "",
        "Command: `python benchmarks/compare_adaclip.py "
        + shlex.join([a for a in sys.argv[1:] if a != "--append-results"] + ["--append-results"])
        + "`.",
        f"Official code: {root} (stated as caoyunkang/AdaCLIP @e27ee32; no git metadata), called unmodified in a "
        f"subprocess by a driver this script writes at run time (patches listed in the script's docstring). File "
        f"sha256 prefixes: {file_hashes(root, OFFICIAL_FILES)}.",
        f"Weights: `{MODEL}` seeded random (seed {args.seed}), one state dict loaded into both (strict); 38 learnable "
        f"tensors drawn from seed {args.seed + 1} (static N(0, 0.02), heads PyTorch default init), copied to both.",
        f"Images: {n_img} Magnetic Tile images ({', '.join(names)}), zsad.data.squash_image to {IMAGE_SIZE} px with "
        f'CLIP mean/std; one tensor for both. Class name "{CLASS_NAME}", taps {list(m.config.layers)}, J={DEPTH}, '
        f"M={LENGTH}, K={K_CLUSTERS}, sigma {SIGMA}. Shared k-means init: {K_CLUSTERS} seeded random positions "
        f"(seed {args.seed + 2}) among zsad's top-100 rows, matched by nearest row on each side.",
        f"Versions: zsad side torch {torch.__version__}, open_clip {dist_version('open_clip_torch')}, numpy "
        f"{np.__version__}, zsad {dist_version('zsad')}; official side Python {ver['python']}, torch {ver['torch']}, "
        f"numpy {ver['numpy']}, scipy {ver['scipy']}, scikit-learn {ver['sklearn']}; pkg_resources "
        f"{off.get('pkg_resources')}.",
        f"Hardware: {hardware('cpu')}, no GPU used; fp32 on both sides (the official autocast is a no-op without "
        f"CUDA; its `.half()` prompt rounding is removed except where a row says so). Wall time "
        f"{time.perf_counter() - t0:.0f} s (zsad side {t_z:.0f} s, official process {t_off:.0f} s).",
        "",
        "How to read: rows of the first tables compare like with like and should be float error. The official code "
        "runs one image per call (its text branch forces batch 1); zsad runs the batch. The official GPU runs use CUDA "
        "autocast (fp16 matmuls), which this CPU comparison does not cover.",
        "",
    ]
    report = "\n".join(header + [line for s in sections for line in s])
    publish(report, errors, args.append_results, args.results_file)


if __name__ == "__main__":
    main()
