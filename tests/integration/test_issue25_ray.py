"""Issue 25 (reliability II), `zsad detect --engine ray`: each case failed on the code before the issue.

A local Ray (2 CPUs, shared by the module) with the tiny model and real Magnetic Tile images; references are the
local engine's files and hand-computed values, never the Ray code itself.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from outputs_check import TINY, cli, one_line_error

from zsad import runs
from zsad.runs.build import BackboneSpec

ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'zsad[ray]')")
# Ray Data binds its console log handler to sys.stderr when first imported: import it here, not inside a CliRunner
# invocation whose stream is closed afterwards (later invocations would then print "Logging error" tracebacks)
pytest.importorskip("ray.data")
pytestmark = pytest.mark.assets

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
MAP_BOUND = 1e-4  # docs/ray.md: a Ray map is within this fraction of the map's range of the local engine's map


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiles(assets_dir: Path) -> list[Path]:
    """Real Magnetic Tile images (jpg): 6 free of defects, then 3 with cracks."""
    root = assets_dir / "magnetic_tile"
    free = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))[:6]
    return free + sorted((root / "MT_Crack" / "Imgs").glob("*.jpg"))[:3]


def _copy(srcs: list[Path], folder: Path, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(srcs):
        dst = folder / f"{prefix}{i:02d}.jpg"
        dst.write_bytes(p.read_bytes())
        out.append(dst)
    return out


def _ray(*args: object) -> object:
    return cli("detect", *args, *TINY, "--engine", "ray")


def _raw(path: Path) -> list[dict[str, str]]:
    """A CSV as a spreadsheet would read it (no unescaping)."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _robust_outlier(scores: list[float]) -> float:
    """By hand: median + 3 * 1.4826 * MAD (docs/thresholds)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    med = float(np.median(s))
    return med + 3 * 1.4826 * float(np.median(np.abs(s - med)))


# ------------------------------------------------------------------ 8, 11, 4: maps, CSV cells, a vanished input
def test_maps_match_local_csv_cells_are_safe_and_a_vanished_input_is_marked(
    local_ray: None, tiles: list[Path], tmp_path: Path
) -> None:
    files = _copy(tiles[:6], tmp_path / "parts")
    groups = ['=HYPERLINK("http://evil.example","open")', "-2+3", "+cmd|' /C calc'!A0"]
    listing = tmp_path / "parts.csv"

    def write_list(keep: list[Path]) -> None:
        lines = ["image_path,product"] + [f'parts/{p.name},"{groups[i % 3].replace(chr(34), chr(34) * 2)}"'
                                          for i, p in enumerate(files) if p in keep]  # fmt: skip
        listing.write_text("\n".join(lines) + "\n")

    write_list(files)
    runs.detect([str(p) for p in files], tmp_path / "local", method="winclip", backbone=BB, class_name="tile",
                overlays=False)  # fmt: skip
    out = tmp_path / "ray"
    args = ["--list", listing, "--group-by", "csv:product", "--class-name", "tile", "--batch-size", "4", "--out", out]
    res = _ray(*args)
    assert res.exit_code == 0, res.output

    # 8: every map within MAP_BOUND of its range of the local engine's .npy map (float16 of absolute values: 1.5 %)
    local = {r["image_path"]: r for r in runs.read_predictions(tmp_path / "local")}
    worst = 0.0
    for r in runs.read_predictions(out):
        want = np.load(tmp_path / "local" / local[r["image_path"]]["anomaly_map_path"])
        got = runs.load_map(out, r)
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max() / (want.max() - want.min())))
    print(f"worst Ray-vs-local map difference: {worst:.3g} of the map's range")
    assert worst <= MAP_BOUND, worst

    # 11: a group named like a formula is escaped for spreadsheets, and read back exactly
    raw = {r["image_path"]: r["group"] for r in _raw(out / "predictions.csv")}
    assert all(g.startswith("'") for g in raw.values()), raw
    back = {r["image_path"]: r["group"] for r in runs.read_predictions(out)}
    assert back == {str(p): groups[i % 3] for i, p in enumerate(files)}

    # 4: a local input deleted before a rerun keeps its row, marked, labelled, and out of the threshold's fit
    gone = files[2]
    gone.unlink()
    write_list([p for p in files if p != gone])
    again = _ray(*args)
    assert again.exit_code == 0, again.output
    rows = {r["image_path"]: r for r in runs.read_predictions(out)}
    assert len(rows) == 6
    assert {k for k, r in rows.items() if r["input_missing"] == "1"} == {str(gone)}
    current = [float(r["pred_score"]) for k, r in rows.items() if k != str(gone)]
    thr = _robust_outlier(current)
    assert float(rows[str(gone)]["threshold"]) == pytest.approx(thr, rel=1e-6)
    for r in rows.values():
        assert r["pred_label"] == str(int(float(r["pred_score"]) > thr)) and r["threshold_source"] == "robust_outlier"
        assert r["pixel_threshold_source"] == "robust_outlier"
    m = _manifest(out)
    assert m["num_images"] == 6 and m["num_missing_inputs"] == 1 and m["num_failed"] == 0
    text = " ".join(again.output.split())
    assert "5 images scored," in text and "input_missing" in text  # the summary counts the gone input apart


# ------------------------------------------------------------------ 5: a set of 1, and too few images to decide
def test_a_set_of_one_gets_its_fallback_and_a_message(local_ray: None, tiles: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "line"
    _copy(tiles[:1], root / "one")
    _copy(tiles[1:4], root / "three")
    out = tmp_path / "musc"
    res = _ray(root, "--recursive", "--method", "musc", "--group-by", "parent", "--out", out)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("musc: a set of 1 image") == 1, res.output  # said once, naming its group
    assert f"(group {root / 'one'})" in text
    rows = {Path(r["image_path"]).parent.name + "/" + Path(r["image_path"]).name: r for r in runs.read_predictions(out)}
    assert float(rows["one/img00.jpg"]["pred_score"]) == 0.0  # the documented fallback
    notes = _manifest(out)["notes"]  # the set of 3 has its own note (its interval holds no image)
    ones = [n for n in notes if n.startswith("musc: a set of 1 image")]
    assert len(ones) == 1 and ones[0].endswith(f"(group {root / 'one'})")
    assert all(" ".join(n.split()) in text for n in notes)  # each recorded note was said

    single = tmp_path / "single"
    _copy(tiles[4:5], single)
    out = tmp_path / "dual"
    res = _ray(single, "--method", "dual-image", "--group-by", "parent", "--out", out)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("dual-image: a set of 1 image") == 1, res.output
    assert "needs at least 3 images" in text and "no labels" in text
    (row,) = runs.read_predictions(out)
    assert row["pred_label"] == "" and row["threshold"] == "" and row["threshold_source"] == "none"
    m = _manifest(out)
    assert m["threshold"]["source"] == "none" and "3 images" in m["threshold"]["note"]
    assert len(m["notes"]) == 1 and m["notes"][0].startswith("dual-image: a set of 1 image")


def test_two_images_are_not_a_population(local_ray: None, tiles: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "two"
    _copy(tiles[6:8], folder)
    out = tmp_path / "o"
    res = _ray(folder, "--out", out)
    assert res.exit_code == 0, res.output
    assert "needs at least 3 images to decide and there are 2" in " ".join(res.output.split())
    rows = runs.read_predictions(out)
    assert len(rows) == 2
    assert all(r["pred_label"] == "" and r["threshold"] == "" and r["threshold_source"] == "none" for r in rows)
    assert _manifest(out)["threshold"]["source"] == "none"


# ------------------------------------------------------------------ 2: every input one row or one error row
def test_an_all_bad_batch_and_an_all_bad_run_are_counted(local_ray: None, tiles: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(8):
        (folder / f"a{i}.png").write_bytes(b"")  # sorted first: the first batch of 8 holds only unreadable files
    good = _copy([tiles[i % len(tiles)] for i in range(8)], folder, prefix="b")
    out = tmp_path / "o"
    res = _ray(folder, "--batch-size", "8", "--out", out)
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "8 images scored this run" in text and "8 failed" in text
    assert "8 images scored," in text and "8 files failed" in text
    rows, errors = _raw(out / "predictions.csv"), _raw(out / "errors.csv")
    assert sorted(r["image_path"] for r in rows) == sorted(map(str, good))
    assert sorted(Path(r["image_path"]).name for r in errors) == [f"a{i}.png" for i in range(8)]
    m = _manifest(out)
    assert (m["num_images"], m["num_failed"]) == (8, 8)

    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"z{i}.png").write_bytes(b"")
    out = tmp_path / "b"
    one_line_error(_ray(bad, "--out", out), "no image could be scored", "3 failures", "errors.csv")
    assert len(_raw(out / "errors.csv")) == 3 and _raw(out / "predictions.csv") == []
    m = _manifest(out)
    assert (m["num_images"], m["num_failed"]) == (0, 3)


# ------------------------------------------------------------------ 1: --out never adopts a folder
def test_ray_out_never_adopts_a_checkpoint_or_a_users_folder(tiles: list[Path], tmp_path: Path) -> None:
    imgs = _copy(tiles[:3], tmp_path / "imgs")
    ckpt = tmp_path / "ckpt"
    res = cli("train", "--method", "rwda", "-o", "n_pairs=10", "--out", ckpt, *TINY)
    assert res.exit_code == 0, res.output
    before = _snapshot(ckpt)
    one_line_error(_ray(imgs[0].parent, "--out", ckpt), str(ckpt), "checkpoint")
    assert _snapshot(ckpt) == before

    own = tmp_path / "mine"
    own.mkdir()
    (own / "manifest.json").write_text('{"my": "data"}')
    (own / "notes.txt").write_text("x")
    one_line_error(_ray(imgs[0].parent, "--out", own), "not made by zsad", "manifest.json")
    assert sorted(os.listdir(own)) == ["manifest.json", "notes.txt"]
    assert (own / "manifest.json").read_text() == '{"my": "data"}'

    before = _snapshot(imgs[0].parent)
    one_line_error(_ray(imgs[0].parent, "--out", imgs[0].parent), "is also an input folder")
    assert _snapshot(imgs[0].parent) == before
