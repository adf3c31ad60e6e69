"""Watched folders and sinks end to end, with real processes: a real mosquitto, an HMAC-checking webhook, files.

Every decision a watcher or server records reaches every sink once (through a webhook's 500s and a broker outage),
and a profile's own sinks follow it to every front end. Split from test_watch.py so that the two run side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from brokers import wait_for
from serve_helpers import TINY, free_port
from watch_helpers import WATCH_TINY, make_station, read_db, start_zsad, tile_images, write_files, zsad

from zsad import client

pytestmark = pytest.mark.assets


# -- watched folder -> sinks, end to end ------------------------------------------------------------------------------


def test_watched_decisions_reach_every_sink_once_through_outages(assets_dir: Path, tmp_path: Path) -> None:
    """serve --watch with MQTT, an HMAC webhook and a file: a webhook 500ing, then the broker down 10 s.

    Scoring goes on while a sink is down; afterwards every decision has reached every sink exactly once, with the
    fields of the database's row; the metrics and /v1/stats count the same.
    """
    from brokers import Broker, Receiver, Subscriber

    out = tmp_path / "station"
    make_station(out)
    inbox = tmp_path / "in"
    inbox.mkdir()
    broker = Broker(tmp_path / "mqtt", persistence=True)
    broker.start()
    sub = Subscriber(broker, "line/#", client_id="e2e-sub", clean=False)
    hook = Receiver(secret=b"s3cret")
    hook.fail_next(3)
    port = free_port()
    log = tmp_path / "serve.log"
    sinks = [f"mqtt://127.0.0.1:{broker.port}/line/{{profile}}/{{label}}", f"{hook.url}#secret_env=HOOK_KEY",
             f"file:{tmp_path / 'events.jsonl'}", f"file:{tmp_path / 'ng.jsonl'}#only=anomalous"]  # fmt: skip
    args = ["serve", "--port", str(port), "--out", str(out), "--station", "--watch", f"{inbox}=tile", "--settle", "0.3"]
    with log.open("ab") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zsad", *args, *[x for s in sinks for x in ("--sink", s)], *TINY],
            stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HOOK_KEY": "s3cret"},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        client.wait_until_ready(base, 120, alive=lambda: proc.poll() is None)
        images = tile_images(assets_dir, 12)
        write_files(images[:6], inbox)
        wait_for(lambda: len(sub.received()) == 6 and len(hook.bodies()) == 6, 60, "first events not delivered")
        assert hook.failures == 3 and hook.bad_signatures == 0

        broker.stop()
        write_files(images[6:], inbox, names=[f"b{i}.jpg" for i in range(6)])

        def decided() -> int:
            return len(httpx.get(base + "/v1/inspections", timeout=10).json()["inspections"])

        wait_for(lambda: decided() == 12, 60, "scoring paused while the broker was down")
        wait_for(lambda: len(hook.bodies()) == 12, 30, "the webhook waited for the broker")
        sinks_state = httpx.get(base + "/v1/stats", timeout=10).json()["sinks"]
        (mqtt_name,) = [k for k, v in sinks_state.items() if v["kind"] == "mqtt"]
        assert sinks_state[mqtt_name]["pending"] == 6 and sinks_state[mqtt_name]["delivered"] == 6
        time.sleep(max(0.0, 10 - 1))  # down for about 10 s in all
        broker.start()
        got = sub.wait(12, timeout=60)
        wait_for(lambda: httpx.get(base + "/v1/stats", timeout=10).json()["sinks"][mqtt_name]["pending"] == 0, 10, "")
        metrics = httpx.get(base + "/metrics", timeout=10).text
        (hook_name,) = [k for k, v in sinks_state.items() if v["kind"] == "webhook"]
        for name in (mqtt_name, hook_name):
            assert f'zsad_sink_deliveries_total{{sink="{name}"}} 12.0' in metrics
            assert f'zsad_sink_pending{{sink="{name}"}} 0.0' in metrics
        assert f'zsad_sink_failures_total{{sink="{hook_name}"}} 3.0' in metrics
        assert f'zsad_sink_delivery_seconds_count{{sink="{hook_name}"}} 12.0' in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        sub.close()
        broker.stop()
        hook.close()
    assert proc.returncode == 0, log.read_text()[-3000:]
    rows = {r["uid"]: r for r in read_db(f"sqlite:///{out / 'station.db'}", "SELECT * FROM inspections")}
    assert len(rows) == 12
    mqtt_events = [p for _, p, _ in got]
    assert len(got) == 12 and {e["uid"] for e in mqtt_events} == set(rows), "an MQTT event lost or sent twice"
    hook_events = hook.bodies()
    assert len(hook_events) == 12 and {e["uid"] for e in hook_events} == set(rows)
    assert {h["X-Zsad-Event"] for h, _ in hook.received} == set(rows)
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {e["uid"] for e in lines} == set(rows)
    flagged = {u for u, r in rows.items() if r["label"] == 1}
    assert {json.loads(x)["uid"] for x in (tmp_path / "ng.jsonl").read_text().splitlines()} == flagged
    for topic, e, _ in got:
        r = rows[e["uid"]]
        label = {1: "anomalous", 0: "normal", None: None}[r["label"]]
        assert topic == f"line/tile/{label}"
        assert (e["profile"], e["source"], e["label"], e["file"]) == ("tile", "folder", label, r["file_name"])
        assert e["score"] == pytest.approx(r["score"]) and e["threshold"] == 0.5 and e["event_id"] == e["uid"]
        assert e["path"] == str(inbox / r["file_name"]) and e["links"]["map"] == f"/v1/results/{e['uid']}/map.png"


def test_a_profiles_own_sinks_follow_it_to_every_front_end(assets_dir: Path, tmp_path: Path) -> None:
    """zsad profile create --sink: zsad watch delivers there without --sink; PATCH and `profile sinks` change it."""
    st = tmp_path / "station"
    st.mkdir()
    url = f"sqlite:///{st / 'station.db'}"
    log = tmp_path / "cli.log"
    events = tmp_path / "line.jsonl"
    tiny = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]
    refused = zsad("profile", "create", "p", "--db", url, "--threshold", "0.5", "--sink", "mqtt://u:pw@h/t", *tiny,
                   log=log)  # fmt: skip
    assert refused.returncode == 2 and "a profile keeps no password" in log.read_text()
    assert "pw" not in log.read_text().splitlines()[-1].replace("password", "")
    made = zsad("profile", "create", "p", "--db", url, "--threshold", "0.5", "--sink", f"file:{events}", *tiny, log=log)
    assert made.returncode == 0, log.read_text()[-2000:]
    inbox = tmp_path / "in"
    inbox.mkdir()
    images = tile_images(assets_dir, 4)
    write_files(images[:2], inbox)
    assert zsad("watch", str(inbox), "--profile", "p", "--db", url, "--once", *WATCH_TINY, log=log).returncode == 0
    uids = {r["uid"] for r in read_db(url, "SELECT uid FROM inspections")}
    assert len(uids) == 2 and {json.loads(x)["uid"] for x in events.read_text().splitlines()} == uids

    assert zsad("profile", "sinks", "p", "--db", url, "--clear", log=log).returncode == 0
    assert "profile p revision 2: 0 sink(s)" in log.read_text()
    write_files(images[2:3], inbox, names=["third.jpg"])
    assert zsad("watch", str(inbox), "--profile", "p", "--db", url, "--once", *WATCH_TINY, log=log).returncode == 0
    assert len(read_db(url, "SELECT uid FROM inspections")) == 3
    assert len(events.read_text().splitlines()) == 2, "a removed sink still got the profile's decisions"

    # on a server: PATCH sets them again (checked first), and an upload with the profile is delivered there
    port = free_port()
    slog = tmp_path / "serve.log"
    proc = start_zsad("serve", "--port", str(port), "--out", str(st), "--station", *TINY, log=slog)
    base = f"http://127.0.0.1:{port}"
    try:
        client.wait_until_ready(base, 120, alive=lambda: proc.poll() is None)
        bad = httpx.patch(base + "/v1/profiles/p", json={"sinks": ["https://u:secret@hook.local/x"]}, timeout=30)
        assert bad.status_code == 422 and "no password" in bad.json()["detail"] and "secret" not in bad.json()["detail"]
        bad = httpx.patch(base + "/v1/profiles/p", json={"sinks": ["gopher://x"]}, timeout=30)
        assert bad.status_code == 422 and "gopher" in bad.json()["detail"]
        ok = httpx.patch(base + "/v1/profiles/p", json={"sinks": [f"file:{events}#only=decided"]}, timeout=30)
        assert ok.status_code == 200 and ok.json()["revision"] == 3, ok.text
        with images[3].open("rb") as f:
            res = httpx.post(base + "/v1/detect", data={"profile": "p"}, files={"images": f}, timeout=120).json()
        adhoc = httpx.post(
            base + "/v1/detect", data={"class_name": "tile"}, files={"images": images[3].read_bytes()}, timeout=120
        )
        assert adhoc.status_code == 200
        uid = res["results"][0]["uid"]
        wait_for(lambda: len(events.read_text().splitlines()) == 3, 30, "the patched sink got nothing")
        time.sleep(0.5)
        last = [json.loads(x) for x in events.read_text().splitlines()]
        assert len(last) == 3 and last[-1]["uid"] == uid and last[-1]["source"] == "api", (
            "ad hoc went to a profile sink"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
