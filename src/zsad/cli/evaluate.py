"""``zsad eval``: labelled datasets in, per-category + mean metrics out, the way the field reports them.

Maps are kept at model input resolution (240 or 518 px), as the papers evaluate. Each scored image is written at
once (row + ``.npy``), so an interrupted evaluation resumes without recomputing the backbone.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from zsad.engine import decode_parts, environment, parts_json, score_dataset
from zsad.errors import ZsadInputError
from zsad.fileio import save_npy, write_json, write_text
from zsad.methods.base import Method
from zsad.runs.build import MethodSpec, method_key
from zsad.runs.outputs import (
    CsvLog,
    OutputNames,
    check_run_key,
    claim_output,
    identity,
    is_number,
)
from zsad.thresholds import choose_threshold

FIELDS = [
    "category",
    "image_path",
    "gt_label",
    "mask_path",
    "pred_score",
    "pred_label",
    "image_threshold",
    "anomaly_map_path",
    "score_parts",
]
METRIC_KEYS = [
    "image_AUROC",
    "image_AP",
    "image_F1max",
    "pixel_AUROC",
    "pixel_AP",
    "pixel_F1max",
    "pixel_AUPRO",
    "pixel_AUPRO_cflow",
]


@dataclass
class EvalSpec:
    dataset: str
    root: Path
    categories: list[str] = field(default_factory=list)
    class_name: str | None = None
    normal_dir: str | None = None
    abnormal_dir: str | None = None
    mask_dir: str | None = None
    image_dir: str | None = None
    labels_csv: str | None = None
    image_glob: str = "*"
    k_shot: int = 0
    reference_dir: Path | None = None
    seed: int = 0
    allow_seen: bool = False

    def __post_init__(self) -> None:
        # absolute, so rows, run keys and resumes do not depend on the working folder
        self.root = Path(os.path.abspath(self.root))
        if self.reference_dir is not None:
            self.reference_dir = Path(os.path.abspath(self.reference_dir))


@dataclass
class EvalResult:
    """One method's evaluation: per-category and mean metrics, and the table printed for it."""

    method: str
    title: str
    per_category: dict[str, dict[str, float]]
    mean: dict[str, float]
    table: Table
    notes: list[str] = field(default_factory=list)


def training_images(method: Method) -> set[str]:
    """Resolved paths of the images a method's checkpoint was trained on (empty for training-free methods)."""
    manifest = getattr(method, "training_manifest", None)
    ckpt = getattr(method.config, "checkpoint", "")
    if not manifest or not ckpt:
        return set()
    listed = manifest.get("training", {}).get("images_list")
    folder = Path(ckpt) if Path(ckpt).is_dir() else Path(ckpt).parent
    if not listed or not (folder / listed).is_file():
        return set()
    return {line.strip() for line in (folder / listed).read_text().splitlines() if line.strip()}


def seen_categories(method: Method) -> set[tuple[str, str]]:
    """(dataset, category) pairs of the benchmark datasets (mvtec, visa) a checkpoint was trained on."""
    training = (getattr(method, "training_manifest", None) or {}).get("training", {})
    out = set()
    for cat in training.get("categories", []):
        parts = str(cat).split(":")
        if len(parts) == 3 and parts[0] in ("mvtec", "visa"):  # list training: dataset:root-name:category
            out.add((parts[0], parts[2]))
        elif training.get("dataset") in ("mvtec", "visa"):
            out.add((training["dataset"], str(cat)))
    return out


def _check_unseen(method: Method, cat: str, ds: Any, seen: set[str], allow: bool, dataset: str = "") -> int:
    """Refuse to report images used in training as zero-shot; returns how many were seen.

    Two checks: the exact training images (paths), and, for MVTec AD / VisA, the category itself (another copy of
    the dataset has other paths but the same objects).
    """
    category_seen = (dataset, cat) in seen_categories(method)
    if category_seen and not allow:
        raise ZsadInputError(
            f"{cat}: this {method.name} checkpoint was trained on {dataset} {cat}, so results would not be zero-shot; "
            "evaluate on another dataset or pass --allow-seen (results are then flagged)"
        )
    if not seen:
        return len(ds) if category_seen else 0
    n = sum(str(Path(s.image_path).resolve()) in seen for s in ds.samples)
    if n and not allow:
        raise ZsadInputError(
            f"{cat}: {n} of {len(ds)} images were used to train this {method.name} checkpoint, so results would not "
            "be zero-shot; evaluate on other data or pass --allow-seen (results are then flagged)"
        )
    return n


def _datasets(spec: EvalSpec, kw: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """(category, test dataset, normal-reference dataset or None) per requested category.

    Listing checks every folder and file, so it runs before any model is built; ``kw`` (image size, mean, std)
    may come later through ``with_preprocessing``.
    """
    from zsad import data

    kw = kw or {}
    if not spec.root.is_dir():
        raise ZsadInputError(f"{spec.root}: dataset root not found")
    name = spec.dataset.lower()
    if name in ("mvtec", "visa"):
        cls = data.MVTecAD if name == "mvtec" else data.Visa
        cats = spec.categories or cls.list_categories(spec.root)
        out = []
        for c in cats:
            refs = cls(spec.root, c, split="train", **kw) if spec.k_shot > 0 else None
            out.append((c, cls(spec.root, c, split="test", **kw), refs))
        return out
    if name == "folder":
        cat = spec.categories[0] if spec.categories else spec.root.name
        ds = data.Folder(
            spec.root,
            normal_dir=spec.normal_dir,
            abnormal_dir=spec.abnormal_dir,
            mask_dir=spec.mask_dir,
            image_dir=spec.image_dir,
            labels_csv=spec.labels_csv,
            image_glob=spec.image_glob,
            category=cat,
            **kw,
        )
        refs = data.ImageList([str(spec.reference_dir)], **kw) if spec.reference_dir else None
        return [(cat, ds, refs)]
    raise ZsadInputError(f"--dataset {spec.dataset!r}: use mvtec, visa or folder")


def eval_key(spec: EvalSpec) -> dict[str, Any]:
    """The data part of an eval run key (categories may be added to a folder later, not changed)."""
    data = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("categories", "allow_seen")}
    return {"data": data}


def check_eval_resume(method: MethodSpec, spec: EvalSpec, out: Path) -> None:
    """Refuse, before the model loads, a folder holding an evaluation with other settings (checked again after)."""
    key = {**method.key(), **eval_key(spec)}
    check_run_key(out, key, sections=key.keys())


def _references(refs: Any, k: int, seed: int) -> torch.Tensor | None:
    if refs is None:
        return None
    normal = [i for i, s in enumerate(refs.samples) if s.label in (0, None)]
    order = torch.randperm(len(normal), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [normal[i] for i in order[: (k or len(normal))]]
    return torch.stack([refs[i]["image"] for i in chosen]) if chosen else None


def _masks(ds: Any, idx: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """GT masks at model resolution and whether each is known, re-read from disk (masks are small)."""
    from zsad.data import load_mask, squash_mask

    masks = np.zeros((len(idx), size, size), dtype=np.uint8)
    known = np.zeros(len(idx), dtype=bool)
    has_any = any(s.mask_path is not None for s in ds.samples)
    for j, i in enumerate(idx):
        s = ds.samples[i]
        if s.mask_path is not None:
            masks[j] = squash_mask(load_mask(s.mask_path), size).numpy() > 0.5
            known[j] = True
        elif s.label == 0 and has_any:
            known[j] = True  # a normal image of a dataset with masks: empty mask
    return masks, known


def run_eval(
    method: Method,
    spec: EvalSpec,
    out: Path,
    *,
    batch_size: int,
    overlays: int,
    new_progress: Callable[[], Progress],
    console: Console,
    sets: list[tuple[str, Any, Any]] | None = None,
) -> EvalResult:
    """Score every category not yet in ``out``, then metrics over all rows (the caller holds ``out``'s lock)."""
    from zsad.metrics import compute_metrics, mean_over_categories

    bb = method.backbone
    sets = sets if sets is not None else _datasets(spec)  # bad input fails here, before the folder is touched
    for _, ds, refs in sets:
        for d in (ds, refs):
            if d is not None:
                d.with_preprocessing(method.image_size, bb.mean, bb.std)
    seen = training_images(method)
    notes: list[str] = []
    if method.is_transductive:
        notes.append(f"TRANSDUCTIVE: {method.transductive_note}")
    for cat, ds, _ in sets:  # refuse leakage before anything is written
        n_seen = _check_unseen(method, cat, ds, seen, spec.allow_seen, spec.dataset.lower())
        if n_seen:
            notes.append(f"{cat}: {n_seen} of {len(ds)} images were in the training data (NOT zero-shot)")
    claim_output(out, {**method_key(method), **eval_key(spec)})

    def complete(r: dict[str, str]) -> bool:
        return is_number(r["pred_score"]) and bool(r["anomaly_map_path"]) and (out / r["anomaly_map_path"]).is_file()

    log = CsvLog(
        out / "predictions.csv", FIELDS, key=lambda r: (r["category"], identity(r["image_path"])), complete=complete
    )
    if log.repair_note():
        console.print(f"[yellow]{log.repair_note()}[/]; they are scored again", highlight=False)
    names = OutputNames()
    for r in log.rows:
        names.claim(Path(r["anomaly_map_path"]).stem, identity(r["image_path"]), scope=r["category"])
    per_cat: dict[str, dict[str, float]] = {}
    for cat, ds, ref_ds in sets:
        refs = _references(ref_ds, spec.k_shot, spec.seed) if method.supports_few_shot else None
        method.setup(spec.class_name or cat.replace("_", " "), reference_images=refs)
        (out / "maps" / cat).mkdir(parents=True, exist_ok=True)
        done = {r["image_path"] for r in log.rows if r["category"] == cat}
        progress = new_progress()  # one per category: without a terminal each bar is printed once, when it ends
        task = progress.add_task(f"{method.name} | {cat}", total=len(ds), completed=len(done & _paths(ds)))
        with progress:
            label = f"{method.name} | {cat}"
            for sb in score_dataset(method, ds, batch_size, skip_paths=done, progress=progress, label=label):
                rows = []
                for i, p in enumerate(sb.paths):
                    rel = Path("maps") / cat / f"{names.name(p, scope=cat)}.npy"
                    save_npy(out / rel, sb.maps[i])
                    rows.append(
                        {
                            "category": cat,
                            "image_path": p,
                            "gt_label": int(sb.batch["gt_label"][i]),
                            "mask_path": sb.batch["mask_path"][i],
                            "pred_score": float(sb.scores[i]),
                            "anomaly_map_path": rel.as_posix(),
                            "score_parts": parts_json(sb.parts, i),
                        }
                    )
                log.append(rows)
                progress.advance(task, len(rows))
        per_cat[cat] = _category_metrics(log, cat, ds, method, out, overlays, compute_metrics)
    mean = mean_over_categories(per_cat)
    log.rewrite()
    manifest = method.describe()
    result = {
        "categories": per_cat,
        "mean": mean,
        "dataset": spec.dataset,
        "root": str(spec.root),
        "random_weights": bb.random_init,
        "method": method.name,
        "config": manifest["config"],
        "transductive": method.is_transductive,
        "notes": notes,
        "backbone": manifest["backbone"],
        "aupro_note": "pixel_AUPRO = exact curve up to FPR 0.3 (anomalib); pixel_AUPRO_cflow = 200 thresholds, "
        "FPR<0.3 rescaled (CLIP-AD/AnomalyCLIP repos)",
    }
    write_json(out / "metrics.json", result)
    md = metrics_markdown(per_cat, mean, title=_title(method))
    md += "".join(f"\n> {n}\n" for n in notes)
    write_text(out / "metrics.md", md)
    spec_record = {k: str(v) for k, v in vars(spec).items()}
    write_json(
        out / "manifest.json", {**manifest, "command": "eval", "spec": spec_record, "environment": environment()}
    )
    for n in notes:
        console.print(f"[bold yellow]{n}[/]")
    return EvalResult(method.name, _title(method), per_cat, mean, _table(per_cat, mean, _title(method)), notes)


def _paths(ds: Any) -> set[str]:
    return {str(s.image_path) for s in ds.samples}


def _category_metrics(
    log: CsvLog, cat: str, ds: Any, method: Method, out: Path, overlays: int, compute_metrics: Any
) -> dict[str, float]:
    size = method.image_size
    index = {str(s.image_path): i for i, s in enumerate(ds.samples)}
    rows = [r for r in log.rows if r["category"] == cat and r["image_path"] in index]
    parts = decode_parts(rows)
    final = method.finalize_scores(parts) if parts else None
    if final is not None:  # set-level (transductive) re-scoring over the whole category
        for r, v in zip(rows, final, strict=True):
            r["pred_score"] = f"{float(v):.8g}"
    scores = np.array([float(r["pred_score"]) for r in rows])
    labels = np.array([int(r["gt_label"]) for r in rows])
    maps = np.stack([np.load(out / r["anomaly_map_path"]) for r in rows])
    masks, known = _masks(ds, [index[r["image_path"]] for r in rows], size)
    known_lab = labels >= 0
    metrics = compute_metrics(
        scores[known_lab],
        labels[known_lab],
        maps[known_lab] if known.any() else None,
        masks[known_lab] if known.any() else None,
        has_mask=known[known_lab] if known.any() else None,
    )
    thr = choose_threshold(scores, labels=labels)
    for r, lab in zip(rows, thr.apply(scores), strict=True):
        r.update(pred_label=str(int(lab)), image_threshold=f"{thr.value:.8g}")
    if overlays > 0:
        _overlays(rows, maps, masks, known, ds, index, out / "overlays" / cat, overlays)
    return metrics


def _overlays(
    rows: list[dict[str, str]],
    maps: np.ndarray,
    masks: np.ndarray,
    known: np.ndarray,
    ds: Any,
    index: dict[str, int],
    folder: Path,
    n: int,
) -> None:
    from zsad.data import denormalize
    from zsad.viz import render_prediction, save_png

    folder.mkdir(parents=True, exist_ok=True)
    vmin, vmax = float(maps.min()), float(maps.max())  # one colour scale per category (dataset scope)
    anomalous = [i for i, r in enumerate(rows) if r["gt_label"] == "1"][: (n + 1) // 2]
    normal = [i for i, r in enumerate(rows) if r["gt_label"] != "1"][: n - len(anomalous)]
    for i in anomalous + normal:
        item = ds[index[rows[i]["image_path"]]]
        img = denormalize(item["image"], ds.mean, ds.std)
        panel = render_prediction(
            img,
            maps[i],
            vmin,
            vmax,
            gt_mask=masks[i] if known[i] else None,
            score=float(rows[i]["pred_score"]),
            label=rows[i]["pred_label"] == "1",
            scope="dataset",
        )
        save_png(folder / (Path(rows[i]["anomaly_map_path"]).stem + ".png"), panel)


def _title(method: Method) -> str:
    b = method.backbone
    w = "SEEDED RANDOM weights (not a quality result)" if b.random_init else (b.pretrained or "")
    t = f"{method.name} | {b.model_name} @ {b.image_size}px | {w} | k_shot={method.k_shot}"
    return t + (" | TRANSDUCTIVE scores" if method.is_transductive else "")


def write_comparison(results: dict[str, EvalResult], out: Path) -> Table:
    """One table, methods side by side (mean over categories), as comparison.md and comparison.json."""
    lines = ["| method | " + " | ".join(METRIC_KEYS) + " |", "|---|" + "---:|" * len(METRIC_KEYS)]
    table = Table("method", *METRIC_KEYS, title="mean over categories")
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_pct(r.mean.get(k)) for k in METRIC_KEYS) + " |")
        table.add_row(name, *(_pct(r.mean.get(k)) for k in METRIC_KEYS))
    body = ["**Methods side by side** (mean over categories, %)", "", *lines, ""]
    body += [f"- {name}: {r.title}" for name, r in results.items()]
    body += [f"- {name}: {n}" for name, r in results.items() for n in r.notes]
    write_text(out / "comparison.md", "\n".join(body) + "\n")
    data = {
        name: {"title": r.title, "mean": r.mean, "categories": r.per_category, "notes": r.notes}
        for name, r in results.items()
    }
    write_json(out / "comparison.json", data)
    return table


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def metrics_markdown(per_cat: dict[str, dict[str, float]], mean: dict[str, float], title: str) -> str:
    lines = [f"**{title}**", "", "| category | " + " | ".join(METRIC_KEYS) + " |", "|---|" + "---:|" * len(METRIC_KEYS)]
    for cat, m in [*per_cat.items(), ("**mean**", mean)]:
        lines.append(f"| {cat} | " + " | ".join(_pct(m.get(k)) for k in METRIC_KEYS) + " |")
    return "\n".join(lines) + "\n"


def _table(per_cat: dict[str, dict[str, float]], mean: dict[str, float], title: str) -> Table:
    t = Table("category", *METRIC_KEYS, title=title)
    for cat, m in [*per_cat.items(), ("mean", mean)]:
        t.add_row(cat, *(_pct(m.get(k)) for k in METRIC_KEYS))
    return t
