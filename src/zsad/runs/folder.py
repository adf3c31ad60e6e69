"""A resumable detect output folder, opened and closed the same way by every front end that writes one.

``DetectFolder`` claims the folder for a run key (a foreign or other-settings folder is refused), loads
``predictions.csv`` (repairing a torn run), names maps uniquely, knows which inputs are done, and keeps this run's
failures in ``errors.csv``. ``decide`` and ``close`` then end the run: rows of vanished inputs marked, decisions by
``zsad.runs.decide``, ``manifest.json`` and the one-line summary. Torch-free: the runtime uses it as it is.
The caller holds the folder's ``RunLock``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from zsad.fileio import save_npy, write_json
from zsad.outputs import (
    DETECT_FIELDS,
    CsvLog,
    DetectResult,
    OutputNames,
    claim_output,
    detect_row,
    identity,
    is_number,
    mark_missing,
    nothing_scored,
)
from zsad.progress import reporter
from zsad.runs.decide import Calibrate, Decision, Finalize, Normals, Policy, decide, is_current

T = TypeVar("T")


class DetectFolder:
    """A claimed detect folder: the row log, map names, the inputs done, this run's error rows."""

    def __init__(self, out: Path, key: dict[str, Any], command: str) -> None:
        self.out = out
        say = reporter()
        claim_output(out, key, "detect", command)
        (out / "maps").mkdir(exist_ok=True)

        def complete(r: dict[str, str]) -> bool:
            path = r["anomaly_map_path"]
            return is_number(r["pred_score"]) and bool(path) and (out / path).is_file()

        self.log = CsvLog(
            out / "predictions.csv", DETECT_FIELDS, key=lambda r: identity(r["image_path"]), complete=complete
        )
        if self.log.repair_note():
            say.message(f"{self.log.repair_note()}; they are scored again", "note")
        self.names = OutputNames()
        for r in self.log.rows:
            self.names.claim(Path(r["anomaly_map_path"]).stem, identity(r["image_path"]))
        self.done = {r["image_path"] for r in self.log.rows}
        (out / "errors.csv").unlink(missing_ok=True)  # this run's failures only (earlier ones are retried)
        self.errors = CsvLog(out / "errors.csv", ["image_path", "error"])
        self.failed: list[str] = []

    def pending(self, inputs: Sequence[T]) -> list[T]:
        """The inputs an earlier run has not scored yet (saying how many of them it had)."""
        left = [p for p in inputs if str(p) not in self.done]
        if self.done:
            n = len(inputs)
            reporter().message(f"resuming: {n - len(left)} of {n} images already scored in {self.out}")
        return left

    def fail(self, path: str, error: str) -> None:
        """One input that ends as an error row (``--skip-bad``)."""
        reporter().message(f"skipped: {error}", "note")
        self.errors.append([{"image_path": path, "error": error}])
        self.failed.append(path)

    def write_map(
        self, path: str, score: float, amap: np.ndarray, image_hw: tuple[int, int], parts: str, skip_bad: bool
    ) -> dict[str, Any] | None:
        """Save one image's map (already at its written size) and return its row; an unwritable map fails it."""
        rel = Path("maps") / f"{self.names.name(path)}.npy"
        try:
            save_npy(self.out / rel, amap)
        except OSError as e:  # a full disk, an unwritable map: an error row, not a row
            if not skip_bad:
                raise
            self.fail(path, f"{path}: cannot write {rel.as_posix()}: {e.strerror or e}")
            return None
        return detect_row(path, score, rel, amap, image_hw, parts)

    def decide(
        self,
        listed: set[str],
        policy: Policy,
        base: dict[str, Any],
        *,
        finalize: Finalize | None = None,
        normals: Normals | Calibrate | None = None,
    ) -> Decision:
        """Mark vanished inputs, refuse a run with no current row (manifest written first), decide, rewrite."""
        mark_missing(self.log.rows, listed)  # inputs that vanished keep their row, marked
        if not any(is_current(r) for r in self.log.rows):
            n = len(self.log.rows)
            manifest = {**base, "num_images": n, "num_missing_inputs": n, "num_failed": len(self.failed)}
            write_manifest(self.out, manifest)
            raise nothing_scored(self.out, len(self.failed), len(self.log.rows))
        decision = decide(self.log.rows, policy, finalize=finalize, normals=normals)
        for note in decision.notes:
            reporter().message(note, "warning")
        self.log.rewrite()  # the labels are on disk before anything else is drawn from them
        return decision

    def close(
        self, decision: Decision, base: dict[str, Any], skipped: str = "", overlay_errors: Sequence[dict[str, str]] = ()
    ) -> DetectResult:
        """Write the rows and the manifest and say the one-line summary; returns the run's result."""
        self.log.rewrite()
        return conclude(self.out, decision, base, len(self.failed), skipped, overlay_errors)


def conclude(
    out: Path,
    decision: Decision,
    base: dict[str, Any],
    failed: int,
    skipped: str = "",
    overlay_errors: Sequence[dict[str, str]] = (),
) -> DetectResult:
    """The end of every detect folder: ``manifest.json`` (settings, decisions, counts) and the one-line summary."""
    write_manifest(out, {**base, **decision.record(), "num_failed": failed, "overlay_errors": list(overlay_errors)})
    n = len(decision.scores)
    result = DetectResult(
        out, n, decision.flagged, decision.threshold, failed, decision.num_missing, len(overlay_errors), skipped
    )
    reporter().message(result.summary())
    return result


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """``manifest.json`` of a detect folder, with the environment that produced it."""
    from zsad.sysinfo import environment

    write_json(out / "manifest.json", {**manifest, "environment": environment()})
