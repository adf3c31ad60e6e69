"""Methods side by side on the real Magnetic Tile images, through the CLI, with a trained method's train/test split.

Split (deterministic: file names sorted):
- train (auxiliary data for trained methods): every MT_Blowhole image (with masks) + MT_Free images 41..60;
- test: MT_Free images 1..40 (normal) + every MT_Crack image (masks beside the images).
No image is in both; the leakage guard of ``zsad eval`` would refuse otherwise.

The subsets are folders of symbolic links under ``--work`` (nothing is copied). Then it runs
``zsad train --method M`` on the train folder for every trainable method asked for (sdp+, adaclip) and one
``zsad eval`` with every ``--method`` (and every checkpoint) on the test folder, and prints (or appends to
benchmarks/RESULTS.md) the comparison table with the commands and wall times. ``--epochs`` / ``--batch-size`` take a
default and ``METHOD=VALUE`` overrides, e.g. ``--epochs 5 --epochs adaclip=2``.

With ``--pretrained none`` (the default here: no pretrained weights can be downloaded on our machines) the numbers
prove the pipeline on real files only; they are NOT detection quality.

    python benchmarks/asset_methods.py --methods winclip sdp sdp+ adaclip --epochs adaclip=2 --append-results
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zsad.methods import get_method_class

REPO = Path(__file__).resolve().parents[1]


def link_subset(src: Path, dst: Path, names: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        for f in (src / n, (src / n).with_suffix(".png")):
            link = dst / f.name
            if f.exists() and not link.exists():
                link.symlink_to(f.resolve())


def build_split(assets: Path, work: Path, n_test_free: int, n_train_free: int) -> tuple[Path, Path]:
    mt = assets / "magnetic_tile"
    free = sorted(p.name for p in (mt / "MT_Free" / "Imgs").glob("*.jpg"))
    test, train = work / "test", work / "train"
    link_subset(mt / "MT_Free" / "Imgs", test / "good", free[:n_test_free])
    link_subset(
        mt / "MT_Crack" / "Imgs", test / "crack", sorted(p.name for p in (mt / "MT_Crack" / "Imgs").glob("*.jpg"))
    )
    link_subset(mt / "MT_Free" / "Imgs", train / "good", free[n_test_free : n_test_free + n_train_free])
    blow = sorted(p.name for p in (mt / "MT_Blowhole" / "Imgs").glob("*.jpg"))
    link_subset(mt / "MT_Blowhole" / "Imgs", train / "blowhole", blow)
    return train, test


def weights_line(backbone: str, pretrained: str, size: str = "") -> str:
    """The weights sentence every asset table carries: random weights are labelled as such."""
    where = f" at {size} px" if size else ""
    random_w = " (SEEDED RANDOM, seed 0): **plumbing only, NOT detection quality**."
    return f"Weights: `{backbone}` pretrained=`{pretrained}`{where}" + (random_w if pretrained == "none" else ".")


def publish_section(lines: list[str], append: bool) -> None:
    """Print a results section; append it to benchmarks/RESULTS.md when asked."""
    text = "\n".join(lines) + "\n"
    print(text)
    if append:
        with (REPO / "benchmarks" / "RESULTS.md").open("a") as f:
            f.write(text)


def per_method(values: list[str], method: str, default: str) -> str:
    """The value for ``method`` from ``["5", "adaclip=2"]``-style lists: its own ``METHOD=V`` else the plain one."""
    plain = [v for v in values if "=" not in v]
    own = [v.split("=", 1)[1] for v in values if v.split("=", 1)[0] == method]
    return (own or plain or [default])[-1]


def run(cmd: list[str], log: list[str]) -> float:
    print("$", shlex.join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    dt = time.perf_counter() - t
    shown = ["python" if c == sys.executable else c for c in cmd]
    log.append(f"- `{shlex.join(shown)}` ({dt:.0f} s)")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("ZSAD_ASSETS", REPO.parent / "shared/assets")))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "zsad-asset-methods")
    ap.add_argument("--methods", nargs="+", default=["winclip", "sdp", "sdp+"])
    ap.add_argument("--backbone", default="ViT-B-16-plus-240")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--image-size", default="240")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-test-free", type=int, default=40)
    ap.add_argument("--n-train-free", type=int, default=20)
    ap.add_argument("--epochs", action="append", default=[], help="N or METHOD=N (default 5)")
    ap.add_argument("--batch-size", action="append", default=[], help="N or METHOD=N (default 8)")
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args()

    train, test = build_split(args.assets, args.work, args.n_test_free, args.n_train_free)
    zsad = [sys.executable, "-m", "zsad"]
    bb = ["--backbone", args.backbone, "--pretrained", args.pretrained, "--image-size", args.image_size]
    bb += ["--device", args.device]
    folder = ["--dataset", "folder", "--normal-dir", "good", "--image-glob", "*.jpg", "--class-name", "magnetic tile"]
    log: list[str] = []
    trained = [m for m in args.methods if get_method_class(m).trainable]
    recipe = {m: (per_method(args.epochs, m, "5"), per_method(args.batch_size, m, "8")) for m in trained}
    ckpts = {m: args.work / f"{m.replace('+', '_plus')}_ckpt" for m in trained}
    for m in trained:
        run(
            [*zsad, "train", "--method", m, "--root", str(train), *folder, "--abnormal-dir", "blowhole"]
            + ["--mask-dir", "blowhole", "--epochs", recipe[m][0], "--batch-size", recipe[m][1]]
            + ["--out", str(ckpts[m]), *bb],
            log,
        )
    out = args.work / "eval"
    cmd = [*zsad, "eval", "--root", str(test), *folder, "--abnormal-dir", "crack", "--mask-dir", "crack"]
    cmd += [x for m in args.methods for x in ("--method", m)] + ["--out", str(out), "--overlays", "4", *bb]
    cmd += [x for m in trained for x in ("--checkpoint", str(ckpts[m]))]
    run(cmd, log)
    table = (out / "comparison.md").read_text() if len(args.methods) > 1 else (out / "metrics.md").read_text()
    section = [
        "",
        f"### Methods side by side on Magnetic Tile ({time.strftime('%Y-%m-%d')}, `--device {args.device}`)",
        "",
        f"Command: `python benchmarks/asset_methods.py --methods {' '.join(args.methods)} --device {args.device}"
        + "".join(f" --epochs {m}={e} --batch-size {m}={b}" for m, (e, b) in recipe.items())
        + "`",
        weights_line(args.backbone, args.pretrained),
        f"Split: test = MT_Free 1..{args.n_test_free} (sorted names) + all 57 MT_Crack; trained methods on all 115 "
        f"MT_Blowhole + MT_Free {args.n_test_free + 1}..{args.n_test_free + args.n_train_free} ("
        + "; ".join(f"{m}: {e} epochs, batch {b}" for m, (e, b) in recipe.items())
        + "); no image in both.",
        "",
        table.strip(),
        "",
        "Runs:",
        *log,
    ]
    publish_section(section, args.append_results)


if __name__ == "__main__":
    main()
