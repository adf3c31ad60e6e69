"""A throw-away PostgreSQL cluster for tests and benchmarks: a real server on a free port, gone at exit.

Debian's ``postgresql`` package (``initdb``, ``pg_ctl``) is all it needs; no service is installed or touched.
PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from zsad.errors import ZsadInputError

USER = "postgres"
DATABASE = "zsad"


def find_bin(name: str) -> str | None:
    """``name`` (initdb, pg_ctl, createdb) on PATH, else in the newest /usr/lib/postgresql/*/bin (Debian)."""
    found = shutil.which(name)
    if found:
        return found
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: _major(Path(d).parent.name), reverse=True)
    for d in dirs:
        if os.access(Path(d) / name, os.X_OK):
            return str(Path(d) / name)
    return None


def _major(v: str) -> int:
    return int(v) if v.isdigit() else -1


def postgres_available() -> str | None:
    """None if a throw-away cluster can start here, else why not (one line)."""
    missing = [b for b in ("initdb", "pg_ctl", "createdb") if find_bin(b) is None]
    if missing:
        return f"PostgreSQL binaries not found ({', '.join(missing)}): apt-get install postgresql"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing: PostgreSQL cannot run as root"
        try:
            import pwd

            pwd.getpwnam(USER)
        except KeyError:
            return f"running as root and there is no {USER!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], as_postgres: bool, what: str) -> None:
    full = ["runuser", "-u", USER, "--", *cmd] if as_postgres else cmd
    done = subprocess.run(full, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-400:]
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {tail}")


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` (a throw-away one: trust auth); returns its URL."""
    createdb = find_bin("createdb")
    if createdb is None:
        raise ZsadInputError("createdb: not found (apt-get install postgresql)")
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    cmd = [createdb, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or USER]
    _run([*cmd, name], False, f"createdb {name}")
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def throwaway_postgres(fsync: bool = True) -> Iterator[str]:
    """Start a fresh cluster on a free 127.0.0.1 port and yield ``postgresql://postgres@127.0.0.1:PORT/zsad``.

    The cluster and its folder are removed at exit. ``fsync`` stays on by default so that timings are real ones.
    """
    reason = postgres_available()
    if reason:
        raise ZsadInputError(reason)
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    assert initdb and pg_ctl
    root = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="zsad-pg-"))
    data, sock, log = top / "data", top / "sock", top / "log"
    sock.mkdir()
    if root:
        shutil.chown(top, USER)
        shutil.chown(sock, USER)
    started = False
    try:
        # --no-sync: the cluster is thrown away, its creation need not survive a power cut (the server has fsync)
        init = [initdb, "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync", "--no-instructions"]
        _run(init, root, "initdb")
        for attempt in range(3):  # a free port can be taken between finding it and binding it
            port = _free_port()
            opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync={'on' if fsync else 'off'}"
            try:
                _run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start"], root, "pg_ctl")
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    raise RuntimeError(f"pg_ctl start failed: {_tail(log)}") from None
        url = create_database(f"postgresql://{USER}@127.0.0.1:{port}/postgres", DATABASE)
        yield url
    finally:
        if started:
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], root, "pg_ctl stop")
        shutil.rmtree(top, ignore_errors=True)


def _tail(log: Path) -> str:
    try:
        return " ".join(log.read_text(errors="replace").split())[-400:]
    except OSError:
        return "(no log)"
