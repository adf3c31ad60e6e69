"""The end of every detect run, in one place: set-level scores, calibration, thresholds, labels and the record.

``zsad detect`` (local), ``--engine ray``, the service (``POST /v1/detect``) and the torch-free runtime
(``zsad detect --model``) all score images their own way, then hand the rows to ``decide``: the same rows and
settings give the same decisions whichever front end scored them. The module needs numpy only (no torch), so the
runtime uses it as it is.

Precedence of the image threshold (docs/reliability.md): a manual value; else known-normal reference images
(their ``normal_quantile``, or a threshold recorded from them earlier, e.g. by ``zsad export``); else the
unlabelled rule (``robust_outlier`` or ``two_mode``) fitted to the current rows; else none (too few images: no
label, ``Threshold.note`` says why). The pixel threshold follows the same order without the manual value, applied
to each image's map maximum. Decisions are made on the values as written (8 significant digits), so anyone reading
``predictions.csv`` back can recompute every label.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsad.errors import ZsadInputError
from zsad.outputs import label_rows
from zsad.thresholds import UNLABELLED_RULES, Threshold, choose_threshold

NONE = Threshold(float("nan"), "none")

# How normal reference images are shared between a few-shot method's memory and the threshold's calibration when
# the user does not say (``k_shot`` None): half memorised, the rest calibrating, so the threshold comes from normal
# images the method has not memorised (a memorised image scores unrealistically low). ``k_shot`` 0 memorises every
# image (no calibration: the unlabelled rule decides), a number memorises that many.
REFERENCE_SPLIT = "half"

# A set-level re-scoring: (parts of the scored set, parts the statistics come from or None) -> scores or None.
Finalize = Callable[[dict[str, np.ndarray], dict[str, np.ndarray] | None], np.ndarray | None]


def memorised(n: int, k_shot: int | None, few_shot: bool) -> int:
    """How many of ``n`` normal reference images a method memorises (``REFERENCE_SPLIT``); the rest calibrate."""
    if not few_shot:
        return 0
    if k_shot is None:
        return (n + 1) // 2 if n >= 2 else n
    if k_shot < 0:
        raise ZsadInputError(f"--k-shot {k_shot}: must be >= 0 (0 = every reference image)")
    return n if k_shot == 0 else min(k_shot, n)


@dataclass(frozen=True)
class Policy:
    """How a run decides: a manual threshold, the unlabelled rule, thresholds recorded from references earlier."""

    threshold: float | None = None
    rule: str = "robust_outlier"
    recorded: Threshold | None = None  # image threshold decided from references before (an export's manifest)
    recorded_pixel: Threshold | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ZsadInputError(f"threshold {self.threshold}: must be a finite number")
        if self.rule not in UNLABELLED_RULES:
            raise ZsadInputError(f"threshold_rule {self.rule!r}: use one of {', '.join(UNLABELLED_RULES)}")


@dataclass(frozen=True)
class Normals:
    """Scores and map maxima of known-normal images: the basis of the ``normal_quantile`` thresholds."""

    scores: np.ndarray
    maxima: np.ndarray


# Normal images scored on demand: given the scored set's parts when its scores were re-scaled set-wide (so the
# normal images get the same set statistics), else None.
Calibrate = Callable[[dict[str, np.ndarray] | None], Normals | None]


@dataclass
class Decision:
    """What ``decide`` concluded: final scores (as written), both thresholds, the labels (None: no decision)."""

    threshold: Threshold
    pixel_threshold: Threshold
    scores: np.ndarray
    labels: np.ndarray | None
    rescaled: bool = False  # set-level re-scoring changed the scores (transductive)
    num_missing: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> int | None:
        """Rows labelled anomalous, or None when no decision was made."""
        return int(self.labels.sum()) if self.labels is not None else None

    def record(self) -> dict[str, Any]:
        """The manifest's part of the decision."""
        return {
            "threshold": vars(self.threshold),
            "pixel_threshold": vars(self.pixel_threshold),
            "num_images": len(self.scores),
            "num_flagged": self.flagged,
            "num_missing_inputs": self.num_missing,
            "rescaled_set_level": self.rescaled,
        }


def written(value: Any) -> float:
    """A number as ``predictions.csv`` holds it (8 significant digits): decisions are made on this value."""
    return float(f"{float(value):.8g}")


def parts_json(parts: dict[str, np.ndarray], i: int) -> str:
    """Image ``i``'s score parts as the JSON cell of predictions.csv."""
    return json.dumps({k: float(v[i]) for k, v in parts.items()})


def decode_parts(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The ``score_parts`` cells of rows as arrays; empty unless every row has the same parts."""
    decoded = [json.loads(r.get("score_parts") or "{}") for r in rows]
    keys = set(decoded[0]) if decoded else set()
    if not keys or any(set(d) != keys for d in decoded):
        return {}
    return {k: np.array([d[k] for d in decoded], dtype=np.float64) for k in keys}


def is_current(row: dict[str, Any]) -> bool:
    """Whether a row's input is still there (rows of vanished inputs are labelled, never fitted on)."""
    return str(row.get("input_missing", "0")) != "1"


def set_scores(
    rows: Sequence[dict[str, Any]], scores: np.ndarray, finalize: Finalize, group: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Set-level re-scoring per group (``group``: the rows' column naming it; None: one set), current rows only.

    Rows of inputs that are gone are re-scaled with their group's current statistics (kept as they are when the
    group has no current row left). Returns the final scores and the parts of every current row re-scaled (the set
    the calibration images are re-scaled with), empty when nothing was re-scaled.
    """
    by_group: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_group.setdefault(str(r.get(group, "")) if group else "", []).append(i)
    final = scores.copy()
    fitted: list[dict[str, np.ndarray]] = []
    for idx in by_group.values():
        cur = [i for i in idx if is_current(rows[i])]
        gone = [i for i in idx if not is_current(rows[i])]
        parts = decode_parts([rows[i] for i in cur])
        if not parts:
            continue
        fin = finalize(parts, None)
        if fin is None:
            continue
        final[cur] = fin
        fitted.append(parts)
        old = decode_parts([rows[i] for i in gone])
        if old and set(old) == set(parts):
            fin_old = finalize(old, parts)
            if fin_old is not None:
                final[gone] = fin_old
    pooled = {k: np.concatenate([p[k] for p in fitted]) for k in fitted[0]} if fitted else {}
    return final, pooled


def thresholds(
    scores: np.ndarray, maxima: np.ndarray, normals: Normals | None, policy: Policy
) -> tuple[Threshold, Threshold]:
    """The image and pixel thresholds by the precedence of the module notes (``scores``/``maxima``: current rows)."""
    have = normals is not None and len(normals.scores) > 0
    thr = _choose(scores, normals.scores if have and normals else None, policy.recorded, policy.rule, policy.threshold)
    pthr = _choose(maxima, normals.maxima if have and normals else None, policy.recorded_pixel, policy.rule)
    return thr, pthr


def _choose(
    values: np.ndarray, normal: np.ndarray | None, recorded: Threshold | None, rule: str, manual: float | None = None
) -> Threshold:
    """Manual, else the normals' quantile, else a threshold recorded from references, else the rule on ``values``."""
    if manual is not None:
        return Threshold(float(manual), "manual")
    if normal is not None:
        return choose_threshold(values, normal_scores=normal)
    if recorded is not None and math.isfinite(recorded.value):
        return recorded
    return choose_threshold(values, unlabelled=rule)


def decide(
    rows: list[dict[str, Any]],
    policy: Policy,
    *,
    finalize: Finalize | None = None,
    normals: Normals | Calibrate | None = None,
    group: str | None = None,
) -> Decision:
    """Final scores, thresholds and labels for every row; writes them into the rows (``pred_score``, labels).

    ``rows`` need ``pred_score``, ``map_max`` and, for set-level re-scoring (``finalize``, a method's
    ``finalize_scores``), ``score_parts``; ``input_missing`` "1" marks rows kept from vanished inputs (labelled,
    never fitted on). ``normals``: known-normal images' scores, or a function scoring them given the re-scaled
    set's parts. Refuses (one line) when no row is current: there is nothing to fit a threshold on.
    """
    scores = np.array([written(r["pred_score"]) for r in rows], dtype=np.float64)
    current = np.array([is_current(r) for r in rows], dtype=bool)
    pooled: dict[str, np.ndarray] = {}
    if finalize is not None:
        final, pooled = set_scores(rows, scores, finalize, group)
        scores = np.array([written(v) for v in final], dtype=np.float64)
    maxima = np.array([written(r["map_max"]) for r in rows], dtype=np.float64)
    calib = normals(pooled or None) if callable(normals) else normals
    thr, pthr = thresholds(scores[current], maxima[current], calib, policy)
    for r, s in zip(rows, scores, strict=True):
        r["pred_score"] = float(s)
    labels = label_rows(rows, thr, pthr, scores)
    notes = [f"no decision: {thr.note}"] if thr.note else []
    return Decision(thr, pthr, scores, labels, bool(pooled), int((~current).sum()), notes)
