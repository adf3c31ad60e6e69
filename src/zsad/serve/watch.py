"""Watched folders: every image a camera writes into a folder is scored once, by a profile, and optionally routed.

The intake runs on the service's event loop (``zsad serve --watch DIR=PROFILE``) or alone (``zsad watch``); both
score through ``Service.detect`` with ``source="folder"``, so files share the dynamic batching, decisions,
history and sinks of every other request.

- **Finding files**: OS file events (``watchfiles``: inotify, FSEvents, ReadDirectoryChangesW) for speed, and a
  full rescan every ``rescan_s`` as the safety net (events are lost when a queue overflows, on network shares,
  or while the folder was gone). Temporary names are never taken: dot files, ``~`` files and ``.tmp``, ``.part``,
  ``.partial``, ``.crdownload``, ``.filepart``, ``.swp``, ``.done``.
- **Complete files only**: ``stable`` (size and mtime unchanged for ``settle_s`` while watched), ``rename``
  (the writer writes under a temporary name and renames it into place, so a file is complete when its name
  appears), or ``marker`` (the writer drops ``NAME.done`` or ``STEM.done`` beside ``NAME`` when it is finished).
- **Exactly once**: a file is keyed by path, size, mtime and sha256 and that key is committed in the transaction
  of its inspection (``Station.record(finished=...)``): after a crash or restart, what has a key is not scored
  again (only routed, if routing had not happened yet), and what has none is. New content under an old name is a
  new key, so it is scored.
- **Routing** (optional): the file is moved or copied into ``ok/``, ``ng/``, ``unlabelled/`` (a profile whose
  rule could not decide) or ``error/`` under the watched folder, keeping its relative path. Renames are atomic
  hard links that never overwrite: a name already taken gets ``-1``, ``-2``... Those folders are never watched.
- **Bad files** are refused with their one-line reason in the store (``state=error``), routed to ``error/`` and
  never stop the watcher. A failure that is not the file's (the model, the database) leaves the files pending
  and is retried with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zsad.data import IMAGE_EXTENSIONS
from zsad.errors import ZsadInputError
from zsad.store import AlreadyFinished

if TYPE_CHECKING:
    from zsad.serve.service import Service, Upload

log = logging.getLogger("zsad.watch")
Complete = Literal["stable", "rename", "marker"]
Route = Literal["none", "move", "copy"]
COMPLETE: tuple[str, ...] = ("stable", "rename", "marker")
ROUTES: tuple[str, ...] = ("none", "move", "copy")
ROUTE_DIRS = {1: "ng", 0: "ok", None: "unlabelled", "error": "error"}
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".swp", ".done")
MARKER = ".done"
TICK_S = 0.1  # how often pending files are checked for completeness
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # back-off after a failure that was not the files' (model, database)
ONCE_TRIES = 3  # --once gives a file this many tries (1 + 2 s of back-off) before leaving it for the next run


@dataclass
class WatchSpec:
    """One watched folder and how its files are taken (see the module doc)."""

    folder: Path
    profile: str
    recursive: bool = False
    complete: str = "stable"
    settle_s: float = 1.0
    route: str = "none"

    def check(self) -> None:
        """One line per bad setting; the folder must exist when the watcher starts."""
        if self.complete not in COMPLETE:
            raise ZsadInputError(f"--complete {self.complete!r}: use one of {', '.join(COMPLETE)}")
        if self.route not in ROUTES:
            raise ZsadInputError(f"--route {self.route!r}: use one of {', '.join(ROUTES)}")
        if not (0 <= self.settle_s <= 3600):
            raise ZsadInputError(f"--settle {self.settle_s}: seconds from 0 to 3600")
        self.folder = Path(os.path.abspath(self.folder))
        if not self.folder.is_dir():
            raise ZsadInputError(f"{self.folder}: no such folder to watch")

    def describe(self) -> dict[str, Any]:
        """The settings, for ``/v1/stats`` and the manifest."""
        return {"folder": str(self.folder), "profile": self.profile, "recursive": self.recursive,
                "complete": self.complete, "settle_s": self.settle_s, "route": self.route}  # fmt: skip


def parse_watch(text: str, **settings: Any) -> WatchSpec:
    """``DIR=PROFILE`` (``zsad serve --watch``); the last ``=`` splits, so folder names may hold one."""
    folder, sep, profile = text.rpartition("=")
    if not sep or not folder or not profile:
        raise ZsadInputError(f"--watch {text!r}: use DIR=PROFILE")
    return WatchSpec(Path(folder), profile, **settings)


def is_candidate(path: Path) -> bool:
    """An image name that is not a writer's temporary file."""
    name = path.name
    if name.startswith((".", "~")) or name.lower().endswith(TEMP_SUFFIXES):
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class _Pending:
    path: Path
    seen_wall: float  # when the watcher first saw it (the start of the watcher lag)
    size: int = -1
    mtime_ns: int = -1
    stable_since: float = 0.0
    not_before: float = 0.0  # retry back-off
    failures: int = 0

    def failed(self) -> None:
        """One more failure that was not the file's: not tried again before its back-off."""
        self.failures += 1
        self.not_before = time.monotonic() + RETRY_S[min(self.failures, len(RETRY_S)) - 1]


@dataclass
class _Ready:
    pending: _Pending
    data: bytes
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class FolderState:
    """What one watched folder has done (``/v1/stats``, ``/readyz``, metrics)."""

    spec: WatchSpec
    missing: bool = False
    scored: int = 0
    errors: int = 0
    skipped: int = 0  # found already finished (by an earlier run, or another watcher)
    routed: int = 0
    retries: int = 0
    left: int = 0  # --once: files given up on after ONCE_TRIES failures that were not theirs (the next run tries)
    last_error: str | None = None
    pending: dict[Path, _Pending] = field(default_factory=dict)
    known: dict[Path, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns) finished
    busy: set[Path] = field(default_factory=set)  # being read or scored now

    def as_dict(self) -> dict[str, Any]:
        """Counts and state, JSON-ready."""
        return {**self.spec.describe(), "missing": self.missing, "pending": len(self.pending), "scored": self.scored,
                "errors": self.errors, "skipped": self.skipped, "routed": self.routed, "retries": self.retries,
                "last_error": self.last_error}  # fmt: skip


class Watchers:
    """The intake of one service: a task per folder for events, one for rescans, one that takes complete files."""

    def __init__(self, service: Service, specs: list[WatchSpec], *, rescan_s: float = 10.0) -> None:
        self.service = service
        self.folders = [FolderState(s) for s in specs]
        self.rescan_s = float(rescan_s)
        self.chunk = max(1, min(service.config.max_images, service.config.max_batch))
        # Two chunks in flight: one is read, hashed, decoded and written while the model scores the other.
        self._slots = asyncio.Semaphore(2) if specs else None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._once = False  # --once: a file that keeps failing is left for the next run instead of waited for

    # -- life -----------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching (on the running loop); every folder is scanned at once."""
        self._stop.clear()
        for st in self.folders:
            self._tasks.append(asyncio.create_task(self._events(st), name=f"zsad-watch {st.spec.folder}"))
        if self.folders:
            self._tasks.append(asyncio.create_task(self._rescans(), name="zsad-watch rescans"))
            self._tasks.append(asyncio.create_task(self._take(), name="zsad-watch intake"))

    async def stop(self) -> None:
        """Stop finding files; chunks being scored finish (their results are kept), the rest waits for next time."""
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def once(self) -> dict[str, int]:
        """Score what is in the folders now and return (``zsad watch --once``): waits for files still written."""
        self._once = True
        for st in self.folders:
            self._scan(st)
        while any(st.pending for st in self.folders) or self._inflight:
            await self._step()
            await asyncio.sleep(TICK_S)
        return self.totals()

    def totals(self) -> dict[str, int]:
        """Files scored, refused, skipped and routed by every folder together (and left for later, if any)."""
        keys = ("scored", "errors", "skipped", "routed", *(["left"] if any(st.left for st in self.folders) else []))
        return {k: sum(getattr(st, k) for st in self.folders) for k in keys}

    def state(self) -> list[dict[str, Any]]:
        """Each folder's state (``/v1/stats``)."""
        return [st.as_dict() for st in self.folders]

    def readiness(self) -> list[str]:
        """A reason per watched folder that is missing."""
        return [f"watched folder {st.spec.folder} is missing" for st in self.folders if st.missing]

    # -- finding files --------------------------------------------------------------------------------------------

    async def _events(self, st: FolderState) -> None:
        """OS events of one folder; when the folder disappears, wait for it and watch the new one."""
        from watchfiles import Change, awatch

        folder = st.spec.folder
        while not self._stop.is_set():
            ident = _ident(folder)
            if ident is None:
                if not st.missing:
                    log.warning("watched folder %s is missing; waiting for it", folder)
                st.missing = True
                await self._sleep(min(1.0, self.rescan_s))
                continue
            if st.missing:
                log.warning("watched folder %s is back", folder)
                st.missing = False
            await asyncio.to_thread(self._scan, st)  # what arrived while nobody watched
            try:
                async for changes in awatch(
                    folder,
                    recursive=st.spec.recursive,
                    stop_event=self._stop,
                    watch_filter=None,
                    debounce=50,
                    step=20,
                    rust_timeout=1000,
                    yield_on_timeout=True,
                    ignore_permission_denied=True,
                ):
                    for change, name in changes:
                        if change != Change.deleted:
                            self._offer(st, Path(name))
                    if _ident(folder) != ident:  # removed (and perhaps recreated): the old watch sees nothing any more
                        break
            except (OSError, RuntimeError) as e:  # the folder went away under the watch, or the OS refused one
                log.warning("watching %s: %s", folder, " ".join(str(e).split()))
                await self._sleep(0.5)

    async def _rescans(self) -> None:
        while not self._stop.is_set():
            await self._sleep(self.rescan_s)
            for st in self.folders:
                if not st.missing:
                    await asyncio.to_thread(self._scan, st)

    def _scan(self, st: FolderState) -> None:
        """Offer every candidate file in the folder (the safety net under OS events)."""
        for path in _walk(st.spec.folder, st.spec.recursive):
            self._offer(st, path)

    def _offer(self, st: FolderState, path: Path) -> None:
        """A file that may be new: pending unless it is routing's output, a temp name, or finished as it is."""
        if path in st.pending or path in st.busy or not is_candidate(path):
            return
        try:
            rel = path.relative_to(st.spec.folder)
        except ValueError:
            return
        if len(rel.parts) > 1 and (not st.spec.recursive or rel.parts[0] in ROUTE_DIRS.values()):
            return
        if path in st.known:
            try:
                s = path.stat()
            except OSError:
                return
            if (s.st_size, s.st_mtime_ns) == st.known[path]:
                return
        st.pending[path] = _Pending(path, time.time())

    # -- taking complete files ------------------------------------------------------------------------------------

    async def _take(self) -> None:
        while not self._stop.is_set():
            await self._step()
            await self._sleep(TICK_S)

    async def _step(self) -> None:
        """Start a chunk for each folder's complete files while a slot is free."""
        assert self._slots is not None
        for st in self.folders:
            while not self._slots.locked():
                # only as many as a free slot takes: a backlog of 10,000 files is not stat'ed every tick
                chunk = self._complete(st, self.chunk)
                if not chunk:
                    break
                await self._slots.acquire()
                for p in chunk:
                    st.pending.pop(p.path, None)
                    st.busy.add(p.path)
                task = asyncio.create_task(self._chunk(st, chunk))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    def _complete(self, st: FolderState, limit: int) -> list[_Pending]:
        """Up to ``limit`` pending files complete by the folder's rule, oldest first; vanished ones are dropped."""
        now = time.monotonic()
        spec = st.spec
        ready: list[_Pending] = []
        for p in list(st.pending.values()):  # in the order they were seen
            if len(ready) >= limit:
                break
            if p.not_before > now:
                continue
            try:
                s = p.path.stat()
            except OSError:  # gone (moved away by someone else, or a rename we saw both ends of)
                st.pending.pop(p.path, None)
                continue
            if (s.st_size, s.st_mtime_ns) != (p.size, p.mtime_ns):
                p.size, p.mtime_ns, p.stable_since = s.st_size, s.st_mtime_ns, now
            # stable: unchanged while watched for settle_s, and not modified in the last settle_s by its mtime either
            # (both: a writer on a share whose clock runs behind still has to stop writing for settle_s)
            if spec.complete == "stable" and min(now - p.stable_since, time.time() - s.st_mtime) < spec.settle_s:
                continue
            if spec.complete == "marker" and _marker(p.path) is None:
                continue
            ready.append(p)
        return ready

    async def _chunk(self, st: FolderState, chunk: list[_Pending]) -> None:
        assert self._slots is not None
        try:
            await self._score(st, chunk)
        except Exception as e:  # not the files' fault: they wait and are tried again
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            st.last_error = reason
            st.retries += 1
            log.warning("watch %s: %d file(s) not scored, retried later: %s", st.spec.folder, len(chunk), reason)
            for p in chunk:
                p.failed()
                self._again(st, p)
        finally:
            for p in chunk:
                st.busy.discard(p.path)
            self._slots.release()

    async def _score(self, st: FolderState, chunk: list[_Pending]) -> None:
        from zsad.serve.service import Upload

        service = self.service
        station = service.station
        assert station is not None
        ready, again = await asyncio.to_thread(_read_all, chunk)
        for p in again:
            self._again(st, p)
        if not ready:
            return
        keys = [(str(r.pending.path), r.size, r.mtime_ns, r.sha256) for r in ready]
        known = await asyncio.to_thread(station.intake_known, keys)
        new = [r for r, k in zip(ready, keys, strict=True) if k not in known]
        for r, k in zip(ready, keys, strict=True):
            if k in known:  # finished before (a restart after the commit): only routing may be left to do
                st.skipped += 1
                row = known[k]
                label: Any = "error" if row["state"] == "error" else row["label"]
                st.known[r.pending.path] = (r.size, r.mtime_ns)
                if row["routed_to"] is None:
                    await asyncio.to_thread(self._route, st, r, label)
                elif st.spec.route == "move" and _same(r.pending.path, Path(row["routed_to"])):
                    self._finish_move(st, r.pending.path)  # recorded, but the crash came before the unlink
        if not new:
            return
        folder = str(st.spec.folder)
        finished = [
            {
                "folder": folder,
                "path": str(r.pending.path),
                "size": r.size,
                "mtime_ns": r.mtime_ns,
                "sha256": r.sha256,
            }
            for r in new
        ]
        uploads: list[Upload] = [Upload(_name(st.spec.folder, r.pending.path), r.data) for r in new]
        try:
            answer = await service.detect(
                uploads, profile=st.spec.profile, source="folder", skip_bad=True, finished=finished
            )
        except AlreadyFinished:  # another watcher of the same folder (a shared PostgreSQL) took them first
            st.skipped += len(new)
            for r in new:
                st.known[r.pending.path] = (r.size, r.mtime_ns)
            return
        decided = time.time()
        for r, outcome in zip(new, answer["finished"], strict=True):
            st.known[r.pending.path] = (r.size, r.mtime_ns)
            if outcome["state"] == "error":
                st.errors += 1
                st.last_error = f"{r.pending.path.name}: {outcome['error']}"
                log.warning("watch %s: %s refused: %s", st.spec.folder, r.pending.path, outcome["error"])
                label = "error"
            else:
                st.scored += 1
                label = outcome["label"]
                word = ROUTE_DIRS[label] if label is not None else "--"
                log.info("%-3s %.6g %s (%s)", word, outcome["score"], r.pending.path, st.spec.profile)
                service.metrics.watch_lag.observe(max(0.0, decided - r.pending.seen_wall))
            service.metrics.watched(str(st.spec.folder), "error" if label == "error" else "scored")
            await asyncio.to_thread(self._route, st, r, label)

    def _again(self, st: FolderState, p: _Pending) -> None:
        """Pending again; under ``--once`` a file that failed ``ONCE_TRIES`` times is left for the next run."""
        if self._once and p.failures >= ONCE_TRIES:
            st.left += 1
        else:
            st.pending.setdefault(p.path, p)

    def _route(self, st: FolderState, r: _Ready, label: Any) -> None:
        """Move or copy a finished file under ok/, ng/, unlabelled/ or error/ (keeping its relative path)."""
        if st.spec.route == "none":
            return
        src = r.pending.path
        rel = src.relative_to(st.spec.folder)
        dest_dir = st.spec.folder / ROUTE_DIRS[label] / rel.parent
        move = st.spec.route == "move"
        try:
            dst = link_into(src, dest_dir, move=move)
        except FileNotFoundError:
            return  # gone meanwhile: nothing to route
        except OSError as e:
            st.last_error = f"{src.name}: not routed ({e.strerror or e})"
            log.warning("watch %s: %s", st.spec.folder, st.last_error)
            return
        station = self.service.station
        assert station is not None
        # recorded before the source goes: a crash now leaves the file in both places, and the restart finishes it
        station.intake_routed((str(src), r.size, r.mtime_ns, r.sha256), str(dst))
        st.routed += 1
        if move:
            self._finish_move(st, src)

    @staticmethod
    def _finish_move(st: FolderState, src: Path) -> None:
        """The source of a recorded move goes, with its marker (a restart may finish a move a crash cut short)."""
        with contextlib.suppress(FileNotFoundError):
            src.unlink()
        st.known.pop(src, None)  # gone from the folder: nothing to remember it by (memory stays bounded)
        marker = _marker(src)
        if marker is not None:
            with contextlib.suppress(OSError):
                marker.unlink()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def place(src: Path, dest_dir: Path, *, move: bool) -> Path:
    """``src`` into ``dest_dir`` under its name, or NAME-1, NAME-2... if taken: never overwrites, never half-written.

    ``link_into``, then for a move the source is unlinked.
    """
    dst = link_into(src, dest_dir, move=move)
    if move:
        src.unlink()
    return dst


def link_into(src: Path, dest_dir: Path, *, move: bool) -> Path:
    """The first half of ``place``: ``src`` under a free name in ``dest_dir``, the source left where it is.

    A hard link is atomic and fails when the name exists. A move's caller records the destination and only then
    unlinks the source, so a crash at any point leaves the file under both names or recorded: the next try finds
    its own link (``move``: a name already holding this very file is reused) and makes no second copy. Across file
    systems, and for a copy, the bytes go to a temporary file first, which is then linked into place.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        dst = dest_dir / (src.name if i == 0 else f"{src.stem}-{i}{src.suffix}")
        if move and dst.exists() and _same(src, dst):  # linked by a try that crashed before the unlink
            return dst
        try:
            if move:
                os.link(src, dst)
            else:
                raise OSError(errno.EXDEV, "copy")
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            if not _copy_into(src, dst):
                continue
        return dst
    raise OSError(errno.EEXIST, f"no free name for {src.name} in {dest_dir}")


def _copy_into(src: Path, dst: Path) -> bool:
    """Copy through a temporary file linked to ``dst``; False when ``dst`` was taken meanwhile."""
    tmp = dst.with_name(f".zsad-{os.getpid()}-{time.monotonic_ns()}.tmp")
    try:
        with open(src, "rb") as f, open(tmp, "xb") as g:
            shutil.copyfileobj(f, g, 1 << 20)
            g.flush()
            os.fsync(g.fileno())
        shutil.copystat(src, tmp)
        try:
            os.link(tmp, dst)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _marker(path: Path) -> Path | None:
    for m in (path.with_name(path.name + MARKER), path.with_suffix(MARKER)):
        if m.is_file():
            return m
    return None


def _ident(folder: Path) -> tuple[int, int] | None:
    """The folder's identity (device, inode): a recreated folder is a new one. None when it is not a folder now."""
    try:
        s = folder.stat()
    except OSError:
        return None
    return (s.st_dev, s.st_ino) if stat.S_ISDIR(s.st_mode) else None


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False):
                yield Path(e.path)
            elif recursive and e.is_dir(follow_symlinks=False) and e.name not in ROUTE_DIRS.values():
                yield from _walk_all(Path(e.path))
        except OSError:
            continue


def _walk_all(folder: Path) -> Iterator[Path]:
    for dirpath, _dirs, names in os.walk(folder):
        for n in names:
            yield Path(dirpath) / n


def _name(folder: Path, path: Path) -> str:
    """The name a file's rows and events carry: its path relative to the watched folder."""
    return path.relative_to(folder).as_posix()


def _read_all(chunk: list[_Pending]) -> tuple[list[_Ready], list[_Pending]]:
    """Each file's bytes, size, mtime and sha256, and the files to try again: changed while read, or unreadable.

    A file that vanished is neither (nothing to score).
    """
    ready: list[_Ready] = []
    again: list[_Pending] = []
    for p in chunk:
        try:
            with open(p.path, "rb") as f:
                before = os.fstat(f.fileno())
                data = f.read()
            after = p.path.stat()
        except FileNotFoundError:
            continue
        except OSError as e:  # unreadable for now (permissions, a share gone): tried again with back-off
            log.warning("watch: cannot read %s: %s", p.path, e.strerror or e)
            p.failed()
            again.append(p)
            continue
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
            p.size = -1  # still being written: judged anew
            again.append(p)
            continue
        ready.append(_Ready(p, data, after.st_size, after.st_mtime_ns, hashlib.sha256(data).hexdigest()))
    return ready, again
