"""``Station``: the memory of an inspection station — profiles, reference images, inspections, reviews, retention.

One object per server. Every method is one transaction (or, for prune, a few short ones), safe to call from
several threads; several servers may share one PostgreSQL database, while a SQLite file belongs to one server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from zsad.errors import ZsadInputError
from zsad.store.db import FILES_LOCK, WRITE_OPTION, open_database
from zsad.store.schema import COUNTS, blobs, hourly, inspections, intake, outbox, profiles, revisions, utcnow

REVIEW_LABELS: dict[str, int] = {"normal": 0, "defect": 1, "skip": -1}
REVIEW_NAMES: dict[int, str] = {v: k for k, v in REVIEW_LABELS.items()}
# The setup fields that decide a profile's scores: two setups with equal keys score every image alike, so their
# inspections can be compared and refitted together; the threshold only decides labels.
SCORING_FIELDS = ("method", "options", "backbone", "class_name", "references", "k_shot")
MAX_LIMIT = 500
BATCH = 5_000  # rows per prune transaction: short transactions, so requests are not held up behind a big prune
IN_CHUNK = 8_000  # paths per "still named?" query (with their owners, under SQLite's 32766 bound parameters)
FILE_DIRS = ("images", "maps", "overlays")

Sort = Literal["time", "score"]
Order = Literal["desc", "asc"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UID = re.compile(r"[0-9a-f]{32}")
_SHA = re.compile(r"[0-9a-f]{64}")
_TEXT = {  # row key -> longest value its column holds
    "source": 32,
    "request_id": 64,
    "scoring_key": 64,
    "file_sha256": 64,
    "file_name": 255,
    "threshold_source": 64,
    "method": 64,
    "class_name": 255,
    "model_id": 64,
    "image_path": 255,
    "map_path": 255,
    "overlay_path": 255,
}
_INTS = ("revision", "width", "height")
_FLOATS = ("threshold", "pixel_threshold")
PATHS = ("image_path", "map_path", "overlay_path")
ROW_KEYS = (
    "uid", "created_at", "source", "request_id", "profile", "revision", "scoring_key", "file_sha256", "file_name",
    "width", "height", "score", "label", "threshold", "threshold_source", "pixel_threshold", "method", "class_name",
    "model_id", "image_path", "map_path", "overlay_path",
)  # fmt: skip
_COLUMNS = [c for c in inspections.columns if c.name != "profile_id"]
INTAKE_KEYS = ("folder", "path", "size", "mtime_ns", "sha256", "profile", "state", "uid", "error", "routed_to")
INTAKE_STATES = ("done", "error")


class AlreadyFinished(ZsadInputError):
    """A watched file another transaction (another watcher of the same folder) finished first."""


def scoring_key(setup: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of the setup fields that decide scores (not the thresholds)."""
    fields = {k: setup.get(k) for k in SCORING_FIELDS}
    if setup.get("tiles"):  # added later: an untiled setup keeps the key it always had
        fields["tiles"] = setup["tiles"]
    return hashlib.sha256(_canonical(fields, "setup").encode()).hexdigest()


def _canonical(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ZsadInputError(f"{what}: not storable as JSON ({' '.join(str(e).split())})") from None


@dataclass(frozen=True)
class Filters:
    """Which inspections a history query returns; None leaves a field unfiltered.

    ``label``: 0 or 1, or ``"none"`` for rows without a label. ``reviewed``: True for rows with any review (a skip
    included). ``since`` is inclusive, ``until`` exclusive; ``score_min`` and ``score_max`` are inclusive.
    """

    profile: str | None = None
    label: int | Literal["none"] | None = None
    reviewed: bool | None = None
    review_label: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    score_min: float | None = None
    score_max: float | None = None
    source: str | None = None
    scoring_key: str | None = None


@dataclass
class Page:
    """One page of history and the cursor of the next (None on the last page)."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


def _contribution(label: int | None, review: int | None) -> tuple[int, ...]:
    """What one inspection adds to each count of ``hourly`` (in ``COUNTS`` order)."""
    verdict = review in (0, 1)
    return (
        1,
        int(label == 1),
        int(verdict),
        int(review == -1),
        int(label == 1 and verdict),
        int(label == 1 and review == 0),
        int(label == 0 and verdict),
        int(label == 0 and review == 1),
    )


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


class Station:
    """The store of one station (see the module doc); ``files`` is the folder its rows' relative paths live in."""

    def __init__(self, url: str, files: Path, *, station_name: str | None = None, lock: bool = True) -> None:
        name = station_name if station_name is not None else socket.gethostname()
        if not name or len(name) > 255:
            raise ZsadInputError(f"station name {name[:60]!r}: must be 1 to 255 characters")
        self.station_name = name
        self.files = Path(files)
        opened = open_database(url, lock=lock)  # lock=False: a CLI command beside a running server
        self._engine = opened.engine
        self._lock = opened.lock
        self.dialect: Literal["sqlite", "postgresql"] = "sqlite" if opened.dialect == "sqlite" else "postgresql"
        self.url_safe = opened.url_safe
        # SQLite has one writer at a time: writers queue here rather than on SQLite's busy lock (whose deferred
        # transactions fail instead of waiting when they turn from reading to writing). The in-memory database is
        # one connection shared by every thread, so everything queues there.
        self._write_lock = threading.RLock()
        self._memory = opened.memory
        self._names: dict[int, str] = {}
        self._ids: dict[str, int] = {}

    # -- plumbing -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and release the SQLite lock."""
        self._engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Station:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Station({self.url_safe!r}, files={str(self.files)!r}, station_name={self.station_name!r})"

    @contextmanager
    def _begin(self, write: bool = False, snapshot: bool = False) -> Iterator[Connection]:
        """One transaction; writers of a SQLite database take turns; ``snapshot``: one view for every statement."""
        serial: AbstractContextManager[Any] = (
            self._write_lock if self._memory or (write and self.dialect == "sqlite") else nullcontext()
        )
        with serial, self._engine.connect() as conn:
            if snapshot and self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            if write:
                conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def _upsert(self) -> Any:
        return pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert

    def _profile_id(self, conn: Connection, name: str) -> int:
        """The id of profile ``name`` (profiles are never renamed or deleted, so ids are cached for good)."""
        if name in self._ids:
            return self._ids[name]
        pid = conn.scalar(sa.select(profiles.c.id).where(profiles.c.name == name))
        if pid is None:
            raise ZsadInputError(f"profile {name!r}: no such profile")
        self._ids[name], self._names[pid] = pid, name
        return pid

    def _profile_name(self, conn: Connection, pid: int | None) -> str | None:
        if pid is None:
            return None
        if pid not in self._names:
            for i, n in conn.execute(sa.select(profiles.c.id, profiles.c.name)):
                self._names[i], self._ids[n] = n, i
        return self._names[pid]

    # -- profiles -------------------------------------------------------------------------------------------------

    def create_profile(self, name: str, setup: dict[str, Any], reason: str = "created") -> dict[str, Any]:
        """A new profile at revision 1; refused if the name is taken or not a short url-safe word."""
        check_profile_name(name)
        text, key = self._setup(setup)
        now = utcnow()
        try:
            with self._begin(write=True) as conn:
                conn.execute(profiles.insert().values(name=name, current=1, created_at=now))
                pid = conn.execute(sa.select(profiles.c.id).where(profiles.c.name == name)).scalar_one()
                self._add_revision(conn, pid, 1, now, reason, text, key)
        except sa.exc.IntegrityError:
            raise ZsadInputError(f"profile {name!r}: already exists") from None
        return self.profile(name)

    def revise(self, name: str, setup: dict[str, Any], reason: str) -> dict[str, Any]:
        """A new revision of ``name`` with this full setup (revisions are never edited or deleted)."""
        text, key = self._setup(setup)
        with self._begin(write=True) as conn:
            pid = self._profile_id(conn, name)
            current = conn.execute(
                sa.select(profiles.c.current).where(profiles.c.id == pid).with_for_update()
            ).scalar_one()
            self._add_revision(conn, pid, current + 1, utcnow(), reason, text, key)
            conn.execute(profiles.update().where(profiles.c.id == pid).values(current=current + 1))
        return self.profile(name)

    def rollback(self, name: str, revision: int) -> dict[str, Any]:
        """A new revision that copies revision ``revision``'s setup (history only grows)."""
        old = self.profile(name, revision)
        return self.revise(name, old["setup"], f"rollback to {old['revision']}")

    def profile(self, name: str, revision: int | None = None) -> dict[str, Any]:
        """Profile ``name`` at its current revision, or at ``revision``."""
        with self._begin() as conn:
            pid = self._profile_id(conn, name)
            q = sa.select(revisions).where(revisions.c.profile_id == pid)
            if revision is None:
                q = q.join(profiles, profiles.c.id == revisions.c.profile_id).where(
                    revisions.c.revision == profiles.c.current
                )
            else:
                q = q.where(revisions.c.revision == revision)
            row = conn.execute(q).mappings().first()
        if row is None:
            raise ZsadInputError(f"profile {name!r}: no revision {revision}")
        return _profile_dict(name, row)

    def profiles(self) -> list[dict[str, Any]]:
        """The current revision of every profile, by name."""
        q = (
            sa.select(profiles.c.name, revisions)
            .join(
                revisions,
                sa.and_(revisions.c.profile_id == profiles.c.id, revisions.c.revision == profiles.c.current),
            )
            .order_by(profiles.c.name)
        )
        with self._begin() as conn:
            return [_profile_dict(r["name"], r) for r in conn.execute(q).mappings()]

    def revisions(self, name: str) -> list[dict[str, Any]]:
        """Every revision of ``name``, newest first."""
        with self._begin() as conn:
            pid = self._profile_id(conn, name)
            q = sa.select(revisions).where(revisions.c.profile_id == pid).order_by(revisions.c.revision.desc())
            return [_profile_dict(name, r) for r in conn.execute(q).mappings()]

    def _setup(self, setup: dict[str, Any]) -> tuple[str, str]:
        if not isinstance(setup, dict):
            raise ZsadInputError(f"setup: a JSON object is needed, not {type(setup).__name__}")
        return _canonical(setup, "setup"), scoring_key(setup)

    def _add_revision(
        self, conn: Connection, pid: int, revision: int, at: datetime, reason: str, setup: str, key: str
    ) -> None:
        conn.execute(
            revisions.insert().values(
                profile_id=pid,
                revision=revision,
                created_at=at,
                station=self.station_name,
                reason=str(reason),
                setup=setup,
                scoring_key=key,
            )
        )

    # -- blobs ----------------------------------------------------------------------------------------------------

    def put_blob(self, data: bytes, name: str) -> str:
        """Keep ``data`` (a reference image) in the database; returns its sha256. Storing it again is a no-op."""
        sha = hashlib.sha256(data).hexdigest()
        values = {"sha256": sha, "name": str(name)[:255], "size": len(data), "data": bytes(data)}
        values["created_at"] = utcnow()
        with self._begin(write=True) as conn:
            stmt = self._upsert()(blobs).values(values).on_conflict_do_nothing(index_elements=["sha256"])
            conn.execute(stmt)
        return sha

    def ping(self) -> None:
        """One round trip to the database (readiness): raises what the driver raises when it cannot be reached."""
        with self._begin() as conn:
            conn.execute(sa.select(1))

    def blob(self, sha: str) -> bytes:
        """The bytes of blob ``sha``."""
        return bytes(self._blob_field(sha, blobs.c.data))

    def blob_name(self, sha: str) -> str:
        """The file name blob ``sha`` was first stored under."""
        return str(self._blob_field(sha, blobs.c.name))

    def _blob_field(self, sha: str, column: Any) -> Any:
        with self._begin() as conn:
            value = conn.scalar(sa.select(column).where(blobs.c.sha256 == sha))
        if value is None:
            raise ZsadInputError(f"blob {str(sha)[:80]}: not in the database")
        return value

    # -- inspections ----------------------------------------------------------------------------------------------

    def record(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        finished: Sequence[dict[str, Any]] = (),
        events: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Keep one request's rows, all or none (one transaction); a uid already recorded writes nothing.

        Every file a row names must exist under ``files`` (written before the call): checked inside the
        transaction, under the lock prune and sweep unlink under, so no committed row names a missing file.
        ``finished``: the watched files these rows (or refusals) finish (``intake`` rows: ``INTAKE_KEYS``);
        a file another transaction finished first refuses the whole call (``AlreadyFinished``), so two watchers of
        one folder never both keep it. ``events``: the sinks' events of these decisions (``{"sink", "uid",
        "payload"}``), queued in the same transaction: an event exists exactly when its decision does.
        """
        if not rows and not finished and not events:
            return
        now = utcnow()
        prepared = [self._prepare(r, now) for r in rows]
        files = [self._prepare_intake(f, now) for f in finished]
        queued = [self._prepare_event(e, now) for e in events]
        seen: set[str] = set()
        for p in prepared:
            if p["uid"] in seen:
                raise ZsadInputError(f"inspection {p['uid']}: twice in one record() call")
            seen.add(p["uid"])
        try:
            with self._begin(write=True) as conn:
                if self.dialect == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock_shared(FILES_LOCK)))
                for p in prepared:
                    for k in PATHS:
                        if p[k] is not None and not (self.files / p[k]).is_file():
                            raise ZsadInputError(f"inspection {p['uid']}: {k} {p[k]}: no such file under {self.files}")
                    name = p.pop("profile")
                    p["profile_id"] = None if name is None else self._profile_id(conn, name)
                if prepared:
                    conn.execute(inspections.insert(), prepared)
                for f in files:
                    name = f.pop("profile")
                    f["profile_id"] = None if name is None else self._profile_id(conn, name)
                if files:
                    conn.execute(intake.insert(), files)
                if queued:
                    conn.execute(outbox.insert(), queued)
                deltas: dict[tuple[int, datetime], np.ndarray] = {}
                for p in prepared:
                    if p["profile_id"] is not None:
                        key = (p["profile_id"], _hour(p["created_at"]))
                        add = np.asarray(_contribution(p["label"], None))
                        deltas[key] = deltas[key] + add if key in deltas else add
                self._bump(conn, deltas)
        except sa.exc.IntegrityError as e:
            taken = self._existing_uid(list(seen)) if seen else None
            if taken is None and files:
                done = self.intake_known([(f["path"], f["size"], f["mtime_ns"], f["sha256"]) for f in files])
                if done:
                    raise AlreadyFinished(
                        f"{next(iter(done))[0]}: already finished (nothing of this request kept)"
                    ) from None
            if taken is None:
                raise ZsadInputError(f"inspections: not recorded ({' '.join(str(e.orig).split())[:200]})") from None
            raise ZsadInputError(f"inspection {taken}: already recorded (nothing of this request kept)") from None

    def _prepare_intake(self, f: dict[str, Any], now: datetime) -> dict[str, Any]:
        """An intake row checked (the watcher builds them; a bad one is a programming error, said in one line)."""
        extra = set(f) - set(INTAKE_KEYS)
        if extra:
            raise ZsadInputError(f"intake {f.get('path')!r}: unknown key {sorted(extra)[0]!r}")
        state = f.get("state")
        if state not in INTAKE_STATES:
            raise ZsadInputError(f"intake {f.get('path')!r}: state must be one of {', '.join(INTAKE_STATES)}")
        sha = f.get("sha256")
        if not isinstance(sha, str) or not _SHA.fullmatch(sha):
            raise ZsadInputError(f"intake {f.get('path')!r}: sha256 must be 64 lowercase hex digits")
        out = {k: f.get(k) for k in INTAKE_KEYS}
        for k in ("folder", "path", "routed_to"):
            if out[k] is not None and len(str(out[k])) > 1024:
                raise ZsadInputError(f"intake {str(f.get('path'))[:80]!r}: {k} longer than 1024 characters")
        out["size"], out["mtime_ns"] = int(f["size"]), int(f["mtime_ns"])
        out["error"] = None if f.get("error") is None else str(f["error"])[:2000]
        return {**out, "created_at": now, "station": self.station_name}

    def _prepare_event(self, e: dict[str, Any], now: datetime) -> dict[str, Any]:
        sink = str(e["sink"])
        if not sink or len(sink) > 255:
            raise ZsadInputError(f"event sink {sink[:60]!r}: must be 1 to 255 characters")
        return {
            "created_at": now,
            "station": self.station_name,
            "sink": sink,
            "uid": e.get("uid"),
            "payload": _canonical(e["payload"], "event"),
            "attempts": 0,
            "next_at": now,
            "last_error": None,
            "delivered_at": None,
        }

    # -- intake (the folder watcher's memory) ---------------------------------------------------------------------

    def intake_known(
        self, keys: Sequence[tuple[str, int, int, str]]
    ) -> dict[tuple[str, int, int, str], dict[str, Any]]:
        """Which of these files (path, size, mtime_ns, sha256) some watcher finished, and how.

        Each: state, uid, error, routed_to, and the label its inspection got (what routing still needs after a
        restart, read in the same query).
        """
        found: dict[tuple[str, int, int, str], dict[str, Any]] = {}
        t, c = intake.c, inspections.c
        with self._begin() as conn:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                q = (
                    sa.select(t.path, t.size, t.mtime_ns, t.sha256, t.state, t.uid, t.error, t.routed_to, c.label)
                    .select_from(intake.outerjoin(inspections, c.uid == t.uid))
                    .where(t.path.in_({k[0] for k in chunk}))
                )
                wanted = set(chunk)
                for r in conn.execute(q):
                    key = (r.path, int(r.size), int(r.mtime_ns), r.sha256)
                    if key in wanted:
                        found[key] = {"state": r.state, "uid": r.uid, "error": r.error, "routed_to": r.routed_to,
                                      "label": r.label}  # fmt: skip
        return found

    def intake_routed(self, key: tuple[str, int, int, str], routed_to: str) -> None:
        """Where routing put a finished file (path, size, mtime_ns, sha256): shown in its history, never re-keyed."""
        t = intake.c
        path, size, mtime_ns, sha = key
        where = (t.path == path, t.size == int(size), t.mtime_ns == int(mtime_ns), t.sha256 == sha)
        with self._begin(write=True) as conn:
            conn.execute(intake.update().where(*where).values(routed_to=str(routed_to)[:1024]))

    def intake_counts(self) -> dict[str, dict[str, int]]:
        """Per watched folder: files finished as done and as error (``/v1/stats``)."""
        t = intake.c
        out: dict[str, dict[str, int]] = {}
        with self._begin() as conn:
            q = sa.select(t.folder, t.state, sa.func.count()).where(t.station == self.station_name)
            for folder, state, n in conn.execute(q.group_by(t.folder, t.state)):
                out.setdefault(folder, {"done": 0, "error": 0})[state] = int(n)
        return out

    def intake_errors(self, folder: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest files refused as unreadable, with their one-line reasons."""
        t = intake.c
        q = sa.select(t.created_at, t.folder, t.path, t.error, t.routed_to).where(t.state == "error")
        if folder is not None:
            q = q.where(t.folder == folder)
        with self._begin() as conn:
            rows = conn.execute(q.order_by(t.created_at.desc(), t.id.desc()).limit(limit)).mappings().all()
        return [{**r, "created_at": r["created_at"].isoformat()} for r in rows]

    # -- outbox (the sinks' queue) --------------------------------------------------------------------------------

    def outbox_due(self, sink: str, limit: int = 100) -> list[dict[str, Any]]:
        """This station's oldest undelivered events of ``sink``, in id order, up to the first one not yet due again.

        Stopping at a row that waits for its back-off keeps a sink's events in order: nothing overtakes an event
        that is being retried.
        """
        o = outbox.c
        now = utcnow()
        q = (
            sa.select(o.id, o.uid, o.payload, o.attempts, o.created_at, o.next_at)
            .where(o.station == self.station_name, o.sink == sink, o.delivered_at.is_(None))
            .order_by(o.id)
            .limit(limit)
        )
        with self._begin() as conn:
            rows = conn.execute(q).all()
        due = []
        for r in rows:
            if r.next_at > now:
                break
            due.append({"id": r.id, "uid": r.uid, "payload": json.loads(r.payload), "attempts": r.attempts,
                        "created_at": r.created_at})  # fmt: skip
        return due

    def outbox_delivered(self, ids: Sequence[int]) -> None:
        """Mark events acknowledged by their sink."""
        if not ids:
            return
        now = utcnow()
        with self._begin(write=True) as conn:
            conn.execute(outbox.update().where(outbox.c.id.in_(list(ids))).values(delivered_at=now, last_error=None))

    def outbox_failed(self, row_id: int, error: str, retry_in_s: float) -> None:
        """Count a failed attempt; the event is due again after ``retry_in_s`` seconds."""
        o = outbox.c
        at = utcnow() + timedelta(seconds=max(0.0, float(retry_in_s)))
        with self._begin(write=True) as conn:
            conn.execute(
                outbox.update()
                .where(o.id == row_id)
                .values(attempts=o.attempts + 1, next_at=at, last_error=" ".join(str(error).split())[:500])
            )

    def outbox_stats(self) -> dict[str, dict[str, Any]]:
        """Per sink, this station's events: delivered, pending, the oldest pending one's age, attempts, last error."""
        o = outbox.c
        now = utcnow()
        mine = o.station == self.station_name
        out: dict[str, dict[str, Any]] = {}
        with self._begin(snapshot=True) as conn:
            for sink, n in conn.execute(
                sa.select(o.sink, sa.func.count()).where(mine, o.delivered_at.is_not(None)).group_by(o.sink)
            ):
                out.setdefault(sink, _sink_stats())["delivered"] = int(n)
            q = sa.select(o.sink, sa.func.count(), sa.func.min(o.created_at), sa.func.sum(o.attempts))
            for sink, n, oldest, tries in conn.execute(q.where(mine, o.delivered_at.is_(None)).group_by(o.sink)):
                s = out.setdefault(sink, _sink_stats())
                s.update(pending=int(n), oldest_pending_s=round((now - oldest).total_seconds(), 3))
                s["failed_attempts_pending"] = int(tries or 0)
            for sink in list(out):
                err = conn.execute(
                    sa.select(o.last_error)
                    .where(mine, o.sink == sink, o.delivered_at.is_(None), o.last_error.is_not(None))
                    .order_by(o.id)
                    .limit(1)
                ).scalar()
                out[sink]["last_error"] = err
        return out

    def outbox_prune(self, older_than_s: float) -> int:
        """Delete delivered events older than ``older_than_s`` seconds (the undelivered always stay)."""
        cutoff = utcnow() - timedelta(seconds=float(older_than_s))
        with self._begin(write=True) as conn:
            res = conn.execute(
                outbox.delete().where(outbox.c.delivered_at.is_not(None), outbox.c.delivered_at < cutoff)
            )
        return int(res.rowcount or 0)

    def _existing_uid(self, uids: list[str]) -> str | None:
        with self._begin() as conn:
            return conn.scalar(sa.select(inspections.c.uid).where(inspections.c.uid.in_(uids)).limit(1))

    def _prepare(self, row: dict[str, Any], now: datetime) -> dict[str, Any]:
        """``row`` checked and typed as the columns want it (ZsadInputError naming the row and the key)."""
        uid = row.get("uid")
        if not isinstance(uid, str) or not _UID.fullmatch(uid):
            raise ZsadInputError(f"inspection uid {str(uid)[:80]!r}: 32 lowercase hex digits are needed")
        extra = set(row) - set(ROW_KEYS) - {"station"}
        if extra:
            raise ZsadInputError(f"inspection {uid}: unknown key {sorted(extra)[0]!r}")
        out: dict[str, Any] = {"uid": uid, "station": self.station_name}
        created = row.get("created_at") or now
        if not isinstance(created, datetime) or created.tzinfo is None:
            raise ZsadInputError(f"inspection {uid}: created_at must be an aware datetime, not {created!r}")
        out["created_at"] = created.astimezone(now.tzinfo)
        out["profile"] = row.get("profile")
        if out["profile"] is not None and not isinstance(out["profile"], str):
            raise ZsadInputError(f"inspection {uid}: profile must be a name, not {out['profile']!r}")
        for k, longest in _TEXT.items():
            v = row.get(k) if k != "source" else row.get(k) or "api"
            if v is not None:
                v = str(v)
                if len(v) > longest:
                    raise ZsadInputError(f"inspection {uid}: {k} longer than {longest} characters")
            out[k] = v
        for k in PATHS:
            p = out[k]
            if p is not None and (Path(p).is_absolute() or ".." in Path(p).parts or not p.strip()):
                raise ZsadInputError(f"inspection {uid}: {k} {p!r} must be a path relative to the station's folder")
        for k in _INTS:
            v = row.get(k)
            out[k] = None if v is None else _int(v, uid, k)
        for k in (*_FLOATS, "score"):
            v = row.get(k)
            out[k] = None if v is None else _float(v, uid, k)
        if out["score"] is None:
            raise ZsadInputError(f"inspection {uid}: score is missing")
        label = row.get("label")
        if label not in (None, 0, 1):
            raise ZsadInputError(f"inspection {uid}: label must be 0, 1 or None, not {label!r}")
        out["label"] = None if label is None else int(label)
        return out

    def _bump(self, conn: Connection, deltas: dict[tuple[int, datetime], np.ndarray]) -> None:
        """Add ``deltas`` to the hourly counts (keys in one order, so concurrent writers cannot deadlock)."""
        values = [
            {"profile_id": pid, "hour": hour, **dict(zip(COUNTS, map(int, d), strict=True))}
            for (pid, hour), d in sorted(deltas.items())
            if np.any(d)
        ]
        if not values:
            return
        stmt = self._upsert()(hourly)
        stmt = stmt.on_conflict_do_update(
            index_elements=["profile_id", "hour"], set_={c: hourly.c[c] + stmt.excluded[c] for c in COUNTS}
        )
        conn.execute(stmt, values)

    def inspection(self, uid: str) -> dict[str, Any] | None:
        """The row of inspection ``uid``, or None."""
        with self._begin() as conn:
            r = conn.execute(sa.select(inspections).where(inspections.c.uid == uid)).mappings().first()
            return None if r is None else self._row(conn, r)

    def _row(self, conn: Connection, r: Any) -> dict[str, Any]:
        out = {c.name: r[c.name] for c in _COLUMNS if c.name != "id"}
        out["profile"] = self._profile_name(conn, r["profile_id"])
        out["created_at"] = out["created_at"].isoformat()
        out["review_label"] = None if r["review_label"] is None else REVIEW_NAMES[r["review_label"]]
        out["reviewed_at"] = None if r["reviewed_at"] is None else r["reviewed_at"].isoformat()
        return out

    def inspections(
        self,
        f: Filters | None = None,
        sort: Sort = "time",
        order: Order = "desc",
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """One page of history, newest (or highest score) first by default; ``cursor`` continues a previous page.

        Keyset pagination: the cursor holds the last row's sort key and id, so a page costs the same at any depth
        and rows recorded meanwhile neither repeat nor shift the pages. ``limit`` is capped at 500.
        """
        f = f or Filters()
        if sort not in ("time", "score"):
            raise ZsadInputError(f"sort {sort!r}: use 'time' or 'score'")
        if order not in ("desc", "asc"):
            raise ZsadInputError(f"order {order!r}: use 'desc' or 'asc'")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ZsadInputError(f"limit {limit!r}: a positive integer is needed")
        limit = min(limit, MAX_LIMIT)
        col = inspections.c.created_at if sort == "time" else inspections.c.score
        keys = sa.tuple_(col, inspections.c.id)
        with self._begin() as conn:
            conds = self._conditions(conn, f)
            if cursor is not None:
                value, last = decode_cursor(cursor, sort, order)
                after = sa.tuple_(
                    sa.bindparam("k", value, type_=col.type), sa.bindparam("i", last, type_=sa.BigInteger)
                )
                conds.append(keys < after if order == "desc" else keys > after)
            by = [col.desc(), inspections.c.id.desc()] if order == "desc" else [col.asc(), inspections.c.id.asc()]
            q = sa.select(inspections).where(*conds).order_by(*by).limit(limit + 1)
            found = list(conn.execute(q).mappings())
            rows = [self._row(conn, r) for r in found[:limit]]
        nxt = None
        if len(found) > limit:
            last_row = found[limit - 1]
            nxt = encode_cursor(sort, order, last_row[col.name], last_row["id"])
        return Page(rows, nxt)

    def _conditions(self, conn: Connection, f: Filters) -> list[Any]:
        c = inspections.c
        out: list[Any] = []
        if f.profile is not None:
            out.append(c.profile_id == self._profile_id(conn, f.profile))
        if f.label is not None:
            if f.label == "none":
                out.append(c.label.is_(None))
            elif f.label in (0, 1) and not isinstance(f.label, bool):
                out.append(c.label == int(f.label))
            else:
                raise ZsadInputError(f"label filter {f.label!r}: use 0, 1 or 'none'")
        if f.reviewed is not None:
            out.append(c.review_label.is_not(None) if f.reviewed else c.review_label.is_(None))
        if f.review_label is not None:
            if f.review_label not in REVIEW_LABELS:
                raise ZsadInputError(f"review_label filter {f.review_label!r}: use one of {', '.join(REVIEW_LABELS)}")
            out.append(c.review_label == REVIEW_LABELS[f.review_label])
        for name, t, cmp in (("since", f.since, c.created_at.__ge__), ("until", f.until, c.created_at.__lt__)):
            if t is not None:
                if not isinstance(t, datetime) or t.tzinfo is None:
                    raise ZsadInputError(f"{name} {t!r}: an aware datetime is needed (with its time zone)")
                out.append(cmp(t))
        for name, v, cmp in (("score_min", f.score_min, c.score.__ge__), ("score_max", f.score_max, c.score.__le__)):
            if v is not None:
                out.append(cmp(_float(v, "filter", name)))
        if f.source is not None:
            out.append(c.source == f.source)
        if f.scoring_key is not None:
            out.append(c.scoring_key == f.scoring_key)
        return out

    def review(self, uid: str, label: str, note: str | None = None) -> dict[str, Any]:
        """Record a reviewer's verdict on ``uid`` ("normal", "defect" or "skip"); a later review replaces it."""
        if label not in REVIEW_LABELS:
            raise ZsadInputError(f"review label {label!r}: use one of {', '.join(REVIEW_LABELS)}")
        code = REVIEW_LABELS[label]
        with self._begin(write=True) as conn:
            c = inspections.c
            old = (
                conn.execute(
                    sa.select(c.id, c.profile_id, c.created_at, c.label, c.review_label)
                    .where(c.uid == uid)
                    .with_for_update()
                )
                .mappings()
                .first()
            )
            if old is None:
                raise ZsadInputError(f"inspection {str(uid)[:80]}: not found")
            conn.execute(
                inspections.update()
                .where(c.id == old["id"])
                .values(review_label=code, review_note=None if note is None else str(note), reviewed_at=utcnow())
            )
            if old["profile_id"] is not None:
                delta = np.subtract(_contribution(old["label"], code), _contribution(old["label"], old["review_label"]))
                self._bump(conn, {(old["profile_id"], _hour(old["created_at"])): delta})
        row = self.inspection(uid)
        assert row is not None
        return row

    def scores_for_refit(
        self, profile: str, scoring_key: str, limit: int = 200_000
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The newest ``limit`` inspections of ``profile`` scored under ``scoring_key``: what a refit reads.

        Returns (uids str, scores float64, labels int8 with -1 for no label, review int8: -2 not reviewed, -1 skip,
        0 normal, 1 defect), newest first.
        """
        c = inspections.c
        with self._begin() as conn:
            pid = self._profile_id(conn, profile)
            q = (
                sa.select(c.uid, c.score, c.label, c.review_label)
                .where(c.profile_id == pid, c.scoring_key == scoring_key)
                .order_by(c.created_at.desc(), c.id.desc())
                .limit(max(0, int(limit)))
            )
            rows = conn.execute(q).all()
        uids = np.array([r[0] for r in rows], dtype="<U32")
        scores = np.array([r[1] for r in rows], dtype=np.float64)
        labels = np.array([-1 if r[2] is None else r[2] for r in rows], dtype=np.int8)
        review = np.array([-2 if r[3] is None else r[3] for r in rows], dtype=np.int8)
        return uids, scores, labels, review

    def dashboard(
        self, profile: str, days: int = 7, bucket: Literal["hour", "day"] = "hour", bins: int = 20
    ) -> dict[str, Any]:
        """Counts per hour or day over the last ``days`` days, the score histogram, and the review outcomes.

        The window is whole buckets (UTC), the current one last. Counts come from the hourly table, the histogram
        from the rows themselves (its edges span the window's lowest to highest score), both in one snapshot.
        ``reviewed`` counts verdicts (normal or defect; a skip is ``skipped``); the false-alarm rate is false alarms
        over reviewed flagged rows and the missed-defect rate missed defects over reviewed unflagged rows (None
        when nothing of that kind was reviewed).
        """
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
            raise ZsadInputError(f"days {days!r}: use a whole number of days from 1 to 3660")
        if bucket not in ("hour", "day"):
            raise ZsadInputError(f"bucket {bucket!r}: use 'hour' or 'day'")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 1000:
            raise ZsadInputError(f"bins {bins!r}: use a whole number from 1 to 1000")
        now = utcnow()
        step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
        current = _hour(now) if bucket == "hour" else _hour(now).replace(hour=0)
        n = days * 24 if bucket == "hour" else days
        since, end = current - (n - 1) * step, current + step
        c = inspections.c
        with self._begin(snapshot=True) as conn:
            pid = self._profile_id(conn, profile)
            counts = conn.execute(
                sa.select(hourly).where(hourly.c.profile_id == pid, hourly.c.hour >= since, hourly.c.hour < end)
            ).mappings()
            per_bucket = {since + i * step: np.zeros(len(COUNTS), dtype=np.int64) for i in range(n)}
            for r in counts:
                start = r["hour"] if bucket == "hour" else r["hour"].replace(hour=0)
                per_bucket[start] += [r[k] for k in COUNTS]
            histogram = self._histogram(conn, (c.profile_id == pid, c.created_at >= since, c.created_at < end), bins)
        total = dict(zip(COUNTS, map(int, sum(per_bucket.values(), np.zeros(len(COUNTS), np.int64))), strict=True))
        return {
            "since": since.isoformat(),
            "until": end.isoformat(),
            "bucket": bucket,
            "buckets": [
                {"start": s.isoformat(), "inspections": int(v[0]), "flagged": int(v[1])} for s, v in per_bucket.items()
            ],
            "histogram": histogram,
            **total,
            "false_alarm_rate": _rate(total["false_alarms"], total["reviewed_flagged"]),
            "missed_defect_rate": _rate(total["missed_defects"], total["reviewed_unflagged"]),
        }

    def _histogram(self, conn: Connection, where: tuple[Any, ...], bins: int) -> dict[str, list[Any]]:
        """Score histogram of the rows ``where`` selects, counted in the database (no rows cross the wire).

        The edges are numpy's (``np.linspace`` from the lowest to the highest score, or +-0.5 around a single
        value) and a score falls in bin k when edges[k] <= score < edges[k+1], the last bin closed: the bins of
        ``np.histogram``. Two passes over the profile's time index, which holds score and label.
        """
        c = inspections.c
        lo, hi = conn.execute(sa.select(sa.func.min(c.score), sa.func.max(c.score)).where(*where)).one()
        if lo is None:
            return {"edges": [], "counts": [], "flagged": []}
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        flagged = sa.func.sum(sa.case((c.label == 1, 1), else_=0))
        counts, flags = [0] * bins, [0] * bins
        if bins == 1:
            n, f = conn.execute(sa.select(sa.func.count(), flagged).where(*where)).one()
            found: list[Any] = [(0, n, f)]
        else:
            k = sa.case(*((c.score < float(e), i) for i, e in enumerate(edges[1:-1])), else_=bins - 1)
            found = list(conn.execute(sa.select(k, sa.func.count(), flagged).where(*where).group_by(k)))
        for i, n, f in found:
            counts[int(i)], flags[int(i)] = int(n), int(f or 0)
        return {"edges": edges.tolist(), "counts": counts, "flagged": flags}

    # -- retention ------------------------------------------------------------------------------------------------

    def prune(self, keep_days: int = 0, keep_images: int = 0, *, grace_s: float = 0.0) -> dict[str, int]:
        """Retention of this station's rows and files, in that order, so a crash never leaves a row without its file.

        Rows older than ``keep_days`` days are deleted (0 keeps them); only the newest ``keep_images`` rows keep
        their files (0: all do; the others keep their numbers, their paths set NULL).
        Rows change (and commit) first; then the files no row names any more are unlinked, so a crash in between
        leaves orphan files (``sweep`` removes them), never a row naming a missing file. A file shared by several
        rows (uploads are content-addressed) stays while any row names it. Files touched in the last ``grace_s``
        seconds are left to a later sweep. Returns rows_deleted, rows_cleared and files_deleted.
        """
        for what, v in (("keep_days", keep_days), ("keep_images", keep_images)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ZsadInputError(f"{what} {v!r}: a whole number >= 0 is needed (0 keeps everything)")
        c = inspections.c
        mine = c.station == self.station_name
        candidates: set[str] = set()
        deleted = cleared = 0
        if keep_days:
            cutoff = utcnow() - timedelta(days=keep_days)
            while True:
                with self._begin(write=True) as conn:  # the oldest first: found at the start of the time index
                    batch = conn.execute(
                        sa.select(c.id, c.profile_id, c.created_at, c.label, c.review_label, *(c[k] for k in PATHS))
                        .where(mine, c.created_at < cutoff)
                        .order_by(c.created_at, c.id)
                        .limit(BATCH)
                        .with_for_update()
                    ).all()
                    if batch:
                        conn.execute(inspections.delete().where(c.id.in_([r.id for r in batch])))
                        deltas: dict[tuple[int, datetime], np.ndarray] = {}
                        for r in batch:
                            if r.profile_id is not None:
                                key = (r.profile_id, _hour(r.created_at))
                                sub = -np.asarray(_contribution(r.label, r.review_label))
                                deltas[key] = deltas[key] + sub if key in deltas else sub
                        self._bump(conn, deltas)
                        conn.execute(hourly.delete().where(hourly.c.inspections <= 0))
                deleted += len(batch)
                candidates.update(p for r in batch for p in r[5:] if p is not None)
                if len(batch) < BATCH:
                    break
        if keep_images:
            with self._begin() as conn:
                edge = conn.execute(
                    sa.select(c.created_at, c.id)
                    .where(mine)
                    .order_by(c.created_at.desc(), c.id.desc())
                    .offset(keep_images - 1)
                    .limit(1)
                ).first()
            if edge is not None:
                older = sa.tuple_(c.created_at, c.id) < sa.tuple_(
                    sa.bindparam("t", edge[0], type_=c.created_at.type), sa.bindparam("i", edge[1], type_=sa.BigInteger)
                )
                has_files = sa.or_(*(c[k].is_not(None) for k in PATHS))
                while True:
                    # Finding them may read every older row: a read, so requests are not held up meanwhile.
                    with self._begin() as conn:
                        ids = conn.scalars(
                            sa.select(c.id)
                            .where(mine, older, has_files)
                            .order_by(c.created_at.desc(), c.id.desc())
                            .limit(BATCH)
                        ).all()
                    with self._begin(write=True) as conn:
                        batch = conn.execute(
                            sa.select(c.id, *(c[k] for k in PATHS)).where(c.id.in_(ids), has_files).with_for_update()
                        ).all()
                        conn.execute(
                            inspections.update()
                            .where(c.id.in_([r.id for r in batch]))
                            .values(dict.fromkeys(PATHS, None))
                        )
                    cleared += len(batch)
                    candidates.update(p for r in batch for p in r[1:] if p is not None)
                    if len(ids) < BATCH:
                        break
        candidates.update([o for p in candidates for o in _companions(p)])
        files = self._unlink_unnamed(sorted(candidates), time.time() - grace_s)
        return {"rows_deleted": deleted, "rows_cleared": cleared, "files_deleted": files}

    def sweep(self, grace_s: float) -> int:
        """Delete the files under images/, maps/ and overlays/ no row names, untouched for ``grace_s`` seconds.

        Those are what a crash between writing a request's files and committing its rows leaves behind. Every
        named path is read once (streamed, beside the list of files), without blocking writers; the few files left
        are then checked again, and unlinked, under the files lock (``_unlink_unnamed``).
        """
        before = time.time() - float(grace_s)
        found: set[str] = set()
        for d in FILE_DIRS:
            top = self.files / d
            if not top.is_dir():
                continue
            for dirpath, _dirs, names in os.walk(top):
                rel = Path(dirpath).relative_to(self.files).as_posix()
                for n in names:
                    try:
                        st = os.stat(os.path.join(dirpath, n), follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < before:
                        found.add(f"{rel}/{n}")
        if found:
            c = inspections.c
            with self._begin() as conn:
                for k in PATHS:
                    q = sa.select(c[k]).where(c[k].is_not(None))
                    for (p,) in conn.execution_options(yield_per=20_000).execute(q):
                        found.discard(p)
                        for other in _companions(p):
                            found.discard(other)
        return self._unlink_unnamed(sorted(found), before)

    def _unlink_unnamed(self, paths: Iterable[str], before: float) -> int:
        """Unlink those of ``paths`` (relative) that no row names and untouched since ``before`` (epoch seconds).

        Each chunk is checked and unlinked under the files lock that record() checks its files under: a row
        committed before the check keeps its file, one committed after finds the file gone and is refused.
        """
        todo = list(paths)
        gone = 0
        for i in range(0, len(todo), IN_CHUNK):
            chunk = todo[i : i + IN_CHUNK]
            with self._begin(write=True) as conn:
                if self.dialect == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(FILES_LOCK)))
                named = self._named(conn, chunk)
                for rel in chunk:
                    if rel in named:
                        continue
                    p = self.files / rel
                    try:
                        if p.stat().st_mtime >= before:
                            continue
                        p.unlink()
                        gone += 1
                    except FileNotFoundError:
                        continue
        return gone

    def _named(self, conn: Connection, paths: list[str]) -> set[str]:
        """Which of ``paths`` some row (of any station) names, itself or as the companion of a file it names."""
        c = inspections.c
        asked = sorted({*paths, *(o for p in paths if (o := _owner(p)) is not None)})
        hits: set[str] = set()
        for k in PATHS:  # a query per column, each an index lookup (PostgreSQL scans the table for an OR of them)
            hits.update(conn.scalars(sa.select(c[k]).where(c[k].in_(asked))))
        return {p for p in paths if p in hits or _owner(p) in hits}


def _companions(rel: str) -> list[str]:
    """Files that live and die with ``rel`` without a column of their own: a map's 16-bit PNG beside its .npy."""
    return [rel[: -len(".npy")] + ".png"] if rel.startswith("maps/") and rel.endswith(".npy") else []


def _owner(rel: str) -> str | None:
    """The file whose companion ``rel`` is (see ``_companions``), or None."""
    return rel[: -len(".png")] + ".npy" if rel.startswith("maps/") and rel.endswith(".png") else None


def check_profile_name(name: object) -> str:
    """A profile name: a short url-safe word, since it appears in URLs, file names and tables."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ZsadInputError(
            f"profile name {str(name)[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' (first a letter or digit)"
        )
    return name


def _profile_dict(name: str, r: Any) -> dict[str, Any]:
    return {
        "name": name,
        "revision": r["revision"],
        "created_at": r["created_at"].isoformat(),
        "reason": r["reason"],
        "setup": json.loads(r["setup"]),
        "scoring_key": r["scoring_key"],
        "station": r["station"],
    }


def _sink_stats() -> dict[str, Any]:
    return {"delivered": 0, "pending": 0, "oldest_pending_s": None, "failed_attempts_pending": 0, "last_error": None}


def _rate(n: int, d: int) -> float | None:
    return None if d == 0 else n / d


def _int(v: Any, uid: str, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise ZsadInputError(f"inspection {uid}: {key} must be an integer, not {v!r}")
    return int(v)


def _float(v: Any, uid: str, key: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ZsadInputError(f"inspection {uid}: {key} must be a number, not {v!r}") from None
    if not math.isfinite(x):
        raise ZsadInputError(f"inspection {uid}: {key} must be finite, not {v!r}")
    return x


def encode_cursor(sort: str, order: str, key: Any, row_id: int) -> str:
    """The opaque, url-safe cursor after a row: the sort and order it belongs to, the row's sort key and id."""
    value = key.isoformat() if isinstance(key, datetime) else float(key)
    raw = json.dumps([sort, order, value, int(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, order: str) -> tuple[Any, int]:
    """(sort key, id) of ``cursor``; refused if it is damaged or was made for another sort or order."""
    try:
        s, o, value, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        s = o = value = row_id = None
    if s in ("time", "score") and o in ("desc", "asc") and (s, o) != (sort, order):
        raise ZsadInputError(f"cursor {cursor[:40]!r}: made for sort={s} order={o}, not sort={sort} order={order}")
    try:
        if (s, o) != (sort, order) or not isinstance(row_id, int) or isinstance(row_id, bool):
            raise ValueError
        if sort == "time":
            value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                raise ValueError
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
    except (ValueError, TypeError):
        raise ZsadInputError(f"cursor {cursor[:40]!r}: not a cursor of this history") from None
    return value, row_id
