"""``detect --tiles``: a tiled run writes what tiled scoring computes, 1x1 is the untiled run, and the run key keeps
tiled and untiled results apart.

Real MPDD metal plates (512 px) on the tiny random backbone at 96 px with 256 px tiles (a 3 x 3 grid): plumbing
and exactness, never quality.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from outputs_check import TINY, cli, mpdd_plates, one_line_error

from zsad import runs
from zsad.data import load_image
from zsad.errors import ZsadInputError
from zsad.runs import BackboneSpec, MethodSpec
from zsad.runs.tiles import score_tiled, score_tiled_set, setup_tiled
from zsad.tiling import TileSpec

BB = BackboneSpec("zsad-tiny", "none", image_size=96, device="cpu")
SPEC = TileSpec(None, 0.25, tile_size=256)

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def plates(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(4 test plates: 2 defective, 2 good; 3 good reference plates)."""
    return mpdd_plates(assets_dir, tmp_path_factory.mktemp("plates"), defect=2, good=2, refs=3)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as f:
        return {Path(r["image_path"]).name: r for r in csv.DictReader(f)}


def test_tiled_detect_writes_the_stitched_maps_and_scores(plates: tuple[Path, Path], tmp_path: Path) -> None:
    test, refs = plates
    out = tmp_path / "tiled"
    res = runs.detect([test], out, method="winclip", backbone=BB, reference_dir=refs, k_shot=2, tiles=SPEC,
                      overlays=False, max_map_size=300)  # fmt: skip
    assert res.exit_code == 0 and res.num_images == 4
    # the same scoring done by hand: the same 2 memorised references (seeded order), tiled alike
    method = MethodSpec("winclip", BB, {}).validate().build()
    order = runs.reference_order(3, 0)
    ref_files = sorted(refs.iterdir())
    setup_tiled(method, None, [load_image(ref_files[i]) for i in order[:2]], SPEC)
    assert method.k_shot == 2
    rows = _rows(out)
    for f in sorted(test.iterdir()):
        want = score_tiled(method, load_image(f), SPEC, 8, 300)
        got = np.load(out / rows[f.name]["anomaly_map_path"])
        assert got.shape == (300, 300) == want.anomaly_map.shape  # the original 512 px, capped at 300
        np.testing.assert_allclose(got, want.anomaly_map, rtol=1e-5, atol=1e-6)
        assert float(rows[f.name]["pred_score"]) == pytest.approx(want.score, rel=1e-6)
        assert len(want.tile_scores) == 9
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tiles"] == {"grid": "auto", "overlap": 0.25, "tile_size": 256, "score": "max_tile"}
    assert manifest["k_shot"] == 2
    # the left-over reference calibrates the threshold, scored tiled like the images it calibrates
    assert manifest["threshold"]["source"].startswith("normal")
    # resume: same settings score nothing new; other tiles or none are refused before any model loads
    again = runs.detect([test], out, method="winclip", backbone=BB, reference_dir=refs, k_shot=2, tiles=SPEC,
                        overlays=False, max_map_size=300)  # fmt: skip
    assert again.num_images == 4
    for other in (None, TileSpec((2, 2), 0.25, 256)):
        with pytest.raises(ZsadInputError, match="tiles"):
            runs.detect([test], out, method="winclip", backbone=BB, reference_dir=refs, k_shot=2, tiles=other,
                        overlays=False, max_map_size=300)  # fmt: skip


def test_one_by_one_tiles_are_the_untiled_run(plates: tuple[Path, Path], tmp_path: Path) -> None:
    test, refs = plates
    kw = {"method": "winclip", "backbone": BB, "reference_dir": refs, "overlays": False}
    runs.detect([test], tmp_path / "plain", **kw)
    runs.detect([test], tmp_path / "one", tiles="1x1", **kw)
    plain, one = _rows(tmp_path / "plain"), _rows(tmp_path / "one")
    assert plain.keys() == one.keys()
    for name in plain:
        assert float(one[name]["pred_score"]) == pytest.approx(float(plain[name]["pred_score"]), rel=1e-6, abs=1e-7)
        assert one[name]["pred_label"] == plain[name]["pred_label"]
        a = np.load(tmp_path / "plain" / plain[name]["anomaly_map_path"])
        b = np.load(tmp_path / "one" / one[name]["anomaly_map_path"])
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    m_plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    m_one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert m_one["threshold"]["value"] == pytest.approx(m_plain["threshold"]["value"], rel=1e-6)


def test_set_level_tiled_detect_compares_tile_positions(plates: tuple[Path, Path], tmp_path: Path) -> None:
    test, _ = plates
    spec = TileSpec((2, 2), 0.25)
    res = runs.detect([test], tmp_path / "musc", method="musc", backbone=BB, tiles=spec, overlays=False)
    assert res.exit_code == 0
    method = MethodSpec("musc", BB, {}).validate().build()
    method.setup(None)
    files = sorted(test.iterdir(), key=str)
    want = score_tiled_set(method, [load_image(f) for f in files], spec, 8, 4096)
    rows = _rows(tmp_path / "musc")
    for f, w in zip(files, want, strict=True):
        assert float(rows[f.name]["pred_score"]) == pytest.approx(w.score, rel=1e-6)
        np.testing.assert_allclose(np.load(tmp_path / "musc" / rows[f.name]["anomaly_map_path"]), w.anomaly_map,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_tiled_detect_refusals_and_bad_files(plates: tuple[Path, Path], tmp_path: Path) -> None:
    test, _ = plates
    mixed = tmp_path / "mixed"
    shutil.copytree(test, mixed)
    load_image(next(mixed.iterdir())).resize((300, 200)).save(mixed / "small.png")
    (mixed / "broken.png").write_bytes(b"not a png")
    # set-level: the images of a set are compared tile by tile, so they need one size (checked before writing)
    with pytest.raises(ZsadInputError, match="one size"):
        runs.detect([mixed], tmp_path / "m1", method="musc", backbone=BB, tiles="2x2", skip_bad=True)
    # a set-wide re-scaling cannot be carried through tiles
    with pytest.raises(ZsadInputError, match="transductive"):
        runs.detect([test], tmp_path / "m2", method="sdp", options={"transductive_minmax": True}, backbone=BB,
                    tiles="auto")  # fmt: skip
    # a per-image method: the broken file is an error row, every other image a row (the small one untiled)
    res = runs.detect([mixed], tmp_path / "m3", method="sdp", backbone=BB, tiles=SPEC, skip_bad=True, overlays=False)
    assert res.exit_code == 1 and res.num_images == 5
    rows = _rows(tmp_path / "m3")
    assert np.load(tmp_path / "m3" / rows["small.png"]["anomaly_map_path"]).shape == (200, 300)
    errors = (tmp_path / "m3" / "errors.csv").read_text()
    assert "broken.png" in errors


def test_cli_tile_options(plates: tuple[Path, Path], tmp_path: Path) -> None:
    test, _ = plates
    res = cli("detect", test, "--out", tmp_path / "c", "--method", "sdp", "--tiles", "2x2+global",
              "--tile-score", "map_max", "--no-overlays", *TINY)  # fmt: skip
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["tiles"] == {"grid": "2x2+global", "overlap": 0.25, "tile_size": None, "score": "map_max"}
    for r in _rows(tmp_path / "c").values():  # map_max: the score is the stitched map's maximum
        assert float(r["pred_score"]) == pytest.approx(float(np.load(tmp_path / "c" / r["anomaly_map_path"]).max()))
    for args, word in (
        (["--tiles", "3y3"], "--tiles"),
        (["--tile-overlap", "0.5"], "--tile-overlap: only with --tiles"),
        (["--tiles", "auto", "--tile-overlap", "0.95"], "--tile-overlap"),
        (["--tiles", "auto", "--tile-score", "mean"], "--tile-score"),
    ):
        one_line_error(cli("detect", test, "--out", tmp_path / "bad", *args, *TINY), word)
    # every command takes the same options, refused alike before anything loads
    one_line_error(cli("serve", "--tiles", "3y3", *TINY), "--tiles")
    one_line_error(
        cli("export", "--method", "sdp", "--out", tmp_path / "e", "--tile-size", "300", *TINY), "--tile-size"
    )
