"""An output folder holds one run: one writer at a time, one row and one file set per input, resumable after a crash.

* **One writer.** ``RunLock`` holds an advisory lock on ``.zsad.lock`` for the whole run; a second run into the
  same folder is refused in one line naming the holder's PID (two writers would interleave duplicate rows).
* **One run.** ``run_key.json`` records what decides the results (method, options, backbone, inputs); a rerun with
  anything else is refused, so rows of two runs are never mixed.
* **One row per input.** ``CsvLog`` appends rows with one ``write`` + ``fsync`` per batch and, on load, drops
  incomplete rows (a crash mid-write, a map file that never made it) and duplicates, keeping the newest.
* **One file per input.** ``OutputNames`` gives each input a file stem made of a readable part and a hash of its
  full resolved path; two inputs can never share a map or overlay file, however their paths look.
* **Only its own folders.** Every folder zsad writes carries ``.zsad-folder.json`` naming what made it (a detect
  run, a checkpoint, an export...). zsad writes only into a new or empty folder or one of the same kind: a user's
  folder, a checkpoint or an export is never overwritten by a mistyped ``--out``. Marked folders are also never
  read as inputs by a recursive listing (their overlays are not products).
* **Spreadsheet-safe cells.** Every CSV cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``,
  tab, CR) is written with a leading ``'``, as OWASP advises; numbers are left alone and zsad reads it back exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import socket
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsad.errors import ZsadInputError, one_line
from zsad.fileio import atomic_write, default_mode, write_json

if TYPE_CHECKING:
    import numpy as np

    from zsad.thresholds import Threshold

LOCK_FILE = ".zsad.lock"
RUN_KEY = "run_key.json"
MARKER = ".zsad-folder.json"


# ---------------------------------------------------------------------------------------------- identities
def abs_path(path: str | os.PathLike[str]) -> str:
    """The absolute path written in predictions.csv (symlinks kept, so users recognise their own path)."""
    return os.path.abspath(os.fspath(path))


def identity(path: str | os.PathLike[str]) -> str:
    """What makes two inputs the same file: the fully resolved path."""
    return os.path.realpath(os.fspath(path))


_UNSAFE = re.compile(r"[^\w.-]+")


def readable_stem(path: str | os.PathLike[str], limit: int = 40) -> str:
    """A file-system-safe, length-capped rendering of the file's stem (the hash beside it makes it unique)."""
    stem = unicodedata.normalize("NFC", Path(os.fspath(path)).stem)
    safe = _UNSAFE.sub("_", stem).strip("._") or "image"
    return safe.encode("utf-8", "ignore")[:limit].decode("utf-8", "ignore") or "image"


def _digest(ident: str) -> str:
    return hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()


class OutputNames:
    """Per-input file stems ``<readable stem>-<16 hex of sha256(resolved path)>``, unique within a run.

    A 64-bit prefix makes a clash vanishingly rare; a clash with a name already taken by another input (checked
    here, not assumed) falls back to the full 256-bit digest, so distinct inputs always get distinct files.
    """

    def __init__(self) -> None:
        self._owner: dict[tuple[str, str], str] = {}  # (scope, stem) -> identity

    def claim(self, stem: str, ident: str, scope: str = "") -> None:
        """Register a name an earlier run already gave to ``ident`` (resume)."""
        self._owner.setdefault((scope, stem), ident)

    def name(self, path: str | os.PathLike[str], scope: str = "") -> str:
        """The stem for ``path`` within ``scope`` (a subfolder such as an eval category)."""
        ident = identity(path)
        digest = _digest(ident)
        owner = ""
        for candidate in (f"{readable_stem(path)}-{digest[:16]}", f"{readable_stem(path, 16)}-{digest}"):
            owner = self._owner.setdefault((scope, candidate), ident)
            if owner == ident:
                return candidate
        raise RuntimeError(f"sha256 collision between {owner} and {ident}")  # pragma: no cover


# ---------------------------------------------------------------------------------------------- output folder
KINDS = {
    "detect": "the results of a zsad detect run",
    "eval": "the results of a zsad eval run",
    "comparison": "a zsad eval comparison of several methods",
    "benchmark": "a zsad benchmark",
    "serve": "the results of zsad serve",
    "checkpoint": "a zsad checkpoint (zsad train or import-checkpoint)",
    "export": "a model made by zsad export",
}
# Files an empty folder may hold: the file managers' own, and the lock a refused run may have left.
_IGNORED = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", LOCK_FILE})


def _json_dict(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_kind(folder: Path) -> str | None:
    """What made ``folder``: the kind its marker names, a kind recognised from an older zsad's files, or None.

    Folders written before markers existed are recognised by their run key or manifest, so they still resume.
    """
    marker = folder / MARKER
    if marker.is_file():
        kind = _json_dict(marker).get("kind")
        if kind not in KINDS:
            raise ZsadInputError(f"{marker}: unreadable or unknown kind {kind!r}; use another --out")
        return str(kind)
    key = _json_dict(folder / RUN_KEY)
    if key:
        if key.get("command") == "serve":
            return "serve"
        if "data" in key:
            return "eval"
        if "inputs" in key or key.get("engine") == "runtime":
            return "detect"
    manifest = _json_dict(folder / "manifest.json")
    if "model_sha256" in manifest and "model_file" in manifest:
        return "export"
    if "sha256" in manifest and "format_version" in manifest:
        return "checkpoint"
    if (folder / "train_state.pt").is_file() or (folder / "training_images.txt").is_file():
        return "checkpoint"  # an interrupted zsad train
    if "suite" in _json_dict(folder / "table.json"):
        return "benchmark"
    if (folder / "comparison.json").is_file():
        return "comparison"
    return None


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


STATION_DB = "station.db"  # a station's SQLite file (and its -wal, -shm, .lock) in a serve folder


def check_folder(out: Path, kind: str, flag: str = "--out") -> None:
    """Refuse, in one line naming what it holds, a folder that is neither new, empty nor one of ``kind``."""
    assert kind in KINDS, kind
    if not out.is_dir():
        return
    found = folder_kind(out)
    if found == kind:
        return
    names = [p.name for p in out.iterdir() if p.name not in _IGNORED]
    if kind == "serve" and found is None:  # `zsad profile create --db OUT/station.db` may come before the server
        names = [n for n in names if not n.startswith(STATION_DB)]
    if found is not None:
        raise ZsadInputError(
            f"{flag} {out}: holds {KINDS[found]} ({_listing(names)}), which this command must not overwrite; "
            f"use another {flag}"
        )
    if names:
        raise ZsadInputError(
            f"{flag} {out}: not empty and not made by zsad (holds {_listing(names)}); zsad writes only into a new or "
            f"empty folder or one it made: use another {flag}"
        )


def mark_folder(out: Path, kind: str, command: str) -> None:
    """Check ``out`` again (under the run's lock) and record what made it; an existing marker is kept."""
    check_folder(out, kind)
    _write_marker(out, kind, command)


def _write_marker(out: Path, kind: str, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(out / MARKER, {"zsad_folder": 1, "kind": kind, "command": command, "created": stamp})


def is_zsad_folder(folder: Path) -> bool:
    """Whether ``folder`` carries zsad's marker (listings never descend into one: its images are results)."""
    return (folder / MARKER).is_file()


def check_output_dir(out: Path, flag: str = "--out", *, kind: str) -> None:
    """Before any work: ``out`` is, or can become, a folder this process may write into, holding nothing foreign."""
    try:
        if out.exists() and not out.is_dir():
            raise ZsadInputError(f"{flag} {out}: is a file, not a folder")
        anchor = out
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
    except PermissionError as e:
        raise ZsadInputError(f"{flag} {out}: cannot be checked ({e.filename}: permission denied)") from None
    if not anchor.is_dir():
        raise ZsadInputError(f"{flag} {out}: lies under {anchor}, which is a file")
    if not os.access(anchor, os.W_OK | os.X_OK):
        where = "" if anchor == out else f" ({anchor} is not writable)"
        raise ZsadInputError(f"{flag} {out}: permission denied, cannot write here{where}")
    if out.is_dir():
        for name in ("predictions.csv", "manifest.json", RUN_KEY):
            p = out / name
            if p.exists() and not os.access(p, os.W_OK):
                raise ZsadInputError(f"{p}: permission denied, cannot be updated; use another {flag}")
    check_folder(out, kind, flag)


def check_out_not_input(out: Path, inputs: Sequence[str | Path | None]) -> None:
    """Refuse an output folder that is itself an input folder: its overlays would be scored as products next time.

    An output folder *inside* an input folder is allowed: listings never enter it (it carries zsad's marker).
    """
    real = os.path.realpath(out)
    for item in inputs:
        if item is not None and Path(item).is_dir() and os.path.realpath(item) == real:
            raise ZsadInputError(
                f"--out {out}: is also an input folder; write the results elsewhere (a subfolder such as "
                f"{Path(out) / 'zsad-results'} is fine: zsad never reads its own output folders as inputs)"
            )


class RunLock:
    """Exclusive advisory lock on ``<folder>/.zsad.lock`` for the lifetime of a run (released on exit or crash).

    The lock file records the holder's PID, host and start time, so the refusal can name who holds it.
    """

    def __init__(self, folder: Path, flag: str = "--out") -> None:
        self.folder, self.flag = Path(folder), flag
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock and record this process as its holder; refuse at once, naming the holder, if it is taken."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, default_mode())
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise ZsadInputError(
                f"{self.folder}: another zsad run ({holder}) is writing to this folder; wait for it to finish or use "
                f"another {self.flag}"
            )
        os.ftruncate(fd, 0)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock if held (safe to call twice); the lock file itself stays."""
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "PID unknown"


try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- run key
def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _plain(key: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(key, default=str))


def check_run_key(out: Path, key: dict[str, Any], sections: Iterable[str] | None = None) -> None:
    """Refuse to resume a run with other settings, naming the first difference (``sections``: compare only those).

    A folder that holds predictions but no key (written by an older zsad, or not by zsad) is refused too.
    """
    path = out / RUN_KEY
    if not path.exists():
        if (out / "predictions.csv").exists():
            raise ZsadInputError(f"{out}: holds predictions.csv but no {RUN_KEY}; use another --out or delete it")
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = type(e).__name__
        raise ZsadInputError(f"{path}: unreadable ({why}); use another --out or delete the folder") from None
    now = _plain(key)
    names = set(sections) if sections is not None else set(stored) | set(now)
    before = _flat({k: v for k, v in stored.items() if k in names})
    after = _flat({k: v for k, v in now.items() if k in names})
    diff = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    if diff:
        k = diff[0]
        more = f", and {len(diff) - 1} more" if len(diff) > 1 else ""
        raise ZsadInputError(
            f"{out}: holds a run with other settings ({k}: {before.get(k)!r} there, {after.get(k)!r} now{more}); "
            "use another --out or delete it"
        )


def claim_output(out: Path, key: dict[str, Any], kind: str, command: str) -> None:
    """Check the folder's kind and key, then record both (the caller holds the folder's ``RunLock``).

    Temporary files a killed run left behind (``.<name>.<random>.tmp``) are removed: no other writer can own them.
    """
    out.mkdir(parents=True, exist_ok=True)
    check_folder(out, kind)
    check_run_key(out, key)  # before anything is written: a refused folder stays as it was
    _write_marker(out, kind, command)
    for stale in out.rglob(".*.tmp"):
        stale.unlink(missing_ok=True)
    write_json(out / RUN_KEY, _plain(key))


# ---------------------------------------------------------------------------------------------- rows
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


# A spreadsheet runs a cell starting with one of these as a formula (``=HYPERLINK(...)`` in a file name). The
# apostrophe is escaped too, so that reading back is exact: every written cell starting with ' was escaped.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(value: Any) -> str:
    """A value as a CSV cell, with a leading ``'`` when a spreadsheet would run it as a formula (numbers kept)."""
    text = _fmt(value)
    if text.startswith(_FORMULA_START) and not is_number(text):
        return "'" + text
    return text


def csv_value(cell: str) -> str:
    """``csv_cell`` undone: the value zsad wrote."""
    return cell[1:] if cell.startswith("'") else cell


def csv_text(fields: Sequence[str], rows: Iterable[dict[str, Any]], header: bool = True) -> str:
    """Rows as CSV text with the given columns, every cell spreadsheet-safe (``csv_cell``)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(fields))
    if header:
        w.writeheader()
    w.writerows({k: csv_cell(r.get(k, "")) for k in fields} for r in rows)
    return buf.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV zsad wrote, cells as written before escaping (``csv_value``)."""
    with Path(path).open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [{k: csv_value(v) if isinstance(v, str) else v for k, v in r.items()} for r in csv.DictReader(f)]


class CsvLog:
    """Append-only CSV with a fixed header, one ``write`` + ``fsync`` per batch, repaired on load.

    ``key`` names a row's input (rows with the same key are one input: the newest complete one is kept);
    ``complete`` tells whether a row was fully written and its files exist. Rows that fail it, a torn last line
    and duplicates are dropped, and the file is rewritten atomically, so a resumed run rescores exactly those.
    A file written by an older zsad with fewer columns is rewritten with the new ones (empty in its rows).
    """

    def __init__(
        self,
        path: Path,
        fields: Sequence[str],
        key: Callable[[dict[str, str]], Any] | None = None,
        complete: Callable[[dict[str, str]], bool] | None = None,
        remember: bool = True,
    ) -> None:
        self.path, self.fields, self.remember = path, list(fields), remember
        self.rows: list[dict[str, str]] = []
        self.count = 0  # rows in the file (``rows`` holds them only when ``remember``: a service forgets them)
        self.dropped_incomplete = 0
        self.dropped_duplicates = 0
        self.added_columns: list[str] = []
        if path.exists():
            self._load(key, complete)

    def _load(
        self, key: Callable[[dict[str, str]], Any] | None, complete: Callable[[dict[str, str]], bool] | None
    ) -> None:
        raw = self.path.read_bytes()
        text = raw.decode("utf-8", "surrogateescape")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        parsed: list[dict[str, str]] = []
        torn = 0
        try:
            for row in reader:
                parsed.append(row)
        except csv.Error:
            torn = 1  # an unterminated quoted field: a row cut mid-write
        if reader.fieldnames and list(reader.fieldnames) != self.fields:
            if not set(reader.fieldnames) <= set(self.fields):
                raise ZsadInputError(f"{self.path}: exists with other columns; use another --out or delete it")
            self.added_columns = [f for f in self.fields if f not in reader.fieldnames]
        if parsed and text and not text.endswith("\n"):
            parsed.pop()  # the last row was cut mid-write
            torn += 1
        whole = [
            {k: csv_value(r.get(k, "")) for k in self.fields}
            for r in parsed
            if None not in r.values() and None not in r
        ]
        good = [r for r in whole if complete is None or complete(r)]
        incomplete = len(parsed) - len(good) + torn
        kept: dict[Any, dict[str, str]] = {}
        for i, r in enumerate(good):
            kept.pop(key(r) if key else i, None)
            kept[key(r) if key else i] = r  # newest last
        self.rows = list(kept.values())
        self.count = len(self.rows)
        self.dropped_incomplete, self.dropped_duplicates = incomplete, len(good) - len(self.rows)
        if incomplete or self.dropped_duplicates or self.added_columns:
            self.rewrite()
        if not self.remember:
            self.rows = []

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Add a batch of rows with one write and fsync; a new or empty file gets the header first."""
        if not rows:
            return
        formatted = [{k: _fmt(r.get(k, "")) for k in self.fields} for r in rows]
        header = not self.path.exists() or self.path.stat().st_size == 0
        data = csv_text(self.fields, formatted, header).encode("utf-8", "surrogateescape")
        with self.path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.count += len(formatted)
        if self.remember:
            self.rows.extend(formatted)

    def rewrite(self) -> None:
        """Atomic rewrite of every row (after thresholds are known, or after a repair)."""
        data = csv_text(self.fields, self.rows).encode("utf-8", "surrogateescape")
        atomic_write(self.path, lambda f: f.write(data))

    def repair_note(self) -> str:
        """One line on what loading dropped, or ''."""
        parts = []
        if self.dropped_incomplete:
            parts.append(f"{self.dropped_incomplete} incomplete")
        if self.dropped_duplicates:
            parts.append(f"{self.dropped_duplicates} duplicate")
        return f"{self.path.name}: dropped {' and '.join(parts)} row(s) from an interrupted run" if parts else ""


def is_number(text: str | None) -> bool:
    """Whether a CSV cell holds a number (empty or None does not): how a row's score is checked as written."""
    try:
        float(text or "")
    except ValueError:
        return False
    return True


def map_size(height: int, width: int, cap: int) -> tuple[int, int]:
    """(H, W) of the written map: the image's own size, or scaled so the long side is ``cap`` (0 = no cap)."""
    long_side = max(height, width)
    if cap <= 0 or long_side <= cap:
        return height, width
    scale = cap / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


DETECT_FIELDS = [
    "image_path",
    "pred_score",
    "pred_label",
    "threshold",
    "threshold_source",
    "pixel_threshold",
    "pixel_threshold_source",
    "anomaly_map_path",
    "overlay_path",
    "map_min",
    "map_max",
    "image_size",
    "map_size",
    "score_parts",
    "input_missing",
]


def detect_row(
    path: str, score: float, rel: Path, full: np.ndarray, image_hw: tuple[int, int], parts: str = "{}"
) -> dict[str, Any]:
    """One ``predictions.csv`` row of a detect run, before thresholds: ``full`` is the map at its written size."""
    h, w = image_hw
    mh, mw = full.shape
    return {
        "image_path": path,
        "pred_score": float(score),
        "anomaly_map_path": rel.as_posix(),
        "map_min": float(full.min()),
        "map_max": float(full.max()),
        "image_size": f"{w}x{h}",
        "map_size": f"{mw}x{mh}",
        "score_parts": parts,
    }


def label_rows(rows: list[dict[str, Any]], thr: Threshold, pthr: Threshold, scores: np.ndarray) -> np.ndarray | None:
    """Write each row's decision and the image and pixel thresholds that made it; returns the labels.

    With no threshold (``source`` none: too few images for the rule, and no references or manual value) the label
    and threshold cells stay empty and None is returned: no decision is made without a basis.
    """
    known = math.isfinite(thr.value)
    labels = thr.apply(scores) if known else None
    for i, r in enumerate(rows):
        r.update(
            pred_label=str(int(labels[i])) if labels is not None else "",
            threshold=f"{thr.value:.8g}" if known else "",
            threshold_source=thr.source,
            pixel_threshold=f"{pthr.value:.8g}" if math.isfinite(pthr.value) else "",
            pixel_threshold_source=pthr.source,
        )
    return labels


# ---------------------------------------------------------------------------------------------- the end of a run
# Shared by every detect front end (torch, the torch-free runtime, Ray), so that they count, word and refuse alike.
def check_detect_numbers(batch_size: int, max_map_size: int, threshold: float | None, threshold_rule: str) -> None:
    """The numbers and choices of a detect run, each refused in one line (sizes within ``zsad.limits``)."""
    from zsad import limits
    from zsad.thresholds import UNLABELLED_RULES

    limits.BATCH_SIZE.check(batch_size)
    limits.MAP_SIZE.check(max_map_size)
    if threshold is not None and not math.isfinite(threshold):
        raise ZsadInputError(f"--threshold {threshold}: must be a finite number")
    if threshold_rule not in UNLABELLED_RULES:
        raise ZsadInputError(f"--threshold-rule {threshold_rule!r}: use one of {', '.join(UNLABELLED_RULES)}")


@contextmanager
def kept_on_failure(log: CsvLog, out: Path) -> Iterator[None]:
    """A file found unreadable (or unwritable) while scoring stops the run; the line says what is kept and how to go on.

    Everything else is checked before any model loads, but a file's content is only read when its batch comes.
    """
    try:
        yield
    except (ZsadInputError, OSError) as e:
        if not log.rows:
            raise
        raise ZsadInputError(
            f"{one_line(e)}; the {len(log.rows)} images scored so far are kept in {out} (without labels until the run "
            "ends): fix or remove the file, or pass --skip-bad, and run the same command again to resume"
        ) from None


def mark_missing(
    rows: list[dict[str, Any]], listed: set[str], local: Callable[[str], bool] = lambda _: True, key: str = "image_path"
) -> int:
    """Mark ``input_missing`` on every row: 1 when its input is no longer listed or (a local file) no longer exists.

    Such rows were scored and are kept; the caller leaves them out of fitting thresholds. Returns how many.
    """
    for r in rows:
        path = r[key]
        gone = path not in listed or (local(path) and not os.path.exists(path))
        r["input_missing"] = "1" if gone else "0"
    return sum(r["input_missing"] == "1" for r in rows)


def nothing_scored(out: Path, failed: int, rows: int) -> ZsadInputError:
    """The one line of a run with no present input left to decide on (the files were written first)."""
    if failed:
        return ZsadInputError(f"no image could be scored; the {failed} failures are listed in {out / 'errors.csv'}")
    return ZsadInputError(f"no image could be scored: none of the inputs exists any more ({rows} rows kept)")


@dataclass
class DetectResult:
    """What a detect run left in ``out``: rows, how many flagged, the image threshold, files that failed.

    ``num_flagged`` is None when no decision was made (too few images for the threshold rule: see the threshold's
    ``note``). ``num_images`` counts every row, ``num_missing`` those whose input file is gone (kept, not refitted);
    ``num_flagged`` counts flagged rows of both.
    """

    out: Path
    num_images: int
    num_flagged: int | None
    threshold: Threshold
    num_failed: int = 0
    num_missing: int = 0
    overlay_errors: int = 0
    skipped: str = ""

    @property
    def predictions(self) -> Path:
        """The per-image results table, ``predictions.csv`` in ``out``."""
        return self.out / "predictions.csv"

    @property
    def exit_code(self) -> int:
        """0 done; 1 done, but files were skipped (listed in ``errors.csv``) or overlays could not be written."""
        return 1 if self.num_failed or self.overlay_errors else 0

    def summary(self) -> str:
        """The one line a user reads at the end: every input is in exactly one of the counts."""
        t = self.threshold
        if self.num_flagged is None:
            decided = f"no labels: {t.note}" if t.note else "no labels (no threshold)"
        else:
            decided = f"{self.num_flagged} flagged anomalous (threshold {t.value:.4g}, {t.source})"
        parts = [f"{self.num_images - self.num_missing} images scored, {decided}; results in {self.predictions}"]
        if self.num_missing:
            parts.append(
                f"{self.num_missing} more rows kept from earlier runs whose input files are gone (marked input_missing,"
                " left out of the thresholds)"
            )
        if self.num_failed:
            parts.append(f"{self.num_failed} files failed, listed in {self.out / 'errors.csv'}")
        if self.overlay_errors:
            parts.append(f"{self.overlay_errors} overlays could not be written (listed in manifest.json)")
        if self.skipped:
            parts.append(f"passed over in the input folders: {self.skipped}")
        return "; ".join(parts) + (" (exit code 1)" if self.exit_code else "")
