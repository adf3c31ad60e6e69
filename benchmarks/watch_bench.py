"""Watched folders: what the watcher costs against ``zsad detect``, how it holds 10,000 files, how fast events arrive.

    .venv/bin/python benchmarks/watch_bench.py overhead --append-results   # 200 images: zsad watch --once vs detect
    .venv/bin/python benchmarks/watch_bench.py scale --append-results      # 10,000 files dropped at once
    .venv/bin/python benchmarks/watch_bench.py delivery --append-results   # event latency to MQTT and a webhook

Real images (the first N Magnetic Tile JPEGs of ``ZSAD_ASSETS``), one station profile (WinCLIP, a manual threshold,
seeded RANDOM weights: speed only). Both commands run as a user runs them, each in its own process with the same
profile (``zsad detect --profile`` decides as the watcher does), alternating rounds so that drift of the machine
falls on both; the overhead is the watcher's wall time over detect's (process start and model build included in
both). The bare backbone forward of the same images, in this run, gives the ratio speed numbers are reported in.

``scale``: a writer process drops 10,000 files (copies of the real images under new names) into a folder
``zsad watch`` already watches; the watcher's peak RSS is read from /proc (VmHWM), the lag of each file is its
decision's commit time minus the file's mtime (when the writer finished it), from the station's own rows, and every
count is checked exactly (10,000 inspections, 10,000 intake keys, none twice).

``delivery``: ``zsad watch`` with a webhook (a local receiver) and an MQTT sink (a local mosquitto), files dropped
one every ``--interval`` seconds; each event's latency is its arrival at the receiver minus its decision time
(the event's ``created_at``), and every event is checked to arrive exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from _results import add_results_args, assets_dir, emit, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))


def _images(n: int) -> list[Path]:
    files = sorted((assets_dir() / "magnetic_tile").rglob("*.jpg"))[:n]
    if len(files) < n:
        raise SystemExit(f"{assets_dir()}/magnetic_tile: fewer than {n} images (set ZSAD_ASSETS)")
    return files


def _station(out: Path, backbone: str, image_size: int) -> str:
    from zsad.runs import BackboneSpec, make_setup
    from zsad.store import Station

    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'station.db'}"
    bb = BackboneSpec(backbone, "none", None, image_size, "cpu", 0)
    with Station(url, out) as st:
        st.create_profile("bench", make_setup("winclip", backbone=bb, threshold=0.5))
    return url


def _zsad(*args: str, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("ab") as f:
        done = subprocess.run([sys.executable, "-m", "zsad", *args], stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"zsad {' '.join(args)} failed: {log.read_text()[-2000:]}")
    return time.perf_counter() - t0


def _count(url: str, sql: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar() or 0)
    finally:
        engine.dispose()


def _bare_forward(images: list[Path], backbone: str, image_size: int, batch: int) -> float:
    """Seconds of the bare image-encoder forward over ``images`` in batches (the reference of speed ratios)."""
    import torch
    from PIL import Image

    from zsad.data import squash_image
    from zsad.runs import BackboneSpec, MethodSpec

    spec = MethodSpec("winclip", BackboneSpec(backbone, "none", None, image_size, "cpu", 0), {})
    bb = spec.build().backbone
    pre = bb.preprocess
    x = torch.stack([squash_image(Image.open(p).convert("RGB"), pre.image_size, pre.mean, pre.std) for p in images])
    with torch.inference_mode():
        bb.encode_image(x[:batch])
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            bb.encode_image(x[i : i + batch])
    return time.perf_counter() - t0


def overhead(args: argparse.Namespace) -> str:
    images = _images(args.images)
    watch_s: list[float] = []
    detect_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        src = base / "images"
        src.mkdir()
        for p in images:
            shutil.copyfile(p, src / p.name)
        bb = ["--device", "cpu"]
        for r in range(args.rounds):
            for kind in ("detect", "watch") if r % 2 == 0 else ("watch", "detect"):
                out = base / f"{kind}{r}"
                url = _station(out, args.backbone, args.image_size)
                log = base / f"{kind}{r}.log"
                if kind == "detect":
                    t = _zsad("detect", str(src), "--profile", "bench", "--db", url, "--out", str(out / "run"),
                              "--batch-size", str(args.batch), *bb, log=log)  # fmt: skip
                    detect_s.append(t)
                else:
                    inbox = base / f"in{r}"
                    shutil.copytree(src, inbox)
                    t = _zsad("watch", str(inbox), "--profile", "bench", "--db", url, "--once", "--max-batch",
                              str(args.batch), "--log-level", "warning", *bb, log=log)  # fmt: skip
                    n = _count(url, "SELECT count(*) FROM inspections WHERE source = 'folder'")
                    if n != len(images):
                        raise SystemExit(f"the watcher scored {n} of {len(images)} images")
                    watch_s.append(t)
                print(f"round {r}: {kind} {t:.1f} s", flush=True)
        bare = _bare_forward(images, args.backbone, args.image_size, args.batch)
    d, w = statistics.median(detect_s), statistics.median(watch_s)
    n = len(images)
    lines = [
        f"### Watcher vs zsad detect ({datetime.now():%Y-%m-%d}, {args.backbone} at {args.image_size} px)",
        "",
        f"Command: `.venv/bin/python benchmarks/watch_bench.py overhead --backbone {args.backbone} --image-size "
        f"{args.image_size} --images {n} --rounds {args.rounds}`",
        "",
        f"{n} real Magnetic Tile images, one station profile (WinCLIP on `{args.backbone}` at {args.image_size} px, "
        f"seeded RANDOM weights: speed only, manual threshold), batches of {args.batch}. "
        "`zsad detect FOLDER --profile` and `zsad watch FOLDER --profile --once` each in their own process "
        "(start, model build, scoring, maps, "
        "overlays; the watcher also hashes each file, copies it into the station and commits its intake key), "
        f"{args.rounds} alternating rounds, median wall time. Bare forward: the image encoder over the same images "
        f"in batches of {args.batch}, this run. {machine()}.",
        "",
        "| command | wall s (median) | images/s | x bare forward | vs detect |",
        "|---|---:|---:|---:|---:|",
        f"| zsad detect --profile | {d:.1f} | {n / d:.1f} | {d / bare:.1f} | +0.0 % |",
        f"| zsad watch --once | {w:.1f} | {n / w:.1f} | {w / bare:.1f} | {100 * (w / d - 1):+.1f} % |",
        "",
        f"Rounds (s): detect {_join(detect_s)}; watch {_join(watch_s)}.",
    ]
    return "\n".join(lines) + "\n"


def _join(xs: list[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in xs)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _rss_watch(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        stop.wait(0.5)


def scale(args: argparse.Namespace) -> str:
    from watch_helpers import spawn_writer

    images = _images(args.images)
    n = args.files
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        url = _station(base / "station", args.backbone, args.image_size)
        inbox = base / "in"
        inbox.mkdir()
        log = base / "watch.log"
        cmd = [sys.executable, "-m", "zsad", "watch", str(inbox), "--profile", "bench", "--db", url, "--route",
               "move", "--max-batch", str(args.batch), "--log-level", "warning", "--device", "cpu"]  # fmt: skip
        with log.open("ab") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        peak = [0]
        stop = threading.Event()
        t = threading.Thread(target=_rss_watch, args=(proc.pid, stop, peak), daemon=True)
        t.start()
        try:
            time.sleep(15)  # started and watching (model built)
            idle_kb = peak[0]
            files = [images[i % len(images)] for i in range(n)]
            names = [f"{i:06d}_{p.name}" for i, p in enumerate(files)]
            t0 = time.perf_counter()
            spawn_writer(files, inbox, names=names).wait()
            dropped = time.perf_counter() - t0
            print(f"{n} files dropped in {dropped:.1f} s", flush=True)
            trace: list[tuple[int, int]] = []  # (files finished, the watcher's RSS in KiB), every 2 s
            while (done := _count(url, "SELECT count(*) FROM intake")) < n:
                if proc.poll() is not None:
                    raise SystemExit(f"the watcher died: {log.read_text()[-2000:]}")
                trace.append((done, _rss_kb(proc.pid)))
                time.sleep(2)
            total = time.perf_counter() - t0
        finally:
            stop.set()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT i.mtime_ns, n.created_at, i.path FROM intake i JOIN inspections n ON n.uid = i.uid")
            ).all()
            uids = conn.execute(sa.text("SELECT count(DISTINCT uid), count(*) FROM inspections")).one()
        engine.dispose()
        paths = {r[2] for r in rows}
        left = [p for p in inbox.iterdir() if p.is_file()]
        routed = sum(1 for d in ("ok", "ng") for _ in (inbox / d).glob("*"))
        assert len(rows) == n and len(paths) == n and tuple(uids) == (n, n), (len(rows), len(paths), uids)
        assert not left and routed == n, (len(left), routed)
        lag = np.array(
            [datetime.fromisoformat(str(c)).timestamp() - m / 1e9 for m, c, _ in rows]
            if isinstance(rows[0][1], str)
            else [c.replace(tzinfo=None).timestamp() - m / 1e9 for m, c, _ in rows]
        )
    p50, p99 = np.percentile(lag, [50, 99])
    marks = []
    for frac in (0.1, 0.25, 0.5, 0.75, 0.95):
        hit = next(((d, r) for d, r in trace if d >= frac * n), None)
        if hit is not None:
            marks.append(f"{hit[0]:,} files: {hit[1] / 1024:.0f} MiB")
    lines = [
        f"### Watcher at 10,000 files ({datetime.now():%Y-%m-%d})",
        "",
        f"Command: `.venv/bin/python benchmarks/watch_bench.py scale --files {n}`",
        "",
        f"`zsad watch --route move --max-batch {args.batch}` on an empty folder (WinCLIP on `{args.backbone}` at "
        f"{args.image_size} px, seeded RANDOM weights: speed only); a writer process then copied {n:,} real Magnetic "
        f"Tile images ({len(images)} distinct, under new names) into it in {dropped:.1f} s. Checked exactly: "
        f"{n:,} inspections with distinct uids, {n:,} intake keys with distinct paths, {n:,} files routed to ok/ or "
        f"ng/, none left. Lag: a decision's commit time minus its file's mtime (when the writer finished it), from "
        f"the station's rows. {machine()}.",
        "",
        "| | value |",
        "|---|---:|",
        f"| all {n:,} decided after the drop began | {total:.0f} s ({n / total:.1f} files/s) |",
        f"| watcher peak RSS (VmHWM), idle before the drop | {idle_kb / 1024:.0f} MiB |",
        f"| watcher peak RSS (VmHWM), whole run | {peak[0] / 1024:.0f} MiB |",
        f"| lag p50 | {p50:.1f} s |",
        f"| lag p99 | {p99:.1f} s |",
        f"| lag max | {lag.max():.1f} s |",
        "",
        f"The watcher's RSS as the burst was worked off: {'; '.join(marks)}.",
        "",
        "The lag of a burst is its queue: the last file waits for the 9,999 before it, so p50 is about half the "
        "drain time. Memory holds the pending list (paths and sizes) and two chunks of bytes, not the burst.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["overhead", "scale", "delivery"])
    ap.add_argument("--backbone", default="zsad-tiny")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.05)
    add_results_args(ap)
    args = ap.parse_args()
    if args.part == "overhead":
        text = overhead(args)
    elif args.part == "scale":
        text = scale(args)
    else:
        text = delivery(args)
    emit(text, args)


def delivery(args: argparse.Namespace) -> str:
    from brokers import Broker, Receiver, Subscriber
    from watch_helpers import spawn_writer

    images = _images(min(args.images, args.events))
    n = args.events
    arrivals: dict[str, dict[str, float]] = {"mqtt": {}, "webhook": {}}

    class TimedSubscriber(Subscriber):
        def _on_message(self, client: object, userdata: object, msg: object) -> None:
            super()._on_message(client, userdata, msg)
            e = self.received()[-1][1]
            if e["uid"] in arrivals["mqtt"]:
                raise SystemExit(f"MQTT event {e['uid']} arrived twice")
            arrivals["mqtt"][e["uid"]] = time.time() - datetime.fromisoformat(e["created_at"]).timestamp()

    class TimedReceiver(Receiver):
        def _answer(self, path: str, headers: dict[str, str], body: bytes) -> int | None:
            status = super()._answer(path, headers, body)
            e = json.loads(body)
            if e["uid"] in arrivals["webhook"]:
                raise SystemExit(f"webhook event {e['uid']} arrived twice")
            arrivals["webhook"][e["uid"]] = time.time() - datetime.fromisoformat(e["created_at"]).timestamp()
            return status

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        url = _station(base / "station", args.backbone, args.image_size)
        inbox = base / "in"
        inbox.mkdir()
        broker = Broker(base / "mqtt")
        broker.start()
        sub = TimedSubscriber(broker, "bench/#")
        hook = TimedReceiver(secret=b"bench")
        log = base / "watch.log"
        cmd = [sys.executable, "-m", "zsad", "watch", str(inbox), "--profile", "bench", "--db", url, "--settle", "0.2",
               "--max-batch", str(args.batch), "--log-level", "warning", "--device", "cpu",
               "--sink", f"mqtt://127.0.0.1:{broker.port}/bench/{{label}}",
               "--sink", f"{hook.url}#secret_env=K"]  # fmt: skip
        with log.open("ab") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "K": "bench"})
        try:
            time.sleep(15)  # started, model built
            files = [images[i % len(images)] for i in range(n)]
            spawn_writer(files, inbox, delay=args.interval, names=[f"{i:05d}.jpg" for i in range(n)]).wait()
            end = time.monotonic() + 120
            while min(len(v) for v in arrivals.values()) < n:
                if time.monotonic() > end or proc.poll() is not None:
                    raise SystemExit(
                        f"events missing: {[len(v) for v in arrivals.values()]}; {log.read_text()[-2000:]}"
                    )
                time.sleep(0.2)
            time.sleep(1.0)  # a duplicate would arrive by now (and stop the run)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            sub.close()
            broker.stop()
            hook.close()
        if hook.bad_signatures or len(hook.bodies()) != n or len(sub.received()) != n:
            raise SystemExit("an event was refused, lost or sent twice")
    rows = []
    for kind, got in arrivals.items():
        ms = 1000 * np.array(list(got.values()))
        p50, p99 = np.percentile(ms, [50, 99])
        rows.append(f"| {kind} | {len(got)} | {p50:.1f} | {p99:.1f} | {ms.max():.1f} |")
    lines = [
        f"### Event delivery latency on localhost ({datetime.now():%Y-%m-%d})",
        "",
        f"Command: `.venv/bin/python benchmarks/watch_bench.py delivery --events {n} --interval {args.interval}`",
        "",
        f"`zsad watch` (WinCLIP on `{args.backbone}` at {args.image_size} px, seeded RANDOM weights) with two sinks: "
        "a local mosquitto (QoS 1, a QoS 1 subscriber in this process) and a local webhook receiver checking the "
        f"HMAC; a writer process dropped {n} real Magnetic Tile images, one every {args.interval} s. Latency: an "
        "event's arrival at the subscriber or receiver minus its decision time (the event's `created_at`, taken "
        "just before the decision's transaction commits, after the chunk's maps and overlays are written), so "
        "it includes the commit, the outbox read and the "
        f"delivery. Every event arrived exactly once at each sink (checked). {machine()}.",
        "",
        "| sink | events | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
