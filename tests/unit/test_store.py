"""zsad.store on both databases it supports: SQLite (a file) and a real, throw-away PostgreSQL.

Every answer is checked against a reference computed here from the rows the test wrote (Python sorting, hand
counting, the file system), never against the store's own idea of itself.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from zsad.errors import ZsadInputError
from zsad.store import REVIEW_LABELS, Filters, Station, encode_cursor, scoring_key
from zsad.store.schema import schema_info
from zsad.store.throwaway import create_database

SETUP = {
    "method": "sdp",
    "options": {"k": 1},
    "backbone": {"name": "ViT-B-16", "pretrained": "openai"},
    "class_name": "bottle",
    "references": [],
    "k_shot": None,
    "threshold": {"rule": "robust_outlier", "value": None},
    "pixel_threshold": None,
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'station.db'}"
    return create_database(request.getfixturevalue("postgres_url"), f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "files"
    for sub in ("images", "maps", "overlays"):
        (d / sub).mkdir(parents=True)
    return d


@pytest.fixture
def st(db_url: str, files: Path):
    s = Station(db_url, files, station_name="station-a")
    yield s
    s.close()


def uid(i: int) -> str:
    return f"{i:032x}"


def row(i: int, **kw) -> dict:
    base = {
        "uid": uid(i),
        "created_at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
        "source": "api",
        "request_id": f"r{i}",
        "profile": None,
        "revision": None,
        "scoring_key": None,
        "file_sha256": "0" * 64,
        "file_name": f"img{i}.png",
        "width": 64,
        "height": 48,
        "score": 0.5,
        "label": 0,
        "threshold": 0.7,
        "threshold_source": "manual",
        "pixel_threshold": None,
        "method": "sdp",
        "class_name": "bottle",
        "model_id": "m1",
        "image_path": None,
        "map_path": None,
        "overlay_path": None,
    }
    base.update(kw)
    return base


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# -- profiles, scoring keys, blobs ---------------------------------------------------------------------------------


def test_profiles_revisions_and_rollback(st: Station) -> None:
    p1 = st.create_profile("bottle-line", SETUP)
    assert (p1["name"], p1["revision"], p1["reason"], p1["setup"]) == ("bottle-line", 1, "created", SETUP)
    assert p1["scoring_key"] == scoring_key(SETUP) and p1["created_at"].endswith("+00:00")
    second = {**SETUP, "threshold": {"rule": "manual", "value": 0.8}}
    p2 = st.revise("bottle-line", second, "threshold 0.8")
    third = {**SETUP, "options": {"k": 2}}
    p3 = st.revise("bottle-line", third, "k 2")
    assert (p2["revision"], p3["revision"]) == (2, 3)
    assert p2["scoring_key"] == p1["scoring_key"] != p3["scoring_key"]  # the threshold decides no score
    back = st.rollback("bottle-line", 2)
    assert (back["revision"], back["reason"], back["setup"]) == (4, "rollback to 2", second)
    assert st.profile("bottle-line") == back
    assert st.profile("bottle-line", 3)["setup"] == third
    assert [r["revision"] for r in st.revisions("bottle-line")] == [4, 3, 2, 1]
    assert [r["reason"] for r in st.revisions("bottle-line")] == ["rollback to 2", "k 2", "threshold 0.8", "created"]
    st.create_profile("a-first", SETUP)
    assert [(p["name"], p["revision"]) for p in st.profiles()] == [("a-first", 1), ("bottle-line", 4)]

    with pytest.raises(ZsadInputError, match="'bottle-line': already exists") as e:
        st.create_profile("bottle-line", SETUP)
    one_line(e)
    for bad in ("", "has space", "-dash-first", "x" * 65, "a/b"):
        with pytest.raises(ZsadInputError, match="profile name"):
            st.create_profile(bad, SETUP)
    with pytest.raises(ZsadInputError, match="'nope': no such profile"):
        st.profile("nope")
    with pytest.raises(ZsadInputError, match="no revision 9"):
        st.profile("bottle-line", 9)
    with pytest.raises(ZsadInputError, match="no revision 9"):
        st.rollback("bottle-line", 9)
    with pytest.raises(ZsadInputError, match="not storable as JSON"):
        st.revise("bottle-line", {**SETUP, "options": {"x": float("nan")}}, "nan")
    assert st.profile("bottle-line")["revision"] == 4  # the refused revisions wrote nothing


def test_scoring_key_reads_only_the_fields_that_decide_scores() -> None:
    key = scoring_key(SETUP)
    assert len(key) == 64 and int(key, 16) >= 0
    assert scoring_key({**SETUP, "threshold": {"rule": "manual", "value": 3.0}, "pixel_threshold": 0.4}) == key
    assert scoring_key(dict(reversed(list(SETUP.items())))) == key  # key order is not content
    assert scoring_key({**SETUP, "options": {"k": 1}, "notes": "ignored"}) == key
    for field, other in [
        ("method", "winclip"),
        ("options", {"k": 2}),
        ("backbone", {"name": "ViT-L-14"}),
        ("class_name", "cable"),
        ("references", ["a" * 64]),
        ("k_shot", 2),
    ]:
        assert scoring_key({**SETUP, field: other}) != key, field
    # the references' order matters: it decides which images are memorised and which calibrate
    assert scoring_key({**SETUP, "references": ["a", "b"]}) != scoring_key({**SETUP, "references": ["b", "a"]})


def test_blobs(st: Station) -> None:
    data = os.urandom(5000)
    sha = st.put_blob(data, "ref1.png")
    import hashlib

    assert sha == hashlib.sha256(data).hexdigest()
    assert st.put_blob(data, "renamed.png") == sha  # stored once, under its first name
    assert st.blob(sha) == data and st.blob_name(sha) == "ref1.png"
    assert st.blob(st.put_blob(b"", "empty")) == b""
    with pytest.raises(ZsadInputError, match="not in the database") as e:
        st.blob("f" * 64)
    one_line(e)


# -- record and read back ------------------------------------------------------------------------------------------


def test_record_reads_back_and_a_duplicate_uid_writes_nothing(st: Station, files: Path) -> None:
    st.create_profile("p", SETUP)
    (files / "images" / "a.png").write_bytes(b"x")
    east = timezone(timedelta(hours=5, minutes=30))
    made = datetime(2026, 3, 1, 17, 45, 12, 123456, tzinfo=east)
    given = row(1, created_at=made, profile="p", revision=1, scoring_key="k" * 64, label=1, score=0.93)
    given["image_path"] = "images/a.png"
    st.record([given, row(2)])
    got = st.inspection(uid(1))
    assert got is not None
    assert got["created_at"] == "2026-03-01T12:15:12.123456+00:00"  # the same instant, in UTC
    assert datetime.fromisoformat(got["created_at"]) == made
    expect = {k: v for k, v in given.items() if k != "created_at"}
    assert {k: got[k] for k in expect} == expect
    assert (got["station"], got["review_label"], got["review_note"], got["reviewed_at"]) == (
        "station-a",
        None,
        None,
        None,
    )
    default_time = st.inspection(uid(2))
    assert default_time is not None and default_time["created_at"].endswith("+00:00")
    assert st.inspection(uid(99)) is None

    with pytest.raises(ZsadInputError, match=f"inspection {uid(2)}: already recorded") as e:
        st.record([row(3), row(2), row(4)])
    one_line(e)
    assert st.inspection(uid(3)) is None and st.inspection(uid(4)) is None  # nothing of that request
    with pytest.raises(ZsadInputError, match="twice in one record"):
        st.record([row(5), row(5)])
    with pytest.raises(ZsadInputError, match="no such file"):
        st.record([row(6, image_path="images/missing.png")])
    with pytest.raises(ZsadInputError, match="'nope': no such profile"):
        st.record([row(7), row(8, profile="nope")])
    with pytest.raises(ZsadInputError, match="relative"):
        st.record([row(9, image_path="../etc/passwd")])
    with pytest.raises(ZsadInputError, match="score must be finite"):
        st.record([row(10, score=float("nan"))])
    with pytest.raises(ZsadInputError, match="aware datetime"):
        st.record([row(11, created_at=datetime(2026, 1, 1))])
    with pytest.raises(ZsadInputError, match="unknown key 'scroe'"):
        st.record([{**row(12), "scroe": 1}])
    with pytest.raises(ZsadInputError, match="32 lowercase hex"):
        st.record([row(13, uid="x")])
    page = st.inspections(limit=500)
    assert sorted(r["uid"] for r in page.rows) == [uid(1), uid(2)]


def _population(n: int, seed: int) -> list[dict]:
    """Rows with ties in time and in score, two profiles, labels of all three kinds, two sources and keys."""
    rng = random.Random(seed)
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    rows = []
    for i in range(n):
        rows.append(
            row(
                i + 1,
                created_at=t0 + timedelta(seconds=10 * rng.randrange(n // 3)),  # ~3 rows per instant
                score=rng.randrange(12) / 10,  # many ties
                profile=rng.choice(["p", "q", None]),
                label=rng.choice([0, 0, 1, None]),
                source=rng.choice(["api", "upload"]),
                scoring_key=rng.choice(["a" * 64, "b" * 64]),
            )
        )
    return rows


def _record_in_requests(st: Station, rows: list[dict]) -> None:
    for i in range(0, len(rows), 17):
        st.record(rows[i : i + 17])


def _walk(st: Station, f: Filters, sort: str, order: str, limit: int) -> list[str]:
    seen, cursor = [], None
    for _ in range(1000):
        page = st.inspections(f, sort=sort, order=order, cursor=cursor, limit=limit)  # type: ignore[arg-type]
        assert len(page.rows) <= limit
        assert page.rows or cursor is None  # a cursor is only handed out when more rows follow
        seen += [r["uid"] for r in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("pagination does not end")


def _matches(r: dict, f: Filters, review: dict[str, str]) -> bool:
    if f.profile is not None and r["profile"] != f.profile:
        return False
    if f.label is not None and r["label"] != (None if f.label == "none" else f.label):
        return False
    if f.reviewed is not None and (r["uid"] in review) != f.reviewed:
        return False
    if f.review_label is not None and review.get(r["uid"]) != f.review_label:
        return False
    if f.since is not None and r["created_at"] < f.since:
        return False
    if f.until is not None and r["created_at"] >= f.until:
        return False
    if f.score_min is not None and r["score"] < f.score_min:
        return False
    if f.score_max is not None and r["score"] > f.score_max:
        return False
    if f.source is not None and r["source"] != f.source:
        return False
    return f.scoring_key is None or r["scoring_key"] == f.scoring_key


def test_pagination_visits_every_row_once_in_order(st: Station) -> None:
    st.create_profile("p", SETUP)
    st.create_profile("q", SETUP)
    rows = _population(240, seed=3)
    _record_in_requests(st, rows)  # insertion order = id order: the tie-break of the reference
    review = {}
    for r in rows[::7]:
        review[r["uid"]] = random.Random(r["uid"]).choice(list(REVIEW_LABELS))
        st.review(r["uid"], review[r["uid"]])
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    filters = [
        Filters(),
        Filters(profile="p"),
        Filters(profile="q", label=1, reviewed=False),
        Filters(label="none"),
        Filters(reviewed=True),
        Filters(review_label="skip"),
        Filters(since=t0 + timedelta(seconds=200), until=t0 + timedelta(seconds=500)),
        Filters(since=(t0 + timedelta(seconds=300)).astimezone(timezone(timedelta(hours=-7)))),  # any zone
        Filters(score_min=0.3, score_max=0.7, source="upload"),
        Filters(profile="p", scoring_key="b" * 64, label=0),
    ]
    for f in filters:
        for sort in ("time", "score"):
            for order in ("desc", "asc"):
                index = {r["uid"]: i for i, r in enumerate(rows)}
                keep = [r for r in rows if _matches(r, f, review)]
                keyed = sorted(keep, key=lambda r: (r["created_at" if sort == "time" else "score"], index[r["uid"]]))
                want = [r["uid"] for r in (keyed[::-1] if order == "desc" else keyed)]
                for limit in (7, 500):
                    assert _walk(st, f, sort, order, limit) == want, (f, sort, order, limit)
    assert len(_walk(st, Filters(), "time", "desc", 7)) == 240  # every row, each once


def test_pagination_edges(st: Station) -> None:
    st.record([row(i) for i in range(1, 601)])
    page = st.inspections(limit=10_000)
    assert len(page.rows) == 500 and page.next_cursor is not None  # capped
    rest = st.inspections(cursor=page.next_cursor, limit=500)
    assert len(rest.rows) == 100 and rest.next_cursor is None
    exact = st.inspections(limit=600 - 500, cursor=page.next_cursor)
    assert exact.next_cursor is None  # no empty last page
    with pytest.raises(ZsadInputError, match="made for sort=time order=desc") as e:
        st.inspections(sort="score", cursor=page.next_cursor)
    one_line(e)
    for bad in ("garbage!", "", encode_cursor("time", "desc", 1.5, 3)):
        with pytest.raises(ZsadInputError, match="cursor"):
            st.inspections(cursor=bad)
    with pytest.raises(ZsadInputError, match="limit 0"):
        st.inspections(limit=0)
    with pytest.raises(ZsadInputError, match="sort 'name'"):
        st.inspections(sort="name")  # type: ignore[arg-type]
    with pytest.raises(ZsadInputError, match="label filter 2"):
        st.inspections(Filters(label=2))
    with pytest.raises(ZsadInputError, match="aware datetime"):
        st.inspections(Filters(since=datetime(2026, 1, 1)))
    with pytest.raises(ZsadInputError, match="no such profile"):
        st.inspections(Filters(profile="nope"))
    # a row recorded between two pages does not shift the next page (newest first: it lies before the cursor)
    first = st.inspections(limit=5)
    st.record([row(1000, created_at=datetime(2030, 1, 1, tzinfo=UTC))])
    second = st.inspections(cursor=first.next_cursor, limit=5)
    assert [r["uid"] for r in second.rows] == [uid(i) for i in range(595, 590, -1)]


# -- review, refit, dashboard --------------------------------------------------------------------------------------


def test_review(st: Station) -> None:
    st.create_profile("p", SETUP)
    st.record([row(1, profile="p", label=1), row(2, profile="p", label=0)])
    before = datetime.now(UTC)
    got = st.review(uid(1), "normal", "glare on the cap")
    assert (got["review_label"], got["review_note"]) == ("normal", "glare on the cap")
    assert before <= datetime.fromisoformat(got["reviewed_at"]) <= datetime.now(UTC)
    assert got["reviewed_at"].endswith("+00:00")
    assert st.review(uid(1), "defect")["review_label"] == "defect"  # a later review replaces it
    assert st.review(uid(2), "skip")["review_label"] == "skip"
    with sa.create_engine(st._engine.url).connect() as conn:  # the stored code, seen without the store
        stored = dict(conn.execute(sa.text("SELECT uid, review_label FROM inspections")).all())
    assert stored == {uid(1): 1, uid(2): -1}
    with pytest.raises(ZsadInputError, match="not found") as e:
        st.review(uid(3), "normal")
    one_line(e)
    with pytest.raises(ZsadInputError, match="review label 'ok'"):
        st.review(uid(1), "ok")


def test_scores_for_refit(st: Station) -> None:
    st.create_profile("p", SETUP)
    st.create_profile("q", SETUP)
    rows = _population(120, seed=5)
    _record_in_requests(st, rows)
    review = {}
    for i, r in enumerate(rows[::5]):
        review[r["uid"]] = ["normal", "defect", "skip"][i % 3]
        st.review(r["uid"], review[r["uid"]])
    index = {r["uid"]: i for i, r in enumerate(rows)}
    keep = [r for r in rows if r["profile"] == "p" and r["scoring_key"] == "a" * 64]
    keep.sort(key=lambda r: (r["created_at"], index[r["uid"]]), reverse=True)
    uids, scores, labels, rev = st.scores_for_refit("p", "a" * 64, limit=len(keep) - 3)
    keep = keep[: len(keep) - 3]
    assert uids.tolist() == [r["uid"] for r in keep]
    assert scores.dtype == np.float64 and scores.tolist() == [r["score"] for r in keep]
    assert labels.dtype == np.int8 and labels.tolist() == [-1 if r["label"] is None else r["label"] for r in keep]
    codes = {"normal": 0, "defect": 1, "skip": -1}
    assert rev.dtype == np.int8 and rev.tolist() == [codes.get(review.get(r["uid"], ""), -2) for r in keep]
    empty = st.scores_for_refit("q", "c" * 64)
    assert [len(a) for a in empty] == [0, 0, 0, 0]


def _dashboard_reference(rows: list[dict], review: dict[str, str], board: dict, bins: int) -> dict:
    since, until = datetime.fromisoformat(board["since"]), datetime.fromisoformat(board["until"])
    step = timedelta(hours=1) if board["bucket"] == "hour" else timedelta(days=1)
    inside = [r for r in rows if r["profile"] == "p" and since <= r["created_at"] < until]
    buckets = []
    t = since
    while t < until:
        b = [r for r in inside if t <= r["created_at"] < t + step]
        buckets.append({"start": t.isoformat(), "inspections": len(b), "flagged": sum(r["label"] == 1 for r in b)})
        t += step
    verdict = {u: v for u, v in review.items() if v in ("normal", "defect")}
    out = {
        "buckets": buckets,
        "inspections": len(inside),
        "flagged": sum(r["label"] == 1 for r in inside),
        "reviewed": sum(r["uid"] in verdict for r in inside),
        "skipped": sum(review.get(r["uid"]) == "skip" for r in inside),
        "reviewed_flagged": sum(r["label"] == 1 and r["uid"] in verdict for r in inside),
        "false_alarms": sum(r["label"] == 1 and verdict.get(r["uid"]) == "normal" for r in inside),
        "reviewed_unflagged": sum(r["label"] == 0 and r["uid"] in verdict for r in inside),
        "missed_defects": sum(r["label"] == 0 and verdict.get(r["uid"]) == "defect" for r in inside),
    }
    out["false_alarm_rate"] = out["false_alarms"] / out["reviewed_flagged"] if out["reviewed_flagged"] else None
    out["missed_defect_rate"] = out["missed_defects"] / out["reviewed_unflagged"] if out["reviewed_unflagged"] else None
    scores = [r["score"] for r in inside]
    edges = board["histogram"]["edges"]
    if scores:  # equal-width bins from the lowest to the highest score, each [a, b) but the last [a, b]
        lo, hi = min(scores), max(scores)
        assert edges[0] == lo and edges[-1] == hi and len(edges) == bins + 1
        assert np.allclose(np.diff(edges), (hi - lo) / bins)
        counts, flagged = [0] * bins, [0] * bins
        for r in inside:
            k = next(k for k in range(bins) if edges[k] <= r["score"] < edges[k + 1] or k == bins - 1)
            counts[k] += 1
            flagged[k] += r["label"] == 1
        out["histogram"] = {"edges": edges, "counts": counts, "flagged": flagged}
    else:
        out["histogram"] = {"edges": [], "counts": [], "flagged": []}
    return out


def test_dashboard_matches_hand_counts(st: Station) -> None:
    st.create_profile("p", SETUP)
    st.create_profile("q", SETUP)
    rng = random.Random(11)
    now = datetime.now(UTC)
    rows = []
    for i in range(1, 400):
        rows.append(
            row(
                i,
                created_at=now - timedelta(minutes=rng.randrange(60 * 24 * 9)),  # 9 days: some outside the window
                profile=rng.choice(["p", "p", "q", None]),
                label=rng.choice([0, 0, 0, 1, None]),
                score=rng.random() * 3,
            )
        )
    _record_in_requests(st, rows)
    review = {}
    for r in rows[::3]:
        review[r["uid"]] = rng.choice(["normal", "defect", "skip"])
        st.review(r["uid"], review[r["uid"]])
        if rng.random() < 0.2:  # a changed mind: the counts follow the latest verdict
            review[r["uid"]] = rng.choice(["normal", "defect", "skip"])
            st.review(r["uid"], review[r["uid"]])
    for bucket, days in (("hour", 7), ("day", 7), ("day", 2)):
        board = st.dashboard("p", days=days, bucket=bucket, bins=8)  # type: ignore[arg-type]
        want = _dashboard_reference(rows, review, board, 8)
        n = days * 24 if bucket == "hour" else days
        assert len(board["buckets"]) == n and board["buckets"][-1]["start"] <= now.isoformat()
        assert board["since"].endswith("+00:00")
        for k in want:
            assert board[k] == want[k], (bucket, days, k)
        assert sum(board["histogram"]["counts"]) == board["inspections"] > 0
        assert want["reviewed_flagged"] > 0 and want["reviewed_unflagged"] > 0  # the rates were really computed
    with pytest.raises(ZsadInputError, match="bucket 'week'"):
        st.dashboard("p", bucket="week")  # type: ignore[arg-type]
    with pytest.raises(ZsadInputError, match="no such profile"):
        st.dashboard("nope")


def test_dashboard_histogram_is_numpys(st: Station) -> None:
    st.create_profile("p", SETUP)
    now = datetime.now(UTC)
    rng = np.random.default_rng(2)
    scores = np.concatenate([rng.random(150), [0.25, 0.5, 0.75, 1.0, 0.0]])  # scores on the edges of 4 bins
    labels = rng.random(len(scores)) < 0.3
    st.record(
        [
            row(i, profile="p", created_at=now, score=float(x), label=int(f))
            for i, (x, f) in enumerate(zip(scores, labels, strict=True))
        ]
    )
    for bins in (1, 4, 7):
        h = st.dashboard("p", days=1, bins=bins)["histogram"]
        counts, edges = np.histogram(scores, bins=bins)
        assert h["edges"] == edges.tolist() and h["counts"] == counts.tolist()
        assert h["flagged"] == np.histogram(scores[labels], bins=edges)[0].tolist()
    st.create_profile("q", SETUP)
    st.record([row(1000 + i, profile="q", created_at=now, score=0.3, label=0) for i in range(3)])
    h = st.dashboard("q", days=1, bins=2)["histogram"]  # one value: numpy's range of +-0.5 around it
    counts, edges = np.histogram([0.3] * 3, bins=2)
    assert (h["edges"], h["counts"], h["flagged"]) == (edges.tolist(), counts.tolist(), [0, 0])


def test_dashboard_of_an_empty_window(st: Station) -> None:
    st.create_profile("p", SETUP)
    st.record([row(1, profile="p", created_at=datetime.now(UTC) - timedelta(days=30))])
    board = st.dashboard("p", days=1)
    assert board["inspections"] == 0 and board["histogram"] == {"edges": [], "counts": [], "flagged": []}
    assert board["false_alarm_rate"] is None and board["missed_defect_rate"] is None
    assert len(board["buckets"]) == 24 and all(b["inspections"] == 0 for b in board["buckets"])


# -- retention -----------------------------------------------------------------------------------------------------


def _files_on_disk(files: Path) -> set[str]:
    return {p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()}


def _named(st: Station) -> set[str]:
    names = set()
    for r in st.inspections(limit=500).rows:
        names |= {r[k] for k in ("image_path", "map_path", "overlay_path") if r[k]}
    return names


def _with_files(files: Path, i: int, image: str, **kw) -> dict:
    (files / "images" / image).write_bytes(image.encode())
    for d, ext in (("maps", "npy"), ("overlays", "png")):
        (files / d / f"{uid(i)}.{ext}").write_bytes(b"m")
    return row(
        i, image_path=f"images/{image}", map_path=f"maps/{uid(i)}.npy", overlay_path=f"overlays/{uid(i)}.png", **kw
    )


def test_prune_keeps_rows_and_files_consistent(st: Station, files: Path) -> None:
    st.create_profile("p", SETUP)
    now = datetime.now(UTC) + timedelta(minutes=30)  # half an hour off the cut-offs
    # 40 rows, one per 12 hours back from now; images shared in pairs (content-addressed), across the cut-offs
    rows = [
        _with_files(files, i, f"{i // 2:064x}.png", created_at=now - timedelta(hours=12 * (40 - i)), profile="p")
        for i in range(40)
    ]
    rows[39]["image_path"] = rows[0]["image_path"]  # the newest row shares the oldest row's upload
    (files / "images" / f"{39 // 2:064x}.png").unlink()  # (row 38 still names its own pair's file)
    rows[38]["image_path"] = rows[39]["image_path"]
    for r in rows:
        st.record([r])
    st.review(uid(3), "defect")
    assert _named(st) == _files_on_disk(files)

    out = st.prune(keep_days=10)  # rows more than 10 days old: 0..19 (row 19 is 10.5 days old, row 20 9.5)
    assert out["rows_deleted"] == sum(r["created_at"] < now - timedelta(days=10) for r in rows) == 20
    assert {r["uid"] for r in st.inspections(limit=500).rows} == {uid(i) for i in range(20, 40)}
    assert (files / rows[0]["image_path"]).is_file()  # still named by rows 38 and 39
    assert _named(st) == _files_on_disk(files)  # no row names a missing file, no file without a row
    assert out["files_deleted"] == 20 * 2 + 9  # maps and overlays of 20 rows, the images of pairs 1..9

    out = st.prune(keep_images=5)
    assert out == {"rows_deleted": 0, "rows_cleared": 15, "files_deleted": 15 * 2 + 7}  # pair 17: row 35 keeps it
    kept = st.inspections(limit=500).rows
    with_files = [r["uid"] for r in kept if r["image_path"] or r["map_path"] or r["overlay_path"]]
    assert with_files == [uid(i) for i in range(39, 34, -1)]  # the newest five
    assert all(r["score"] == 0.5 for r in kept) and len(kept) == 20  # the others keep their numbers
    assert _named(st) == _files_on_disk(files)
    assert (files / rows[0]["image_path"]).is_file()

    board = st.dashboard("p", days=30, bucket="day")  # the hourly counts followed the deleted rows
    assert board["inspections"] == 20 and board["reviewed"] == 0
    assert st.prune() == {"rows_deleted": 0, "rows_cleared": 0, "files_deleted": 0}
    with pytest.raises(ZsadInputError, match="keep_days -1"):
        st.prune(keep_days=-1)


def test_prune_touches_only_its_own_station(postgres_url: str, files: Path, tmp_path: Path) -> None:
    db_url = create_database(postgres_url, f"t_{uuid.uuid4().hex[:16]}")  # (one SQLite file is one station)
    old = datetime.now(UTC) - timedelta(days=5)
    with Station(db_url, files, station_name="a") as a, Station(db_url, tmp_path / "b", station_name="b") as b:
        a.record([row(1, created_at=old)])
        b.record([row(2, created_at=old)])
        assert a.prune(keep_days=1)["rows_deleted"] == 1
        assert a.inspection(uid(1)) is None and a.inspection(uid(2)) is not None


def test_a_maps_png_lives_and_dies_with_its_npy(st: Station, files: Path) -> None:
    """maps/<uid>.png has no column: it is named through its .npy (kept while that is, pruned and swept with it)."""
    old = datetime.now(UTC) - timedelta(days=3)
    rows = [_with_files(files, i, f"{i}.png", created_at=old + timedelta(hours=i)) for i in (1, 2)]
    for r in rows:
        (files / r["map_path"]).with_suffix(".png").write_bytes(b"p")
    st.record(rows)
    past = time.time() - 3600
    for p in files.rglob("*"):
        os.utime(p, (past, past))
    assert st.sweep(grace_s=0) == 0  # every file is named, the PNGs through their .npy
    assert st.prune(keep_images=1)["files_deleted"] == 4  # row 1: image, map, its PNG, overlay
    assert _files_on_disk(files) == _named(st) | {f"maps/{uid(2)}.png"}
    assert st.sweep(grace_s=0) == 0


def test_sweep_deletes_old_orphans_only(st: Station, files: Path) -> None:
    named = _with_files(files, 1, "a.png")
    st.record([named])
    orphans = [files / "images" / "orphan.png", files / "maps" / f"{uid(2)}.npy", files / "overlays" / "x" / "y.png"]
    young = files / "overlays" / "young.png"
    for p in [*orphans, young]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"o")
    past = time.time() - 3600
    for p in [*orphans, *(files / named[k] for k in ("image_path", "map_path", "overlay_path"))]:
        os.utime(p, (past, past))
    (files / "other.txt").write_bytes(b"not ours")
    os.utime(files / "other.txt", (past, past))
    assert st.sweep(grace_s=60) == 3
    assert _files_on_disk(files) == _named(st) | {"overlays/young.png", "other.txt"}
    assert st.sweep(grace_s=0) == 1 and not young.exists()


# -- opening: locks, sharing, versions ------------------------------------------------------------------------------


def test_a_second_sqlite_station_is_refused(tmp_path: Path, files: Path) -> None:
    db = tmp_path / "station.db"
    first = Station(f"sqlite:///{db}", files)
    with pytest.raises(ZsadInputError, match="in use by another zsad serve") as e:
        Station(f"sqlite:///{db}", files)
    text = one_line(e)
    assert str(db) in text and f"pid {os.getpid()}" in text and "postgresql://" in text
    first.record([row(1)])
    first.close()
    with Station(f"sqlite:///{db}", files) as again:  # released on close
        assert again.inspection(uid(1)) is not None
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with pytest.raises(ZsadInputError, match="does not exist"):
        Station(f"sqlite:///{tmp_path / 'nope' / 'x.db'}", files)
    with pytest.raises(ZsadInputError, match="unsupported database 'mysql'"):
        Station("mysql://u@h/db", files)


def test_a_second_writer_without_the_lock_waits_its_turn(tmp_path: Path, files: Path) -> None:
    """lock=False (a CLI command beside a running server): both write, SQLite's busy wait orders them."""
    url = f"sqlite:///{tmp_path / 'station.db'}"
    with Station(url, files) as server, Station(url, files, lock=False) as cli:
        errors: list[BaseException] = []

        server.create_profile("p", SETUP)

        def write(st: Station, base: int) -> None:  # each transaction reads before it writes
            try:
                for i in range(40):
                    st.record([row(base + i, profile="p", created_at=datetime.now(UTC))])
                    st.review(uid(base + i), "defect")
                    st.revise("p", {**SETUP, "k_shot": base + i}, "tuning")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=write, args=(st, b)) for st, b in ((server, 0), (cli, 1000))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert len(_walk(server, Filters(reviewed=True), "time", "desc", 500)) == 80
        assert cli.profile("p")["revision"] == 81 and server.dashboard("p", days=1)["missed_defects"] == 80


def test_in_memory_sqlite_across_threads(files: Path) -> None:
    with Station("sqlite://", files) as st:
        st.create_profile("p", SETUP)
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for i in range(20):
                    st.record([row(1000 * k + i, profile="p")])
                    st.inspections(Filters(profile="p"), limit=5)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(_walk(st, Filters(), "time", "desc", 500)) == 80


def test_two_stations_on_one_postgresql(postgres_url: str, tmp_path: Path) -> None:
    url = create_database(postgres_url, f"t_{uuid.uuid4().hex[:16]}")
    opened: list[Station] = []
    errors: list[BaseException] = []

    def start(name: str) -> None:  # both create the schema at once: the advisory lock lets one do it
        try:
            opened.append(Station(url, tmp_path / name, station_name=name))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(opened) == 3
    a, b = sorted(opened, key=lambda s: s.station_name)[:2]
    try:
        a.create_profile("p", SETUP)
        b.revise("p", {**SETUP, "k_shot": 1}, "from b")
        assert a.profile("p")["revision"] == 2
        a.record([row(1, profile="p")])
        b.record([row(2, profile="p")])
        for s in (a, b):
            assert {(r["uid"], r["station"]) for r in s.inspections().rows} == {(uid(1), "a"), (uid(2), "b")}
        b.review(uid(1), "defect")
        assert a.inspection(uid(1))["review_label"] == "defect"  # type: ignore[index]
        with pytest.raises(ZsadInputError, match="already recorded"):
            b.record([row(1)])
    finally:
        for s in opened:
            s.close()


def test_a_newer_schema_is_refused(db_url: str, files: Path) -> None:
    Station(db_url, files).close()
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(schema_info.update().values(version=99))
    engine.dispose()
    with pytest.raises(ZsadInputError, match="schema version 99 was written by a newer zsad") as e:
        Station(db_url, files)
    one_line(e)


def test_the_url_hides_its_password(postgres_url: str, files: Path) -> None:
    url = postgres_url.replace("postgres@", "postgres:s3cret@")  # trust auth: any password connects
    with Station(url, files) as st:
        assert st.dialect == "postgresql" and "s3cret" not in st.url_safe and "***" in st.url_safe
        assert "s3cret" not in repr(st)
    with pytest.raises(ZsadInputError, match="cannot connect") as e:
        Station(url.replace("/zsad", "/no_such_db"), files)
    assert "s3cret" not in one_line(e)


# -- schema version 2: the watcher's intake memory and the sinks' outbox ----------------------------------------------


def _key(i: int, size: int = 10) -> dict:
    return {"folder": "/in", "path": f"/in/f{i}.png", "size": size, "mtime_ns": 1_000 + i, "sha256": f"{i:064x}"}


def test_intake_and_events_commit_with_their_decisions(st: Station) -> None:
    st.create_profile("p", SETUP)
    done = {**_key(1), "profile": "p", "state": "done", "uid": uid(1)}
    refused = {**_key(2), "profile": "p", "state": "error", "error": "f2.png: cannot read image"}
    event = {"sink": "file:/x", "uid": uid(1), "payload": {"uid": uid(1), "label": "anomalous"}}
    st.record([row(1, profile="p")], finished=[done, refused], events=[event])
    k1, k2 = (tuple(_key(i).values())[1:] for i in (1, 2))
    known = st.intake_known([k1, k2, ("/in/f1.png", 10, 1001, "f" * 64)])  # the third: same place, other content
    assert set(known) == {k1, k2}
    assert (known[k1]["state"], known[k1]["uid"], known[k2]["state"]) == ("done", uid(1), "error")
    assert known[k2]["error"] == "f2.png: cannot read image" and known[k1]["routed_to"] is None
    assert (known[k1]["label"], known[k2]["label"]) == (row(1)["label"], None)  # the inspection's, by a join
    st.intake_routed(k1, "/in/ng/f1.png")  # type: ignore[arg-type]
    assert st.intake_known([k1])[k1]["routed_to"] == "/in/ng/f1.png"  # type: ignore[index]
    assert st.intake_counts() == {"/in": {"done": 1, "error": 1}}
    assert [e["path"] for e in st.intake_errors()] == ["/in/f2.png"]
    # the same file finished again (another watcher of the folder): nothing of that request is kept
    with pytest.raises(ZsadInputError, match="already finished") as e:
        st.record([row(3, profile="p")], finished=[{**_key(1), "profile": "p", "state": "done", "uid": uid(3)}])
    assert type(e.value).__name__ == "AlreadyFinished"
    assert st.inspection(uid(3)) is None
    # a rejected row takes its events and intake keys with it
    with pytest.raises(ZsadInputError, match="already recorded"):
        st.record([row(1)], finished=[{**_key(4), "state": "done", "uid": uid(1)}], events=[event])
    assert st.intake_known([tuple(_key(4).values())[1:]]) == {}  # type: ignore[list-item]
    assert st.outbox_stats()["file:/x"]["pending"] == 1
    with pytest.raises(ZsadInputError, match="unknown key 'colour'"):
        st.record([], finished=[{**_key(5), "state": "done", "colour": 1}])
    with pytest.raises(ZsadInputError, match="state must be one of done, error"):
        st.record([], finished=[{**_key(5), "state": "maybe"}])


def test_outbox_order_backoff_and_stats(st: Station) -> None:
    events = [{"sink": s, "uid": uid(i), "payload": {"n": i}} for i in range(6) for s in ("a", "b")]
    st.record([], events=events)
    due = st.outbox_due("a", limit=4)
    assert [d["payload"]["n"] for d in due] == [0, 1, 2, 3] and all(d["attempts"] == 0 for d in due)
    st.outbox_delivered([due[0]["id"], due[1]["id"]])
    st.outbox_failed(due[2]["id"], "HTTP 500\n  from the hook", retry_in_s=60)
    # the retried event holds the sink's queue: nothing overtakes it
    assert st.outbox_due("a") == []
    assert [d["payload"]["n"] for d in st.outbox_due("b")] == list(range(6))
    stats = st.outbox_stats()
    assert (stats["a"]["delivered"], stats["a"]["pending"], stats["a"]["failed_attempts_pending"]) == (2, 4, 1)
    assert stats["a"]["last_error"] == "HTTP 500 from the hook" and stats["a"]["oldest_pending_s"] >= 0
    assert (stats["b"]["delivered"], stats["b"]["pending"], stats["b"]["last_error"]) == (0, 6, None)
    st.outbox_failed(due[2]["id"], "again", retry_in_s=0)
    again = st.outbox_due("a")
    assert [d["payload"]["n"] for d in again] == [2, 3, 4, 5] and again[0]["attempts"] == 2
    st.outbox_delivered([d["id"] for d in again])
    assert st.outbox_stats()["a"]["pending"] == 0 and st.outbox_stats()["a"]["last_error"] is None
    assert st.outbox_prune(older_than_s=3600) == 0  # delivered just now: kept for the page
    assert st.outbox_prune(older_than_s=0) == 6  # only the delivered go; b's six stay
    assert st.outbox_stats()["b"]["pending"] == 6 and "a" not in st.outbox_stats()


def test_a_version_1_database_is_migrated_with_its_rows(tmp_path: Path, files: Path) -> None:
    """A station written by the zsad before the watcher: its rows stay, the new tables appear, the version is 2."""
    from zsad.store import schema

    url = f"sqlite:///{tmp_path / 'v1.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        schema_info.create(conn)
        schema._version_1(conn)
        conn.execute(schema_info.insert().values(schema.stamp(1, "0.old")))
        at = datetime(2026, 1, 1, tzinfo=UTC)
        conn.execute(schema.profiles.insert().values(id=1, name="old", current=1, created_at=at))
        conn.execute(
            schema.revisions.insert().values(
                profile_id=1, revision=1, created_at=at, station="s", reason="created", setup="{}", scoring_key="0" * 64
            )
        )
    engine.dispose()
    with Station(url, files) as st:
        assert [p["name"] for p in st.profiles()] == ["old"]
        st.create_profile("p", SETUP)
        st.record([row(1, profile="p")], finished=[{**_key(1), "profile": "p", "state": "done", "uid": uid(1)}])
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema_info.c.version)).scalar() == schema.SCHEMA_VERSION == 2
        assert conn.execute(sa.text("SELECT count(*) FROM intake")).scalar() == 1
    engine.dispose()


def test_each_station_delivers_its_own_events(db_url: str, files: Path) -> None:
    """Two servers sharing a database and a sink name: each sees (and so sends) only its own decisions' events."""
    with Station(db_url, files, station_name="a", lock=False) as a, Station(db_url, files, station_name="b") as b:
        a.record([], events=[{"sink": "hook", "uid": uid(1), "payload": {"n": 1}}])
        b.record([], events=[{"sink": "hook", "uid": uid(2), "payload": {"n": 2}}])
        assert [d["payload"]["n"] for d in a.outbox_due("hook")] == [1]
        assert [d["payload"]["n"] for d in b.outbox_due("hook")] == [2]
        assert a.outbox_stats()["hook"]["pending"] == b.outbox_stats()["hook"]["pending"] == 1
