"""zsad's AnomalyCLIP against the OFFICIAL AnomalyCLIP code (zqhang/AnomalyCLIP @45ed4dd), side by side in one process.

The official code is imported at run time from ``--official-root`` (a checkout; never copied into this project):
``AnomalyCLIP_lib`` (its ``build_model``, the AnomalyCLIP CLIP with DPAM and deep text tokens, ``compute_similarity``,
``get_similarity_map``), ``prompt_ensemble.AnomalyCLIP_PromptLearner`` and ``loss.FocalLoss`` / ``BinaryDiceLoss``.
Its ``test.py`` / ``train.py`` are scripts (argparse, dataset folders, a ``.cuda()`` call in the loss), so their
per-batch lines are replayed here, calling those official functions in the same order with the same arguments:

- model: ``build_model(name, state_dict, design_details)`` on zsad's open_clip state dict (OpenAI-architecture
  CLIPs have OpenAI's keys; ``load_state_dict`` is strict), design_details n_ctx 12, depth 9, t_n_ctx 4; then
  ``model.visual.DAPM_replace(DPAM_layer)`` as test.py / train.py do. DPAM_layer 20 (blocks 6..24) for a 24-block
  tower; a smaller tower has fewer blocks than 19, so DPAM_layer = blocks + 1 (all of them), which is what zsad's
  default ``dpam_start`` (``max(1, blocks - 18)``) gives too. ``features_list`` = [last block] (24 as published).
- prompts: the official prompt learner with its own random init (seed ``--prompt-seed``); its state dict is written
  in the official checkpoint layout (``torch.save({"prompt_learner": ...})``, as train.py saves) and converted with
  zsad's ``import_official_checkpoint`` -> ``create_method("anomalyclip", bb, checkpoint=...)``: the importer is
  tested on a file in the official layout.
- inference (test.py, batch 1 per image as test.py runs): text features once, ``encode_image(image, features_list,
  DPAM_layer)``, softmax(cos / 0.07) image probability, ``compute_similarity`` + ``get_similarity_map`` per layer,
  ``(P_abn + 1 - P_norm) / 2`` summed over layers, ``scipy.ndimage.gaussian_filter(sigma=4)`` per map.
- one training step (train.py, batch of 2 defect images with their masks, label 1): the image cross-entropy +
  4 x (focal + dice(P_abn, gt) + dice(P_norm, 1 - gt)), backward; gradients of ``ctx_pos``, ``ctx_neg``,
  ``compound_prompts_text.*`` vs zsad's ``loss_terms(images, gt, label)`` and its ``ctx_normal``, ``ctx_abnormal``,
  ``deep``.
- the same step once more with ``Tensor.half`` made straight-through on both sides (the deep tokens keep their
  fp16-rounded values, the gradient goes back unrounded): the official ``.half()`` on the deep tokens also rounds
  their *gradient* to fp16, per prompt, in the backward pass; upstream float error (~1e-6) flips a few of those
  roundings by one fp16 step, which this pass shows is the only difference beyond float error.

Both sides get the same normalised tensor (zsad's ``squash_image``, OpenAI mean/std) and the same binary masks
(zsad's ``squash_mask``), so preprocessing is not compared (the official dataset's transform is not run).
The official model is QuickGELU; open_clip's ``ViT-L-14-336`` / ``ViT-B-16`` configs use exact GELU, so the backbone
names here end in ``-quickgelu`` (the script refuses another activation): both sides run the same activation.
Stubbed in ``sys.modules`` for the import only, when absent from the venv: ``thop`` (imported by ``AnomalyCLIP.py``,
unused) and ``pkg_resources`` (only ``pkg_resources.packaging`` is used: the ``packaging`` package is put there).
CPU, fp32 on both sides.

    git clone https://github.com/zqhang/AnomalyCLIP ../ref/anomalyclip   # commit 45ed4dd
    # quick (ViT-B/16 at 224 px, about 30 s on 2 CPU cores)
    .venv/bin/python benchmarks/compare_anomalyclip.py --official-root ../ref/anomalyclip \\
        --backbone ViT-B-16-quickgelu --image-size 224 --images 2
    # as published (ViT-L/14-336 at 518 px; a few minutes)
    .venv/bin/python benchmarks/compare_anomalyclip.py --official-root ../ref/anomalyclip --images 4

(``--append-results`` also appends the section to benchmarks/RESULTS.md.)

Random weights (seeded, ``pretrained="none"``) and random prompts: fidelity only, NOT detection quality.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from _results import add_results_args, emit
from sidebyside import Row, magnetic_tile_dir, magnetic_tile_picks, maxdiff, squashed, table

DESIGN = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}
LAMBDA = 4  # train.py's lam
SIGMA = 4  # test.py's --sigma default
REL_FLOAT = 1e-5  # float error, relative to the quantity's largest absolute value


def import_official(root: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType, list[str]]:
    """``AnomalyCLIP_lib``, ``prompt_ensemble`` and ``loss`` from the checkout, imported as its scripts do."""
    stubbed = []
    if importlib.util.find_spec("thop") is None:  # AnomalyCLIP.py: `from thop import profile` (never called)
        thop = types.ModuleType("thop")
        thop.profile = None
        sys.modules["thop"] = thop
        stubbed.append("thop")
    if importlib.util.find_spec("pkg_resources") is None:  # model_load.py / prompt_ensemble.py: pkg_resources.packaging
        import packaging
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = packaging
        sys.modules["pkg_resources"] = shim
        stubbed.append("pkg_resources (-> packaging)")
    sys.path.insert(0, str(root))
    with contextlib.redirect_stdout(io.StringIO()):
        lib = importlib.import_module("AnomalyCLIP_lib")
        pe = importlib.import_module("prompt_ensemble")
        loss = importlib.import_module("loss")
    for mod in (lib, pe, loss):
        if not Path(mod.__file__).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"{mod.__name__} was imported from {mod.__file__}, not from {root}")
    return lib, pe, loss, stubbed


def build_official(lib: types.ModuleType, pe: types.ModuleType, state: dict, prompt_seed: int, dpam: int):
    """The official model on zsad's weights and a fresh prompt learner, set up as test.py / train.py do."""
    from AnomalyCLIP_lib.build_model import build_model

    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
        model = build_model("zsad", dict(state), DESIGN)  # strict load_state_dict; fp32 on the CPU
        model.eval()
        torch.manual_seed(prompt_seed)
        learner = pe.AnomalyCLIP_PromptLearner(model.to("cpu"), DESIGN)
    model.visual.DAPM_replace(DPAM_layer=dpam)
    return model, learner


def official_text(model, learner) -> torch.Tensor:
    """(1, 2, D) unit text features [normal, abnormal], test.py / train.py lines."""
    prompts, tokenized_prompts, compound_prompts_text = learner(cls_id=None)
    text_features = model.encode_text_learn(prompts, tokenized_prompts, compound_prompts_text).float()
    text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
    return text_features / text_features.norm(dim=-1, keepdim=True)


def official_test(lib, model, learner, x: torch.Tensor, features_list: list[int], dpam: int, size: int) -> dict:
    """test.py's loop, batch 1 per image: image score, raw/unit tokens, maps before and after smoothing."""
    from scipy.ndimage import gaussian_filter

    with torch.no_grad():
        text_features = official_text(model, learner)
    out: dict[str, list] = {k: [] for k in ("score", "glob_raw", "glob", "patch_raw", "patch", "map", "smooth", "p")}
    for i in range(len(x)):
        image = x[i : i + 1]
        with torch.no_grad():
            image_features, patch_features = model.encode_image(image, features_list, DPAM_layer=dpam)
            out["glob_raw"].append(image_features.clone())
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            out["glob"].append(image_features)
            text_probs = image_features @ text_features.permute(0, 2, 1)
            text_probs = (text_probs / 0.07).softmax(-1)
            text_probs = text_probs[:, 0, 1]
            anomaly_map_list = []
            for patch_feature in patch_features:  # feature_map_layer [0, ...]: every listed layer
                out["patch_raw"].append(patch_feature[:, 1:].clone())
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                out["patch"].append(patch_feature[:, 1:])
                similarity, _ = lib.compute_similarity(patch_feature, text_features[0])
                similarity_map = lib.get_similarity_map(similarity[:, 1:, :], size)
                out["p"].append(similarity_map.permute(0, 3, 1, 2))
                anomaly_map = (similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0
                anomaly_map_list.append(anomaly_map)
            anomaly_map = torch.stack(anomaly_map_list)
            anomaly_map = anomaly_map.sum(dim=0)
            out["map"].append(anomaly_map.clone())
            out["score"].append(text_probs.detach().cpu())
            anomaly_map = torch.stack(
                [torch.from_numpy(gaussian_filter(m, sigma=SIGMA)) for m in anomaly_map.detach().cpu()], dim=0
            )
            out["smooth"].append(anomaly_map)
    res = {k: torch.cat(v) for k, v in out.items()}
    res["text"] = text_features[0]
    res["pos"] = model.visual.positional_embedding.detach().clone()  # resized in place at the first forward
    return res


def official_train_step(
    lib, loss_mod, model, learner, image, gt, label, features_list: list[int], dpam: int, cache: dict | None = None
) -> dict:
    """train.py's step on one batch (optimizer.step left out): loss terms and the prompt learner's gradients.

    ``cache`` holds the (no-grad) image features of an earlier call on the same batch: reused instead of re-running
    the image tower (the straight-through pass changes only the text side).
    """
    loss_focal = loss_mod.FocalLoss()
    loss_dice = loss_mod.BinaryDiceLoss()
    learner.train()
    learner.zero_grad(set_to_none=True)
    size = image.shape[-1]
    if cache:
        image_features, patch_features = cache["image"]
    else:
        with torch.no_grad():
            image_features, patch_features = model.encode_image(image, features_list, DPAM_layer=dpam)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        if cache is not None:
            cache["image"] = (image_features, patch_features)
    text_features = official_text(model, learner)
    text_probs = image_features.unsqueeze(1) @ text_features.permute(0, 2, 1)
    text_probs = text_probs[:, 0, ...] / 0.07
    image_loss = F.cross_entropy(text_probs.squeeze(), label.long())  # train.py: label.long().cuda()
    similarity_map_list = []
    for patch_feature in patch_features:  # feature_map_layer [0, 1, 2, 3]: idx >= 0, every listed layer
        patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
        similarity, _ = lib.compute_similarity(patch_feature, text_features[0])
        similarity_map = lib.get_similarity_map(similarity[:, 1:, :], size).permute(0, 3, 1, 2)
        similarity_map_list.append(similarity_map)
    loss = 0
    focal = dice = 0.0
    for i in range(len(similarity_map_list)):
        f = loss_focal(similarity_map_list[i], gt)
        d_abn = loss_dice(similarity_map_list[i][:, 1, :, :], gt)
        d_norm = loss_dice(similarity_map_list[i][:, 0, :, :], 1 - gt)
        loss += f
        loss += d_abn
        loss += d_norm
        focal, dice = focal + f.item(), dice + d_abn.item() + d_norm.item()
    loss = LAMBDA * loss
    (loss + image_loss).backward()
    grads = {
        "ctx_pos": learner.ctx_pos.grad.detach().reshape(-1, learner.ctx_pos.shape[-1]).clone(),
        "ctx_neg": learner.ctx_neg.grad.detach().reshape(-1, learner.ctx_neg.shape[-1]).clone(),
    }
    for j, p in enumerate(learner.compound_prompts_text):
        grads[f"compound_prompts_text.{j}"] = p.grad.detach().clone()
    learner.eval()
    return {
        "loss": float((loss + image_loss).detach()),
        "image": float(image_loss.detach()),
        "focal": focal,
        "dice": dice,
        "grads": grads,
        "text_probs": text_probs.detach(),
    }


@contextlib.contextmanager
def recording(*targets: tuple[Any, str]):
    """Wrap ``obj.name`` methods (as instance attributes) so one call's results are kept: {name: last result}."""
    got: dict[str, Any] = {}

    def wrap(fn: Any, name: str) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            got[name] = out = fn(*a, **k)
            return out

        return call

    for obj, name in targets:
        setattr(obj, name, wrap(getattr(obj, name), name))
    try:
        yield got
    finally:
        for obj, name in targets:
            delattr(obj, name)  # the class's method again


@contextlib.contextmanager
def straight_through_half():
    """``Tensor.half`` keeps its fp16-rounded values but passes the gradient back unrounded, on both sides."""
    half = torch.Tensor.half

    def rounded(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        return self + (half(self, *a, **k).to(self.dtype) - self).detach()

    torch.Tensor.half = rounded
    try:
        yield
    finally:
        torch.Tensor.half = half


def load_train_batch(assets: Path, size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first MT_Crack and first MT_Blowhole image with their defect masks (binary, zsad's ``squash_mask``)."""
    from PIL import Image

    from zsad.data.transforms import squash_mask

    picks = [sorted((assets / d / "Imgs").glob("*.jpg"))[0] for d in ("MT_Crack", "MT_Blowhole")]
    masks = []
    for p in picks:
        with Image.open(p.with_suffix(".png")) as m:
            masks.append(squash_mask(m, size))
    names = [f"{p.parent.parent.name}/{p.name}" for p in picks]
    return squashed(picks, size, mean, std), torch.stack(masks), names


@contextlib.contextmanager
def capture_half_grads(store: list[torch.Tensor | None]):
    """Record the gradient reaching each ``Tensor.half()`` output (the fp16 deep tokens), in forward call order.

    That gradient is fp16 (the autograd engine casts it to the tensor's dtype): per prompt on both sides (official:
    (t_n_ctx, 2, width) per text block; zsad: one (blocks, 2, t_n_ctx, width) tensor).
    """
    half = torch.Tensor.half

    def hooked(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        out = half(self, *a, **k)
        if out.requires_grad:
            i = len(store)
            store.append(None)
            out.register_hook(lambda g: store.__setitem__(i, g.detach().clone()))
        return out

    torch.Tensor.half = hooked
    try:
        yield
    finally:
        torch.Tensor.half = half


def fp16_flips(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, bool]:
    """fp16 tensors: (elements that differ, elements, whether each differing pair is adjacent fp16 numbers)."""
    differ = a != b
    ia, ib = a.view(torch.int16).int(), b.view(torch.int16).int()
    adjacent = ((ia - ib).abs() == 1) & (torch.sign(a) == torch.sign(b))
    return int(differ.sum()), a.numel(), bool(adjacent[differ].all())


def rel(v: float, scale: float) -> str:
    return f"scale {scale:.3g} (rel {v / scale:.1e})" if scale else "scale 0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-root", type=Path, required=True, help="checkout of zqhang/AnomalyCLIP")
    ap.add_argument("--backbone", default="ViT-L-14-336-quickgelu")
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--images", type=int, default=4, help="Magnetic Tile images (half MT_Free, half MT_Crack)")
    ap.add_argument("--seed", type=int, default=0, help="seed of zsad's random CLIP weights")
    ap.add_argument("--prompt-seed", type=int, default=1, help="seed of the official prompt learner's random init")
    ap.add_argument("--assets", type=Path, default=None, help="Magnetic Tile folder (default: shared/assets)")
    add_results_args(ap)
    args = ap.parse_args()
    t_start = time.perf_counter()

    from zsad.backbone import ClipBackbone
    from zsad.methods import create_method
    from zsad.methods.anomalyclip import import_official_checkpoint
    from zsad.ops import gaussian_blur

    lib, pe, loss_mod, stubbed = import_official(args.official_root)
    bb = ClipBackbone.from_pretrained(args.backbone, "none", image_size=args.image_size, device="cpu", seed=args.seed)
    if bb.activation != "QuickGELU":
        raise SystemExit(
            f"{args.backbone}: activation {bb.activation}; the official AnomalyCLIP model is QuickGELU: "
            f"use a '-quickgelu' name (e.g. {args.backbone}-quickgelu)"
        )
    n_blocks = bb.num_layers
    dpam = min(20, n_blocks + 1)  # test.py / train.py: DAPM_replace(DPAM_layer=20) = the last 19 blocks
    features_list = [n_blocks]
    state = {k: v.detach() for k, v in bb.model.state_dict().items()}
    model, learner = build_official(lib, pe, state, args.prompt_seed, dpam)
    del state

    assets = magnetic_tile_dir(args.assets)
    picks, n_free = magnetic_tile_picks(args.images, assets)
    x = squashed(picks, args.image_size, bb.mean, bb.std)
    x_tr, gt, train_names = load_train_batch(assets, args.image_size, bb.mean, bb.std)
    label = torch.ones(len(x_tr), dtype=torch.long)

    with tempfile.TemporaryDirectory(prefix="anomalyclip_cmp_") as tmp:
        official_file = Path(tmp) / "epoch_15.pth"
        torch.save({"prompt_learner": learner.state_dict()}, official_file)
        ckpt = import_official_checkpoint(official_file, bb, Path(tmp) / "zsad_ckpt", trained_on="random")
        m = create_method("anomalyclip", bb, checkpoint=str(ckpt))
        m.setup(None)
    cfg = m.config
    p = m.params

    # ------------------------------------------------------------------ inference
    t0 = time.perf_counter()
    o = official_test(lib, model, learner, x, features_list, dpam, args.image_size)
    t_off = time.perf_counter() - t0
    t0 = time.perf_counter()
    with recording((bb, "encode_image"), (m, "image_features"), (m, "outputs")) as rec:
        pred = m.predict(x)  # one forward; its intermediate results are recorded on the way
    t_z = time.perf_counter() - t0
    feats = rec["encode_image"]  # raw tokens, before m.image_features projects and normalises them
    glob, patches, grid = rec["image_features"]
    probs, _ = rec["outputs"]
    raw_patch = bb.project(feats.surgery[cfg.layers[0]][:, 1:])
    raw_glob = feats.tokens[n_blocks][:, 0] @ bb.model.visual.proj
    pos_z = bb.positional_embedding(grid, cfg.pos_interpolation)
    zmap = probs[:, :, 1].sum(0)

    rows: list[Row] = []
    tok_off = torch.cat([learner.tokenized_prompts_pos.reshape(-1, 77), learner.tokenized_prompts_neg.reshape(-1, 77)])
    rows.append(("prompt token ids (official tokenizer vs open_clip's)", maxdiff(tok_off, m._tokens), "exact"))
    imported = {
        "ctx_pos -> ctx_normal": (learner.ctx_pos.reshape(p.ctx_normal.shape), p.ctx_normal),
        "ctx_neg -> ctx_abnormal": (learner.ctx_neg.reshape(p.ctx_abnormal.shape), p.ctx_abnormal),
        "compound_prompts_text.* -> deep": (torch.stack(list(learner.compound_prompts_text)), p.deep),
    }
    for name, (a, b) in imported.items():
        rows.append((f"imported {name}", maxdiff(a, b), f"shape {tuple(b.shape)}"))
    rows.append(
        (
            "positional embedding (official: resized in place, bilinear)",
            maxdiff(o["pos"], pos_z),
            f"{o['pos'].shape[0]} rows; {rel(maxdiff(o['pos'], pos_z), float(o['pos'].abs().max()))}",
        )
    )
    for i, name in enumerate(("normal", "abnormal")):
        rows.append((f"text feature, {name} (unit)", maxdiff(o["text"][i], m.text[i]), "unit vectors"))
    rows.append(
        (
            "global embedding, raw (CLS @ proj, no ln_post)",
            maxdiff(o["glob_raw"], raw_glob),
            rel(maxdiff(o["glob_raw"], raw_glob), float(o["glob_raw"].abs().max())),
        )
    )
    rows.append(("global embedding, unit", maxdiff(o["glob"], glob), "unit vectors"))
    t = cfg.layers[0]
    rows.append(
        (
            f"DPAM patch tokens, layer {t}, raw (ln_post @ proj)",
            maxdiff(o["patch_raw"], raw_patch),
            rel(maxdiff(o["patch_raw"], raw_patch), float(o["patch_raw"].abs().max())),
        )
    )
    rows.append((f"DPAM patch tokens, layer {t}, unit", maxdiff(o["patch"], patches[0]), "unit vectors"))
    rows.append(("upsampled probabilities [normal, abnormal]", maxdiff(o["p"], probs[0]), "in [0, 1]"))
    rows.append(("anomaly map before smoothing", maxdiff(o["map"], zmap), "official (P_abn + 1 - P_norm) / 2"))
    rows.append(
        (
            f"anomaly map after smoothing (sigma {SIGMA})",
            maxdiff(o["smooth"], pred.anomaly_map),
            "official scipy gaussian_filter, zsad gaussian_blur",
        )
    )
    rows.append(
        (
            "smoothing alone: gaussian_blur vs gaussian_filter, same map",
            maxdiff(o["smooth"], gaussian_blur(o["map"], cfg.smoothing_sigma)),
            "",
        )
    )
    rows.append(("image score", maxdiff(o["score"], pred.pred_score), "probabilities"))

    # ------------------------------------------------------------------ one training step
    def zsad_step(cache: dict | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        p.zero_grad(set_to_none=True)
        p.train()
        if cache:  # the image side of an earlier call on the same batch (no grad, no fp16): only the text changes
            m.image_features = lambda images: cache["image"]
            try:
                terms = m.loss_terms(x_tr, gt, label)
            finally:
                del m.image_features
        else:
            with recording((m, "image_features")) as rec:
                terms = m.loss_terms(x_tr, gt, label)
            if cache is not None:
                cache["image"] = rec["image_features"]
        terms["loss"].backward()
        p.eval()
        grads = {"ctx_pos": p.ctx_normal.grad.clone(), "ctx_neg": p.ctx_abnormal.grad.clone()}
        grads.update({f"compound_prompts_text.{j}": p.deep.grad[j].clone() for j in range(p.deep.shape[0])})
        return {k: v.detach() for k, v in terms.items()}, grads

    off_half: list[torch.Tensor | None] = []
    z_half: list[torch.Tensor | None] = []
    off_cache: dict = {}
    z_cache: dict = {}
    t0 = time.perf_counter()
    with capture_half_grads(off_half):
        ot = official_train_step(lib, loss_mod, model, learner, x_tr, gt, label, features_list, dpam, off_cache)
    t_off_tr = time.perf_counter() - t0
    t0 = time.perf_counter()
    with capture_half_grads(z_half):
        terms, zgrads = zsad_step(z_cache)
    t_z_tr = time.perf_counter() - t0
    # The same step with the deep tokens' fp16 rounding made straight-through on both sides (the forward values are
    # the same fp16-rounded ones; the gradient is not rounded to fp16 on its way back): isolates that rounding.
    off_st: list[torch.Tensor | None] = []
    z_st: list[torch.Tensor | None] = []
    with straight_through_half():
        with capture_half_grads(off_st):  # here the gradient each prompt's deep tokens get before fp16 rounding
            ot_st = official_train_step(lib, loss_mod, model, learner, x_tr, gt, label, features_list, dpam, off_cache)
        with capture_half_grads(z_st):
            _, zgrads_st = zsad_step(z_cache)
    train_rows: list[Row] = [
        ("loss (total)", abs(ot["loss"] - float(terms["loss"])), f"official {ot['loss']:.6f}"),
        ("image cross-entropy", abs(ot["image"] - float(terms["image"])), f"official {ot['image']:.6f}"),
        ("focal", abs(ot["focal"] - float(terms["focal"])), f"official {ot['focal']:.6f}"),
        ("dice (abnormal + normal)", abs(ot["dice"] - float(terms["dice"])), f"official {ot['dice']:.6f}"),
    ]
    for name, g_off in ot["grads"].items():
        d, scale = maxdiff(g_off, zgrads[name]), float(g_off.abs().max())
        beyond = int(((g_off - zgrads[name]).abs() > REL_FLOAT * scale).sum())
        d_st = maxdiff(ot_st["grads"][name], zgrads_st[name])
        fp16 = maxdiff(g_off, ot_st["grads"][name])
        note = f"{rel(d, scale)}; {beyond}/{g_off.numel()} elements beyond {REL_FLOAT:.0e} x scale"
        if name.startswith("compound"):
            note += f"; straight-through fp16: {d_st:.2e}; official rounded vs straight-through: {fp16:.2e}"
        train_rows.append((f"grad {name}", d, note))
    # per prompt: the gradient each prompt's deep tokens receive, unrounded (straight-through pass) and as the
    # .half() outputs receive it (fp16); official (t_n_ctx, prompt, width) per block -> (blocks, prompt, t_n_ctx, width)
    g32_off, g32_z = torch.stack(off_st).permute(0, 2, 1, 3), z_st[0]
    g16_off, g16_z = torch.stack(off_half).permute(0, 2, 1, 3), z_half[0]
    d32 = maxdiff(g32_off, g32_z)
    train_rows.append(
        (
            "per-prompt deep-token gradients before fp16 rounding",
            d32,
            f"{rel(d32, float(g32_off.abs().max()))}; straight-through pass",
        )
    )
    same_off, same_z = torch.equal(g32_off.half(), g16_off), torch.equal(g32_z.half(), g16_z)
    train_rows.append(
        (
            "per-prompt deep-token gradients, fp16 (at the .half() outputs)",
            maxdiff(g16_off, g16_z),
            f"{int((g16_off != g16_z).sum())}/{g16_off.numel()} elements differ; each side's fp16 gradient == fp16 "
            f"rounding of its unrounded one above: official {same_off}, zsad {same_z}",
        )
    )

    # ------------------------------------------------------------------ report
    label_line = (
        f"Label: **seeded random weights (seed {args.seed}) and random prompts (official init, seed "
        f"{args.prompt_seed}), {args.backbone} ({bb.activation}) at {args.image_size} px: fidelity only, NOT "
        "detection quality**."
    )
    lines = [
        f"### AnomalyCLIP: zsad vs the official AnomalyCLIP code ({time.strftime('%Y-%m-%d')}, CPU, fp32)",
        "",
        f"Command: `.venv/bin/python benchmarks/compare_anomalyclip.py {' '.join(sys.argv[1:])}` (official: "
        "zqhang/AnomalyCLIP @45ed4dd, `AnomalyCLIP_lib`, `prompt_ensemble.py`, `loss.py` imported from the "
        "checkout; test.py / train.py per-batch lines replayed).",
        "",
        label_line,
        f"{len(x)} Magnetic Tile images ({n_free} MT_Free, {len(x) - n_free} MT_Crack), the same normalised tensor "
        f"for both sides; {n_blocks} blocks, official DAPM_replace(DPAM_layer={dpam}) = DPAM on blocks "
        f"{n_blocks - dpam + 2}..{n_blocks}, zsad dpam_start {cfg.dpam_start}; features_list {features_list}, zsad "
        f"layers {list(cfg.layers)}; n_ctx {cfg.n_ctx}, depth {cfg.deep_depth}, t_n_ctx {cfg.deep_length}; zsad "
        f"deep_fp16 {cfg.deep_fp16}. Stubbed for the import: {', '.join(stubbed) or 'none'}.",
        "",
        *table("Inference (test.py)", rows),
        *table(
            f"One training step (train.py; batch 2: {', '.join(train_names)} with their masks, label 1; "
            f"{LAMBDA} x (focal + dice_abn + dice_norm) + image CE)",
            train_rows,
        ),
        f"Time: official {t_off:.1f} s inference (batch 1, as test.py), {t_off_tr:.1f} s training step; zsad "
        f"{t_z:.1f} s inference, {t_z_tr:.1f} s training step; total {time.perf_counter() - t_start:.0f} s. "
        f"Scores: official {np.round(o['score'].numpy(), 6).tolist()}.",
    ]
    emit("\n".join(lines) + "\n", args)


if __name__ == "__main__":
    main()
