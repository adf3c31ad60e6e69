"""How results are reported: the metric keys, one method's ``EvalResult``, and markdown / JSON files of both.

Front ends render ``EvalResult`` their own way (the CLI as rich tables); the files are written here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsad.fileio import write_json, write_text
from zsad.methods.base import Method

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
AUPRO_NOTE = (
    "pixel_AUPRO = exact curve up to FPR 0.3 (anomalib); pixel_AUPRO_cflow = 200 thresholds, FPR<0.3 rescaled "
    "(CLIP-AD/AnomalyCLIP repos)"
)


@dataclass
class EvalResult:
    """One method's evaluation: per-category and mean metrics (fractions), its title line and its notes."""

    method: str
    title: str
    per_category: dict[str, dict[str, float]]
    mean: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, list[str]]]:
        """(category, percentages in ``METRIC_KEYS`` order) per category, then the mean."""
        return [
            (cat, [pct(m.get(k)) for k in METRIC_KEYS]) for cat, m in [*self.per_category.items(), ("mean", self.mean)]
        ]


def pct(v: float | None) -> str:
    """A metric as a percentage with one decimal, or '-' when it is undefined."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


RANDOM_WEIGHTS = "SEEDED RANDOM weights (not a quality result)"


def weights_text(random_init: bool, tag: str | None, weights: dict[str, Any] | None) -> str:
    """How a result names its weights: random ones loudly, a weights file by name and sha256, else the open_clip tag.

    A file's name alone does not identify it (every fine-tune is ``model.pt``); its sha256 does.
    """
    if random_init:
        return RANDOM_WEIGHTS
    if weights and weights.get("sha256"):
        return f"{Path(str(weights.get('path', ''))).name} sha256:{str(weights['sha256'])[:16]}"
    return tag or ""


def title_line(name: str, model_name: str, image_size: int, weights: str, k_shot: int, transductive: bool) -> str:
    """The one format of a title (``title`` from a built method, the benchmark table also from a spec)."""
    t = f"{name} | {model_name} @ {image_size}px | {weights} | k_shot={k_shot}"
    return t + (" | TRANSDUCTIVE scores" if transductive else "")


def title(method: Method) -> str:
    """The line that says what a result was measured with (random weights and transductive scores loudly)."""
    b = method.backbone
    w = weights_text(b.random_init, b.pretrained, getattr(b, "weights_info", None))
    return title_line(method.name, b.model_name, b.image_size, w, method.k_shot, method.is_transductive)


def metrics_markdown(result: EvalResult) -> str:
    """``metrics.md``: the per-category table, the mean, and the notes."""
    lines = [
        f"**{result.title}**",
        "",
        "| category | " + " | ".join(METRIC_KEYS) + " |",
        "|---|" + "---:|" * len(METRIC_KEYS),
    ]
    for cat, values in result.rows():
        lines.append(f"| {'**mean**' if cat == 'mean' else cat} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n" + "".join(f"\n> {n}\n" for n in result.notes)


def write_metrics(
    out: Path, result: EvalResult, method: Method, dataset: str, root: Path, evaluation: dict[str, Any] | None = None
) -> None:
    """``metrics.json`` and ``metrics.md`` of one method's evaluation.

    ``evaluation``: how maps were made and compared (resolution, tiles), recorded as ``metrics.json``'s
    ``evaluation`` so that a number read later says whether its pixels were pooled at model or native resolution.
    """
    manifest = method.describe()
    data: dict[str, Any] = {
        "categories": result.per_category,
        "mean": result.mean,
        "dataset": dataset,
        "root": str(root),
        "random_weights": method.backbone.random_init,
        "method": method.name,
        "config": manifest["config"],
        "transductive": method.is_transductive,
        "notes": result.notes,
        "backbone": manifest["backbone"],
        "aupro_note": AUPRO_NOTE,
        "evaluation": evaluation or {"resolution": "model", "tiles": None},
    }
    write_json(out / "metrics.json", data)
    write_text(out / "metrics.md", metrics_markdown(result))


def write_comparison(results: dict[str, EvalResult], out: Path) -> None:
    """Methods side by side (mean over categories) as ``comparison.md`` and ``comparison.json``."""
    lines = ["| method | " + " | ".join(METRIC_KEYS) + " |", "|---|" + "---:|" * len(METRIC_KEYS)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(pct(r.mean.get(k)) for k in METRIC_KEYS) + " |")
    body = ["**Methods side by side** (mean over categories, %)", "", *lines, ""]
    body += [f"- {name}: {r.title}" for name, r in results.items()]
    body += [f"- {name}: {n}" for name, r in results.items() for n in r.notes]
    write_text(out / "comparison.md", "\n".join(body) + "\n")
    data = {
        name: {"title": r.title, "mean": r.mean, "categories": r.per_category, "notes": r.notes}
        for name, r in results.items()
    }
    write_json(out / "comparison.json", data)
