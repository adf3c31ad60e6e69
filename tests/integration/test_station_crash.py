"""kill -9 of a real station server while it scores and while it records reviews, then a restart.

Clients keep sending requests from threads while the server process is killed at a random moment. After the
restart (whose start-up sweep removes files of rows that never committed): every row's files are there, no file
is without its row, no uid twice, every request is recorded whole or not at all, every request a client got a
success answer for is recorded, and every review a client got a success answer for is there.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sized
from pathlib import Path

import httpx
import pytest
from serve_helpers import TINY, free_port

from zsad import client

IMAGES = 3  # per request


def _start(out: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "zsad", "serve", "--port", str(port), *TINY, "--out", str(out), "--station"]
    with log.open("ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        client.wait_until_ready(url, 120, alive=lambda: proc.poll() is None)
    except (RuntimeError, TimeoutError) as e:
        proc.kill()
        raise RuntimeError(f"{e}: {log.read_text()[-2000:]}") from None
    deadline = time.monotonic() + 60
    while httpx.get(url + "/v1/station", timeout=30).json()["swept"] is None:  # the start-up sweep runs beside
        assert time.monotonic() < deadline, "the start-up sweep did not finish"
        time.sleep(0.1)
    return proc, url


def _kill_during(
    proc: subprocess.Popen[bytes],
    threads: list[threading.Thread],
    stop: threading.Event,
    after: float,
    done: Sized,
) -> None:
    """Start the client threads, kill -9 the server ``after`` seconds after a first new answer, let the clients end.

    Waiting for an answer first keeps the kill inside the traffic however slow a loaded machine is.
    """
    before = len(done)
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(done) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()


def _rows(url: str) -> list[dict]:
    rows, cursor = [], None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(url + "/v1/inspections", params=params, timeout=30).json()
        rows += page["inspections"]
        cursor = page["next_cursor"]
        if not cursor:
            return rows


def _check_files(out: Path, rows: list[dict]) -> None:
    named = set()
    for r in rows:
        for key in ("image_path", "map_path", "overlay_path"):
            if r[key]:
                assert (out / r[key]).is_file(), f"row {r['uid']} names a missing file {r[key]}"
                named.add(r[key])
        if r["map_path"]:
            named.add(r["map_path"][: -len(".npy")] + ".png")
    on_disk = {p.relative_to(out).as_posix() for d in ("images", "maps", "overlays") for p in (out / d).glob("*")}
    assert on_disk == named, f"files without rows: {sorted(on_disk - named)[:5]}"


@pytest.mark.assets
def test_kill_during_scoring_and_review(assets_dir: Path, tmp_path: Path) -> None:
    tile = sorted((assets_dir / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))[:6]
    data = [(p.name, p.read_bytes()) for p in tile]
    out, log = tmp_path / "out", tmp_path / "serve.log"
    rng = random.Random(0)
    answered: dict[str, int] = {}  # request_id -> images, for every success answer a client got
    lock = threading.Lock()
    for cycle in range(2):  # kill -9 while requests are in flight, twice
        proc, url = _start(out, log)
        stop = threading.Event()

        def send(seed: int, url: str = url, stop: threading.Event = stop) -> None:
            r = random.Random(seed)
            while not stop.is_set():
                files = [("images", data[r.randrange(len(data))]) for _ in range(IMAGES)]
                try:
                    resp = httpx.post(url + "/v1/detect", files=files, data={"source": "api"}, timeout=30)
                except httpx.HTTPError:
                    return  # the server died mid-request: no success answer
                if resp.status_code == 200:
                    with lock:
                        answered[resp.json()["request_id"]] = IMAGES

        threads = [threading.Thread(target=send, args=(cycle * 10 + i,)) for i in range(3)]
        _kill_during(proc, threads, stop, 0.5 + rng.random() * 2.0, answered)
    proc, url = _start(out, log)
    try:
        rows = _rows(url)
        assert answered and rows
        per_request: dict[str, int] = {}
        for r in rows:
            per_request[r["request_id"]] = per_request.get(r["request_id"], 0) + 1
        assert len({r["uid"] for r in rows}) == len(rows)  # no duplicate row
        assert all(n == IMAGES for n in per_request.values())  # each request whole or absent
        assert set(answered) <= set(per_request)  # every success answer is recorded
        unanswered_kept = len(set(per_request) - set(answered))  # committed, then killed before the answer left
        print(f"requests answered {len(answered)}, recorded {len(per_request)} ({unanswered_kept} without an answer)")
        _check_files(out, rows)

        # reviews while the server is killed: each thread its own uids, so its last answered verdict must be stored
        # (or the one it sent after, which may have committed though its answer never came)
        uids = [r["uid"] for r in rows]
        reviewed: dict[str, str] = {}
        unanswered: dict[str, str] = {}
        stop = threading.Event()

        def review(mine: list[str], seed: int) -> None:
            r = random.Random(seed)
            while not stop.is_set():
                uid, label = r.choice(mine), r.choice(["normal", "defect"])
                try:
                    resp = httpx.post(f"{url}/v1/inspections/{uid}/review", json={"label": label}, timeout=30)
                except httpx.HTTPError:
                    with lock:
                        unanswered[uid] = label
                    return
                if resp.status_code == 200:
                    with lock:
                        reviewed[uid] = label

        threads = [threading.Thread(target=review, args=(uids[i::3], 100 + i)) for i in range(3)]
        _kill_during(proc, threads, stop, 0.5 + rng.random(), reviewed)
        proc, url = _start(out, log)
        after = {r["uid"]: r for r in _rows(url)}
        assert reviewed and set(after) == set(uids)
        for uid, label in reviewed.items():
            assert after[uid]["review_label"] in (label, unanswered.get(uid)), uid
        _check_files(out, list(after.values()))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
