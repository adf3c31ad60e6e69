"""Opening a station database: its URL, an engine with each dialect's settings, SQLite's one-writer lock, migration.

SQLite is the embedded default and belongs to one server: WAL (readers never wait for the writer),
``synchronous=FULL`` (a commit that returned survives a power cut or a ``kill -9``, so a client never holds a
success answer for rows that are gone), foreign keys on, and an exclusive ``flock`` on ``<dbfile>.lock`` for as
long as the station is open. Several servers share one PostgreSQL database instead: no lock there, and schema
creation serialised by a transaction-scoped advisory lock so that two servers starting at once do not race.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from zsad._version import __version__
from zsad.errors import ZsadInputError
from zsad.store.schema import MIGRATIONS, SCHEMA_VERSION, schema_info, stamp

# pg_advisory_xact_lock keys (64-bit ints): the migration, and the files of the station (record() takes it shared
# while it checks that the files its rows name exist; prune and sweep take it exclusive while they unlink).
MIGRATION_LOCK = zlib.crc32(b"zsad.store.migrate")
FILES_LOCK = zlib.crc32(b"zsad.store.files")
BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "zsad_write"  # execution option of a connection whose transaction writes (BEGIN IMMEDIATE on SQLite)
# FULL: the WAL is fsynced at every commit, so a commit that returned survives a power cut (NORMAL may lose the
# last commits, though never corrupts). benchmarks/station_scale.py measures what it costs a one-image request.
SQLITE_SYNCHRONOUS = "FULL"


@dataclass
class Opened:
    """An open database: the engine, its dialect name, the URL fit to show, and SQLite's lock (None otherwise)."""

    engine: Engine
    dialect: str
    url_safe: str
    memory: bool
    lock: FileLock | None


class FileLock:
    """An exclusive, non-blocking ``flock`` on a file, holding this process's pid so a refusal can name the holder.

    ``flock`` belongs to the open file: it is released when the process dies (even by ``kill -9``), so a crashed
    server never leaves a stale lock behind, and a second station in the same process is refused too.
    """

    def __init__(self, path: Path, db: str) -> None:
        self.path = path
        try:
            self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ZsadInputError(f"{path}: cannot open the station lock ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(self.fd)
            os.close(self.fd)
            self.fd = None
            raise ZsadInputError(
                f"{db}: in use by another zsad serve (pid {holder}); several servers need --db postgresql://..."
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Unlock (the file stays: removing it would let a third opener lock a different file than the second)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


def open_database(url: str, lock: bool = True) -> Opened:
    """Check ``url``, open its engine (and SQLite's lock), and bring the schema to this zsad's version.

    ``postgresql://`` (and ``postgres://``) mean psycopg 3; ``sqlite:///path`` a file (its folder must exist);
    ``sqlite://`` an in-memory database for tests (one connection shared by every thread, no lock).
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ZsadInputError(f"{url!r}: not a database URL (sqlite:///PATH or postgresql://USER@HOST/DB)") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        parsed = parsed.set(drivername="postgresql")
        backend = "postgresql"
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    safe = sa.make_url(url).render_as_string(hide_password=True)
    if backend == "sqlite":
        return _open_sqlite(parsed, safe, lock)
    if backend == "postgresql":
        return _open_postgresql(parsed, safe)
    raise ZsadInputError(f"{safe}: unsupported database {backend!r} (sqlite:///PATH or postgresql://USER@HOST/DB)")


def _open_sqlite(url: sa.URL, safe: str, take_lock: bool = True) -> Opened:
    database = url.database or ""
    memory = database in ("", ":memory:")
    lock = None
    if memory:
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        path = Path(database).expanduser()
        if not path.parent.is_dir():
            raise ZsadInputError(f"{path}: the folder {path.parent} does not exist")
        lock = FileLock(path.with_name(path.name + ".lock"), str(path)) if take_lock else None
        engine = sa.create_engine(url.set(database=str(path)), connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_connect(memory))
    event.listen(engine, "begin", _sqlite_begin)
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        if not memory and str(mode).lower() != "wal":
            raise ZsadInputError(f"{safe}: SQLite cannot use WAL there (journal mode {mode}); use a local disk")
        migrate(engine, safe)
    except BaseException:
        engine.dispose()
        if lock is not None:
            lock.release()
        raise
    return Opened(engine, "sqlite", safe, memory, lock)


def _sqlite_connect(memory: bool) -> Any:
    def connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN handling starts transactions only before DML (reads would see no snapshot and DDL
        # would commit early): turn it off and begin explicitly (_sqlite_begin), as SQLAlchemy's docs advise.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    return connect


def _sqlite_begin(conn: Connection) -> None:
    # A writer takes SQLite's write lock at once (IMMEDIATE), waiting up to busy_timeout for another process (a
    # lock=False reader that writes); a deferred one that reads first would fail at once when it tries to write.
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _open_postgresql(url: sa.URL, safe: str) -> Opened:
    try:
        engine = sa.create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": 10, "application_name": "zsad"}
        )
    except ImportError:
        raise ZsadInputError(f"{safe}: PostgreSQL needs psycopg 3: pip install 'zsad[postgres]'") from None
    try:
        migrate(engine, safe)
    except sa.exc.OperationalError as e:
        engine.dispose()
        raise ZsadInputError(f"{safe}: cannot connect: {_first_line(e.orig)}") from None
    except BaseException:
        engine.dispose()
        raise
    return Opened(engine, "postgresql", safe, False, None)


def _first_line(e: BaseException | None) -> str:
    text = str(e or "").strip()
    return text.splitlines()[0] if text else type(e).__name__


def migrate(engine: Engine, safe: str) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction; refuse a database a newer zsad wrote.

    A current database is only read. Otherwise the version is read again under the writers' lock (PostgreSQL: an
    advisory lock, so that of two servers starting at once one migrates and the other then finds it done).
    Returns the version found (0 for a database without the station's tables).
    """
    with engine.begin() as conn:
        if _version(conn, safe) == SCHEMA_VERSION:
            return SCHEMA_VERSION
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            found = _version(conn, safe)
            if found == SCHEMA_VERSION:
                return found
            if not found:
                schema_info.create(conn, checkfirst=True)
            for version, step in MIGRATIONS:
                if version > found:
                    try:
                        step(conn)
                    except (sa.exc.ProgrammingError, sa.exc.OperationalError) as e:
                        # a table of that name already there, not made by zsad (PostgreSQL reports a lost
                        # connection as an OperationalError too: that one is no schema problem)
                        if isinstance(e, sa.exc.OperationalError) and conn.dialect.name != "sqlite":
                            raise
                        why = _first_line(e.orig)
                        raise ZsadInputError(f"{safe}: cannot create the station's tables: {why}") from None
            row = stamp(SCHEMA_VERSION, __version__)
            if found:
                conn.execute(schema_info.update().where(schema_info.c.id == 1).values(row))
            else:
                conn.execute(schema_info.delete())
                conn.execute(schema_info.insert().values(row))
            return found


def _version(conn: Connection, safe: str) -> int:
    """The schema version of the database (0: none yet); refused when a newer zsad wrote it."""
    if not sa.inspect(conn).has_table(schema_info.name):
        return 0
    found = conn.scalar(sa.select(schema_info.c.version).where(schema_info.c.id == 1)) or 0
    if found > SCHEMA_VERSION:
        raise ZsadInputError(
            f"{safe}: station schema version {found} was written by a newer zsad (this one, {__version__}, "
            f"knows up to {SCHEMA_VERSION}): upgrade zsad"
        )
    return int(found)
