"""Tiles through export and the torch-free runtime: ``zsad export --tiles`` and ``zsad detect --model --tiles``.

The graph scores tiles (a tile is an image at the model's size); the runtime cuts and stitches in numpy. Checked on
real MPDD metal plates (512 px) on the tiny random backbone at 96 px with 256 px tiles (a 3 x 3 grid): the runtime,
where torch cannot be imported, writes the torch path's scores, maps, thresholds and ``tiles`` section; the export
records the tiling and the tiled thresholds ``zsad detect --tiles`` computes from the same references. Plumbing and
exactness, never quality. One export (WinCLIP, one reference memorised, one calibrating) serves every test.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from outputs_check import BB, NO_TORCH, error_line, mpdd_plates

from zsad import runs
from zsad.data import load_image
from zsad.errors import ZsadInputError
from zsad.tiling import TileSpec

pytest.importorskip("onnxruntime", reason="pip install 'zsad[export]'")
pytestmark = pytest.mark.assets

SPEC = TileSpec(None, 0.25, tile_size=256)
MAP_CAP = 300  # predict_tiled's 512 px maps at 300 px (the runs keep the default cap: the pixel threshold's
# calibration takes the maxima of maps at that size, on both paths)
TOL = 1e-4


@pytest.fixture(scope="module")
def plates(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(test folder: a defective and a good plate, and one small enough to score untiled; 2 good references)."""
    test, refs = mpdd_plates(assets_dir, tmp_path_factory.mktemp("plates"), defect=1, good=1, refs=2, refs_from=2)
    good = sorted((assets_dir / "mpdd_metal_plate" / "good").glob("*.png"))
    load_image(good[1]).resize((200, 150)).save(test / "small.png")  # both sides under a tile: the untiled path
    return test, refs


@pytest.fixture(scope="module")
def exported(plates: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zsad.export import export_run

    out = tmp_path_factory.mktemp("export") / "model"
    export_run("winclip", out, backbone=BB, reference_dir=plates[1], k_shot=1, tiles=SPEC)
    return out


@pytest.fixture(scope="module")
def torch_run(plates: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``zsad detect --tiles`` on the torch path with the export's method, references and split."""
    test, refs = plates
    out = tmp_path_factory.mktemp("torch") / "tiled"
    res = runs.detect([test], out, method="winclip", backbone=BB, reference_dir=refs, k_shot=1, tiles=SPEC,
                      overlays=False)  # fmt: skip
    assert res.exit_code == 0 and res.num_images == 3
    return out


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as f:
        return {Path(r["image_path"]).name: r for r in csv.DictReader(f)}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _same_rows(got: Path, want: Path) -> None:
    """Same images, scores and maps within TOL, same map sizes, labels and threshold sources."""
    g_rows, w_rows = _rows(got), _rows(want)
    assert g_rows.keys() == w_rows.keys()
    for name, w in w_rows.items():
        g = g_rows[name]
        assert abs(float(g["pred_score"]) - float(w["pred_score"])) <= TOL, name
        a, b = np.load(got / g["anomaly_map_path"]), np.load(want / w["anomaly_map_path"])
        assert a.shape == b.shape and np.abs(a - b).max() <= TOL, name
        for col in ("pred_label", "threshold_source", "pixel_threshold_source", "image_size", "map_size"):
            assert g[col] == w[col], (name, col)


def test_tile_record_is_the_torch_run_key_section() -> None:
    """The runtime writes its own ``tiles`` record (``zsad.runs.detect`` imports torch): the same section."""
    from zsad.runs import tile_key
    from zsad.runtime.tiles import spec_of_record, tile_record

    assert tile_record(None) is None and tile_key(None) == {}
    for spec in (SPEC, TileSpec((2, 3), 0.1, None, True, "map_max"), TileSpec((1, 1))):
        assert tile_record(spec) == tile_key(spec)["tiles"]
        assert spec_of_record(tile_record(spec), "m") == spec


def test_export_records_the_tiles_and_the_tiled_thresholds(exported: Path, torch_run: Path) -> None:
    from zsad.runs import tile_key
    from zsad.runtime import ExportedModel

    man, want = _manifest(exported), _manifest(torch_run)
    assert man["tiles"] == want["tiles"] == tile_key(SPEC)["tiles"]
    assert man["k_shot"] == want["k_shot"] == 1 and len(man["references"]) == 1
    for key in ("threshold", "pixel_threshold"):  # calibrated on the left-over reference, scored tiled alike
        assert man[key]["source"] == want[key]["source"] == "normal_quantile"
        assert man[key]["value"] == pytest.approx(want[key]["value"], rel=1e-6, abs=1e-7)
    assert ExportedModel(exported).tiles == SPEC  # the runtime's default


def test_runtime_tiles_without_torch_equal_the_torch_path(
    plates: tuple[Path, Path], exported: Path, torch_run: Path, tmp_path: Path
) -> None:
    """``zsad detect --model --tiles`` where torch cannot be imported: the torch run's rows, maps and sections."""
    test = str(plates[0])
    model = ["--model", str(exported)]
    runs_ = {
        "explicit": [
            test,
            *model,
            "--out",
            str(tmp_path / "explicit"),
            "--tiles",
            "auto",
            "--tile-size",
            "256",
            "--batch-size",
            "4",
        ],  # fmt: skip
        "default": [test, *model, "--out", str(tmp_path / "default"), "--batch-size", "3"],  # the recorded tiling
        "none": [test, *model, "--out", str(tmp_path / "none"), "--tiles", "none"],
        "other": [test, *model, "--out", str(tmp_path / "explicit"), "--tiles", "2x2"],  # resumed with other tiles
    }
    script = NO_TORCH + (
        "import contextlib, io, json\n"
        "from zsad.cli.entry import main\n"
        "done = {}\n"
        f"for name, args in {runs_!r}.items():\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            main(['detect', *args])\n"
        "        except SystemExit as e:\n"
        "            done[name] = [e.code, buf.getvalue()]\n"
        "assert 'torch' not in sys.modules\n"
        "print(json.dumps(done))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    done = json.loads(res.stdout.splitlines()[-1])
    for name in ("explicit", "default", "none"):
        assert done[name][0] == 0, done[name][1]
    _same_rows(tmp_path / "explicit", torch_run)
    _same_rows(tmp_path / "default", torch_run)
    want = _manifest(torch_run)
    for name in ("explicit", "default"):
        got = _manifest(tmp_path / name)
        assert got["tiles"] == want["tiles"]
        assert got["threshold"]["value"] == pytest.approx(want["threshold"]["value"], rel=1e-6)
        assert "calibrated" not in done[name][1]
    # --tiles none: untiled (no tiles section), saying the recorded thresholds were calibrated tiled
    assert "tiles" not in _manifest(tmp_path / "none")
    assert "note: the export's thresholds were calibrated on images scored tiled" in done["none"][1]
    assert "this run scores untiled" in done["none"][1]
    # other tiles into a tiled run's folder: refused (the tiles are part of the run key), one line, exit 2
    assert done["other"][0] == 2
    error_line(done["other"][1], "tiles")


def test_predict_tiled_equals_score_tiled(plates: tuple[Path, Path], exported: Path) -> None:
    """``ExportedModel.predict_tiled`` is ``score_tiled``: a global pass, the stitched map's maximum, 1x1."""
    from zsad.runs import MethodSpec, setup_tiled
    from zsad.runs.tiles import score_tiled
    from zsad.runtime import ExportedModel

    model = ExportedModel(exported)
    method = MethodSpec("winclip", BB, {}).validate().build()
    setup_tiled(method, None, [load_image(p) for p in _manifest(exported)["references"]], SPEC)
    image = load_image(next(plates[0].glob("defect_*.png")))
    for spec in (TileSpec((2, 2), 0.25, None, True, "map_max"), TileSpec((1, 1))):
        want = score_tiled(method, image, spec, 8, MAP_CAP)
        got = model.predict_tiled(image, spec, batch_size=2, max_map_size=MAP_CAP)
        assert got.plan == want.plan and got.anomaly_map.shape == want.anomaly_map.shape
        assert abs(got.score - want.score) <= TOL and np.abs(got.anomaly_map - want.anomaly_map).max() <= TOL
        assert np.abs(got.tile_scores - want.tile_scores).max() <= TOL


def test_bad_tile_values_are_one_line(
    plates: tuple[Path, Path], exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zsad.export import export_run
    from zsad.runtime.detect import run

    test = str(plates[0])
    untiled = tmp_path / "untiled"  # the same graph, its manifest recording no tiles
    shutil.copytree(exported, untiled)
    man = _manifest(untiled)
    (untiled / "manifest.json").write_text(json.dumps({**man, "tiles": None}))
    cases: list[tuple[Path, list[str], str]] = [
        (exported, ["--tiles", "3y3"], "--tiles '3y3': use auto, RxC"),
        (exported, ["--tiles", "0x3"], "--tiles 0x3"),
        (exported, ["--tiles", "none", "--tile-overlap", "0.5"], "--tile-overlap: only with --tiles (auto or RxC)"),
        (exported, ["--tiles", "auto", "--tile-overlap", "0.95"], "--tile-overlap 0.95"),
        (exported, ["--tile-overlap", "much"], "--tile-overlap 'much'"),
        (exported, ["--tile-size", "1.5"], "--tile-size '1.5'"),
        (exported, ["--tile-size", "8"], "--tile-size 8"),  # replaces the recorded one, still checked
        (exported, ["--tiles", "auto", "--tile-score", "mean"], "--tile-score 'mean'"),
        (untiled, ["--tile-size", "256"], "--tile-size: only with --tiles (auto or RxC) or an export that records"),
    ]
    for i, (model, extra, words) in enumerate(cases):
        code = run([test, "--model", str(model), "--out", str(tmp_path / f"o{i}"), *extra])
        out = capsys.readouterr().out
        assert code == 2, (extra, out)
        error_line(out, words)
        assert not (tmp_path / f"o{i}").exists()  # refused before anything was written
    # a hand-edited manifest: named with its field, before any image is read
    for bad, words in (("auto", "a tile setting is an object"), ({**man["tiles"], "grid": "3y3"}, "3y3"),
                       ({**man["tiles"], "overlap": "lots"}, "overlap a number")):  # fmt: skip
        (untiled / "manifest.json").write_text(json.dumps({**man, "tiles": bad}))
        assert run([test, "--model", str(untiled), "--out", str(tmp_path / "edited")]) == 2
        error_line(capsys.readouterr().out, "manifest.json", words)
    # the export checks its tiling before building anything
    with pytest.raises(ZsadInputError, match="--tile-overlap 0.95"):
        export_run("winclip", tmp_path / "never", backbone=BB, tiles=TileSpec(None, 0.95))
    assert not (tmp_path / "never").exists()
