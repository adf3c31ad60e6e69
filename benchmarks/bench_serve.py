"""Load benchmark of `zsad serve` on localhost: concurrent single-image clients vs offline `zsad detect`.

For N = 1, 4, 16 concurrent clients (each sends single images, one request at a time, until the run's requests
are done or its time is up): throughput, p50/p99 latency, the mean batch size the server formed (from
/v1/stats), errors and lost requests. In the same run: offline `zsad.runs.detect` on the same images and
backbone (maps and overlays written by both), and the bare backbone forward, both in this process. Then an
overload check: a server with --max-queue 2 under 16 clients must answer 503s, never hang or crash.

Only localhost is contacted; every phase is bounded in requests and seconds and the servers are stopped at the
end. Random weights: speed and plumbing only, never detection quality.

    .venv/bin/python benchmarks/bench_serve.py --images 32 --append-results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from _results import add_results_args, emit
from zsad import client

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(args: list[str], log: Path, wait: float = 600.0):
    port = free_port()
    cmd = [sys.executable, "-m", "zsad", "serve", "--port", str(port), "--log-level", "warning", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            client.wait_until_ready(url, wait, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            raise SystemExit(f"zsad serve did not start: {e}: {log.read_text()[-1500:]}") from None
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()


def load(url: str, images: list[Path], clients: int, requests: int, seconds: float, data: dict) -> dict:
    """``clients`` threads share a counter of ``requests`` single-image requests; stops at ``seconds``."""
    lock = threading.Lock()
    state = {"next": 0}
    lat: list[float] = []
    codes: dict[int, int] = {}
    lost = 0
    stop_at = time.monotonic() + seconds
    blobs = [(p.name, p.read_bytes()) for p in images]

    def worker() -> None:
        nonlocal lost
        with httpx.Client(base_url=url, timeout=max(60.0, seconds)) as c:
            while time.monotonic() < stop_at:
                with lock:
                    i = state["next"]
                    if i >= requests:
                        return
                    state["next"] += 1
                name, blob = blobs[i % len(blobs)]
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/detect", files=[("images", (name, blob, "image/jpeg"))], data=data)
                except httpx.HTTPError:
                    with lock:
                        lost += 1
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200 and len(r.json()["results"]) == 1:
                        lat.append(dt)

    before = httpx.get(url + "/v1/stats").json()["batching"]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    after = httpx.get(url + "/v1/stats").json()["batching"]
    batches = after["batches"] - before["batches"]
    imgs = after["images"] - before["images"]
    ok = len(lat)
    lat.sort()
    return {
        "clients": clients,
        "sent": state["next"],
        "ok": ok,
        "codes": codes,
        "lost": lost + hung,
        "wall_s": wall,
        "throughput": ok / wall if wall else 0.0,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))] if lat else float("nan"),
        "mean_batch": imgs / batches if batches else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="winclip")
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--image-size", type=int, default=240)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=32, help="Magnetic Tile images (and requests per phase)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=600.0, help="time cap per phase")
    ap.add_argument("--skip-overload", action="store_true")
    add_results_args(ap)
    args = ap.parse_args()

    assets = Path(os.environ.get("ZSAD_ASSETS", ROOT.parent / "shared" / "assets")) / "magnetic_tile"
    images = sorted(assets.rglob("Imgs/*.jpg"))[: args.images]
    if len(images) < args.images:
        raise SystemExit(f"need {args.images} Magnetic Tile images under {assets} (set ZSAD_ASSETS)")
    bb_args = ["--backbone", args.backbone, "--pretrained", "none", "--image-size", str(args.image_size)]
    bb_args += ["--device", args.device, "--method", args.method]
    data = {"class_name": "magnetic tile"}
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))

    # offline: the same images, backbone and batch size through zsad.runs.detect (maps + overlays written)
    from zsad import runs
    from zsad.runs.build import BackboneSpec

    spec = BackboneSpec(args.backbone, "none", None, args.image_size, args.device, 0)
    built = runs.MethodSpec(args.method, spec).validate().build()  # built once, like the warm server's model
    runs.detect([str(images[0])], tmp / "warm", method=built, class_name="magnetic tile")
    t0 = time.perf_counter()
    runs.detect(
        [str(p) for p in images], tmp / "offline", method=built, class_name="magnetic tile", batch_size=args.max_batch
    )
    offline = len(images) / (time.perf_counter() - t0)
    bb = built.backbone
    x = torch.randn(args.max_batch, 3, args.image_size, args.image_size, device=bb.device)
    with torch.no_grad():
        bb.encode_image(x, pooled_only=True)
        t0 = time.perf_counter()
        for _ in range(max(1, len(images) // args.max_batch)):
            bb.encode_image(x, pooled_only=True)
    bare = max(1, len(images) // args.max_batch) * args.max_batch / (time.perf_counter() - t0)
    del bb, built

    rows = []
    serve_args = [*bb_args, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    with server(serve_args, tmp / "serve.log") as (url, _):
        httpx.post(url + "/v1/detect", files=[("images", ("w.jpg", images[0].read_bytes()))], data=data, timeout=600)
        for n in [int(c) for c in args.clients.split(",")]:
            rows.append(load(url, images, n, len(images), args.seconds, data))
            print(json.dumps(rows[-1]), flush=True)
    overload = None
    if not args.skip_overload:
        ov_args = [*serve_args, "--max-queue", "2"]
        with server(ov_args, tmp / "overload.log") as (url, proc):
            httpx.post(
                url + "/v1/detect", files=[("images", ("w.jpg", images[0].read_bytes()))], data=data, timeout=600
            )
            overload = load(url, images, 16, len(images), args.seconds, data)
            overload["healthy_after"] = httpx.get(url + "/healthz").status_code == 200 and proc.poll() is None
            print(json.dumps(overload), flush=True)

    n16 = next((r for r in rows if r["clients"] == 16), rows[-1])
    lines = [
        f"### `zsad serve` load test ({time.strftime('%Y-%m-%d')}, `--device {args.device}`)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}`",
        "",
        f"Label: **seeded random weights, {args.backbone} at {args.image_size} px, method {args.method}: speed and "
        "plumbing only, NOT detection quality**. Images: the first "
        f"{len(images)} Magnetic Tile images (sorted paths), one image per request, each phase sends "
        f"{len(images)} requests. Server: `--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}`, overlays "
        "and maps written (no `--out`). Offline: `zsad.runs.detect` on the same images and backbone, batch "
        f"{args.max_batch}, maps and overlays written, in the benchmark process, the model built beforehand "
        "(as the warm server's is). Clients: threads with httpx on the "
        f"same machine. Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, torch threads {torch.get_num_threads()}.",
        "",
        "| clients | requests ok | errors | lost | throughput (img/s) | p50 latency (s) | p99 latency (s) | "
        "mean batch formed | throughput / offline detect |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        errors = sum(v for k, v in r["codes"].items() if k != 200)
        lines.append(
            f"| {r['clients']} | {r['ok']} | {errors} | {r['lost']} | {r['throughput']:.3f} | {r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['mean_batch']:.2f} | {r['throughput'] / offline:.2f} |"
        )
    lines += [
        "",
        f"Offline `zsad detect` throughput: {offline:.3f} img/s; bare backbone forward (batch {args.max_batch}, "
        f"pooled only): {bare:.3f} img/s. Service at 16 clients / offline detect: "
        f"**{n16['throughput'] / offline:.2f}** (goal >= 0.9), lost requests: **{sum(r['lost'] for r in rows)}**.",
    ]
    if overload is not None:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(overload["codes"].items()))
        lines += [
            "",
            f"Overload (`--max-queue 2`, 16 clients, {overload['sent']} requests): answers {codes}; lost (no answer "
            f"or a hung client) {overload['lost']}; healthy afterwards: {overload['healthy_after']}; wall "
            f"{overload['wall_s']:.1f} s.",
        ]
    text = "\n".join(lines) + "\n"
    emit(text, args)


if __name__ == "__main__":
    main()
