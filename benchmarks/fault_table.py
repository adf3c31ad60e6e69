"""The fault table of docs/reliability.md, re-run end to end: each case's exit codes and what its folder holds.

Every case builds its inputs in a temporary folder and runs ``python -m zsad ...`` in a child process, as a user
would (the tiny seeded model: the numbers are counts, never accuracy). Afterwards it counts what the output folder
holds: ``predictions.csv`` rows (and how many are marked ``input_missing``), ``errors.csv`` rows, map files and
overlays, and quotes the ``error:`` line. ``ok`` says whether the case ended as docs/reliability.md promises: one
line and no traceback for a refusal, every input in exactly one row or one error row, nothing foreign touched.

    python benchmarks/fault_table.py                    # every case, a markdown table on stdout
    python benchmarks/fault_table.py --only disk,serve  # cases whose name contains one of these
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------- helpers
@dataclass
class Outcome:
    """One case's result row."""

    case: str
    exits: list[int] = field(default_factory=list)
    rows: int | None = None
    missing: int = 0
    errors: int | None = None
    maps: int | None = None
    overlays: int | None = None
    line: str = ""
    ok: bool = True
    note: str = ""


def img(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def images(folder: Path, n: int, prefix: str = "p", size: tuple[int, int] = (64, 48)) -> list[Path]:
    return [img(folder / f"{prefix}{i:03d}.png", i, size) for i in range(n)]


def empties(folder: Path, n: int, prefix: str = "a") -> list[Path]:
    """``n`` zero-byte files with image names (unreadable inputs), sorted before ``images``' default names."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [folder / f"{prefix}{i:03d}.png" for i in range(n)]
    for p in out:
        p.write_bytes(b"")
    return out


def zsad(*args: Any, env: dict[str, str] | None = None, drop_dac: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "zsad", *map(str, args)]
    if drop_dac and os.geteuid() == 0 and shutil.which("setpriv"):
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=REPO, timeout=600)


def popen(*args: Any) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "zsad", *map(str, args)]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.startswith("error:")]
    return lines[0] if lines else ""


def one_line(res: subprocess.CompletedProcess[str]) -> bool:
    """Exit 2, exactly one ``error:`` line, no traceback."""
    text = res.stderr + res.stdout
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    return res.returncode == 2 and len(errors) == 1 and "Traceback" not in text


def count(o: Outcome, out: Path) -> Outcome:
    rs = csv_rows(out / "predictions.csv")
    o.rows = len(rs) if (out / "predictions.csv").exists() else None
    o.missing = sum(r.get("input_missing") == "1" for r in rs)
    o.errors = len(csv_rows(out / "errors.csv")) if (out / "errors.csv").exists() else 0
    o.maps = len(list((out / "maps").rglob("*.npy"))) if (out / "maps").is_dir() else 0
    o.overlays = len(list((out / "overlays").rglob("*.png"))) if (out / "overlays").is_dir() else 0
    return o


def accounted(out: Path, inputs: list[Path]) -> bool:
    """Each input in exactly one row or one error row, none twice, none foreign."""
    scored = [r["image_path"] for r in csv_rows(out / "predictions.csv")]
    failed = [r["image_path"] for r in csv_rows(out / "errors.csv")]
    both = scored + failed
    return len(both) == len(set(both)) and set(both) == {os.path.abspath(p) for p in inputs}


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".zsad.lock"
    }


def quote(line: str, tmp: Path) -> str:
    text = line.replace(str(tmp), "…").replace("|", "\\|")
    return text if len(text) <= 150 else text[:147] + "..."


# ---------------------------------------------------------------------------------------------- cases
CASES: list[tuple[str, Callable[[Path], Outcome]]] = []


def case(name: str) -> Callable[[Callable[[Path], Outcome]], Callable[[Path], Outcome]]:
    def add(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        CASES.append((name, fn))
        return fn

    return add


@case("masks beside images, then --image-glob")
def _masks(t: Path) -> Outcome:
    o = Outcome("")
    for i in range(3):
        img(t / "mt" / f"exp{i}.jpg", i)
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(t / "mt" / f"exp{i}.png")
    a = zsad("detect", t / "mt", "--out", t / "out", *TINY)
    b = zsad("detect", t / "mt", "--image-glob", "*.jpg", "--out", t / "out", *TINY)
    o.exits, o.line, o.ok = [a.returncode, b.returncode], error_line(a), one_line(a) and b.returncode == 0
    return count(o, t / "out")


@case("two inputs equal in their last path components")
def _same_tail(t: Path) -> Outcome:
    a = img(t / "a" / "line" / "cam" / "img.png", 1)
    b = img(t / "b" / "line" / "cam" / "img.png", 2)
    res = zsad("detect", a, b, "--out", t / "out", *TINY)
    o = count(Outcome("", [res.returncode]), t / "out")
    o.ok = res.returncode == 0 and o.maps == 2 and accounted(t / "out", [a, b])
    return o


@case("a second run into a busy --out")
def _busy(t: Path) -> Outcome:
    ins = images(t / "imgs", 300, size=(160, 120))  # long enough to outlast the second run's start-up
    first = popen("detect", t / "imgs", "--out", t / "out", "--batch-size", "1", *TINY)
    end = time.monotonic() + 120
    while time.monotonic() < end and len(csv_rows(t / "out" / "predictions.csv")) < 2:
        time.sleep(0.05)
    second = zsad("detect", t / "imgs", "--out", t / "out", "--batch-size", "1", *TINY)
    first.communicate(timeout=300)
    o = count(Outcome("", [second.returncode, first.returncode], line=error_line(second)), t / "out")
    o.ok = one_line(second) and first.returncode == 0 and accounted(t / "out", ins)
    return o


@case("rerun on another folder into the same --out")
def _other_folder(t: Path) -> Outcome:
    images(t / "imgs", 3)
    images(t / "other", 2, "o")
    a = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    before = snapshot(t / "out")
    b = zsad("detect", t / "other", "--out", t / "out", *TINY)
    o = count(Outcome("", [a.returncode, b.returncode], line=error_line(b)), t / "out")
    o.ok = one_line(b) and snapshot(t / "out") == before
    return o


@case("the same folder after it gained images")
def _gained(t: Path) -> Outcome:
    ins = images(t / "imgs", 3)
    a = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    ins.append(img(t / "imgs" / "new.png", 9))
    b = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    o = count(Outcome("", [a.returncode, b.returncode], note="resuming: 3 of 4" if "resuming: 3 of 4" in b.stderr
                      else "did not resume"), t / "out")  # fmt: skip
    o.ok = b.returncode == 0 and accounted(t / "out", ins) and "resuming: 3 of 4" in b.stderr
    return o


@case("--out is a file")
def _out_file(t: Path) -> Outcome:
    images(t / "imgs", 1)
    (t / "results.txt").write_text("x")
    res = zsad("detect", t / "imgs", "--out", t / "results.txt", *TINY)
    return Outcome(
        "", [res.returncode], line=error_line(res), ok=one_line(res) and (t / "results.txt").read_text() == "x"
    )


@case("--out not writable")
def _read_only(t: Path) -> Outcome:
    images(t / "imgs", 2)
    ro = t / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    res = zsad("detect", t / "imgs", "--out", ro, *TINY, drop_dac=True)
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res) and os.listdir(ro) == [])


@case("240-character, unicode, comma/quote/newline names")
def _odd_names(t: Path) -> Outcome:
    ins = [img(t / "odd" / n, i) for i, n in enumerate(["x" * 240 + ".png", "défaut_検査.png", 'a,b "c"\nd.png'])]
    res = zsad("detect", t / "odd", "--out", t / "out", *TINY)
    o = count(Outcome("", [res.returncode]), t / "out")
    o.ok = res.returncode == 0 and accounted(t / "out", ins)
    return o


@case("a map that cannot be written (--skip-bad, then rerun)")
def _map_blocked(t: Path) -> Outcome:
    sys.path.insert(0, str(REPO / "src"))
    from zsad.outputs import OutputNames, mark_folder

    ins = images(t / "imgs", 3)
    out = t / "out"
    mark_folder(out, "detect", "detect")
    blocker = out / "maps" / f"{OutputNames().name(ins[1])}.npy"
    blocker.mkdir(parents=True)
    a = zsad("detect", t / "imgs", "--out", out, *TINY)
    b = zsad("detect", t / "imgs", "--out", out, "--skip-bad", *TINY)
    ok_b = accounted(out, ins)
    blocker.rmdir()
    c = zsad("detect", t / "imgs", "--out", out, "--skip-bad", *TINY)
    o = count(Outcome("", [a.returncode, b.returncode, c.returncode], line=error_line(a)), out)
    o.ok = one_line(a) and b.returncode == 1 and ok_b and c.returncode == 0 and accounted(out, ins)
    return o


@case("bad method option (-o window_stride=abc)")
def _bad_option(t: Path) -> Outcome:
    images(t / "imgs", 1)
    res = zsad("detect", t / "imgs", "-o", "window_stride=abc", "--out", t / "out", *TINY)
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res) and not (t / "out").exists())


@case("bad argument (--batch-size 0)")
def _bad_arg(t: Path) -> Outcome:
    images(t / "imgs", 1)
    res = zsad("detect", t / "imgs", "--batch-size", "0", "--out", t / "out", *TINY)
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res) and not (t / "out").exists())


@case("default weights with no network")
def _offline(t: Path) -> Outcome:
    images(t / "imgs", 1)
    res = zsad("detect", t / "imgs", "--out", t / "out", "--device", "cpu", env={"HF_HUB_OFFLINE": "1"})
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res))


@case("--weights that are not weights (a text file)")
def _not_weights(t: Path) -> Outcome:
    images(t / "imgs", 1)
    (t / "w.pt").write_text("not a checkpoint")
    res = zsad("detect", t / "imgs", "--out", t / "out", "--backbone", "zsad-tiny", "--weights", t / "w.pt")
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res))


@case("zero-byte, non-image and truncated files (then --skip-bad)")
def _unreadable(t: Path) -> Outcome:
    good = images(t / "imgs", 3)
    (t / "imgs" / "empty.png").write_bytes(b"")
    (t / "imgs" / "notes.png").write_text("no")
    full = img(t / "full.png", 7, (128, 96)).read_bytes()
    (t / "imgs" / "truncated.png").write_bytes(full[: len(full) // 2])
    a = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    b = zsad("detect", t / "imgs", "--out", t / "out", "--skip-bad", *TINY)
    o = count(Outcome("", [a.returncode, b.returncode], line=error_line(a)), t / "out")
    bad = [t / "imgs" / n for n in ("empty.png", "notes.png", "truncated.png")]
    o.ok = a.returncode == 2 and b.returncode == 1 and accounted(t / "out", good + bad)
    return o


@case("1x1, 16-bit, RGBA, CMYK and grayscale images")
def _modes(t: Path) -> Outcome:
    ins = [img(t / "m" / "one.png", 1, (1, 1))]
    for mode, ext in (("RGBA", "png"), ("CMYK", "jpg"), ("L", "png")):
        p = t / "m" / f"{mode}.{ext}"
        Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)).convert(mode).save(p)
        ins.append(p)
    wide = t / "m" / "sixteen.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(wide)
    ins.append(wide)
    res = zsad("detect", t / "m", "--out", t / "out", *TINY)
    o = count(Outcome("", [res.returncode]), t / "out")
    o.ok = res.returncode == 0 and accounted(t / "out", ins)
    return o


@case("an image with permissions 000 (then --skip-bad)")
def _perm000(t: Path) -> Outcome:
    ins = images(t / "imgs", 3)
    ins[1].chmod(0)
    t.chmod(0o755)
    (t / "imgs").chmod(0o755)
    a = zsad("detect", t / "imgs", "--out", t / "out", *TINY, drop_dac=True)
    b = zsad("detect", t / "imgs", "--out", t / "out", "--skip-bad", *TINY, drop_dac=True)
    o = count(Outcome("", [a.returncode, b.returncode], line=error_line(a)), t / "out")
    o.ok = one_line(a) and b.returncode == 1 and accounted(t / "out", ins)
    return o


@case("a 4500x3000 image (maps capped at 4096)")
def _large(t: Path) -> Outcome:
    p = t / "big" / "wide.png"
    p.parent.mkdir()
    grad = np.linspace(0, 255, 4500, dtype=np.float32)[None, :, None].repeat(3000, 0).repeat(3, 2)
    Image.fromarray(grad.astype(np.uint8)).save(p)
    res = zsad("detect", p, "--out", t / "out", *TINY)
    o = count(Outcome("", [res.returncode]), t / "out")
    rs = csv_rows(t / "out" / "predictions.csv")
    o.note = f"map_size {rs[0]['map_size']}" if rs else ""
    o.ok = res.returncode == 0 and bool(rs) and rs[0]["map_size"] == "4096x2731"
    return o


@case("missing path, empty folder, no input")
def _missing(t: Path) -> Outcome:
    (t / "empty").mkdir()
    runs = [zsad("detect", t / "nope", "--out", t / "out", *TINY),
            zsad("detect", t / "empty", "--out", t / "out", *TINY),
            zsad("detect", "--out", t / "out", *TINY)]  # fmt: skip
    return Outcome("", [r.returncode for r in runs], line=error_line(runs[0]), ok=all(map(one_line, runs)))


@case("eval: a mask of another aspect ratio")
def _mask_ratio(t: Path) -> Outcome:
    images(t / "set" / "good", 2)
    img(t / "set" / "bad" / "b0.png", 7)
    (t / "set" / "masks").mkdir()
    Image.fromarray(np.zeros((10, 50), np.uint8)).save(t / "set" / "masks" / "b0.png")
    res = zsad("eval", "--dataset", "folder", "--root", t / "set", "--normal-dir", "good", "--abnormal-dir", "bad",
               "--mask-dir", "masks", "--out", t / "out", *TINY)  # fmt: skip
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res))


def _interrupt(t: Path, sig: signal.Signals) -> Outcome:
    ins = images(t / "imgs", 40, size=(56, 40))
    args = ["detect", t / "imgs", "--out", t / "out", "--batch-size", "1", *TINY]
    proc = popen(*args)
    end = time.monotonic() + 120
    while time.monotonic() < end and len(csv_rows(t / "out" / "predictions.csv")) < 5:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    kept = len(csv_rows(t / "out" / "predictions.csv"))
    res = zsad(*args)
    o = count(Outcome("", [proc.returncode, res.returncode], note=f"{kept} rows kept at the signal"), t / "out")
    o.ok = res.returncode == 0 and f"resuming: {kept} of 40" in res.stderr and accounted(t / "out", ins)
    return o


@case("SIGKILL mid-run, then the same command")
def _kill(t: Path) -> Outcome:
    return _interrupt(t, signal.SIGKILL)


@case("Ctrl-C mid-run, then the same command")
def _ctrl_c(t: Path) -> Outcome:
    return _interrupt(t, signal.SIGINT)


@case("torn, duplicate and map-less rows from a crash")
def _torn(t: Path) -> Outcome:
    ins = images(t / "imgs", 3)
    zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    path = t / "out" / "predictions.csv"
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    (t / "out" / csv_rows(path)[2]["anomaly_map_path"]).unlink()
    path.write_text(text + lines[1] + lines[1] + lines[2][:30])
    res = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    o = count(Outcome("", [res.returncode], note="repaired" if "dropped" in res.stderr else ""), t / "out")
    o.ok = res.returncode == 0 and accounted(t / "out", ins) and o.maps == 3
    return o


# ---------------------------------------------------------------------------------------------- issue 25
def _train_rwda(out: Path) -> subprocess.CompletedProcess[str]:
    return zsad("train", "--method", "rwda", "-o", "n_pairs=10", "--out", out, *TINY)


@case("25.1 detect --out a zsad train checkpoint")
def _out_ckpt(t: Path) -> Outcome:
    images(t / "imgs", 3)
    _train_rwda(t / "ckpt")
    before = snapshot(t / "ckpt")
    res = zsad("detect", t / "imgs", "--out", t / "ckpt", *TINY)
    load = zsad("detect", t / "imgs", "--method", "rwda", "--checkpoint", t / "ckpt", "--out", t / "o", *TINY)
    o = Outcome("", [res.returncode, load.returncode], line=error_line(res), note="checkpoint still loads")
    o.ok = one_line(res) and snapshot(t / "ckpt") == before and load.returncode == 0
    return o


@case("25.1 eval --out a zsad train checkpoint")
def _eval_ckpt(t: Path) -> Outcome:
    images(t / "imgs", 3)
    (t / "labels.csv").write_text("id,label\np000,0\np001,1\np002,0\n")
    _train_rwda(t / "ckpt")
    before = snapshot(t / "ckpt")
    res = zsad("eval", "--dataset", "folder", "--root", t, "--image-dir", "imgs", "--labels-csv", "labels.csv",
               "--out", t / "ckpt", *TINY)  # fmt: skip
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res) and snapshot(t / "ckpt") == before)


@case("25.1 train --out a zsad detect folder")
def _train_into_detect(t: Path) -> Outcome:
    images(t / "imgs", 3)
    zsad("detect", t / "imgs", "--out", t / "run", *TINY)
    before = snapshot(t / "run")
    res = _train_rwda(t / "run")
    o = count(Outcome("", [res.returncode], line=error_line(res)), t / "run")
    o.ok = one_line(res) and snapshot(t / "run") == before
    return o


@case("25.1 detect --out a folder of the user's own files")
def _user_folder(t: Path) -> Outcome:
    images(t / "imgs", 3)
    (t / "mine").mkdir()
    (t / "mine" / "manifest.json").write_text('{"mine": 1}')
    before = snapshot(t / "mine")
    res = zsad("detect", t / "imgs", "--out", t / "mine", *TINY)
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res) and snapshot(t / "mine") == before)


@case("25.1 --out equal to the input folder")
def _out_is_input(t: Path) -> Outcome:
    images(t / "imgs", 3)
    before = snapshot(t / "imgs")
    res = zsad("detect", t / "imgs", "--out", t / "imgs", *TINY)
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res) and snapshot(t / "imgs") == before)


@case("25.1 --recursive with --out inside the inputs, run twice")
def _out_inside(t: Path) -> Outcome:
    ins = images(t / "line" / "cam", 20)
    a = zsad("detect", t / "line", "--recursive", "--out", t / "line" / "results", *TINY)
    b = zsad("detect", t / "line", "--recursive", "--out", t / "line" / "results", *TINY)
    o = count(Outcome("", [a.returncode, b.returncode]), t / "line" / "results")
    o.ok = b.returncode == 0 and accounted(t / "line" / "results", ins)
    return o


@case("25.2 --skip-bad: 8 zero-byte + 8 good files, batch 8")
def _all_bad_batch(t: Path) -> Outcome:
    bad = empties(t / "imgs", 8)
    good = images(t / "imgs", 8, "b")
    res = zsad("detect", t / "imgs", "--out", t / "out", "--skip-bad", "--batch-size", "8", *TINY)
    o = count(Outcome("", [res.returncode]), t / "out")
    m = json.loads((t / "out" / "manifest.json").read_text())
    o.note = (
        f"manifest {m['num_images']} rows / {m['num_failed']} failed; printed: "
        + next((ln.strip() for ln in res.stderr.splitlines() if "images scored" in ln), "")[:60]
    )
    o.ok = res.returncode == 1 and accounted(t / "out", bad + good) and (m["num_images"], m["num_failed"]) == (8, 8)
    return o


@case("25.2 --skip-bad: every file unreadable")
def _all_bad(t: Path) -> Outcome:
    bad = empties(t / "imgs", 16)
    res = zsad("detect", t / "imgs", "--out", t / "out", "--skip-bad", "--batch-size", "8", *TINY)
    o = count(Outcome("", [res.returncode], line=error_line(res)), t / "out")
    m = json.loads((t / "out" / "manifest.json").read_text()) if (t / "out" / "manifest.json").exists() else {}
    o.ok = one_line(res) and accounted(t / "out", bad) and m.get("num_failed") == 16
    return o


@case("25.2 --skip-bad, set-level (dual-image): a batch of only unreadable files")
def _all_bad_set(t: Path) -> Outcome:
    bad = empties(t / "imgs", 4)
    good = images(t / "imgs", 4, "b")
    res = zsad("detect", t / "imgs", "--method", "dual-image", "--out", t / "out", "--skip-bad", "--batch-size", "4",
               *TINY)  # fmt: skip
    o = count(Outcome("", [res.returncode]), t / "out")
    o.ok = res.returncode == 1 and accounted(t / "out", bad + good)
    return o


@case("25.4 a folder that lost 5 of 20 images, rerun (and --skip-bad)")
def _lost(t: Path) -> Outcome:
    ins = images(t / "imgs", 20)
    a = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    for p in ins[:5]:
        p.unlink()
    b = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    c = zsad("detect", t / "imgs", "--out", t / "out", "--skip-bad", *TINY)
    o = count(Outcome("", [a.returncode, b.returncode, c.returncode]), t / "out")
    said = next((ln.strip() for ln in c.stderr.splitlines() if "images scored" in ln), "")
    o.note = said[: said.find(";")] if ";" in said else said[:40]
    o.ok = c.returncode == 0 and o.rows == 20 and o.missing == 5 and "15 images scored" in said
    return o


@case("25.4 10 of 40 files deleted during a --skip-bad run")
def _deleted_during(t: Path) -> Outcome:
    ins = images(t / "imgs", 40, size=(56, 40))
    proc = popen("detect", t / "imgs", "--out", t / "out", "--batch-size", "1", "--skip-bad", *TINY)
    end = time.monotonic() + 120
    while time.monotonic() < end and len(csv_rows(t / "out" / "predictions.csv")) < 3:
        time.sleep(0.02)
    for p in ins[::4]:
        p.unlink()
    proc.communicate(timeout=300)
    o = count(Outcome("", [proc.returncode]), t / "out")
    o.ok = accounted(t / "out", ins)
    return o


@case("25.5 detect on one image")
def _one(t: Path) -> Outcome:
    p = img(t / "one.png", 1)
    res = zsad("detect", p, "--out", t / "out", *TINY)
    o = count(Outcome("", [res.returncode]), t / "out")
    r = csv_rows(t / "out" / "predictions.csv")
    o.note = f"pred_label {r[0]['pred_label']!r}, threshold_source {r[0]['threshold_source']}" if r else ""
    o.ok = res.returncode == 0 and bool(r) and r[0]["pred_label"] == "" and "needs at least 3" in res.stderr
    return o


@case("25.5 dual-image on a set of 1 image")
def _set_of_one(t: Path) -> Outcome:
    p = img(t / "one.png", 1)
    res = zsad("detect", p, "--method", "dual-image", "--out", t / "out", *TINY)
    o = count(Outcome("", [res.returncode], note="message printed" if "a set of 1 image" in res.stderr else ""),
              t / "out")  # fmt: skip
    o.ok = res.returncode == 0 and "a set of 1 image" in res.stderr
    return o


@case("25.9 --device cuda on a machine without a GPU")
def _cuda(t: Path) -> Outcome:
    p = img(t / "one.png", 1)
    res = zsad("detect", p, "--out", t / "out", *TINY[:-2], "--device", "cuda")
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res))


@case("25.9 --device tpu")
def _tpu(t: Path) -> Outcome:
    p = img(t / "one.png", 1)
    res = zsad("detect", p, "--out", t / "out", *TINY[:-2], "--device", "tpu")
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res))


@case("25.9 a full disk (160 KiB tmpfs), then --skip-bad")
def _disk(t: Path) -> Outcome:
    ins = images(t / "imgs", 24, size=(120, 90))
    disk = t / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        return Outcome("", ok=True, note="skipped: cannot mount a tmpfs here")
    try:
        a = zsad("detect", t / "imgs", "--out", disk / "out", *TINY)
        shutil.rmtree(disk / "out")
        b = zsad("detect", t / "imgs", "--out", disk / "out", "--skip-bad", *TINY)
        o = count(Outcome("", [a.returncode, b.returncode], line=error_line(a)), disk / "out")
        scored = {r["image_path"] for r in csv_rows(disk / "out" / "predictions.csv")}
        failed = {r["image_path"] for r in csv_rows(disk / "out" / "errors.csv")}
        o.ok = one_line(a) and "No space left" in o.line and not scored & failed and "Traceback" not in b.stderr
        o.ok = o.ok and (scored | failed) <= {str(p) for p in ins}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    return o


@case("25.9 an overlay that cannot be written (--skip-bad)")
def _overlay_blocked(t: Path) -> Outcome:
    sys.path.insert(0, str(REPO / "src"))
    from zsad.outputs import OutputNames

    ins = images(t / "imgs", 3)
    zsad("detect", t / "imgs", "--out", t / "out", "--no-overlays", *TINY)
    (t / "out" / "overlays" / f"{OutputNames().name(ins[1])}.png").mkdir(parents=True)
    res = zsad("detect", t / "imgs", "--out", t / "out", "--skip-bad", *TINY)
    o = count(Outcome("", [res.returncode], note="1 overlay error in the manifest"), t / "out")
    m = json.loads((t / "out" / "manifest.json").read_text())
    o.ok = res.returncode == 1 and accounted(t / "out", ins) and len(m.get("overlay_errors", [])) == 1
    return o


@case("25.10 --k-shot without --reference-dir")
def _k_shot(t: Path) -> Outcome:
    p = img(t / "one.png", 1)
    res = zsad("detect", p, "--k-shot", "4", "--out", t / "out", *TINY)
    return Outcome("", [res.returncode], line=error_line(res), ok=one_line(res))


@case("25.10 a folder with .txt/.csv files and a dangling symlink")
def _passed_over(t: Path) -> Outcome:
    ins = images(t / "imgs", 3)
    (t / "imgs" / "notes.txt").write_text("x")
    (t / "imgs" / "a.csv").write_text("x")
    (t / "imgs" / "gone.png").symlink_to(t / "nowhere.png")
    res = zsad("detect", t / "imgs", "--out", t / "out", *TINY)
    said = next((ln.strip() for ln in res.stderr.splitlines() if ln.startswith("passed over")), "")
    o = count(Outcome("", [res.returncode], note=said[:110]), t / "out")
    o.ok = res.returncode == 0 and accounted(t / "out", ins) and "1 dangling symlink" in said
    return o


@case("25.11 eval category '=HYPERLINK(...)' (CSV formula)")
def _formula(t: Path) -> Outcome:
    images(t / "set", 3)
    (t / "set" / "labels.csv").write_text("id,label\np000,0\np001,1\np002,0\n")
    cat = '=HYPERLINK("evil.example","open")'
    args = ["eval", "--dataset", "folder", "--root", t / "set", "--image-dir", ".", "--labels-csv", t / "set" /
            "labels.csv", "--category", cat, "--out", t / "out", "--overlays", "0", *TINY]  # fmt: skip
    a, b = zsad(*args), zsad(*args)
    cells = {r["category"] for r in csv_rows(t / "out" / "predictions.csv")}
    o = count(Outcome("", [a.returncode, b.returncode], note=f"cell {next(iter(cells), '')[:12]}…"), t / "out")
    o.errors = None
    o.ok = b.returncode == 0 and cells == {"'" + cat} and o.rows == 3
    return o


@case("25.13 a truncated file found while scoring")
def _mid_run(t: Path) -> Outcome:
    ins = images(t / "imgs", 4)
    full = ins[3].read_bytes()
    ins[3].write_bytes(full[: len(full) // 2])
    a = zsad("detect", t / "imgs", "--out", t / "out", "--batch-size", "1", *TINY)
    kept = len(csv_rows(t / "out" / "predictions.csv"))
    ins[3].write_bytes(full)
    b = zsad("detect", t / "imgs", "--out", t / "out", "--batch-size", "1", *TINY)
    o = count(Outcome("", [a.returncode, b.returncode], line=error_line(a), note=f"{kept} rows kept"), t / "out")
    o.ok = one_line(a) and "kept" in o.line and b.returncode == 0 and accounted(t / "out", ins)
    return o


# ---------------------------------------------------------------------------------------------- issue 25: serve
@contextmanager
def serving(t: Path, *args: Any, name: str = "serve") -> Iterator[str]:
    """``zsad serve ARGS`` on a free port until the block ends (Ctrl-C); yields its URL. The log is ``t/name.log``."""
    sys.path.insert(0, str(REPO / "src"))
    from zsad import client

    port = free_port()
    log = t / f"{name}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "zsad", "serve", "--port", str(port), *map(str, args)],
                                stdout=f, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        client.wait_until_ready(url, 120, alive=lambda: proc.poll() is None)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


def serve_start(t: Path, *args: Any) -> subprocess.CompletedProcess[str]:
    """A ``zsad serve`` expected to refuse at start (one line, exit 2) within a minute."""
    return subprocess.run([sys.executable, "-m", "zsad", "serve", "--port", str(free_port()), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip


@case("25.3 serve restarted on the same --out: same settings, then another image size")
def _serve_restart(t: Path) -> Outcome:
    from zsad import client

    ins = images(t / "imgs", 4)
    out = t / "out"
    for i in range(2):
        with serving(t, "--out", out, *TINY, name=f"s{i}") as url:
            client.detect(url, ins[2 * i : 2 * i + 2], class_name=f"part{i}")
    other = serve_start(t, "--out", out, *TINY[:-4], "--image-size", "128", "--device", "cpu")
    m = json.loads((out / "manifest.json").read_text())
    ids = {r["model_id"] for r in csv_rows(out / "predictions.csv")}
    o = count(Outcome("", [0, 0, other.returncode], line=error_line(other)), out)
    o.ok = one_line(other) and ids <= set(m["models"]) and len(m.get("sessions", [])) == 2
    o.note = f"{len(ids)} model ids in the rows, all described; {len(m.get('sessions', []))} sessions"
    o.line = o.line or o.note
    return o


@case("25.5 / 25.12 serve: 1 image, a 5,000-character class name, skip_bad, a formula file name")
def _serve_requests(t: Path) -> Outcome:
    import httpx

    from zsad import client

    good = images(t / "imgs", 2)
    bad = t / "imgs" / "empty.png"
    bad.write_bytes(b"")
    out = t / "out"
    notes = []
    with serving(t, "--out", out, *TINY) as url:
        one = client.detect(url, [good[0]])["results"][0]
        notes.append(f"1 image: pred_label {one['pred_label']}, {one['threshold_source']}")
        r = httpx.post(f"{url}/v1/detect", files=[("images", ("a.png", good[0].read_bytes(), "image/png"))],
                       data={"class_name": "x" * 5000}, timeout=60)  # fmt: skip
        notes.append(f"long class name: {r.status_code}")
        strict = httpx.post(f"{url}/v1/detect", files=[("images", (p.name, p.read_bytes(), "image/png"))
                                                       for p in (*good, bad)], timeout=60)  # fmt: skip
        skipped = client.detect(url, [*good, bad], skip_bad=True)
        notes.append(f"unreadable: {strict.status_code}, skip_bad {len(skipped['results'])}+{len(skipped['errors'])}")
        client.detect(url, [("=HYPERLINK('http://x').png", good[1].read_bytes())])
    cells = [r["file_name"] for r in csv_rows(out / "predictions.csv") if "HYPERLINK" in r["file_name"]]
    notes.append(f"cell {cells[0][:12]}…" if cells else "no formula row")
    o = count(Outcome("", [0], note="; ".join(notes)), out)
    o.ok = (one["pred_label"] is None and r.status_code == 422 and strict.status_code == 422
            and len(skipped["errors"]) == 1 and cells == ["'=HYPERLINK('http://x').png"])  # fmt: skip
    return o


@case("25.9 / 25.10 serve --device cuda without a GPU; serve --pretrained none says so")
def _serve_start(t: Path) -> Outcome:
    cuda = serve_start(t, *TINY[:-2], "--device", "cuda")
    with serving(t, *TINY, name="random"):
        pass
    said = any("SEEDED RANDOM" in ln for ln in (t / "random.log").read_text().splitlines())
    o = Outcome("", [cuda.returncode, 0], line=error_line(cuda), note=f"random-weights line printed: {said}")
    o.ok = one_line(cuda) and said
    return o


# ---------------------------------------------------------------------------------------------- issue 25: Ray
@case("25.8 Ray maps vs local maps (12 real Magnetic Tile images)")
def _ray_maps(t: Path) -> Outcome:
    sys.path.insert(0, str(REPO / "src"))
    from zsad.runs import load_map, read_predictions

    assets = Path(os.environ.get("ZSAD_ASSETS", REPO.parent / "shared" / "assets"))
    src = sorted((assets / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))[:8]
    src += sorted((assets / "magnetic_tile" / "MT_Crack" / "Imgs").glob("*.jpg"))[:4]
    if not src:
        return Outcome("", note="skipped: ZSAD_ASSETS not found")
    (t / "imgs").mkdir()
    for f in src:
        (t / "imgs" / f.name).symlink_to(f)
    a = zsad("detect", t / "imgs", "--out", t / "local", "--no-overlays", *TINY)
    b = zsad("detect", t / "imgs", "--out", t / "ray", "--engine", "ray", "--actors", "1", *TINY)
    worst = 0.0
    for r in read_predictions(t / "local"):
        here = np.load(t / "local" / r["anomaly_map_path"])
        there = load_map(t / "ray", r["image_path"])
        worst = max(worst, float(np.abs(here - there).max() / max(float(here.max() - here.min()), 1e-12)))
    o = count(Outcome("", [a.returncode, b.returncode], note=f"worst |ray - local| = {worst:.1e} of the map's range"),
              t / "ray")  # fmt: skip
    o.ok = b.returncode == 0 and worst <= 1e-4
    return o


@case("25.2 / 25.5 Ray: 8 zero-byte + 8 good files (batch 8); musc on a group of 1")
def _ray_counts(t: Path) -> Outcome:
    bad = empties(t / "imgs", 8)
    good = images(t / "imgs", 8, "b")
    a = zsad("detect", t / "imgs", "--out", t / "out", "--engine", "ray", "--batch-size", "8", *TINY)
    img(t / "sets" / "one" / "p.png", 1)
    images(t / "sets" / "three", 3)
    b = zsad("detect", t / "sets", "--recursive", "--method", "musc", "--group-by", "parent", "--engine", "ray",
             "--out", t / "musc", *TINY)  # fmt: skip
    m = json.loads((t / "out" / "manifest.json").read_text())
    said = [ln for ln in b.stderr.splitlines() if "a set of 1 image" in ln]
    o = count(Outcome("", [a.returncode, b.returncode]), t / "out")
    o.maps = None  # maps live in Parquet shards
    o.note = f"manifest {m['num_images']}/{m['num_failed']}; musc group of 1: note printed {len(said)}x"
    o.ok = a.returncode == 1 and accounted(t / "out", bad + good) and (m["num_images"], m["num_failed"]) == (8, 8)
    o.ok = o.ok and b.returncode == 0 and len(said) == 1
    return o


# ---------------------------------------------------------------------------------------------- issue 25: export
@case("25.7 detect --model vs torch detect with --reference-dir: pixel threshold")
def _pixel_threshold(t: Path) -> Outcome:
    ins = images(t / "imgs", 6)
    images(t / "refs", 5, "r")
    common = ["--method", "winclip", "--class-name", "part", "--reference-dir", t / "refs", "--k-shot", "2", *TINY]
    e = zsad("export", "--out", t / "model", *common)
    a = zsad("detect", t / "imgs", "--out", t / "torch", "--no-overlays", *common)
    b = zsad("detect", t / "imgs", "--model", t / "model", "--out", t / "runtime")
    ra, rb = csv_rows(t / "torch" / "predictions.csv"), csv_rows(t / "runtime" / "predictions.csv")
    pa = (ra[0]["pixel_threshold"], ra[0]["pixel_threshold_source"]) if ra else None
    pb = (rb[0]["pixel_threshold"], rb[0]["pixel_threshold_source"]) if rb else None
    o = count(Outcome("", [e.returncode, a.returncode, b.returncode], note=f"torch {pa}, runtime {pb}"), t / "runtime")
    o.ok = b.returncode == 0 and pa is not None and pa == pb and accounted(t / "runtime", ins)
    return o


@case("25.9 / 25.1 / 25.10 export: a hand-edited threshold, --out a detect folder, --k-shot alone")
def _export_faults(t: Path) -> Outcome:
    images(t / "imgs", 3)
    e = zsad("export", "--out", t / "model", "--method", "sdp", "--class-name", "part", *TINY)
    m = json.loads((t / "model" / "manifest.json").read_text())
    m["threshold"] = {"value": "high", "source": "manual"}
    (t / "model" / "manifest.json").write_text(json.dumps(m))
    edited = zsad("detect", t / "imgs", "--model", t / "model", "--out", t / "o1")
    zsad("detect", t / "imgs", "--out", t / "run", "--no-overlays", *TINY)
    before = snapshot(t / "run")
    into = zsad("export", "--out", t / "run", "--method", "sdp", "--class-name", "part", *TINY)
    k = zsad("export", "--out", t / "m2", "--method", "winclip", "--k-shot", "2", *TINY)
    o = Outcome("", [e.returncode, edited.returncode, into.returncode, k.returncode], line=error_line(edited))
    o.note = f"{error_line(into)[:60]} | {error_line(k)[:60]}"
    o.ok = one_line(edited) and one_line(into) and snapshot(t / "run") == before and one_line(k)
    return o


@case("25.9 without torch: zsad --help, zsad eval")
def _no_torch(t: Path) -> Outcome:
    prelude = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from zsad.cli.entry import main\n"
        "main(sys.argv[1:])\n"
    )
    runs = [subprocess.run([sys.executable, "-c", prelude, *a], capture_output=True, text=True, cwd=REPO, timeout=120)
            for a in (["--help"], ["eval", "--dataset", "mvtec"])]  # fmt: skip
    o = Outcome("", [r.returncode for r in runs], line=error_line(runs[1]))
    o.ok = runs[0].returncode == 0 and "--model" in runs[0].stdout + runs[0].stderr and one_line(runs[1])
    return o


# ---------------------------------------------------------------------------------------------- issue 25: tables
@case("25.6 zsad benchmark with random weights: what the table says")
def _bench_table(t: Path) -> Outcome:
    base = t / "data" / "MPDD" / "metal_plate"
    images(base / "train" / "good", 2)
    images(base / "test" / "good", 2, "g")
    for p in images(base / "test" / "defect", 2, "d"):
        mask = np.zeros((48, 64), np.uint8)
        mask[10:20, 10:20] = 255
        (base / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(base / "ground_truth" / "defect" / f"{p.stem}_mask.png")
    res = zsad("benchmark", "--suite", "industrial", "--root", t / "data", "--dataset", "mpdd", "--out", t / "bench",
               *TINY)  # fmt: skip
    md = (t / "bench" / "table.md").read_text() if (t / "bench" / "table.md").exists() else ""
    js = json.loads((t / "bench" / "table.json").read_text()) if (t / "bench" / "table.json").exists() else {}
    svg = (t / "bench" / "table.svg").read_text() if (t / "bench" / "table.svg").exists() else ""
    o = Outcome("", [res.returncode], note=f"md RANDOM: {'RANDOM WEIGHTS' in md}, json random_weights: "
                f"{js.get('random_weights')}, svg RANDOM: {'RANDOM WEIGHTS' in svg}")  # fmt: skip
    o.ok = res.returncode == 0 and "RANDOM WEIGHTS" in md and "zsad-tiny" in md and js.get("random_weights") is True
    o.ok = o.ok and "RANDOM WEIGHTS" in svg
    return o


@case("25.13 zsad eval --checkpoint on a copy of the training folder")
def _leakage(t: Path) -> Outcome:
    zsad("samples", t / "train", "--n-normal", "3", "--n-anomalous", "3", "--size", "64")
    folder = ["--dataset", "folder", "--normal-dir", "good", "--abnormal-dir", "defect", "--mask-dir", "ground_truth"]
    tr = zsad("train", "--method", "sdp+", *folder, "--root", t / "train", "--epochs", "1", "--batch-size", "6",
              "--out", t / "ckpt", *TINY)  # fmt: skip
    shutil.copytree(t / "train", t / "copy")
    ev = zsad("eval", *folder, "--root", t / "copy", "--method", "sdp+", "--checkpoint", t / "ckpt", "--out",
              t / "out", *TINY)  # fmt: skip
    o = Outcome("", [tr.returncode, ev.returncode], line=error_line(ev))
    o.ok = tr.returncode == 0 and one_line(ev) and "copies" in o.line
    return o


# ---------------------------------------------------------------------------------------------- main
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated substrings of case names")
    args = ap.parse_args()
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    print("| case | exit codes | rows (input_missing) | error rows | maps | overlays | ok | line or note |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for name, fn in CASES:
        if wanted and not any(w in name.lower() for w in wanted):
            continue
        with tempfile.TemporaryDirectory(prefix="zsad-fault-") as tmp:
            t = Path(tmp)
            try:
                o = fn(t)
            except Exception as e:  # noqa: BLE001 - a broken case is reported, the table goes on
                o = Outcome("", ok=False, note=f"case crashed: {type(e).__name__}: {e}")
            o.case = name

            def cell(v: int | None) -> str:
                return "-" if v is None else str(v)

            rows = cell(o.rows) + (f" ({o.missing})" if o.missing else "")
            text = quote(o.line or o.note, t)
            print(f"| {name} | {' → '.join(map(str, o.exits))} | {rows} | {cell(o.errors)} | {cell(o.maps)} | "
                  f"{cell(o.overlays)} | {'yes' if o.ok else 'NO'} | {text} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
