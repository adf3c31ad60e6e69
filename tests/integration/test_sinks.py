"""Sinks and the delivery thread against real receivers: mosquitto, an HTTP server, files; events from a real outbox.

Every test queues its events with ``Station.record([], events=...)`` on a SQLite station, as the service does, and
checks what the other side received: exact counts, order and contents. Nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker, Certificates, Receiver, Subscriber, free_port, wait_for

from zsad.errors import ZsadInputError
from zsad.serve.sinks import Delivery, FileSink, MqttSink, Sink, WebhookSink, parse_sink, parse_sinks, topic_for
from zsad.store import Station


def event(i: int, *, profile: str = "p", label: str | None = "anomalous", score: float = 0.7, **extra: Any) -> dict:
    uid = f"{i:032x}"
    return {
        "event_id": uid, "uid": uid, "profile": profile, "revision": 1, "station": "s", "source": "folder",
        "file": f"{i}.png", "score": score, "label": label, "threshold": 0.5, "threshold_source": "manual",
        "created_at": "2026-01-01T00:00:00+00:00", "links": {}, **extra,
    }  # fmt: skip


def queue(station: Station, sink: Sink | str, payloads: list[dict]) -> None:
    name = sink if isinstance(sink, str) else sink.name
    station.record([], events=[{"sink": name, "uid": p["uid"], "payload": p} for p in payloads])


def ids(payloads: list[dict]) -> list[str]:
    return [p["event_id"] for p in payloads]


@pytest.fixture
def station(tmp_path: Path):
    with Station(f"sqlite:///{tmp_path}/station.db", tmp_path, station_name="s") as st:
        yield st


@pytest.fixture
def receiver():
    r = Receiver(secret=b"s3cret")
    yield r
    r.close()


class Running:
    """Delivery with its callbacks recorded, stopped (and its sinks closed) at the end of the test."""

    def __init__(self, station: Station, sinks: list[Sink], **kw: Any) -> None:
        self.delivered: dict[str, int] = {}
        self.latencies: list[float] = []
        self.failures: list[tuple[str, str]] = []
        self.sinks = sinks
        self.d = Delivery(station, sinks, on_delivered=self._ok, on_failed=self._bad, **kw)
        self.d.start()

    def _ok(self, name: str, latencies: list[float]) -> None:
        self.delivered[name] = self.delivered.get(name, 0) + len(latencies)
        self.latencies += latencies

    def _bad(self, name: str, reason: str) -> None:
        self.failures.append((name, reason))

    def close(self) -> None:
        self.d.stop()
        for s in self.sinks:
            s.close()


@pytest.fixture
def running():
    made: list[Running] = []

    def start(station: Station, sinks: list[Sink], **kw: Any) -> Running:
        made.append(Running(station, sinks, **kw))
        return made[-1]

    yield start
    for r in made:
        r.close()


# -- parsing --------------------------------------------------------------------------------------------------------


def test_parse_good_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "abc")
    monkeypatch.setenv("MQTT_PW", "hunter2")
    w = parse_sink("https://example.com/hook?token=t1&x=2#secret_env=HOOK_SECRET&timeout=2.5&only=anomalous")
    assert isinstance(w, WebhookSink) and w.kind == "webhook"
    assert w.url == "https://example.com/hook?token=t1&x=2"  # the webhook's own query string, untouched
    assert w.name == "https://example.com/hook?token=t1&x=2"
    assert w.timeout == 2.5
    assert w.describe() == {
        "kind": "webhook", "name": w.name, "filter": {"only": "anomalous", "min_score": None, "profiles": []},
        "timeout_s": 2.5, "signed": True, "secret_env": "HOOK_SECRET",
    }  # fmt: skip

    m = parse_sink("mqtt://bob:pa%3Ass@broker.local/zsad/{station}/{profile}/{label}#qos=2&retain=1&client_id=cam1")
    assert isinstance(m, MqttSink) and m.kind == "mqtt"
    assert (m.host, m.port, m.topic, m.qos, m.retain, m.client_id) == (
        "broker.local",
        1883,
        "zsad/{station}/{profile}/{label}",
        2,
        True,
        "cam1",
    )
    assert (m.username, m.password) == ("bob", "pa:ss")
    assert m.name == "mqtt://bob@broker.local/zsad/{station}/{profile}/{label}"  # the password removed
    assert "pa:ss" not in json.dumps(m.describe()) and "pa%3Ass" not in json.dumps(m.describe())

    m2 = parse_sink("mqtts://bob@[::1]/t#password_env=MQTT_PW&insecure=1&name=plant")
    assert (m2.name, m2.host, m2.port, m2.password, m2.tls is not None) == ("plant", "::1", 8883, "hunter2", True)
    assert m2.tls.check_hostname is False
    assert "hunter2" not in json.dumps(m2.describe())
    assert parse_sink("mqtt://h:1999/a").port == 1999
    assert parse_sink("mqtt://h/a").client_id.startswith("zsad-")

    f = parse_sink(f"file:{tmp_path}/events.jsonl#max_bytes=1000&backups=2&min_score=0.25&profile=a,b")
    assert isinstance(f, FileSink) and (f.path, f.max_bytes, f.backups) == (tmp_path / "events.jsonl", 1000, 2)
    assert f.name == f"file:{tmp_path}/events.jsonl"
    f2 = parse_sink(f"file://{tmp_path}/my%20events.jsonl")
    assert f2.path == tmp_path / "my events.jsonl"
    assert (f2.max_bytes, f2.backups) == (100_000_000, 5)
    monkeypatch.chdir(tmp_path)
    assert parse_sink("file:rel.jsonl").path == tmp_path / "rel.jsonl"


def test_filters() -> None:
    only = parse_sink("http://h/x#only=anomalous")
    assert only.wants(event(1)) and not only.wants(event(1, label="normal")) and not only.wants(event(1, label=None))
    normal = parse_sink("http://h/x#only=normal")
    assert normal.wants(event(1, label="normal")) and not normal.wants(event(1))
    decided = parse_sink("http://h/x#only=decided")
    assert (
        decided.wants(event(1)) and decided.wants(event(1, label="normal")) and not decided.wants(event(1, label=None))
    )
    score = parse_sink("http://h/x#min_score=0.5")
    assert score.wants(event(1, score=0.5)) and not score.wants(event(1, score=0.4999))
    profiles = parse_sink("http://h/x#profile=a,b")
    assert profiles.wants(event(1, profile="b")) and not profiles.wants(event(1, profile="c"))
    assert not profiles.wants(event(1, profile=None))
    every = parse_sink("http://h/x#only=anomalous&min_score=0.6&profile=a")
    assert every.wants(event(1, profile="a", score=0.6))
    assert not every.wants(event(1, profile="a", score=0.59))
    assert not every.wants(event(1, profile="a", label="normal", score=0.9))
    assert parse_sink("http://h/x").wants({"profile": None, "label": None, "score": 0.0})


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://h/x", "unknown kind"),
        ("", "empty URL"),
        ("http://h/x#bogus=1", "unknown option 'bogus'"),
        ("http://h/x#timeout", "needs a value"),
        ("http://h/x#timeout=0", "timeout='0'"),
        ("http://h/x#timeout=abc", "not a number"),
        ("http://h/x#only=bad", "only='bad'"),
        ("http://h/x#min_score=nan", "min_score='nan'"),
        ("http://h/x#profile=a,,b", "empty profile name"),
        ("http://h/x#only=normal&only=anomalous", "given twice"),
        ("http://h/x#secret_env=ZSAD_TEST_UNSET_VAR", "ZSAD_TEST_UNSET_VAR is not set"),
        ("http://h/x#secret_env=ZSAD_TEST_EMPTY_VAR", "ZSAD_TEST_EMPTY_VAR is empty"),
        ("http:///x", "no host"),
        ("http://h:99999/x", "bad port"),
        ("http://[::1/x", "not a URL"),
        ("mqtt://u:topsecret@[bad/t", "not a URL"),
        ("mqtt://u:topsecret@h/a/+/b", "wildcard '+'"),
        ("mqtt://u:topsecret@h/a/%23", "wildcard '#'"),
        ("mqtt://h/a/{camera}", "unknown placeholder {camera}"),
        ("mqtt://h/a/{profile!r}", "unknown placeholder {profile}"),
        ("mqtt://h/a/{", "literal brace"),
        ("mqtt://h", "no topic"),
        ("mqtt://h/", "no topic"),
        ("mqtt://h/a?x=1", "no query string"),
        ("mqtt://h/a#qos=3", "qos='3'"),
        ("mqtt://h/a#retain=yes", "retain='yes'"),
        ("mqtt://h/a#ca=/etc/hostname", "TLS option: use mqtts://"),
        ("mqtts://h/a#ca=/nonexistent/ca.pem", "no such file"),
        ("mqtts://h/a#key=/etc/hostname", "key= without cert="),
        ("mqtts://h/a#ca=/etc/hostname", "TLS:"),
        ("mqtt://u:topsecret@h/a#password_env=ZSAD_TEST_PW", "give one"),
        ("mqtt://:topsecret@h/a", "a password without a user name"),
        ("file:/nonexistent-folder/e.jsonl", "folder /nonexistent-folder: not found"),
        ("file://otherhost/tmp/e.jsonl", "only local files"),
        ("file:", "no path"),
        ("file:/tmp", "is a folder"),
        ("file:/tmp/e.jsonl#max_bytes=0", "max_bytes='0'"),
        ("file:/tmp/e.jsonl#backups=-1", "backups='-1'"),
        ("file:/tmp/e.jsonl#secret_env=X", "unknown option 'secret_env'"),
        ("http://h/x#name=" + "n" * 256, "longer than 255"),
        ("http://h/" + "x" * 300, "give it a short one with #name="),
    ],
)
def test_bad_urls_are_one_line_errors(url: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZSAD_TEST_UNSET_VAR", raising=False)
    monkeypatch.setenv("ZSAD_TEST_EMPTY_VAR", "")
    monkeypatch.setenv("ZSAD_TEST_PW", "x")
    with pytest.raises(ZsadInputError) as info:
        parse_sink(url)
    msg = str(info.value)
    assert problem in msg
    assert "\n" not in msg and msg.startswith("sink")
    assert "topsecret" not in msg
    if "topsecret" in url:
        assert ":***@" in msg


def test_parse_sinks_refuses_one_name_twice(tmp_path: Path) -> None:
    sinks = parse_sinks(["http://h/x", "http://h/x#name=second", f"file:{tmp_path}/e.jsonl"])
    assert [s.name for s in sinks] == ["http://h/x", "second", f"file:{tmp_path}/e.jsonl"]
    with pytest.raises(ZsadInputError, match=r"the name 'http://h/x' is taken"):
        parse_sinks(["http://h/x", "http://h/x#only=anomalous"])
    with pytest.raises(ZsadInputError, match=r"'a' is taken"):  # the password does not make two names differ
        parse_sinks(["mqtt://u:1@h/t#name=a", "http://other/#name=a"])


def test_topic_template() -> None:
    assert topic_for("z/{station}/{profile}/{label}/{source}", event(1)) == "z/s/p/anomalous/folder"
    assert topic_for("z/{profile}/{label}", {"profile": None, "label": None}) == "z/none/none"
    assert topic_for("z/{station}", {"station": "a/b+c#d"}) == "z/a_b_c_d"  # a value never adds topic levels


# -- file -----------------------------------------------------------------------------------------------------------


def test_file_sink_rotates_with_exact_line_counts(station: Station, tmp_path: Path, running: Any) -> None:
    # every line is exactly 400 bytes (399 + newline), so a 1300-byte file holds 3 lines
    payloads = []
    for i in range(1, 21):
        p = event(i, pad="")
        p["pad"] = "x" * (399 - len(json.dumps(p, separators=(",", ":"))))
        payloads.append(p)
    assert all(len(json.dumps(p, separators=(",", ":"))) == 399 for p in payloads)
    sink = parse_sink(f"file:{tmp_path}/events.jsonl#max_bytes=1300&backups=2")
    queue(station, sink, payloads[:7])
    r = running(station, [sink], batch=4)  # batches of 4: rotation inside a batch and between batches
    assert r.d.drain(10)
    queue(station, sink, payloads[7:])
    r.d.wake()
    assert r.d.drain(10)

    def lines(name: str) -> list[str]:
        return [json.loads(x)["event_id"] for x in (tmp_path / name).read_text().splitlines()]

    # 20 lines in files of 3: [1-3] [4-6] [7-9] [10-12] [13-15] [16-18] [19-20]; the last three files are kept
    assert lines("events.jsonl") == ids(payloads[18:20])
    assert lines("events.jsonl.1") == ids(payloads[15:18])
    assert lines("events.jsonl.2") == ids(payloads[12:15])
    assert sorted(p.name for p in tmp_path.glob("events.jsonl*")) == ["events.jsonl", "events.jsonl.1",
                                                                      "events.jsonl.2"]  # fmt: skip
    assert all(p.stat().st_size == (800 if p.name == "events.jsonl" else 1200) for p in tmp_path.glob("events.jsonl*"))
    assert (tmp_path / "events.jsonl").read_bytes().endswith(b"\n")
    stats = station.outbox_stats()[sink.name]
    assert (stats["delivered"], stats["pending"]) == (20, 0)
    assert r.delivered == {sink.name: 20}
    assert len(r.latencies) == 20 and all(0 <= x < 10 for x in r.latencies)


def test_file_sink_without_backups_and_its_failure(tmp_path: Path) -> None:
    sink = parse_sink(f"file:{tmp_path}/e.jsonl#max_bytes=1&backups=0")
    assert sink.deliver([event(1), event(2), event(3)]) == (3, None)
    assert [json.loads(x)["event_id"] for x in (tmp_path / "e.jsonl").read_text().splitlines()] == ids([event(3)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    (tmp_path / "e.jsonl").unlink()
    (tmp_path / "e.jsonl").mkdir()  # the path turned into a folder: a one-line failure, nothing counted
    n, reason = sink.deliver([event(4)])
    assert n == 0 and reason is not None and "e.jsonl" in reason and "\n" not in reason


def test_file_sink_failed_rotation_keeps_what_was_synced(tmp_path: Path) -> None:
    line = len(json.dumps(event(1), separators=(",", ":"))) + 1
    sink = parse_sink(f"file:{tmp_path}/e.jsonl#max_bytes={2 * line}&backups=1")
    (tmp_path / "e.jsonl.1").mkdir()  # the rotation's target is a folder with something in it: rotating fails
    (tmp_path / "e.jsonl.1" / "x").write_text("x")
    n, reason = sink.deliver([event(1), event(2), event(3)])
    assert n == 2 and reason is not None and "\n" not in reason
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert [json.loads(x)["event_id"] for x in lines] == ids([event(1), event(2)])  # the two delivered, intact


# -- webhook --------------------------------------------------------------------------------------------------------


def test_webhook_signed_retried_in_order_exactly_once(
    station: Station, receiver: Receiver, running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSAD_HOOK_SECRET", "s3cret")
    sink = parse_sink(receiver.url + "?token=abc#secret_env=ZSAD_HOOK_SECRET")
    payloads = [event(i, label=None if i == 3 else "anomalous") for i in range(1, 6)]
    queue(station, sink, payloads)
    receiver.fail_next(3)
    r = running(station, [sink], max_backoff_s=2.0, idle_s=0.1)
    wait_for(lambda: receiver.failures == 3, 10, "three failed attempts")
    # the failed attempts are visible in the outbox until the retry succeeds (the next retry is >= 2 s away)
    stats = wait_for(
        lambda: (s := station.outbox_stats()[sink.name])["failed_attempts_pending"] == 3 and s, 1.5, "stats"
    )
    assert (stats["pending"], stats["delivered"], stats["last_error"]) == (5, 0, "HTTP 500")
    assert r.d.state()[sink.name]["last_error"] == "HTTP 500"
    assert r.d.drain(10)
    assert receiver.bodies() == payloads  # each once, in order
    assert receiver.bad_signatures == 0 and receiver.requests == 8
    for headers, body in receiver.received:
        assert headers["X-Zsad-Event"] == body["event_id"]
        assert headers["Content-Type"] == "application/json"
        assert headers["path"] == "/hook?token=abc"  # the webhook's own query string reached it
        assert headers["X-Zsad-Signature"].startswith("sha256=")
    assert r.failures == [(sink.name, "HTTP 500")] * 3
    stats = station.outbox_stats()[sink.name]
    assert (stats["delivered"], stats["pending"], stats["failed_attempts_pending"]) == (5, 0, 0)


def test_webhook_wrong_secret_and_refused_connection(
    station: Station, receiver: Receiver, running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSAD_HOOK_SECRET", "not-the-secret")
    sink = parse_sink(receiver.url + "#secret_env=ZSAD_HOOK_SECRET")
    queue(station, sink, [event(1)])
    r = running(station, [sink], idle_s=0.1)
    wait_for(lambda: station.outbox_stats()[sink.name]["last_error"] == "HTTP 401", 5, "HTTP 401 in the stats")
    assert receiver.bodies() == [] and receiver.bad_signatures >= 1
    assert r.failures[0] == (sink.name, "HTTP 401")
    closed = parse_sink(f"http://127.0.0.1:{free_port()}/x#timeout=2")
    try:
        assert closed.deliver([event(1), event(2)]) == (0, "connection refused")
    finally:
        closed.close()


def test_restart_delivers_what_was_not_acknowledged(tmp_path: Path) -> None:
    receiver = Receiver()
    url = receiver.url + "#name=hook"
    payloads = [event(i) for i in range(1, 11)]
    db = f"sqlite:///{tmp_path}/station.db"
    first = Station(db, tmp_path, station_name="s")
    sink = parse_sink(url)
    queue(first, sink, payloads[:3])
    d = Delivery(first, [sink], idle_s=0.1)
    d.start()
    assert d.drain(10)
    receiver.fail_next(10**6)  # from now on the receiver refuses everything
    queue(first, sink, payloads[3:])
    d.wake()
    wait_for(lambda: receiver.failures >= 1, 10, "a refused attempt")
    d.stop()
    sink.close()
    assert not any(t.is_alive() for t in d._threads)
    first.close()

    receiver.fail_next(0)
    with Station(db, tmp_path, station_name="s") as second:
        assert second.outbox_stats()["hook"]["pending"] == 7
        sink2 = parse_sink(url)
        d2 = Delivery(second, [sink2], idle_s=0.1, max_backoff_s=0.5)
        d2.start()
        try:
            assert d2.drain(10)
        finally:
            d2.stop()
            sink2.close()
        stats = second.outbox_stats()["hook"]
    receiver.close()
    assert receiver.bodies() == payloads  # the first three once, the other seven once, in order
    assert (stats["delivered"], stats["pending"]) == (10, 0)


def test_a_dead_sink_does_not_delay_a_healthy_one(station: Station, tmp_path: Path, running: Any) -> None:
    hanging = Receiver()
    hanging.hang = True
    try:
        dead = parse_sink(hanging.url + "#timeout=8")
        good = parse_sink(f"file:{tmp_path}/e.jsonl")
        r = running(station, [dead, good], idle_s=5.0)  # only wake() makes the events go at once
        queue(station, dead, [event(i) for i in range(1, 4)])
        r.d.wake()
        wait_for(lambda: hanging.requests == 1, 5, "the dead sink's first request")  # its thread now hangs 8 s
        t0 = time.monotonic()
        queue(station, good, [event(i) for i in range(1, 11)])
        r.d.wake()
        wait_for(lambda: station.outbox_stats().get(good.name, {}).get("delivered") == 10, 3, "the healthy sink")
        took = time.monotonic() - t0
        assert took < 3.0, f"the healthy sink waited {took:.2f} s (the dead one blocks its thread for 8 s)"
        assert station.outbox_stats()[dead.name]["pending"] == 3
        assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 10
    finally:
        hanging.close()


def test_database_errors_do_not_stop_delivery(
    station: Station, tmp_path: Path, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sink = parse_sink(f"file:{tmp_path}/e.jsonl")
    queue(station, sink, [event(i) for i in range(1, 6)])
    raw = sqlite3.connect(tmp_path / "station.db", isolation_level=None)
    raw.execute("ALTER TABLE outbox RENAME TO outbox_hidden")  # the outbox "unreachable" for a while
    try:
        with caplog.at_level(logging.WARNING, logger="zsad.sinks"):
            r = running(station, [sink], idle_s=0.05, max_backoff_s=0.2)
            wait_for(lambda: len([x for x in caplog.records if "outbox" in x.getMessage()]) >= 2, 5, "logged errors")
        assert r.d.running()
        assert not (tmp_path / "e.jsonl").exists()
    finally:
        raw.execute("ALTER TABLE outbox_hidden RENAME TO outbox")
        raw.close()
    assert r.d.drain(10)
    assert [json.loads(x)["event_id"] for x in (tmp_path / "e.jsonl").read_text().splitlines()] == ids(
        [event(i) for i in range(1, 6)]
    )


# -- MQTT -----------------------------------------------------------------------------------------------------------


def test_mqtt_topics_payloads_and_wake_latency(station: Station, tmp_path: Path, running: Any) -> None:
    with Broker(tmp_path / "broker") as broker:
        sub = Subscriber(broker, "zsad/#")
        try:
            sink = parse_sink(f"mqtt://127.0.0.1:{broker.port}/zsad/{{station}}/{{profile}}/{{label}}")
            r = running(station, [sink], idle_s=5.0)
            wait_for(lambda: sink.connection() == "connected", 5, "the sink's connection")
            assert r.d.state()[sink.name]["connection"] == "connected"
            payloads = [event(1), event(2, profile="q", label="normal"), event(3, label=None)]
            t0 = time.monotonic()
            queue(station, sink, payloads)
            r.d.wake()
            got = sub.wait(3)
            took = time.monotonic() - t0
            assert took < 2.5, f"{took:.2f} s from record() to the subscriber (idle_s is 5 s: wake() must work)"
            assert got == [
                ("zsad/s/p/anomalous", payloads[0], False),
                ("zsad/s/q/normal", payloads[1], False),
                ("zsad/s/p/none", payloads[2], False),
            ]
            assert r.d.drain(5)
            assert station.outbox_stats()[sink.name]["delivered"] == 3
        finally:
            sub.close()

        retained = parse_sink(f"mqtt://127.0.0.1:{broker.port}/kept/{{profile}}#retain=1&qos=0&name=kept")
        try:
            assert retained.deliver([event(7)]) == (1, None)
        finally:
            retained.close()
        late = Subscriber(broker, "kept/#")  # subscribes after the publish: gets the retained message
        try:
            assert late.wait(1) == [("kept/p", event(7), True)]
        finally:
            late.close()


def test_mqtt_username_and_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Broker(tmp_path / "broker", users={"cam": "pw:1"}) as broker:
        sub = Subscriber(broker, "t/#", username="cam", password="pw:1")
        try:
            in_url = parse_sink(f"mqtt://cam:pw%3A1@127.0.0.1:{broker.port}/t/url#timeout=3")
            monkeypatch.setenv("ZSAD_TEST_MQTT_PW", "pw:1")
            from_env = parse_sink(f"mqtt://cam@127.0.0.1:{broker.port}/t/env#password_env=ZSAD_TEST_MQTT_PW")
            wrong = parse_sink(f"mqtt://cam:nope@127.0.0.1:{broker.port}/t/wrong#timeout=1")
            try:
                assert in_url.deliver([event(1), event(2)]) == (2, None)
                assert from_env.deliver([event(3)]) == (1, None)
                n, reason = wrong.deliver([event(4)])
                assert n == 0 and reason is not None
                assert reason.startswith("broker not connected (the broker refused the connection"), reason
                assert wrong.ready() == reason
            finally:
                for s in (in_url, from_env, wrong):
                    s.close()
            assert sub.wait(3) == [("t/url", event(1), False), ("t/url", event(2), False), ("t/env", event(3), False)]
        finally:
            sub.close()


def test_mqtt_over_tls(tmp_path: Path) -> None:
    certs = Certificates(tmp_path / "certs")
    with Broker(tmp_path / "broker", certs=certs) as broker:
        sub = Subscriber(broker, "tls/#", certs=certs)
        try:
            good = parse_sink(f"mqtts://127.0.0.1:{broker.port}/tls/{{profile}}#ca={certs.ca}&timeout=3")
            by_name = parse_sink(f"mqtts://localhost:{broker.port}/tls/name#ca={certs.ca}&timeout=3")
            untrusted = parse_sink(f"mqtts://127.0.0.1:{broker.port}/tls/x#timeout=1")  # the system's CAs only
            try:
                assert good.deliver([event(1), event(2)]) == (2, None)
                assert by_name.deliver([event(3)]) == (1, None)
                n, reason = untrusted.deliver([event(4)])
                assert (n, reason) == (0, f"broker not connected (cannot connect to 127.0.0.1:{broker.port})")
            finally:
                for s in (good, by_name, untrusted):
                    s.close()
            assert sub.wait(3) == [
                ("tls/p", event(1), False),
                ("tls/p", event(2), False),
                ("tls/name", event(3), False),
            ]
        finally:
            sub.close()
    with Broker(tmp_path / "broker-mtls", certs=certs, require_certificate=True) as broker:
        sub = Subscriber(broker, "m/#", certs=certs)
        try:
            opts = f"ca={certs.ca}&cert={certs.client}&key={certs.client_key}&timeout=3"
            with_cert = parse_sink(f"mqtts://127.0.0.1:{broker.port}/m/ok#{opts}")
            without = parse_sink(f"mqtts://127.0.0.1:{broker.port}/m/no#ca={certs.ca}&timeout=1")
            try:
                assert with_cert.deliver([event(5)]) == (1, None)
                assert without.deliver([event(6)])[0] == 0
            finally:
                with_cert.close()
                without.close()
            assert sub.wait(1) == [("m/ok", event(5), False)]
        finally:
            sub.close()


def test_mqtt_broker_outage_delivers_each_event_exactly_once(station: Station, tmp_path: Path, running: Any) -> None:
    # The broker keeps the subscriber's persistent session across its restart, so what the sink publishes right
    # after the restart reaches the subscriber even if the sink reconnects before the subscriber does.
    broker = Broker(tmp_path / "broker", persistence=True)
    broker.start()
    sub = None
    try:
        sub = Subscriber(broker, "plant/#", client_id="zsad-test-subscriber", clean=False)
        sink = parse_sink(f"mqtt://127.0.0.1:{broker.port}/plant/{{profile}}#timeout=2")
        r = running(station, [sink], idle_s=0.2, max_backoff_s=2.0)
        before = [event(i) for i in range(1, 6)]
        queue(station, sink, before)
        assert r.d.drain(10)
        assert [m[1] for m in sub.wait(5)] == before

        broker.stop()
        t_down = time.monotonic()
        wait_for(lambda: (sink.connection() or "").startswith("disconnected"), 5, "the sink to see the outage")
        during = [event(i) for i in range(6, 56)]
        for k in range(5):  # scoring goes on during the outage: 10 events every 6 s
            queue(station, sink, during[10 * k : 10 * k + 10])
            r.d.wake()
            time.sleep(max(0.0, t_down + 6 * (k + 1) - time.monotonic()))
        assert time.monotonic() - t_down >= 30
        stats = station.outbox_stats()[sink.name]
        assert stats["pending"] == 50 and stats["failed_attempts_pending"] >= 5
        assert stats["last_error"].startswith("broker not connected (")
        assert r.d.running()
        assert r.failures and all(reason.startswith("broker not connected (") for _, reason in r.failures)

        broker.start()
        assert r.d.drain(20), station.outbox_stats()
        got = sub.wait(55, timeout=20)
        assert [m[1]["event_id"] for m in got] == ids(before + during)  # each once, in order
        assert [m[1] for m in got] == before + during
        assert r.d.running()
        assert station.outbox_stats()[sink.name]["delivered"] == 55
    finally:
        if sub is not None:
            sub.close()
        broker.stop()
