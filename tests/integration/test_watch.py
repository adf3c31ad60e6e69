"""Watched folders with real processes: ``zsad watch`` and ``zsad serve --watch`` scoring files other processes write.

Each test checks counts exactly against the station's database: every file finished once (an intake row), every
decision recorded once (an inspection), routing by label, refusals with their reason, restarts that score only
what was not finished.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
from brokers import wait_for
from PIL import Image
from serve_helpers import TINY, free_port
from watch_helpers import (
    WATCH_TINY,
    make_station,
    read_db,
    slow_write,
    spawn_writer,
    start_zsad,
    tile_images,
    write_files,
    zsad,
)

from zsad import client
from zsad.serve.watch import WatchSpec, is_candidate, parse_watch, place

pytestmark = pytest.mark.assets


# -- pieces ---------------------------------------------------------------------------------------------------------


def test_place_never_overwrites_and_recognises_its_own_link(tmp_path: Path) -> None:
    src_dir, dest = tmp_path / "in", tmp_path / "in" / "ok"
    src_dir.mkdir()
    dest.mkdir()
    (dest / "a.png").write_bytes(b"older")
    (dest / "a-1.png").write_bytes(b"older too")
    a = src_dir / "a.png"
    a.write_bytes(b"new")
    moved = place(a, dest, move=True)
    assert moved == dest / "a-2.png" and moved.read_bytes() == b"new" and not a.exists()
    assert (dest / "a.png").read_bytes() == b"older" and (dest / "a-1.png").read_bytes() == b"older too"
    b = src_dir / "b.png"
    b.write_bytes(b"bee")
    copied = place(b, dest, move=False)
    assert copied == dest / "b.png" and copied.read_bytes() == b"bee" and b.read_bytes() == b"bee"
    assert not any(p.name.endswith(".tmp") for p in dest.iterdir()), "a copy's temporary file was left behind"
    # a move that crashed between its link and its unlink: the next try finds its own link, makes no second copy
    c = src_dir / "c.png"
    c.write_bytes(b"sea")
    os.link(c, dest / "c.png")
    assert place(c, dest, move=True) == dest / "c.png" and not c.exists()
    assert sorted(p.name for p in dest.iterdir()) == ["a-1.png", "a-2.png", "a.png", "b.png", "c.png"]


def test_candidates_and_watch_specs(tmp_path: Path) -> None:
    assert is_candidate(Path("x/part_001.PNG")) and is_candidate(Path("a.jpg"))
    for name in (".hidden.png", "~lock.png", "a.png.tmp", "a.png.part", "a.jpg.done", "notes.txt", "a.partial"):
        assert not is_candidate(Path(name)), name
    spec = parse_watch(f"{tmp_path}/a=b=c", route="move")
    assert (spec.folder, spec.profile, spec.route) == (tmp_path / "a=b", "c", "move")
    with pytest.raises(ValueError, match="use DIR=PROFILE"):
        parse_watch("nofolder")
    with pytest.raises(ValueError, match="no such folder to watch"):
        WatchSpec(tmp_path / "missing", "p").check()
    with pytest.raises(ValueError, match="--complete 'sometimes'"):
        WatchSpec(tmp_path, "p", complete="sometimes").check()


# -- zsad watch --once ----------------------------------------------------------------------------------------------


def test_once_scores_refuses_routes_and_remembers(assets_dir: Path, tmp_path: Path) -> None:
    """Six images, one unreadable, three names that are not taken: scored, refused, routed; a rerun scores nothing."""
    url = make_station(tmp_path / "station")
    inbox = tmp_path / "in"
    (inbox / "sub").mkdir(parents=True)
    images = tile_images(assets_dir, 6)
    write_files(images[:5], inbox)
    write_files(images[5:], inbox / "sub")
    (inbox / "broken.png").write_bytes(b"not a png at all")
    for other in ("notes.txt", "frame.png.tmp", ".hidden.png"):
        (inbox / other).write_bytes(images[0].read_bytes())
    log = tmp_path / "watch.log"
    args = ["watch", str(inbox), "--profile", "tile", "--db", url, "--once", "--route", "move", "--recursive"]
    done = zsad(*args, *WATCH_TINY, log=log)
    text = log.read_text()
    assert done.returncode == 1, text[-3000:]  # a file was refused: cron hears of it
    assert "stopped: 6 scored, 1 errors, 0 skipped, 7 routed" in text, text[-3000:]

    rows = read_db(url, "SELECT uid, file_name, source, label, profile_id FROM inspections")
    assert len(rows) == 6 and {r["source"] for r in rows} == {"folder"}
    assert sorted(r["file_name"] for r in rows) == sorted(
        [f"{i:05d}_{p.name}" for i, p in enumerate(images[:5])] + [f"sub/00000_{images[5].name}"]
    )
    intake = read_db(url, "SELECT path, state, uid, error, routed_to FROM intake")
    assert len(intake) == 7
    done_rows = [r for r in intake if r["state"] == "done"]
    assert {r["uid"] for r in done_rows} == {r["uid"] for r in rows}
    (bad,) = [r for r in intake if r["state"] == "error"]
    assert bad["path"] == str(inbox / "broken.png") and "cannot read image" in bad["error"] and bad["uid"] is None
    assert Path(bad["routed_to"]) == inbox / "error" / "broken.png" and Path(bad["routed_to"]).is_file()
    # each scored file went where its label says, keeping its subfolder
    by_uid = {r["uid"]: r["label"] for r in rows}
    for r in done_rows:
        rel = Path(r["path"]).relative_to(inbox)
        expect = inbox / ("ng" if by_uid[r["uid"]] == 1 else "ok") / rel
        assert Path(r["routed_to"]) == expect and expect.is_file(), r
    left = sorted(p.name for p in inbox.iterdir() if p.is_file())
    assert left == [".hidden.png", "frame.png.tmp", "notes.txt"], left

    # the same content put back at the same place with its mtime (a restored backup): already finished, not rescored
    first = Path(done_rows[0]["routed_to"])
    shutil.copy2(first, done_rows[0]["path"])
    again = zsad(*args, *WATCH_TINY, log=log)
    assert again.returncode == 0
    assert "stopped: 0 scored, 0 errors, 1 skipped, 0 routed" in log.read_text().splitlines()[-1]
    assert len(read_db(url, "SELECT uid FROM inspections")) == 6
    # a move recorded but cut short by a crash before the unlink (the file under both names): finished, not rescored
    os.link(done_rows[1]["routed_to"], done_rows[1]["path"])
    again = zsad(*args, *WATCH_TINY, log=log)
    assert "stopped: 0 scored, 0 errors, 2 skipped, 0 routed" in log.read_text().splitlines()[-1]
    assert not Path(done_rows[1]["path"]).exists() and Path(done_rows[1]["routed_to"]).is_file()
    assert len(read_db(url, "SELECT uid FROM inspections")) == 6
    # new content under an old name is a new file: scored
    Image.open(images[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(inbox / "broken.png")
    zsad(*args, *WATCH_TINY, log=log)
    assert "stopped: 1 scored, 0 errors, 1 skipped" in log.read_text().splitlines()[-1]  # the backup copy stays
    assert len(read_db(url, "SELECT uid FROM inspections")) == 7


# -- continuous watching ----------------------------------------------------------------------------------------------


def _bmp(src: Path, side: int) -> bytes:
    buf = io.BytesIO()
    Image.open(src).convert("RGB").resize((side, side)).save(buf, format="BMP")
    return buf.getvalue()


def test_slow_writers_are_scored_once_after_completion(assets_dir: Path, tmp_path: Path) -> None:
    """A 20 MB file written in chunks over 2 s (stable size), and files renamed into place, each scored once."""
    url = make_station(tmp_path / "station")
    inbox = tmp_path / "in"
    inbox.mkdir()
    log = tmp_path / "watch.log"
    proc = start_zsad("watch", str(inbox), "--profile", "tile", "--db", url, "--settle", "1", *WATCH_TINY, log=log)
    try:
        images = tile_images(assets_dir, 3)
        big = _bmp(images[0], 2600)  # 2600 x 2600 x 3 bytes + header: 20 MB
        assert len(big) > 20_000_000
        writer = slow_write(inbox / "big.bmp", big, seconds=2.0)
        # a writer that renames a finished temporary file into place (the 'rename' way cameras deliver)
        (inbox / "r.jpg.part").write_bytes(images[1].read_bytes())
        os.rename(inbox / "r.jpg.part", inbox / "r.jpg")
        assert writer.wait(timeout=60) == 0
        wait_for(lambda: len(read_db(url, "SELECT id FROM intake")) >= 2, 60, "the files were not scored")
        time.sleep(2.0)  # anything scored twice (or a partial read) would show up by now
        rows = read_db(url, "SELECT path, size, state FROM intake ORDER BY path")
        assert [(Path(r["path"]).name, r["size"], r["state"]) for r in rows] == [
            ("big.bmp", len(big), "done"),
            ("r.jpg", images[1].stat().st_size, "done"),
        ]
        insp = read_db(url, "SELECT file_name, width, height FROM inspections ORDER BY file_name")
        assert [(r["file_name"], r["width"], r["height"]) for r in insp][0] == ("big.bmp", 2600, 2600)
        assert len(insp) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_marker_files(assets_dir: Path, tmp_path: Path) -> None:
    """--complete marker: nothing is taken until NAME.done appears; moved files take their marker with them."""
    url = make_station(tmp_path / "station")
    inbox = tmp_path / "in"
    inbox.mkdir()
    log = tmp_path / "watch.log"
    args = ["watch", str(inbox), "--profile", "tile", "--db", url, "--complete", "marker", "--route", "move"]
    proc = start_zsad(*args, *WATCH_TINY, log=log)
    try:
        images = tile_images(assets_dir, 2)
        write_files(images, inbox, names=["a.jpg", "b.jpg"])
        time.sleep(3.0)  # the watcher is up and has seen both (its start scans the folder)
        assert read_db(url, "SELECT id FROM intake") == []
        (inbox / "a.jpg.done").touch()
        wait_for(lambda: read_db(url, "SELECT path FROM intake"), 60, "a.jpg was not scored after its marker")
        wait_for(lambda: not (inbox / "a.jpg.done").exists(), 10, "the marker of a moved file stayed")
        assert [Path(r["path"]).name for r in read_db(url, "SELECT path FROM intake")] == ["a.jpg"]
        assert (inbox / "b.jpg").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_kill_9_mid_batch_then_restart_scores_each_file_once(assets_dir: Path, tmp_path: Path) -> None:
    """kill -9 while a burst is scored; the restart (--once) finishes exactly what was not finished."""
    url = make_station(tmp_path / "station")
    inbox = tmp_path / "in"
    inbox.mkdir()
    n = 120
    images = tile_images(assets_dir, n)
    log = tmp_path / "watch.log"
    args = ["watch", str(inbox), "--profile", "tile", "--db", url, "--route", "move", "--max-batch", "4"]
    proc = start_zsad(*args, "--settle", "0.3", *WATCH_TINY, log=log)
    try:
        wait_for(lambda: "watching" in log.read_text(), 120, "the watcher did not start")
        spawn_writer(images, inbox).wait(timeout=120)
        wait_for(lambda: len(read_db(url, "SELECT id FROM inspections")) >= 8, 120, "nothing was scored")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = len(read_db(url, "SELECT id FROM inspections"))
    assert before < n, "the burst was finished before the kill: the test did not test a crash"
    rerun = zsad(*args, "--once", *WATCH_TINY, log=log)
    assert rerun.returncode == 0, log.read_text()[-3000:]
    insp = read_db(url, "SELECT uid, label FROM inspections")
    intake = read_db(url, "SELECT path, uid, state, routed_to FROM intake")
    assert len(insp) == n, f"{len(insp)} inspections for {n} files"
    assert len({r["uid"] for r in insp}) == n
    assert len(intake) == n and {r["state"] for r in intake} == {"done"}
    assert len({r["path"] for r in intake}) == n, "a file was finished twice"
    assert {r["uid"] for r in intake} == {r["uid"] for r in insp}
    routed = sorted(p.name for d in ("ok", "ng") for p in (inbox / d).glob("*"))
    assert len(routed) == n and not [p for p in inbox.iterdir() if p.is_file()], "a file was left or routed twice"
    label = {r["uid"]: r["label"] for r in insp}
    for r in intake:
        assert Path(r["routed_to"]).parent.name == ("ng" if label[r["uid"]] == 1 else "ok")


# -- zsad serve --watch ---------------------------------------------------------------------------------------------


def test_serve_watch_folder_removed_and_recreated(assets_dir: Path, tmp_path: Path) -> None:
    """/readyz says which watched folder is gone; a recreated folder is watched again; stats and metrics count."""
    out = tmp_path / "station"
    make_station(out)
    inbox = tmp_path / "in"
    inbox.mkdir()
    port = free_port()
    log = tmp_path / "serve.log"
    args = ["serve", "--port", str(port), "--out", str(out), "--station", "--watch", f"{inbox}=tile"]
    proc = start_zsad(*args, "--settle", "0.3", "--rescan", "1", *TINY, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        client.wait_until_ready(base, 120, alive=lambda: proc.poll() is None)
        images = tile_images(assets_dir, 5)
        write_files(images[:2], inbox)

        def scored() -> int:
            return int(httpx.get(base + "/v1/stats", timeout=10).json()["watch"][0]["scored"])

        wait_for(lambda: scored() == 2, 60, "the first files were not scored")
        shutil.rmtree(inbox)
        ready = wait_for(
            lambda: (r := httpx.get(base + "/readyz", timeout=10)).status_code == 503 and r.json(), 30, "still ready"
        )
        assert ready["reasons"] == [f"watched folder {inbox} is missing"]
        inbox.mkdir()
        write_files(images[2:], inbox)
        wait_for(lambda: scored() == 5, 60, "files in the recreated folder were not scored")
        assert httpx.get(base + "/readyz", timeout=10).status_code == 200
        state = httpx.get(base + "/v1/stats", timeout=10).json()["watch"][0]
        assert (state["folder"], state["profile"], state["errors"], state["missing"]) == (str(inbox), "tile", 0, False)
        metrics = httpx.get(base + "/metrics", timeout=10).text
        assert f'zsad_watch_files_total{{folder="{inbox}",outcome="scored"}} 5.0' in metrics
        assert "zsad_watch_lag_seconds_count 5.0" in metrics
        assert 'zsad_decisions_total{label="' in metrics or 'zsad_decisions_total{profile="tile"' in metrics
        rows = httpx.get(base + "/v1/inspections", params={"source": "folder"}, timeout=10).json()["inspections"]
        assert len(rows) == 5 and {r["profile"] for r in rows} == {"tile"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"folder": "missing"}, "missing: no such folder to watch"),
        ({"profile": "nope"}, "profile 'nope': no such profile"),
        ({"extra": ["--sink", "gopher://x/y"]}, "sink gopher://x/y"),
        ({"extra": ["--complete", "soon"]}, "--complete 'soon': use one of stable, rename, marker"),
        ({"extra": ["--rescan", "0"]}, "--rescan 0.0: seconds from 0.5 to 3600"),
    ],
)
def test_bad_watch_settings_are_one_line_before_any_model(tmp_path: Path, change: dict, expect: str) -> None:
    url = make_station(tmp_path / "station")
    (tmp_path / "in").mkdir()
    folder = tmp_path / change.get("folder", "in")
    log = tmp_path / "watch.log"
    t0 = time.monotonic()
    done = zsad("watch", str(folder), "--profile", change.get("profile", "tile"), "--db", url, "--once",
                *change.get("extra", []), *WATCH_TINY, log=log)  # fmt: skip
    lines = [x for x in log.read_text().splitlines() if x.strip()]
    assert done.returncode == 2 and len(lines) == 1 and expect in lines[0], lines
    assert time.monotonic() - t0 < 60
