"""The station's store at scale: 1,000,000 inspections in SQLite and in PostgreSQL, and the queries the page makes.

    python benchmarks/station_scale.py                       # 1,000,000 rows, SQLite file + throw-away PostgreSQL
    python benchmarks/station_scale.py --rows 100000 --skip-postgres

Synthetic rows (seeded): several profiles of unequal size, timestamps spread over the last 30 days, 5 % flagged,
about 4 % of the last week's flagged rows and 1 % of the rest reviewed. Rows are loaded through ``Station.record``
(1000 per call) and reviews through ``Station.review``, so the load time includes the hourly rollup and every index.
Each query is timed through the ``Station`` API (Python conversion included), median of ``--repeats`` runs after a
warm-up. The deep page starts after the 500,000th row (newest first): its cursor is made from that row's key, as
the page's own cursor would be after 10,000 pages of 50. Goal: every query under 200 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from _results import add_results_args, emit
from zsad.store import Filters, Station, encode_cursor
from zsad.store import db as store_db
from zsad.store.schema import inspections
from zsad.store.throwaway import create_database, throwaway_postgres

PROFILES = ("line-a", "line-b", "line-c", "line-d")
WEIGHTS = (0.4, 0.3, 0.2, 0.1)
SETUP = {"method": "sdp", "options": {}, "backbone": {"name": "ViT-B-16"}, "class_name": "part", "references": []}


def synthetic(n: int, days: int, seed: int, now: datetime) -> dict[str, np.ndarray]:
    """Columns of ``n`` inspections in time order over the last ``days`` days."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.uniform(0, days * 86400, n))
    flagged = rng.random(n) < 0.05
    score = np.where(flagged, rng.normal(0.75, 0.08, n), rng.normal(0.30, 0.07, n)).round(6)
    return {
        "t": np.array([now - timedelta(days=days) + timedelta(seconds=float(s)) for s in seconds]),
        "profile": rng.choice(len(PROFILES), n, p=WEIGHTS),
        "flagged": flagged,
        "score": score,
        "upload": rng.random(n) < 0.1,
        "uid": np.array([rng.bytes(16).hex() for _ in range(n)]),
        "size": rng.integers(200, 2000, n),
        # an upload's sha256: 2 % of the images were uploaded before (content-addressed files are shared)
        "sha": np.array([rng.bytes(32).hex() for _ in range(n)]),
        "again": rng.random(n) < 0.02,
    }


def image_of(cols: dict[str, np.ndarray], i: int) -> str:
    j = i // 2 if cols["again"][i] else i
    return str(cols["sha"][j])


def make_files(folder: Path, cols: dict[str, np.ndarray]) -> int:
    """The (empty) files the rows name, as zsad serve writes them: images/<sha256>.png, maps/, overlays/<uid>."""
    made = 0
    for d in ("images", "maps", "overlays"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    for i in range(len(cols["uid"])):
        u = cols["uid"][i]
        for rel in (f"images/{image_of(cols, i)}.png", f"maps/{u}.npy", f"overlays/{u}.png"):
            try:
                os.close(os.open(folder / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                made += 1
            except FileExistsError:
                pass
    return made


def rows_of(cols: dict[str, np.ndarray], keys: list[str], a: int, b: int) -> list[dict[str, Any]]:
    out = []
    for i in range(a, b):
        p = PROFILES[cols["profile"][i]]
        out.append(
            {
                "uid": str(cols["uid"][i]),
                "created_at": cols["t"][i],
                "source": "upload" if cols["upload"][i] else "api",
                "request_id": str(cols["uid"][i])[:16],
                "profile": p,
                "revision": 1,
                "scoring_key": keys[cols["profile"][i]],
                "file_sha256": image_of(cols, i),
                "file_name": f"cam-{i % 7}/{i:08d}.png",
                "width": int(cols["size"][i]),
                "height": int(cols["size"][i]) * 3 // 4,
                "score": float(cols["score"][i]),
                "label": int(cols["flagged"][i]),
                "threshold": 0.5,
                "threshold_source": "references",
                "pixel_threshold": 0.45,
                "method": "sdp",
                "class_name": "part",
                "model_id": "0123456789abcdef",
                "image_path": f"images/{image_of(cols, i)}.png",
                "map_path": f"maps/{cols['uid'][i]}.npy",
                "overlay_path": f"overlays/{cols['uid'][i]}.png",
            }
        )
    return out


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def load(st: Station, cols: dict[str, np.ndarray], keys: list[str], batch: int) -> float:
    n = len(cols["uid"])
    t0 = time.perf_counter()
    for a in range(0, n, batch):
        st.record(rows_of(cols, keys, a, min(n, a + batch)))
        if a and a % 100_000 == 0:
            print(f"  {a:,} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


def review_some(st: Station, cols: dict[str, np.ndarray], now: datetime, seed: int) -> tuple[int, float]:
    """Review ~20 % of the last week's flagged rows and ~1 % of the rest (a few thousand review() calls)."""
    rng = np.random.default_rng(seed + 1)
    recent = np.array([t >= now - timedelta(days=7) for t in cols["t"]])
    pick = recent & np.where(cols["flagged"], rng.random(len(recent)) < 0.2, rng.random(len(recent)) < 0.01)
    times = []
    for i in np.flatnonzero(pick):
        verdict = rng.choice(["normal", "defect", "skip"], p=[0.6, 0.35, 0.05])
        t0 = time.perf_counter()
        st.review(str(cols["uid"][i]), str(verdict))
        times.append(time.perf_counter() - t0)
    return len(times), 1000 * statistics.median(times)


def size_of(st: Station, url: str) -> int:
    engine = st._engine
    if st.dialect == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        path = Path(sa.make_url(url).database or "")
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.pg_database_size(sa.func.current_database()))) or 0)


def one_row_record_ms(url: str, folder: Path, n: int, synchronous: str) -> float:
    """Median time of record() of one row (a one-image request) on a fresh database: the commit's fsync cost."""
    old = store_db.SQLITE_SYNCHRONOUS
    store_db.SQLITE_SYNCHRONOUS = synchronous
    try:
        with Station(url, folder, station_name="bench") as st:
            now = datetime.now(UTC)
            rows = [{"uid": f"{i:032x}", "created_at": now, "score": 0.5, "label": 0} for i in range(n + 1)]
            st.record([rows[0]])
            times = []
            for r in rows[1:]:
                t0 = time.perf_counter()
                st.record([r])
                times.append(time.perf_counter() - t0)
            return 1000 * statistics.median(times)
    finally:
        store_db.SQLITE_SYNCHRONOUS = old


def run(url: str, folder: Path, cols: dict[str, np.ndarray], args: argparse.Namespace, now: datetime) -> dict:
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    print(f"files: {make_files(folder, cols):,} made in {time.perf_counter() - t0:.0f} s", flush=True)
    with Station(url, folder, station_name="bench") as st:
        keys = [st.create_profile(p, {**SETUP, "class_name": p})["scoring_key"] for p in PROFILES]
        print(f"{st.dialect}: loading {len(cols['uid']):,} rows", flush=True)
        res["load_s"] = load(st, cols, keys, args.batch)
        res["reviews"], res["review_ms"] = review_some(st, cols, now, args.seed)
        if st.dialect == "postgresql":  # what autovacuum does within a minute of a bulk load
            with st._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE"))
        res["bytes"] = size_of(st, url)
        big = PROFILES[0]
        n = len(cols["uid"])
        deep_at = min(500_000, n // 2)
        c = inspections.c
        with st._engine.connect() as conn:  # the key of the deep_at-th newest row: a cursor as a page would make
            key = conn.execute(
                sa.select(c.created_at, c.id).order_by(c.created_at.desc(), c.id.desc()).offset(deep_at - 1).limit(1)
            ).one()
        deep = encode_cursor("time", "desc", key[0], key[1])
        want = sorted(range(n), key=lambda i: (cols["t"][i], i), reverse=True)[deep_at : deep_at + 50]
        got = [r["uid"] for r in st.inspections(cursor=deep, limit=50).rows]
        assert got == [str(cols["uid"][i]) for i in want], "the deep page is not the rows after the cursor"
        queue = Filters(profile=big, label=1, reviewed=False)
        first = st.inspections(queue, sort="score", limit=50).rows
        assert len(first) == 50 and all(r["label"] == 1 and r["review_label"] is None for r in first)
        assert [r["score"] for r in first] == sorted((r["score"] for r in first), reverse=True)
        queries: dict[str, Callable[[], object]] = {
            "history, first page (50 rows, newest first)": lambda: st.inspections(limit=50),
            f"review queue: profile {big} + flagged + unreviewed, by score": lambda: st.inspections(
                queue, sort="score", limit=50
            ),
            f"deep page (after {deep_at:,} rows, newest first)": lambda: st.inspections(cursor=deep, limit=50),
            f"profile {big}, lowest scores first (by score, ascending)": lambda: st.inspections(
                Filters(profile=big), sort="score", order="asc", limit=50
            ),
            f"dashboard {big}: 7 days hourly, 20 bins": lambda: st.dashboard(big, 7, "hour"),
            f"dashboard {big}: 30 days daily, 20 bins": lambda: st.dashboard(big, 30, "day"),
            f"scores_for_refit {big} (newest 200,000)": lambda: st.scores_for_refit(big, keys[0]),
        }
        res["queries"] = {name: median_ms(fn, args.repeats) for name, fn in queries.items()}
        res["dashboard_rows"] = st.dashboard(big, 7, "hour")["inspections"]
        t0 = time.perf_counter()
        pruned = st.prune(keep_days=args.days - 1)
        res["prune_days"] = (pruned["rows_deleted"], pruned["files_deleted"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        pruned = st.prune(keep_images=int(0.9 * n))
        res["prune_images"] = (pruned["rows_cleared"], pruned["files_deleted"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        res["sweep"] = (st.sweep(grace_s=0), time.perf_counter() - t0)
        files_left = sum(len(os.listdir(folder / d)) for d in ("images", "maps", "overlays"))
        res["files_left"] = files_left
        res["version"] = _server_version(st)
    return res


def _server_version(st: Station) -> str:
    with st._engine.connect() as conn:
        if st.dialect == "sqlite":
            return "SQLite " + str(conn.exec_driver_sql("select sqlite_version()").scalar())
        return "PostgreSQL " + str(conn.exec_driver_sql("show server_version").scalar()).split()[0]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1000, help="rows per record() call while loading")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    add_results_args(ap)
    args = ap.parse_args()
    now = datetime.now(UTC)
    cols = synthetic(args.rows, args.days, args.seed, now)
    results: dict[str, dict] = {}
    sync: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="station-scale-") as tmp:
        top = Path(tmp)
        files = top / "files"  # shared by both runs: the second re-creates what the first one's prune removed
        if not args.skip_sqlite:
            url = f"sqlite:///{top / 'station.db'}"
            results["SQLite (file, WAL, synchronous=FULL)"] = run(url, files, cols, args, now)
            for mode in ("FULL", "NORMAL"):
                (top / mode).mkdir()
                sync[f"SQLite synchronous={mode}"] = one_row_record_ms(
                    f"sqlite:///{top / mode / 's.db'}", top / mode, 300, mode
                )
        if not args.skip_postgres:
            with throwaway_postgres() as url:
                results["PostgreSQL (throw-away cluster, fsync on)"] = run(url, files, cols, args, now)
                sync["PostgreSQL"] = one_row_record_ms(create_database(url, "single"), top, 300, "FULL")
        print("removing the files", flush=True)
    emit(report(results, sync, args, cols), args)


def report(results: dict[str, dict], sync: dict[str, float], args: argparse.Namespace, cols: dict) -> str:
    names = list(results)
    first = results[names[0]]

    def line(label: str, cell: Callable[[dict], str]) -> str:
        return f"| {label} | " + " | ".join(cell(r) for r in results.values()) + " |"

    lines = [
        f"### Station store at scale ({time.strftime('%Y-%m-%d')}, {args.rows:,} inspections)",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/station_scale.py', *sys.argv[1:]])}`",
        "",
        f"Data: **synthetic rows** (seed {args.seed}): {args.rows:,} inspections over the last {args.days} days in "
        f"{len(PROFILES)} profiles ({', '.join(f'{int(w * 100)} %' for w in WEIGHTS)}), "
        f"{cols['flagged'].mean() * 100:.1f} % flagged, each naming its three files (an upload, a map, an overlay: "
        "empty files, 2 % of the uploads shared), loaded through `Station.record` "
        f"({args.batch} rows per call, one transaction each) and reviewed through `Station.review`. Queries through "
        f"the `Station` API, median of {args.repeats} runs after a warm-up (ms). PostgreSQL: `VACUUM ANALYZE` after "
        "the load (what autovacuum does within a minute); SQLite as the store leaves it. The deep page's rows were "
        "checked against a Python sort, the review queue's against its filter. "
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLAlchemy "
        f"{sa.__version__}, {', '.join(r['version'] for r in results.values())}; databases and files on the local "
        "disk.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        line("load: rows/s (total)", lambda r: f"{args.rows / r['load_s']:,.0f} ({r['load_s']:.0f} s)"),
        line("database size per million rows", lambda r: f"{r['bytes'] / args.rows * 1e6 / 2**20:,.0f} MiB"),
        line(f"review(), median of {first['reviews']:,} calls", lambda r: f"{r['review_ms']:.1f}"),
    ]
    for q in first["queries"]:
        lines.append(line(q, lambda r, q=q: f"{r['queries'][q]:.1f}"))
    lines += [
        line(
            f"prune(keep_days={args.days - 1}), one run: s (rows deleted, files unlinked)",
            lambda r: f"{r['prune_days'][2]:.1f} ({r['prune_days'][0]:,}, {r['prune_days'][1]:,})",
        ),
        line(
            f"then prune(keep_images={int(0.9 * args.rows):,}): s (rows cleared, files unlinked)",
            lambda r: f"{r['prune_images'][2]:.1f} ({r['prune_images'][0]:,}, {r['prune_images'][1]:,})",
        ),
        line(
            "then sweep(grace_s=0): s (files on disk, all checked; deleted)",
            lambda r: f"{r['sweep'][1]:.1f} ({r['files_left']:,}, {r['sweep'][0]:,})",
        ),
        "",
        f"The 7-day dashboard of {PROFILES[0]} covers {first['dashboard_rows']:,} inspections (the histogram is "
        "counted in the database from the profile's time index, the counts come from the hourly rollup). "
        "One-row `record()` (a one-image request, its commit included), median of 300 on a fresh database: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in sync.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
