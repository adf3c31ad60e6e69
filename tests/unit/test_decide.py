"""``zsad.runs.decide``, the end of every detect run, on hand-computed cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from zsad.errors import ZsadInputError
from zsad.runs.decide import Normals, Policy, decide, memorised, thresholds
from zsad.thresholds import Threshold


def _rows(scores: list[float], maxima: list[float] | None = None, missing: set[int] = frozenset()) -> list[dict]:
    maxima = maxima or [s * 2 for s in scores]
    return [
        {"pred_score": s, "map_max": m, "input_missing": "1" if i in missing else "0", "score_parts": "{}"}
        for i, (s, m) in enumerate(zip(scores, maxima, strict=True))
    ]


def test_precedence_manual_then_normals_then_recorded_then_rule() -> None:
    scores = np.array([1.0, 2.0, 3.0, 10.0])
    normals = Normals(np.array([0.0, 4.0]), np.array([1.0, 5.0]))
    recorded = Threshold(7.0, "normal_quantile")
    thr, pthr = thresholds(scores, scores, normals, Policy(threshold=2.5, recorded=recorded))
    assert (thr.value, thr.source) == (2.5, "manual")
    assert pthr.source == "normal_quantile" and pthr.value == pytest.approx(np.quantile([1.0, 5.0], 0.99))
    thr, _ = thresholds(scores, scores, normals, Policy(recorded=recorded))
    assert thr.source == "normal_quantile" and thr.value == pytest.approx(0.0 + 0.99 * 4.0)
    thr, pthr = thresholds(scores, scores, None, Policy(recorded=recorded))
    assert thr == recorded and pthr.source == "robust_outlier"  # no pixel threshold recorded: the rule
    thr, _ = thresholds(scores, scores, None, Policy())
    med = 2.5
    mad = float(np.median(np.abs(scores - med)))  # |1-2.5|, |2-2.5|, |3-2.5|, |10-2.5| -> median 1.0
    assert thr.source == "robust_outlier" and thr.value == pytest.approx(med + 3 * 1.4826 * mad)
    thr, _ = thresholds(scores, scores, None, Policy(rule="two_mode"))
    assert thr.source == "two_mode" and thr.value == pytest.approx((3.0 + 10.0) / 2)


def test_too_few_images_give_no_label_and_say_why() -> None:
    rows = _rows([0.1, 0.9])
    d = decide(rows, Policy())
    assert d.labels is None and d.flagged is None and d.threshold.source == "none"
    assert all(r["pred_label"] == "" and r["threshold"] == "" for r in rows)
    assert d.notes and "needs at least 3 images" in d.notes[0]


def test_vanished_rows_are_labelled_but_not_fitted() -> None:
    rows = _rows([1.0, 2.0, 3.0, 100.0, 50.0], missing={4})
    d = decide(rows, Policy(rule="two_mode"))
    assert d.threshold.value == pytest.approx((3.0 + 100.0) / 2)  # 50 (gone) left out of the fit
    assert [r["pred_label"] for r in rows] == ["0", "0", "0", "1", "0"]  # yet labelled by it
    assert d.num_missing == 1 and d.record()["num_missing_inputs"] == 1


def test_decisions_are_made_on_the_values_as_written() -> None:
    """8 significant digits, as predictions.csv holds them: a reader recomputes every label exactly."""
    rows = _rows([0.1234567891, 0.2, 0.3])
    d = decide(rows, Policy(threshold=0.12345678))
    assert rows[0]["pred_score"] == 0.12345679 and d.labels is not None and bool(d.labels[0])
    assert rows[0]["threshold"] == "0.12345678"


def test_set_level_rescoring_per_group_and_vanished_rows_rescaled_with_their_group() -> None:
    def finalize(parts: dict[str, np.ndarray], fit: dict[str, np.ndarray] | None) -> np.ndarray:
        ref = (fit or parts)["s"]
        return (parts["s"] - ref.min()) / (ref.max() - ref.min())

    values = {"a": [1.0, 3.0, 5.0, 9.0], "b": [10.0, 20.0, 30.0]}
    rows = []
    for g, vs in values.items():
        for v in vs:
            rows.append({"pred_score": v, "map_max": v, "group": g, "score_parts": json.dumps({"s": v})})
    rows[3]["input_missing"] = "1"  # group a's 9.0: re-scaled with a's current statistics (1..5)
    normals_seen: list[dict[str, np.ndarray] | None] = []

    def normals(parts: dict[str, np.ndarray] | None) -> Normals | None:
        normals_seen.append(parts)
        return None

    d = decide(rows, Policy(threshold=0.5), finalize=finalize, normals=normals, group="group")
    assert [r["pred_score"] for r in rows] == pytest.approx([0.0, 0.5, 1.0, 2.0, 0.0, 0.5, 1.0])
    assert d.rescaled
    seen = normals_seen[0]
    assert seen is not None and sorted(seen["s"]) == [1.0, 3.0, 5.0, 10.0, 20.0, 30.0]  # current rows, pooled


def test_reference_split_and_bad_policy() -> None:
    assert memorised(10, None, True) == 5 and memorised(9, None, True) == 5 and memorised(1, None, True) == 1
    assert memorised(10, 0, True) == 10 and memorised(10, 3, True) == 3 and memorised(10, 30, True) == 10
    assert memorised(10, None, False) == 0
    with pytest.raises(ZsadInputError, match="--k-shot -1"):
        memorised(10, -1, True)
    with pytest.raises(ZsadInputError, match="threshold_rule"):
        Policy(rule="median")
    with pytest.raises(ZsadInputError, match="finite"):
        Policy(threshold=math.inf)


def test_the_decision_stage_needs_no_torch() -> None:
    """The torch-free runtime imports it as it is."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from zsad.runs import Policy, DetectFolder, decide\n"
        "import zsad.runs.decide, zsad.runs.folder, zsad.sysinfo\n"
        "print(zsad.sysinfo.environment()['torch'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
