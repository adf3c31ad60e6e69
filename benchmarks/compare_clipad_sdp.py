"""zsad SDP / SDP+ side by side with the OFFICIAL CLIP-AD code: same weights, same input tensors, two processes.

CLIP-AD (Chen et al., arXiv 2311.00453; public repository ByChelsea/CLIP-AD @f004973) ships a *modified copy* of
``open_clip`` under the same import name as the real package, so it cannot share a process with zsad. This harness
runs zsad here and the official code in a second Python process with its own virtual environment. **Nothing of the
official repository is vendored, copied or adapted into this project**: the official side is a short driver
script that this file writes to a temporary folder at run time; it only imports and calls the official code from
``--official-root`` (like a test calls a third-party library), and it is deleted after the run.

Set up the official side once, outside the project (the official code itself is obtained separately and lies at
``--official-root``; pip takes torch 2.14.1 / torchvision 0.29.1 from this machine's local wheel folders):

    python3 -m venv ../clipad-venv
    ../clipad-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    ../clipad-venv/bin/pip install ftfy regex huggingface_hub scikit-learn scipy "setuptools<81" tqdm matplotlib
    ../clipad-venv/bin/pip install opencv-python-headless scikit-image tabulate   # for util.metrics.normalize

(``setuptools<81`` because ``util/prompt_ensemble.py`` imports ``pkg_resources``; the last line only lets the
driver call the official ``normalize`` used for the transductive min-max; without it that one step is re-expressed.)
Then, from the repository root in zsad's environment:

    python benchmarks/compare_clipad_sdp.py --official-root ../ref/clipad \
        --official-python ../clipad-venv/bin/python --images 4 --seed 0 [--append-results]

(about 5 to 10 minutes with 4 images on the 2-core CPU machine, most of it the two text towers encoding 418
sentences; ``--append-results`` appends the report to
``benchmarks/RESULTS.md`` or ``--results-file``; without it nothing is written.)

What both sides get: the state dict of zsad's seeded random ``ViT-B-16-plus-240`` (``pretrained="none"``, seed
``--seed``), loaded into the official ``open_clip.create_model(name, 240)`` with ``strict=True``; ``--images``
Magnetic Tile images (half MT_Free, half MT_Crack) squashed to 240 px by ``zsad.data.squash_image`` once and saved as
one tensor; for SDP+ four ``Linear(896, 640)`` layers drawn from seed ``--seed + 1``, copied into the official
``LinearLayer(896, 640, 4)`` and into zsad's heads; for the losses the same random logits and masks. Random weights:
these numbers are plumbing/fidelity only, NOT detection quality.

What the official side runs (the flows of its ``test.py`` / ``test_ft.py``, calling its functions): CPU, fp32
(``torch.cuda.amp.autocast()`` is kept and is a no-op without CUDA), ``encode_text_with_prompt_ensemble`` for each
representative-vector method, ``model.encode_image(images, [3, 6, 9, 12])``, ``clip_feature_surgery``,
``get_similarity_map``, scipy's ``gaussian_filter`` (sigma 8), ``LinearLayer``, ``FocalLoss``, ``BinaryDiceLoss``,
``util.metrics.normalize``. Two measurements need more than a plain call, both done from the driver without touching
the official files:

- fp16 text: for pca/kde/dbscan/mean_shift the official function builds the representative vector with
  ``dtype=torch.float16``. The driver also runs it a second time with the name ``torch`` *inside that module only*
  bound to a proxy whose ``float16`` is ``float32`` (every other attribute is the real torch): same selection logic,
  fp32 result. End-to-end maps use the fp32 vectors; the fp16 effect is reported separately.
- the in-place tap quirk: forward hooks on the official vision blocks clone each block's output the moment the block
  returns; comparing those clones with what ``encode_image`` finally returns measures, inside the official code
  alone, whether a later block modified an earlier tap.

Random CLIP weights put every prompt sentence into one DBSCAN cluster, which would leave the cluster choice untested,
so the representative vectors are also compared on synthetic clustered embeddings: the official function is called
with a stand-in text model that returns them, and zsad's ``aggregate_text`` gets the same rows.

Besides the paper's layers 3, 6, 9, 12 the taps are also compared for layers 2, 6, 9, 12, where the official stage
resets (blocks 4, 7, 10 whatever the layers) no longer follow the tapped layers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zsad.sysinfo import hardware

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sidebyside import (  # noqa: E402
    Row,
    add_common_args,
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

MODEL = "ViT-B-16-plus-240"
IMAGE_SIZE = 240
CLASS_NAME = "magnetic tile"
LAYERS = (3, 6, 9, 12)
ALT_LAYERS = (2, 6, 9, 12)  # first tap inside a quarter: where compat="official" may stop matching
SIGMA = 8
DATASET = "mvtec"  # selects the official DBSCAN(eps=0.5, min_samples=15) branch (zsad's defaults)
REP_VECS = ("mean", "pca", "kde", "dbscan", "mean_shift")
SECTION = "## SDP / SDP+: zsad vs the official CLIP-AD code"
LABEL = "seeded random weights, ViT-B-16-plus-240 — plumbing/fidelity only, NOT detection quality"
OFFICIAL_FILES = (
    "open_clip/transformer.py",
    "open_clip/factory.py",
    "util/prompt_ensemble.py",
    "util/surgery.py",
    "util/losses.py",
    "util/metrics.py",
    "models/model.py",
    "test.py",
    "test_ft.py",
)

# ----------------------------------------------------------------------------------------------------------------
# The official-side driver. Written by zsad for this harness; it contains no official code: it imports the official
# modules from argv[1] and calls them. Runs in the official environment with cwd = the official root.
OFFICIAL_DRIVER = r'''
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

import open_clip
import util.prompt_ensemble as pe
from open_clip.version import __version__ as OPEN_CLIP_VERSION
from models.model import LinearLayer
from util.losses import BinaryDiceLoss, FocalLoss
from util.surgery import clip_feature_surgery, get_similarity_map

try:
    from util.metrics import normalize
    NORMALIZE = "util.metrics.normalize (official)"
except Exception as e:  # cv2 / skimage missing in this environment
    def normalize(a):
        return (a - a.min()) / (a.max() - a.min())
    NORMALIZE = f"re-expressed in the driver ({type(e).__name__} importing util.metrics)"

inp = torch.load(f"{WORK}/inputs.pt", weights_only=False)
torch.set_num_threads(inp["threads"])
res = {"errors": {}, "normalize": NORMALIZE, "open_clip_file": open_clip.__file__}
res["versions"] = {
    "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
    "scipy": scipy.__version__, "sklearn": sklearn.__version__, "open_clip (vendored)": OPEN_CLIP_VERSION,
}
S, CLS, LAYERS, SIGMA = inp["image_size"], inp["class_name"], list(inp["layers"]), inp["sigma"]


def amp():
    return torch.cuda.amp.autocast()  # as test.py / test_ft.py; disabled without CUDA


model = open_clip.create_model(inp["model"], S, pretrained=None)
model.load_state_dict(torch.load(f"{WORK}/weights.pt"), strict=True)
model.eval()
tokenizer = open_clip.get_tokenizer(inp["model"])

# ---------------------------------------------------------------- text
seen = []


def recording_tokenizer(texts):
    seen.append(list(texts))
    return tokenizer(texts)


raw_encode_text = model.encode_text
cache = {}


def cached_encode_text(text, normalize=False):  # the same sentences are encoded once for all rep_vec runs
    key = (text.numpy().tobytes(), normalize)
    if key not in cache:
        cache[key] = raw_encode_text(text, normalize=normalize)
    return cache[key].clone()  # the official function normalises in place


model.encode_text = cached_encode_text


class Fp32Torch(types.ModuleType):
    """``torch`` for util.prompt_ensemble only: ``float16`` means float32, everything else is torch."""

    float16 = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


text = {}
for rv in inp["rep_vecs"]:
    for mode, mod in (("shipped", torch), ("fp32", Fp32Torch("torch"))):
        pe.torch = mod
        try:
            with amp(), torch.no_grad():
                tp = pe.encode_text_with_prompt_ensemble(model, [CLS], recording_tokenizer, "cpu", inp["dataset"], rv)
            text[f"{rv}/{mode}"] = tp[CLS].detach().clone()  # (D, 2)
        except Exception as e:
            res["errors"][f"text {rv}/{mode}"] = f"{type(e).__name__}: {e}"
        finally:
            pe.torch = torch
res["text"] = text
res["sentences"] = seen[:2]
with torch.no_grad():
    res["sentence_emb"] = [cached_encode_text(tokenizer(s)) for s in seen[:2]]  # raw, not normalised

# ---------------------------------------------------------------- image
images = inp["images"]
at_return = {}


def make_hook(k):
    def hook(module, args, out):
        if isinstance(out, list):
            at_return[k] = [t.detach().clone() for t in out]  # [surgery stream, original stream], LND
    return hook


handles = [b.register_forward_hook(make_hook(i + 1)) for i, b in enumerate(model.visual.transformer.resblocks)]
with torch.no_grad(), amp():
    feats = model.encode_image(images, LAYERS)
for h in handles:
    h.remove()
ori = [t.clone() for t in feats["ori"]]
surg = [t.clone() for t in feats["surgery"]]
vis = model.visual
with torch.no_grad():
    ori_clean = [at_return[k][1].permute(1, 0, 2).clone() for k in LAYERS]
    surg_clean = []
    for k in LAYERS:  # the post-processing of VisionTransformer.forward, applied to the block-time clones
        x = at_return[k][0].clone()
        x[0] = at_return[k][1][0]
        surg_clean.append(vis.ln_post(x.permute(1, 0, 2)) @ vis.proj)
res["image"] = {"ori": ori, "surgery": surg, "ori_at_block_end": ori_clean, "surgery_block_end_cls": surg_clean}
with torch.no_grad(), amp():  # a features_list whose first tap does not end a quarter of the tower
    feats_alt = model.encode_image(images, list(inp["alt_layers"]))
res["image_alt"] = {"ori": [t.clone() for t in feats_alt["ori"]], "surgery": [t.clone() for t in feats_alt["surgery"]]}


def sdp(surgery, text_vec):
    """test.py's flow for one batch."""
    B = images.shape[0]
    with torch.no_grad(), amp():
        image_features = [f / f.norm(dim=-1, keepdim=True) for f in surgery]
        text_features = torch.stack([text_vec] * B, dim=0)
        per_stage = [clip_feature_surgery([f], text_features) for f in image_features]
        similarity = clip_feature_surgery(image_features, text_features)
        similarity_map = get_similarity_map(similarity[:, 1:, :], (S, S), False)
        raw = similarity_map[:, :, :, 1].cpu().numpy()
        amap = raw.copy()
        for idx in range(B):
            amap[idx] = gaussian_filter(amap[idx], sigma=SIGMA)
        p0 = (100.0 * image_features[-1] @ text_features)[:, 0, :].softmax(dim=-1)[:, 1].cpu().numpy()
    p1 = np.array([np.max(amap[idx]) for idx in range(B)])
    return {"per_stage": [t[:, 1:, :] for t in per_stage], "similarity": similarity[:, 1:, :], "raw": raw,
            "map": amap, "p0": p0, "p1": p1, "score": p0 + p1, "minmax": normalize(p0) + normalize(p1)}


def sdp_plus(original, surgery, text_vec):
    """test_ft.py's flow for one batch."""
    B = images.shape[0]
    lin = LinearLayer(inp["width"], inp["embed_dim"], len(LAYERS))
    lin.load_state_dict(inp["linear"])
    lin.eval()
    with torch.no_grad(), amp():
        text_features = torch.stack([text_vec] * B, dim=0)
        image_features = lin(list(original))  # LinearLayer replaces the list's entries
        image_features = [f / f.norm(dim=-1, keepdim=True) for f in image_features]
        stage_maps = []
        for idx in range(len(image_features)):
            m = 100.0 * image_features[idx] @ text_features
            b, L, C = m.shape
            H = int(np.sqrt(L))
            m = torch.nn.functional.interpolate(m.permute(0, 2, 1).view(b, C, H, H), size=S, mode="bilinear",
                                                align_corners=True)
            stage_maps.append(torch.softmax(m, dim=1)[:, 1, :, :].cpu().numpy())
        ft = np.sum(stage_maps, axis=0)
        image_features = [f / f.norm(dim=-1, keepdim=True) for f in surgery]
        similarity = clip_feature_surgery(image_features, text_features)
        raw = get_similarity_map(similarity[:, 1:, :], (S, S), False)[:, :, :, 1].cpu().numpy()
        raw = raw + ft
        amap = raw.copy()
        for idx in range(B):
            amap[idx] = gaussian_filter(amap[idx], sigma=SIGMA)
        p0 = (100.0 * image_features[-1] @ text_features)[:, 0, :].softmax(dim=-1)[:, 1].cpu().numpy()
    p1 = np.array([np.max(amap[idx]) for idx in range(B)])
    return {"stage_maps": stage_maps, "ft": ft, "raw": raw, "map": amap, "p0": p0, "p1": p1, "score": p0 + p1,
            "minmax": normalize(p0) + normalize(p1)}


runs = {}


def run(name, fn):
    try:
        runs[name] = fn()
    except Exception as e:
        res["errors"][name] = f"{type(e).__name__}: {e}"


run("sdp mean taps=returned", lambda: sdp(surg, text["mean/shipped"]))
run("sdp mean taps=block_end", lambda: sdp(surg_clean, text["mean/shipped"]))
for rv in ("dbscan", "pca", "kde", "mean_shift"):
    if f"{rv}/fp32" in text:
        run(f"sdp {rv}/fp32 taps=returned", lambda rv=rv: sdp(surg, text[f"{rv}/fp32"]))
    if f"{rv}/shipped" in text:
        run(f"sdp {rv}/shipped taps=returned", lambda rv=rv: sdp(surg, text[f"{rv}/shipped"]))
        run(f"sdp {rv}/shipped-upcast taps=returned", lambda rv=rv: sdp(surg, text[f"{rv}/shipped"].float()))
run("sdp+ mean taps=returned", lambda: sdp_plus(ori, surg, text["mean/shipped"]))
run("sdp+ mean taps=block_end", lambda: sdp_plus(ori_clean, surg_clean, text["mean/shipped"]))
res["runs"] = runs

# ---------------------------------------------------------------- RVS on synthetic clustered sentence embeddings
# A stand-in text model returns the harness's embeddings (normal first, then anomalous), so the official selection
# logic runs on data where DBSCAN has several clusters and noise (random CLIP weights give one cluster).
class StubTextModel:
    def __init__(self, embs):
        self.embs = embs

    def encode_text(self, tokens):
        return self.embs[int(tokens[0])].clone()


def stub_tokenizer_factory():
    calls = []

    def stub_tokenizer(texts):
        calls.append(len(texts))
        return torch.tensor([(len(calls) - 1) % 2])
    return stub_tokenizer


synth = {}
stub = StubTextModel(inp["synthetic_embeddings"])
for rv in inp["rep_vecs"]:
    for mode, mod in (("shipped", torch), ("fp32", Fp32Torch("torch"))):
        pe.torch = mod
        try:
            with amp(), torch.no_grad():
                tp = pe.encode_text_with_prompt_ensemble(stub, [CLS], stub_tokenizer_factory(), "cpu", inp["dataset"],
                                                         rv)
            synth[f"{rv}/{mode}"] = tp[CLS].detach().clone()
        except Exception as e:
            res["errors"][f"synthetic {rv}/{mode}"] = f"{type(e).__name__}: {e}"
        finally:
            pe.torch = torch
res["synthetic_text"] = synth

# ---------------------------------------------------------------- losses (train.py's use)
losses = []
for case in inp["loss_cases"]:
    logits = case["logits"].clone().requires_grad_(True)
    probs = torch.softmax(logits, dim=1)
    focal = FocalLoss()(probs, case["gt"])
    dice = BinaryDiceLoss()(probs[:, 1, :, :], case["gt"])
    (focal + dice).backward()
    losses.append({"focal": focal.detach(), "dice": dice.detach(), "grad": logits.grad.detach().clone()})
res["losses"] = losses
torch.save(res, f"{WORK}/official.pt")
print("official side done")
'''


# ---------------------------------------------------------------------------------------------------- helpers


def load_images(n: int, assets: Path, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, list[str]]:
    picks, _ = magnetic_tile_picks(n, assets)
    if len(picks) != n:
        raise SystemExit(f"found only {len(picks)} Magnetic Tile images under {assets}")
    return squashed(picks, IMAGE_SIZE, mean, std), [f"{p.parent.parent.name}/{p.name}" for p in picks]


def synthetic_embeddings(seed: int, dim: int) -> list[torch.Tensor]:
    """Sentence embeddings of [normal, anomalous] with two tight clusters, a loose group and isolated rows each.

    With unit rows in ``dim`` = 640 dimensions, per-coordinate noise 0.01 puts group members about 0.35 apart
    (inside DBSCAN's eps 0.5: a cluster), 0.02 about 0.64 apart (noise), random rows about 1.41 apart (noise). The
    largest cluster differs between the two states, rows get random norms, and the order is shuffled.
    """
    g = torch.Generator().manual_seed(seed + 3)
    dirs = F.normalize(torch.randn(4, dim, generator=g), dim=-1)

    def group(n: int, d: int, noise: float) -> torch.Tensor:
        return dirs[d] + noise * torch.randn(n, dim, generator=g)

    out = []
    for spec in (((90, 0, 0.01), (60, 1, 0.01), (30, 2, 0.02)), ((70, 0, 0.01), (110, 3, 0.01), (25, 2, 0.02))):
        rows = torch.cat([*(group(*a) for a in spec), F.normalize(torch.randn(18, dim, generator=g), dim=-1)])
        rows = rows * (0.5 + 2.5 * torch.rand(rows.shape[0], 1, generator=g))
        out.append(rows[torch.randperm(rows.shape[0], generator=g)].contiguous())
    return out


def loss_cases(seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed + 2)
    cases = []
    for b, s, frac in ((2, 16, 0.3), (3, 24, 0.0), (2, 20, 1.0)):  # mixed, all-normal, all-anomalous masks
        logits = 3 * torch.randn(b, 2, s, s, generator=g)
        gt = (torch.rand(b, s, s, generator=g) < frac).float() if 0 < frac < 1 else torch.full((b, s, s), frac)
        cases.append({"logits": logits, "gt": gt})
    return cases


# ------------------------------------------------------------------------------------------------- zsad side
class ZsadSide:
    """zsad's SDP / SDP+ on the shared inputs, with the official text injected or zsad's own text."""

    def __init__(self, bb: Any, x: torch.Tensor, heads_state: dict[str, torch.Tensor]) -> None:
        self.bb, self.x, self.heads_state = bb, x, heads_state

    def method(self, name: str, compat: str, text: torch.Tensor | None, aggregation: str = "mean") -> Any:
        from zsad.methods import create_method

        m = create_method(name, self.bb, text_aggregation=aggregation, compat=compat, transductive_minmax=True)
        if name == "sdp+":
            m.heads.load_state_dict(self.heads_state)
            m.heads.eval()
            m.training_manifest = {"source": "compare_clipad_sdp.py: heads copied from the shared random weights"}
        if text is None:
            m.setup(CLASS_NAME)
        else:  # the official (D, 2) text, so the image path is compared alone
            m.class_name = CLASS_NAME
            m.text = text.T.float().contiguous().to(self.bb.device)
        return m

    def outputs(self, m: Any) -> dict[str, Any]:
        pred = m.predict(self.x)
        parts = {k: v.detach().cpu().numpy() for k, v in pred.score_parts.items()}
        p0 = next(v for k, v in parts.items() if "text" in k)
        p1 = next(v for k, v in parts.items() if "max" in k)
        out = {"map": pred.anomaly_map, "score": pred.pred_score, "p0": p0, "p1": p1}
        out["minmax"] = m.finalize_scores(parts)
        return out

    def intermediates(self, m: Any, plus: bool) -> dict[str, Any]:
        from zsad.methods.sdp import feature_surgery

        stages = m.stages
        feats = m._forward(self.x, original_layers=stages) if plus else m._forward(self.x)
        per_stage = [feature_surgery(F.normalize(self.bb.project(feats.surgery[k]), dim=-1), m.text) for k in stages]
        out: dict[str, Any] = {"per_stage": per_stage, "similarity": sum(per_stage), "sdp_raw": m._sdp_map(feats)}
        if plus:
            probs = m._trained_probs([feats.tokens[k][:, 1:] for k in stages], m.text, feats.grid)
            out["stage_maps"] = [p[:, 1] for p in probs]
            out["ft"] = probs[:, :, 1].sum(0)
            out["raw"] = out["sdp_raw"] + out["ft"]
        else:
            out["raw"] = out["sdp_raw"]
        return out


def scale(x: Any) -> str:
    """Largest magnitude of a reference quantity, so a difference can be read relative to it."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().double()
    return f"max abs of official {float(t.abs().max()):.2e}"


def spread(x: Any) -> float:
    a = np.asarray(x, dtype=np.float64)
    return float(a.max() - a.min())


def compare_run(rows: list[Row], z: ZsadSide, m: Any, off: dict[str, Any], plus: bool, note: str) -> None:
    """Rows for every intermediate and output of one zsad configuration against one official run."""
    try:
        inter = z.intermediates(m, plus)
    except Exception as e:  # noqa: BLE001
        inter = None
        rows.append(("intermediates", None, f"n/a: {type(e).__name__}: {str(e)[:160]}"))
    if inter is not None:
        if plus:
            for i, k in enumerate(LAYERS):
                safe(
                    rows,
                    f"trained-layer anomalous prob, stage L{k} (upsampled)",
                    lambda i=i: maxdiff(inter["stage_maps"][i], off["stage_maps"][i]),
                    note,
                )
            safe(rows, "sum of the stages' trained probs", lambda: maxdiff(inter["ft"], off["ft"]), note)
            safe(
                rows,
                "SDP map + trained probs, before smoothing",
                lambda: maxdiff(inter["raw"], off["raw"]),
                f"{note}; {scale(off['raw'])}",
            )
        else:
            for i, k in enumerate(LAYERS):
                safe(
                    rows,
                    f"feature-surgery similarity, stage L{k} (patches, 2 states)",
                    lambda i=i: maxdiff(inter["per_stage"][i], off["per_stage"][i]),
                    note,
                )
            safe(
                rows,
                "feature-surgery similarity, summed over stages",
                lambda: maxdiff(inter["similarity"], off["similarity"]),
                note,
            )
            safe(
                rows,
                "upsampled map before smoothing",
                lambda: maxdiff(inter["raw"], off["raw"]),
                f"{note}; {scale(off['raw'])}",
            )
    try:
        out = z.outputs(m)
    except Exception as e:  # noqa: BLE001
        rows.append(("outputs", None, f"n/a: {type(e).__name__}: {str(e)[:160]}"))
        return
    safe(rows, "smoothed map (sigma 8)", lambda: maxdiff(out["map"], off["map"]), f"{note}; {scale(off['map'])}")
    safe(rows, "p0 (text prob of the anomalous state)", lambda: maxdiff(out["p0"], off["p0"]), note)
    safe(rows, "p1 (max of the smoothed map)", lambda: maxdiff(out["p1"], off["p1"]), note)
    safe(rows, "score p0 + p1 (no min-max)", lambda: maxdiff(out["score"], off["score"]), note)
    safe(
        rows,
        "transductive min-max score",
        lambda: maxdiff(out["minmax"], off["minmax"]),
        f"min-max divides by the spread over the {len(off['p0'])} images (official: p0 {spread(off['p0']):.1e}, "
        f"p1 {spread(off['p1']):.1e}), so any difference is scaled up by its inverse",
    )


# ------------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, "CLIP-AD", 4, "seed of the random CLIP weights (SDP+ layers: seed + 1)", None)
    args = ap.parse_args()

    assets = magnetic_tile_dir(args.assets)
    root = args.official_root.resolve()
    if not (root / "util" / "surgery.py").is_file():
        raise SystemExit(f"{root}: not the official CLIP-AD repository (util/surgery.py missing)")
    threads = max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)

    from zsad.backbone import ClipBackbone

    t0 = time.perf_counter()
    bb = ClipBackbone.from_pretrained(MODEL, "none", seed=args.seed, image_size=IMAGE_SIZE)
    x, names = load_images(args.images, assets, bb.mean, bb.std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 1)
        heads = [torch.nn.Linear(bb.width, bb.embed_dim) for _ in LAYERS]
    heads_state = {f"{i}.{n}": p.detach().clone() for i, h in enumerate(heads) for n, p in h.state_dict().items()}
    linear_official = {f"fc.{k}": v for k, v in heads_state.items()}
    cases = loss_cases(args.seed)
    synth = synthetic_embeddings(args.seed, bb.embed_dim)

    tmp = Path(tempfile.mkdtemp(prefix="clipad_cmp_"))
    try:
        torch.save(bb.model.state_dict(), tmp / "weights.pt")
        torch.save(
            {
                "images": x,
                "model": MODEL,
                "image_size": IMAGE_SIZE,
                "class_name": CLASS_NAME,
                "layers": LAYERS,
                "sigma": SIGMA,
                "dataset": DATASET,
                "rep_vecs": REP_VECS,
                "threads": threads,
                "width": bb.width,
                "embed_dim": bb.embed_dim,
                "linear": linear_official,
                "loss_cases": cases,
                "synthetic_embeddings": synth,
                "alt_layers": ALT_LAYERS,
            },
            tmp / "inputs.pt",
        )
        off, t_off = run_official(OFFICIAL_DRIVER, args.official_python, root, tmp)
    finally:
        drop_temp(tmp, args.keep_temp)
    if "/open_clip/" not in off["open_clip_file"] or not off["open_clip_file"].startswith(str(root)):
        raise SystemExit(f"official side imported {off['open_clip_file']}, not the vendored open_clip")

    z = ZsadSide(bb, x, heads_state)
    runs, errors = off["runs"], off["errors"]
    sections: list[list[str]] = []

    # ---- text
    rows: list[Row] = []
    try:
        from zsad.prompts import build_prompts, get_prompt_set

        ours = build_prompts(get_prompt_set("clipad"), CLASS_NAME)
        theirs = off["sentences"]
        same = [a == b for s, o in zip(theirs, ours, strict=True) for a, b in zip(s, o, strict=False)]
        counts = f"official {len(theirs[0])}+{len(theirs[1])}, zsad {len(ours[0])}+{len(ours[1])}"
        rows.append(
            (
                "prompt sentences, normal + anomalous (count of differing)",
                str(same.count(False) + abs(sum(map(len, theirs)) - sum(map(len, ours)))),
                counts,
            )
        )
    except Exception as e:  # noqa: BLE001
        rows.append(("prompt sentences", None, f"n/a: {type(e).__name__}: {str(e)[:160]}"))
    sent = off["sentences"]
    safe(
        rows,
        "per-sentence text embeddings (official sentences, both towers)",
        lambda: max(maxdiff(bb.encode_text(s), e) for s, e in zip(sent, off["sentence_emb"], strict=True)),
        "zsad: open_clip 3.3.0 text tower; official: its vendored open_clip",
    )
    txt = off["text"]
    zs_text: dict[str, torch.Tensor] = {}
    for rv in REP_VECS:
        try:
            from zsad.methods.sdp import SdpConfig
            from zsad.prompts import state_text

            zs_text[rv] = state_text(bb, SdpConfig(text_aggregation=rv), CLASS_NAME).cpu()
        except Exception as e:  # noqa: BLE001
            zs_text[rv] = e  # type: ignore[assignment]
    for rv in REP_VECS:
        shipped, fp32 = txt.get(f"{rv}/shipped"), txt.get(f"{rv}/fp32")
        dtype = str(shipped.dtype).replace("torch.", "") if shipped is not None else "error"
        err = errors.get(f"text {rv}/shipped")

        def zdiff(ref: torch.Tensor | None, rv: str = rv) -> float:
            got = zs_text[rv]
            if isinstance(got, Exception):
                raise got
            if ref is None:
                raise RuntimeError("the official run failed")
            return maxdiff(got, ref.T.float())

        safe(
            rows,
            f"rep. vector `{rv}`: zsad vs official as shipped ({dtype})",
            lambda z=zdiff, s=shipped: z(s),
            f"official as shipped failed: {err}" if err else "",
        )
        if rv != "mean":
            safe(
                rows,
                f"rep. vector `{rv}`: zsad vs official fp32 (float16 -> float32 in that module)",
                lambda z=zdiff, f=fp32: z(f),
                errors.get(f"text {rv}/fp32", ""),
            )
            if shipped is not None and fp32 is not None:
                safe(
                    rows,
                    f"rep. vector `{rv}`: official fp16 vs official fp32",
                    lambda s=shipped, f=fp32: maxdiff(s.float(), f),
                    "the fp16 rounding of the official vector (a reference tolerance)",
                )
    if "dbscan/fp32" in txt:
        safe(
            rows,
            "official `dbscan` (fp32) vs official `mean`, these sentences",
            lambda: maxdiff(txt["dbscan/fp32"], txt["mean/shipped"]),
            "float error here means DBSCAN kept every sentence (random weights): see the synthetic table",
        )
    sections.append(table("Text: prompts and representative vectors", rows))

    # ---- RVS on synthetic clusters
    rows = []
    stxt = off.get("synthetic_text", {})
    try:
        from sklearn.cluster import DBSCAN

        from zsad.methods.sdp import SdpConfig
        from zsad.prompts import aggregate_text, rvs_params

        params = rvs_params(SdpConfig())
        sizes = []
        for e in synth:
            lab = DBSCAN(eps=0.5, min_samples=15).fit(F.normalize(e, dim=-1).double().numpy()).labels_
            sizes.append("/".join(str(int(c)) for c in np.bincount(lab[lab >= 0])) + f" + {int((lab < 0).sum())} noise")
        rows.append(("DBSCAN(0.5, 15) clusters, normal; anomalous", "; ".join(sizes), "sizes, for orientation"))
        for rv in REP_VECS:
            ours = torch.stack([aggregate_text(e, rv, **params) for e in synth])
            for mode in ("shipped", "fp32"):
                key = f"{rv}/{mode}"
                if key not in stxt:
                    rows.append((f"`{rv}` vs official {mode}", None, f"n/a: {errors.get('synthetic ' + key)}"))
                    continue
                dt = str(stxt[key].dtype).replace("torch.", "")
                safe(
                    rows,
                    f"`{rv}`: zsad vs official {'as shipped' if mode == 'shipped' else 'fp32'} ({dt})",
                    lambda k=key, o=ours: maxdiff(o, stxt[k].T.float()),
                    f"zsad defaults {params}" if rv == "mean" and mode == "shipped" else "",
                )
            if f"{rv}/fp32" in stxt and rv != "mean":
                safe(
                    rows,
                    f"`{rv}`: official fp32 vs official `mean` fp32",
                    lambda rv=rv: maxdiff(stxt[f"{rv}/fp32"], stxt["mean/fp32"]),
                    "how far the selection moves the vector (not a fidelity number)",
                )
    except Exception as e:  # noqa: BLE001
        rows.append(("synthetic RVS", None, f"n/a: {type(e).__name__}: {str(e)[:160]}"))
    sections.append(
        table(
            "Representative vectors on synthetic clustered sentence embeddings (official function, stub text model)",
            rows,
        )
    )

    # ---- taps
    rows = []
    img = off["image"]
    try:
        from zsad.methods.sdp import surgery_config
    except ImportError:  # the stage layout the official code uses for 12 blocks and layers 3, 6, 9, 12

        def surgery_config(num_layers: int, layers: Sequence[int], compat: str = "none") -> Any:
            from zsad.backbone import SurgeryConfig

            return SurgeryConfig(start_layer=1, reset_layers=(4, 7, 10), init="zero", replace_cls=True)

    feats: dict[str, Any] = {}
    for mode in ("block", "official"):
        try:
            feats[mode] = bb.encode_image(
                x,
                layers=LAYERS,
                surgery=surgery_config(bb.num_layers, LAYERS, "official" if mode == "official" else "none"),
                surgery_layers=LAYERS,
                tap_mode=mode,
            )
        except Exception as e:  # noqa: BLE001
            feats[mode] = e
    for i, k in enumerate(LAYERS):

        def surg(mode: str, i: int = i, k: int = k) -> torch.Tensor:
            f = feats[mode]
            if isinstance(f, Exception):
                raise f
            return bb.project(f.surgery[k])

        def tok(mode: str, k: int = k) -> torch.Tensor:
            f = feats[mode]
            if isinstance(f, Exception):
                raise f
            return f.tokens[k]

        safe(
            rows,
            f"surgery tap L{k}, ln_post+proj, patch tokens",
            lambda i=i, s=surg: maxdiff(s("block")[:, 1:], img["surgery"][i][:, 1:]),
            "zsad default vs official",
        )
        safe(
            rows,
            f"surgery tap L{k}, ln_post+proj, CLS: zsad tap_mode=official",
            lambda i=i, s=surg: maxdiff(s("official")[:, :1], img["surgery"][i][:, :1]),
            "vs official as returned",
        )
        safe(
            rows,
            f"surgery tap L{k}, ln_post+proj, CLS: zsad default (block output)",
            lambda i=i, s=surg: maxdiff(s("block")[:, :1], img["surgery"][i][:, :1]),
            "vs official as returned: the in-place quirk" if k < 12 else "last tap: no later block",
        )
        safe(
            rows,
            f"surgery tap L{k}, CLS: zsad default vs official block-time clone",
            lambda i=i, s=surg: maxdiff(s("block")[:, :1], img["surgery_block_end_cls"][i][:, :1]),
            "hooks: CLS cloned when block returned",
        )
        safe(
            rows,
            f"surgery tap L{k}, patches: official returned vs its block-time clone",
            lambda i=i: maxdiff(img["surgery"][i][:, 1:], img["surgery_block_end_cls"][i][:, 1:]),
            "official only",
        )
        safe(
            rows,
            f"'ori' tap L{k}: zsad tap_mode=official vs official as returned",
            lambda i=i, t=tok: maxdiff(t("official"), img["ori"][i]),
            "",
        )
        safe(
            rows,
            f"'ori' tap L{k}: zsad default (block output) vs official block-time clone",
            lambda i=i, t=tok: maxdiff(t("block"), img["ori_at_block_end"][i]),
            "hooks: cloned when block returned",
        )
        safe(
            rows,
            f"'ori' tap L{k}: official as returned vs official block-time clone",
            lambda i=i: maxdiff(img["ori"][i], img["ori_at_block_end"][i]),
            "official only: > 0 means a later block changed the tap",
        )
    sections.append(table("Image taps (B = images, official encode_image(images, [3, 6, 9, 12]))", rows))

    # ---- taps for a layer list that does not match the official quarter resets
    rows = []
    try:
        alt = bb.encode_image(
            x,
            layers=ALT_LAYERS,
            surgery=surgery_config(bb.num_layers, ALT_LAYERS, "official"),
            surgery_layers=ALT_LAYERS,
            tap_mode="official",
        )
        for i, k in enumerate(ALT_LAYERS):
            safe(
                rows,
                f"surgery tap L{k}, ln_post+proj, patch tokens",
                lambda i=i, k=k: maxdiff(bb.project(alt.surgery[k])[:, 1:], off["image_alt"]["surgery"][i][:, 1:]),
                "zsad compat=official vs official",
            )
            safe(
                rows,
                f"'ori' tap L{k}",
                lambda i=i, k=k: maxdiff(alt.tokens[k], off["image_alt"]["ori"][i]),
                "zsad tap_mode=official vs official",
            )
    except Exception as e:  # noqa: BLE001
        rows.append(("taps", None, f"n/a: {type(e).__name__}: {str(e)[:160]}"))
    sections.append(table(f"Image taps for layers {list(ALT_LAYERS)} (official resets stay at blocks 4, 7, 10)", rows))

    # ---- SDP
    def off_text(key: str) -> torch.Tensor:
        return txt[key]

    sdp_cases = [
        (
            'SDP, text `mean`, zsad compat="official" vs official as shipped',
            "sdp",
            "official",
            "mean/shipped",
            "sdp mean taps=returned",
        ),
        (
            'SDP, text `dbscan` (fp32), zsad compat="official" vs official with fp32 dbscan vector',
            "sdp",
            "official",
            "dbscan/fp32",
            "sdp dbscan/fp32 taps=returned",
        ),
        (
            'SDP, text `mean`, zsad default (compat="none") vs official as shipped',
            "sdp",
            "none",
            "mean/shipped",
            "sdp mean taps=returned",
        ),
        (
            "SDP, text `mean`, zsad default vs official with taps cloned at block end (quirk undone)",
            "sdp",
            "none",
            "mean/shipped",
            "sdp mean taps=block_end",
        ),
        (
            'SDP+, text `mean`, zsad compat="official" vs official as shipped (same linear weights)',
            "sdp+",
            "official",
            "mean/shipped",
            "sdp+ mean taps=returned",
        ),
        (
            "SDP+, text `mean`, zsad default vs official as shipped",
            "sdp+",
            "none",
            "mean/shipped",
            "sdp+ mean taps=returned",
        ),
        (
            "SDP+, text `mean`, zsad default vs official with taps cloned at block end",
            "sdp+",
            "none",
            "mean/shipped",
            "sdp+ mean taps=block_end",
        ),
    ]
    for title, name, compat, tkey, okey in sdp_cases:
        rows = []
        if okey not in runs or tkey not in txt:
            rows.append(("official run", None, f"n/a: {errors.get(okey) or errors.get('text ' + tkey)}"))
        else:
            try:
                m = z.method(name, compat, off_text(tkey))
                compare_run(rows, z, m, runs[okey], name == "sdp+", "official text fed to zsad")
            except Exception as e:  # noqa: BLE001
                rows.append((f"zsad {name}", None, f"n/a: {type(e).__name__}: {str(e)[:200]}"))
        sections.append(table(title, rows))

    # ---- end to end with zsad's own text
    rows = []
    own = [("mean", "sdp mean taps=returned")] + [(rv, f"sdp {rv}/fp32 taps=returned") for rv in REP_VECS[1:]]
    for rv, okey in own:
        for compat in ("official", "none") if rv == "dbscan" else ("official",):
            if okey not in runs:
                rows.append((f"{rv}, compat={compat}", None, f"n/a: {errors.get(okey)}"))
                continue
            try:
                out = z.outputs(z.method("sdp", compat, None, aggregation=rv))
                o = runs[okey]
                note = f"zsad text_aggregation={rv}, compat={compat}; official {okey.split()[1]}"
                safe(
                    rows,
                    f"`{rv}` compat={compat}: smoothed map",
                    lambda o=o, out=out: maxdiff(out["map"], o["map"]),
                    note,
                )
                safe(
                    rows,
                    f"`{rv}` compat={compat}: score p0 + p1",
                    lambda o=o, out=out: maxdiff(out["score"], o["score"]),
                    note,
                )
            except Exception as e:  # noqa: BLE001
                rows.append((f"`{rv}` compat={compat}", None, f"n/a: {type(e).__name__}: {str(e)[:200]}"))
    sections.append(table("SDP end to end, zsad's own text vectors", rows))

    # ---- fp16 effect inside the official code
    rows = []
    for rv in ("dbscan", "pca", "kde", "mean_shift"):
        key = f"sdp {rv}/shipped taps=returned"
        if f"{rv}/shipped" in txt:
            dt = str(txt[f"{rv}/shipped"].dtype).replace("torch.", "")
            what, why = f"`{rv}` as shipped on CPU (fp32 image features @ {dt} text)", errors.get(key, "")
        else:
            what, why = f"`{rv}` as shipped on CPU (text step)", errors.get(f"text {rv}/shipped", "")
        rows.append((what, "runs" if key in runs else "fails", why))
        a, b = runs.get(f"sdp {rv}/shipped-upcast taps=returned"), runs.get(f"sdp {rv}/fp32 taps=returned")
        if a is not None and b is not None:
            for q in ("raw", "map", "p0", "score"):
                safe(
                    rows,
                    f"`{rv}`: {q}, fp16 vector upcast vs fp32 vector",
                    lambda q=q, a=a, b=b: maxdiff(a[q], b[q]),
                    "official code both sides",
                )
    sections.append(table("fp16 representative vectors: effect inside the official code", rows))

    # ---- losses
    rows = []
    try:
        from zsad.train import dice_loss, focal_loss

        for j, (case, o) in enumerate(zip(cases, off["losses"], strict=True)):
            logits = case["logits"].clone().requires_grad_(True)
            probs = torch.softmax(logits, dim=1)
            fl, dl = focal_loss(probs, case["gt"]), dice_loss(probs[:, 1], case["gt"])
            (fl + dl).backward()
            label = ("mixed mask", "all-normal mask", "all-anomalous mask")[j]
            safe(rows, f"focal loss ({label}, {tuple(case['gt'].shape)})", lambda fl=fl, o=o: maxdiff(fl, o["focal"]))
            safe(rows, f"dice loss ({label})", lambda dl=dl, o=o: maxdiff(dl, o["dice"]))
            safe(rows, f"d(focal + dice)/d logits ({label})", lambda g=logits.grad, o=o: maxdiff(g, o["grad"]))
    except Exception as e:  # noqa: BLE001
        rows.append(("focal / dice losses", None, f"n/a: {type(e).__name__}: {str(e)[:160]}"))
    sections.append(table("Losses (official FocalLoss() / BinaryDiceLoss() vs zsad.train)", rows))

    # ---- report
    ver = off["versions"]
    header = [
        f"{SECTION} ({datetime.date.today().isoformat()})",
        "",
        f"Label: **{LABEL}**.",
        "",
        "Command: `python benchmarks/compare_clipad_sdp.py "
        + shlex.join([a for a in sys.argv[1:] if a != "--append-results"] + ["--append-results"])
        + "`.",
        f"Official code: {root} (stated as ByChelsea/CLIP-AD @f004973; no git metadata), run unmodified in a separate "
        "process/venv by a driver this script writes at run time. File sha256 prefixes: "
        f"{file_hashes(root, OFFICIAL_FILES)}.",
        f"Weights: `{MODEL}` seeded random (seed {args.seed}), one state dict loaded into both (strict). SDP+ linear "
        f"layers: 4 x Linear({bb.width}, {bb.embed_dim}) seeded {args.seed + 1}, copied to both.",
        f"Images: {len(names)} Magnetic Tile images ({', '.join(names)}), zsad.data.squash_image to {IMAGE_SIZE} px "
        f'with CLIP mean/std; one tensor for both. Class name "{CLASS_NAME}", layers {list(LAYERS)}, sigma {SIGMA}.',
        f"Versions: zsad side torch {torch.__version__}, open_clip {dist_version('open_clip_torch')}, numpy "
        f"{np.__version__}, scipy {dist_version('scipy')}, scikit-learn {dist_version('scikit-learn')}, zsad "
        f"{dist_version('zsad')}; official side Python {ver['python']}, torch {ver['torch']}, vendored open_clip "
        f"{ver['open_clip (vendored)']}, numpy {ver['numpy']}, scipy {ver['scipy']}, scikit-learn {ver['sklearn']}; "
        f"min-max by {off['normalize']}.",
        f"Hardware: {hardware('cpu')}, no GPU used; fp32 on both sides "
        "(the official autocast is a no-op without CUDA). "
        f"Wall time {time.perf_counter() - t0:.0f} s (official process {t_off:.0f} s).",
        "",
        'How to read: zsad\'s `compat="official"` rows compare like with like and should be float error (1e-6 or '
        'less relative to the quantity). zsad\'s default (`compat="none"`) differs from the official code as shipped '
        "only through the in-place tap quirk (the 'ori' taps of layers 3, 6, 9 hold the next block's attention "
        "residual too, and the surgery taps copy their CLS from them); the rows against the official taps cloned when "
        "each block returned show it is the only difference. The official code runs fp32 here; its published GPU runs "
        "used CUDA autocast (fp16 matmuls in both towers), which this CPU comparison does not cover.",
        "",
    ]
    report = "\n".join(header + [line for s in sections for line in s])
    publish(report, errors, args.append_results, args.results_file)


if __name__ == "__main__":
    main()
