"""``zsad benchmark``: every dataset of a suite found under one folder, every method, one table as the papers print it.

Why one evaluation per (dataset, method) folder instead of one big run: each folder is an ordinary ``zsad eval``
output (locked, keyed, resumable row by row), so a killed benchmark resumes where it stopped, a finished dataset is
not scored again, and a method refused on one dataset (the leakage guard: trained on VisA, tested on VisA) or a
broken dataset folder is recorded in the table without stopping the others. Missing datasets are listed, not fatal.

The table: per dataset, image AUROC / AP and pixel AUROC / AUPRO (anomalib's AUPRO, FPR <= 0.3; the repos'
200-threshold variant is in the JSON as ``pixel_AUPRO_cflow``), then the mean per domain. ``table.md``,
``table.json`` and ``table.svg`` (a heat map of the same numbers) are rewritten after every dataset, and each says
what produced it: per method the title line of its evaluations (backbone, image size, weights tag or weights-file
sha256, k-shot; ``zsad.runs.report.title``), the zsad version, and RANDOM WEIGHTS at the top when a method ran on
seeded random weights, so a table that leaves its folder cannot pass for a quality result.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsad import limits
from zsad._version import __version__
from zsad.data.benchmarks import BENCHMARKS, SUITES, BenchmarkInfo, elpv_root
from zsad.errors import ZsadInputError
from zsad.fileio import write_json, write_text
from zsad.outputs import RunLock, check_output_dir, mark_folder
from zsad.progress import Reporter, using
from zsad.progress import reporter as current_reporter
from zsad.runs.build import BackboneSpec, MethodSpec
from zsad.runs.report import title_line, weights_text

COLUMNS = (
    ("image_AUROC", "image AUROC"),
    ("image_AP", "image AP"),
    ("pixel_AUROC", "pixel AUROC"),
    ("pixel_AUPRO", "pixel AUPRO"),
)
AUPRO_NOTE = "AUPRO: anomalib's definition (exact, FPR <= 0.3); the repos' 200-threshold AUPRO is in table.json"
RANDOM_BANNER = "RANDOM WEIGHTS"


@dataclass
class BenchmarkResult:
    """Per dataset: where it was found, and per method its mean metrics or why it has none."""

    suite: str
    found: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # dataset -> method -> metrics
    problems: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> method (or "*") -> message
    producers: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> what produced its numbers
    k_shot: int = 0
    seed: int = 0

    @property
    def random_methods(self) -> list[str]:
        """The methods whose numbers come from seeded random weights."""
        return [m for m, p in self.producers.items() if p.get("random_weights")]

    @property
    def exit_code(self) -> int:
        """0 when every found dataset gave numbers for every method, 1 otherwise."""
        return 1 if self.problems else 0


def find_roots(names: Sequence[str], data_root: Path) -> tuple[dict[str, Path], list[str]]:
    """Each dataset's folder under ``data_root`` (its usual folder names, case-insensitive); ELPV also from pip."""
    entries = {p.name.lower(): p for p in data_root.iterdir() if p.is_dir()} if data_root.is_dir() else {}
    found: dict[str, Path] = {}
    missing = []
    for name in names:
        info = BENCHMARKS[name]
        hit = next((entries[f.lower()] for f in info.folders if f.lower() in entries), None)
        if hit is None and name == "elpv":
            hit = elpv_root()
        if hit is None:
            missing.append(name)
        else:
            found[name] = hit
    return found, missing


def benchmark(
    suite: str,
    data_root: str | Path,
    out: str | Path,
    *,
    methods: str | Sequence[str] = ("winclip",),
    options: dict[str, dict[str, Any]] | None = None,
    backbone: BackboneSpec | str | dict[str, Any] | None = None,
    checkpoints: str | Path | Sequence[str | Path] = (),
    datasets: str | Sequence[str] = (),
    k_shot: int = 0,
    batch_size: int = 8,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> BenchmarkResult:
    """Evaluate ``methods`` on every dataset of ``suite`` (or only ``datasets``) found under ``data_root``.

    ``backbone`` is a ``BackboneSpec``, a model name or a dict of its fields (``BackboneSpec.of``).
    """
    from zsad.data.spec import DatasetSpec
    from zsad.runs.build import as_int, as_names, as_options, as_path, as_paths, route_checkpoints, specs_for
    from zsad.runs.evaluate import evaluate, method_folder

    with using(reporter):
        say = current_reporter()
        if not isinstance(suite, str):
            raise TypeError(f"suite: expected a suite name (str), not {type(suite).__name__}")
        data_root, out = as_path(data_root, "data_root"), as_path(out, "out")
        methods = as_names(methods, "methods", "a method name (str)")
        datasets = as_names(datasets, "datasets", "a dataset name (str)")
        options = as_options(options, "options")
        checkpoint_paths = as_paths(checkpoints, "checkpoints")
        seed, k_shot = as_int(seed, "seed"), as_int(k_shot, "k_shot")
        backbone = BackboneSpec.of(backbone, seed=seed)
        limits.BATCH_SIZE.check(as_int(batch_size, "batch_size"))
        if suite not in SUITES:
            raise ZsadInputError(f"--suite {suite!r}: use one of {', '.join(SUITES)}")
        names = list(SUITES[suite])
        for d in datasets:
            if d not in names:
                raise ZsadInputError(f"--dataset {d!r}: not in suite {suite} ({', '.join(names)})")
        names = [n for n in names if not datasets or n in datasets]
        if not data_root.is_dir():
            raise ZsadInputError(f"--root {data_root}: folder not found")
        # every method, option and checkpoint checked before any dataset is read or any model loads
        routed = route_checkpoints(methods, checkpoint_paths)
        specs = specs_for(methods, options, backbone, routed, batch_size)
        check_output_dir(out, kind="benchmark")
        result = BenchmarkResult(suite, k_shot=k_shot, seed=seed)
        result.producers = {m: producer(s, k_shot) for m, s in zip(methods, specs, strict=True)}
        result.found, result.missing = find_roots(names, data_root)
        with RunLock(out):
            mark_folder(out, "benchmark", "benchmark")
            if result.missing:
                say.message(f"not found under {data_root} (skipped): {', '.join(result.missing)}", "note")
            write_table(result, list(methods), out, data_root)  # from the start: a killed run still has one
            for name, root in result.found.items():
                result.metrics[name] = {}
                spec = DatasetSpec(name, root, k_shot=k_shot, seed=seed)
                for method in methods:
                    where = out / name / method_folder(method)
                    say.message(f"{name} ({root}) | {method}")
                    try:
                        got = evaluate(spec, where, methods=[method], options=options, backbone=backbone,
                                       checkpoints=[routed[method]] if method in routed else [],
                                       batch_size=batch_size, overlays=0)  # fmt: skip
                    except ZsadInputError as e:  # leakage guard, a broken folder: recorded, the rest goes on
                        msg = " ".join(str(e).split())
                        result.problems.setdefault(name, {})[method] = msg
                        say.message(f"{name} | {method}: {msg}", "warning")
                        continue
                    result.metrics[name][method] = got[method].mean
                    result.producers[method]["title"] = got[method].title  # the built method's own word
                write_table(result, list(methods), out, data_root)
        return result


def producer(spec: MethodSpec, k_shot: int) -> dict[str, Any]:
    """What will produce a method's numbers, known from its checked spec before any model loads.

    The title has ``zsad.runs.report.title``'s format; once the method has run, its own title replaces it.
    """
    b = spec.backbone
    key = b.key()
    k = k_shot if spec.cls.supports_few_shot else 0
    weights = weights_text(b.random_init, key["pretrained"], key["weights"])
    transductive = spec.cls.transductive_for(spec.config)
    line = title_line(spec.name, key["model_name"], key["image_size"], weights, k, transductive)
    checkpoint = None
    if spec.checkpoint is not None:
        from zsad.train import read_manifest

        checkpoint = {"path": str(spec.checkpoint), "sha256": read_manifest(spec.checkpoint)[1].get("sha256")}
    return {"title": line, "backbone": key, "random_weights": b.random_init, "k_shot": k, "checkpoint": checkpoint}


def _backbone_text(p: dict[str, Any]) -> str:
    b = p["backbone"]
    weights = weights_text(p["random_weights"], b["pretrained"], b["weights"])
    return f"{b['model_name']} @ {b['image_size']}px, {weights}"


def provenance(result: BenchmarkResult) -> list[str]:
    """The lines that say what produced a table: a RANDOM WEIGHTS banner, versions, the backbone(s), each method."""
    lines = []
    rnd = result.random_methods
    if rnd:
        lines.append(f"{RANDOM_BANNER}: {', '.join(rnd)} ran on a seeded random backbone (--pretrained none); "
                     "these numbers test the plumbing and say nothing about quality")  # fmt: skip
    lines.append(f"zsad {__version__} | k-shot {result.k_shot} | seed {result.seed}")
    backbones = {_backbone_text(p) for p in result.producers.values()}
    if len(backbones) == 1:
        lines.append(f"backbone (every method): {backbones.pop()}")
    elif backbones:
        lines.append("backbones differ between methods: each is named on its method's line")
    for p in result.producers.values():
        ck = p.get("checkpoint")
        lines.append(p["title"] + (f" | checkpoint {ck['path']}" if ck else ""))
    return lines


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _rows(result: BenchmarkResult, methods: list[str]) -> list[tuple[str, BenchmarkInfo | None, dict[str, Any]]]:
    """(dataset or mean label, info, method -> metrics) in suite order, then the mean per domain."""
    rows: list[tuple[str, BenchmarkInfo | None, dict[str, Any]]] = []
    for name in SUITES[result.suite]:
        if name in result.found:
            rows.append((name, BENCHMARKS[name], result.metrics.get(name, {})))
    for domain in ("industrial", "medical"):
        members = [r for r in rows if r[1] is not None and r[1].domain == domain]
        if len(members) < 2:
            continue
        mean: dict[str, dict[str, float]] = {}
        for m in methods:
            for key, _ in COLUMNS:
                vals = [float(r[2][m][key]) for r in members if m in r[2] and key in r[2][m]]
                vals = [v for v in vals if not math.isnan(v)]
                if vals:
                    mean.setdefault(m, {})[key] = sum(vals) / len(vals)
        rows.append((f"mean ({domain})", None, mean))
    return rows


def write_table(result: BenchmarkResult, methods: list[str], out: Path, data_root: Path) -> None:
    """``table.md``, ``table.json`` and ``table.svg`` from what is done so far."""
    rows = _rows(result, methods)
    head = "| dataset | labels | " + " | ".join(f"{m}: {label}" for m in methods for _, label in COLUMNS) + " |"
    made = provenance(result)
    banner = [f"> **{made.pop(0)}.**", ""] if made and made[0].startswith(RANDOM_BANNER) else []
    lines = [f"# zsad benchmark: suite {result.suite}", "", *banner, "Produced by:", "", *(f"- {x}" for x in made), "",
             f"Data root: `{data_root}`. {AUPRO_NOTE}.", "", head,
             "|---|---|" + "---:|" * (len(methods) * len(COLUMNS))]  # fmt: skip
    for name, info, per in rows:
        labels = "" if info is None else info.labels
        cells = []
        for m in methods:
            if m in result.problems.get(name, {}):
                cells += ["refused" if "zero-shot" in result.problems[name][m] else "error"] * len(COLUMNS)
            else:
                cells += [_pct(per.get(m, {}).get(k)) for k, _ in COLUMNS]
        title = name if info is None else f"{info.title}"
        lines.append(f"| {title} | {labels} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("`-`: not defined (image-level datasets have no pixel metrics; sets whose images are all anomalous")
    lines.append("have no image AUROC/AP), or not done yet.")
    if result.missing:
        lines.append(f"\nNot found under the data root (skipped): {', '.join(result.missing)}.")
    for name, probs in result.problems.items():
        for m, msg in probs.items():
            lines.append(f"\n- {name} / {m}: {msg}")
    write_text(out / "table.md", "\n".join(lines) + "\n")
    write_json(
        out / "table.json",
        {
            "suite": result.suite,
            "data_root": str(data_root),
            "methods": methods,
            "random_weights": bool(result.random_methods),
            "produced_by": {
                "zsad_version": __version__,
                "k_shot": result.k_shot,
                "seed": result.seed,
                "methods": result.producers,
            },
            "aupro": AUPRO_NOTE,
            "found": {k: str(v) for k, v in result.found.items()},
            "missing": result.missing,
            "datasets": {
                name: {
                    "title": BENCHMARKS[name].title,
                    "labels": BENCHMARKS[name].labels,
                    "domain": BENCHMARKS[name].domain,
                    "metrics": per,
                    "problems": result.problems.get(name, {}),
                }
                for name, per in result.metrics.items()
            },
        },
    )
    write_text(out / "table.svg", table_svg(rows, methods, result))


def table_svg(rows: list[tuple[str, BenchmarkInfo | None, dict[str, Any]]], methods: list[str],
              result: BenchmarkResult) -> str:  # fmt: skip
    """The table as a heat map (white at 50, dark green at 100), one column per method and metric.

    Above it, what produced it (``provenance``): the RANDOM WEIGHTS banner in red, then one line each.
    """
    made = provenance(result)
    cw, ch, left, line_h = 92, 24, 170, 15
    head = 26 + line_h * len(made)  # below the title and the provenance lines
    top = head + 42
    cols = [(m, k, label) for m in methods for k, label in COLUMNS]
    text_w = max((len(x) for x in made), default=0) * 6 + 16  # about 6 px per character at font-size 10
    w, h = max(left + cw * len(cols) + 10, text_w), top + ch * len(rows) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             'font-size="12">', f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="8" y="18" font-size="14">zsad benchmark: {html.escape(result.suite)}</text>']  # fmt: skip
    for i, line in enumerate(made):
        style = ' fill="#c80000" font-weight="bold"' if line.startswith(RANDOM_BANNER) else ""
        parts.append(f'<text x="8" y="{26 + line_h * (i + 1) - 3}" font-size="10"{style}>{html.escape(line)}</text>')
    for j, (m, _, label) in enumerate(cols):
        x = left + j * cw + cw / 2
        parts.append(f'<text x="{x}" y="{head + 16}" text-anchor="middle">{html.escape(m)}</text>')
        parts.append(f'<text x="{x}" y="{head + 32}" text-anchor="middle" font-size="10">{html.escape(label)}</text>')
    for i, (name, info, per) in enumerate(rows):
        y = top + i * ch
        title = name if info is None else info.title
        parts.append(f'<text x="8" y="{y + 16}">{html.escape(title)}</text>')
        for j, (m, k, _) in enumerate(cols):
            v = per.get(m, {}).get(k)
            ok = v is not None and not math.isnan(float(v))
            t = min(max((float(v) - 0.5) / 0.5, 0.0), 1.0) if ok else 0.0
            fill = f"rgb({int(255 - 215 * t)},{int(255 - 95 * t)},{int(255 - 215 * t)})" if ok else "#eeeeee"
            x = left + j * cw
            parts.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{fill}"/>')
            colour = "white" if t > 0.6 else "black"
            parts.append(f'<text x="{x + cw / 2}" y="{y + 16}" text-anchor="middle" fill="{colour}">'
                         f"{_pct(float(v)) if ok else '-'}</text>")  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


__all__ = ["BenchmarkResult", "benchmark", "find_roots", "producer", "provenance", "write_table"]
