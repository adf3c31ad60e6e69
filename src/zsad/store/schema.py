"""The station's tables, described once for SQLite and PostgreSQL, and the ordered migrations that build them.

The schema is versioned: ``schema_info`` holds the version a database was brought to, ``MIGRATIONS`` the steps
from one version to the next. A step, once released, never changes (a database written by it must stay readable):
a later schema change is a new step appended to the list, and step 1 then gets a frozen copy of the version-1
tables instead of creating the live ``metadata``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

# The highest version this zsad knows; a database at a higher one was written by a newer zsad and is refused.
SCHEMA_VERSION = 2


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC ``datetime`` in and out, on every dialect.

    PostgreSQL keeps ``timestamptz`` and answers in the session's zone; SQLite has no zone at all and SQLAlchemy
    stores a fixed-width text (``YYYY-MM-DD HH:MM:SS.ffffff``), which sorts in time order only if every value is in
    one zone. So values go in converted to UTC (naive for SQLite) and come out as UTC, ``isoformat()`` ending in
    ``+00:00`` on both.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """UTC; naive for SQLite (refuses a naive value: its zone would be a guess)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the store keeps aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware, in UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT on PostgreSQL; on SQLite only "INTEGER PRIMARY KEY" is the rowid (compact keys, no second b-tree).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1: one row
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("zsad_version", sa.String(40), nullable=False),  # which zsad last migrated it (for the reader)
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("current", sa.Integer, nullable=False),  # the newest revision (= the one in use)
    sa.Column("created_at", UtcDateTime, nullable=False),
)

revisions = sa.Table(
    "revisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("profile_id", sa.Integer, sa.ForeignKey("profiles.id"), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("station", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("setup", sa.Text, nullable=False),  # canonical JSON, exactly as given (JSONB would reorder keys)
    sa.Column("scoring_key", sa.CHAR(64), nullable=False),
    sa.UniqueConstraint("profile_id", "revision", name="uq_revisions_profile_revision"),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.CHAR(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

inspections = sa.Table(
    "inspections",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.CHAR(32), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("station", sa.String(255), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(64)),
    sa.Column("profile_id", sa.Integer, sa.ForeignKey("profiles.id")),
    sa.Column("revision", sa.Integer),
    sa.Column("scoring_key", sa.CHAR(64)),
    sa.Column("file_sha256", sa.CHAR(64)),
    sa.Column("file_name", sa.String(255)),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("score", sa.Double, nullable=False),
    sa.Column("label", sa.SmallInteger),  # 1 flagged, 0 passed, NULL no threshold
    sa.Column("threshold", sa.Double),
    sa.Column("threshold_source", sa.String(64)),
    sa.Column("pixel_threshold", sa.Double),
    sa.Column("method", sa.String(64)),
    sa.Column("class_name", sa.String(255)),
    sa.Column("model_id", sa.String(64)),
    sa.Column("image_path", sa.String(255)),  # relative to the station's files folder; NULL once pruned
    sa.Column("map_path", sa.String(255)),
    sa.Column("overlay_path", sa.String(255)),
    sa.Column("review_label", sa.SmallInteger),  # -1 skip, 0 normal, 1 defect, NULL not reviewed
    sa.Column("review_note", sa.Text),
    sa.Column("reviewed_at", UtcDateTime),
    # Keyset pagination walks one of these from either end: history by time or by score, of all rows or of one
    # profile, and flagged (or passed) rows by score, the review queue in both orders; without the label ones a
    # "flagged, lowest score first" page scans 95 % of the rows (0.8 s at 1,000,000 rows on SQLite, 1 ms with).
    # score and label ride along in the profile's time index so that the dashboard's histogram of a week is read
    # from the index alone (no table lookups: 2x faster, for ~9 bytes a row). benchmarks/station_scale.py measures
    # these at 1,000,000 rows. uid is unique (its own index).
    sa.Index("ix_inspections_time", "created_at", "id"),
    sa.Index("ix_inspections_profile_time", "profile_id", "created_at", "id", "score", "label"),
    sa.Index("ix_inspections_score", "score", "id"),
    sa.Index("ix_inspections_profile_score", "profile_id", "score", "id"),
    sa.Index("ix_inspections_label_score", "label", "score", "id"),
    sa.Index("ix_inspections_profile_label_score", "profile_id", "label", "score", "id"),
    # Which rows name a file: prune and sweep ask before unlinking (an upload is shared by every row of the same
    # image), while record() waits. Without these each question is a scan of the table (0.5 s at 1,000,000 rows).
    # Partial: the rows whose files were pruned leave them.
    *(
        sa.Index(
            f"ix_inspections_{k}", k, sqlite_where=sa.column(k).is_not(None), postgresql_where=sa.column(k).is_not(None)
        )
        for k in ("image_path", "map_path", "overlay_path")
    ),
)

# Per profile and UTC hour: the dashboard's counts, kept in the transaction of the record() or review() that
# changes them, so that a 7-day dashboard reads 168 rows instead of bucketing every inspection of the week.
hourly = sa.Table(
    "hourly",
    metadata,
    sa.Column("profile_id", sa.Integer, sa.ForeignKey("profiles.id"), primary_key=True),
    sa.Column("hour", UtcDateTime, primary_key=True),
    sa.Column("inspections", sa.Integer, nullable=False),
    sa.Column("flagged", sa.Integer, nullable=False),
    sa.Column("reviewed", sa.Integer, nullable=False),  # reviewed normal or defect (a skip is no verdict)
    sa.Column("skipped", sa.Integer, nullable=False),
    sa.Column("reviewed_flagged", sa.Integer, nullable=False),
    sa.Column("false_alarms", sa.Integer, nullable=False),
    sa.Column("reviewed_unflagged", sa.Integer, nullable=False),
    sa.Column("missed_defects", sa.Integer, nullable=False),
)

COUNTS = tuple(c.name for c in hourly.columns if c.name not in ("profile_id", "hour"))

# Version 2: the folder watcher's memory and the sinks' outbox.
#
# One row per file a watcher finished (scored, or refused as unreadable), keyed by what identifies that content at
# that place: path, size, mtime and sha256. It is written in the transaction of the file's inspection, so a file is
# either scored and remembered or neither: a restart scores exactly what had not been finished, and a camera that
# rewrites a name with new content gets that content scored.
intake = sa.Table(
    "intake",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("station", sa.String(255), nullable=False),
    sa.Column("folder", sa.String(1024), nullable=False),  # the watched folder, absolute
    sa.Column("path", sa.String(1024), nullable=False),  # the file where it was found, absolute
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.CHAR(64), nullable=False),
    sa.Column("profile_id", sa.Integer, sa.ForeignKey("profiles.id")),
    sa.Column("state", sa.String(16), nullable=False),  # done (scored) or error (refused, see error)
    sa.Column("uid", sa.CHAR(32)),  # the inspection, when scored
    sa.Column("error", sa.Text),
    sa.Column("routed_to", sa.String(1024)),  # where routing moved or copied it (NULL: not routed)
    sa.UniqueConstraint("path", "size", "mtime_ns", "sha256", name="uq_intake_file"),
    sa.Index("ix_intake_folder_time", "folder", "created_at", "id"),
)

# One row per (decision, sink): written in the transaction of the decision, so an event exists exactly when its
# decision does; the delivery thread sends the due ones in id order and marks them delivered, or retries later.
# Each server delivers the events of its own decisions (column station), so servers sharing a PostgreSQL station
# with the same sinks never send an event twice.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("station", sa.String(255), nullable=False),  # the server that decided: only it delivers the event
    sa.Column("sink", sa.String(255), nullable=False),  # the sink's name (its URL without secrets)
    sa.Column("uid", sa.CHAR(32)),  # the inspection the event is about
    sa.Column("payload", sa.Text, nullable=False),  # the event, JSON
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", UtcDateTime, nullable=False),  # not tried again before this
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", UtcDateTime),  # NULL: not yet acknowledged
    # The due query walks the undelivered rows of one sink in id order: a partial index holds only those, so it
    # stays as small as the backlog however many events were delivered.
    sa.Index(
        "ix_outbox_pending",
        "station",
        "sink",
        "id",
        sqlite_where=sa.column("delivered_at").is_(None),
        postgresql_where=sa.column("delivered_at").is_(None),
    ),
    sa.Index("ix_outbox_delivered", "delivered_at"),
)


def _version_1(conn: Connection) -> None:
    """Everything, as of version 1."""
    metadata.create_all(conn, tables=[profiles, revisions, blobs, inspections, hourly])


def _version_2(conn: Connection) -> None:
    """The watcher's intake memory and the sinks' outbox."""
    metadata.create_all(conn, tables=[intake, outbox])


# (version reached, step): applied in order to a database below that version, each in the migration transaction.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(1, _version_1), (2, _version_2)]
assert [v for v, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def utcnow() -> datetime:
    """The current time, aware, in UTC (the only zone the store keeps)."""
    return datetime.now(UTC)


def stamp(version: int, zsad_version: str) -> dict[str, Any]:
    """The one ``schema_info`` row for ``version``."""
    return {"id": 1, "version": version, "zsad_version": zsad_version, "updated_at": utcnow()}
