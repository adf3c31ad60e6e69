"""`zsad detect --engine ray` on a local Ray (2 CPUs, shared by the module) with the tiny model and real images.

Per-image results must equal `zsad detect --engine local` (the same files, backbone and options), for a per-image
method and for Dual-Image grouped by folder, untiled and tiled (``--tiles``, MPDD plates); a run killed halfway and
rerun holds each image exactly once.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from zsad import runs
from zsad.cli.main import app
from zsad.outputs import DetectResult
from zsad.runs.build import BackboneSpec
from zsad.tiling import TileSpec

pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'zsad[ray]')")
pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("local_ray")]  # conftest.py: a local Ray for the module

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiles(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two product folders of real Magnetic Tile images (jpg only), 6 + 5 images."""
    root = tmp_path_factory.mktemp("tiles")
    for name, n in (("MT_Free", 6), ("MT_Crack", 5)):
        dst = root / name
        dst.mkdir()
        for p in sorted((assets_dir / "magnetic_tile" / name / "Imgs").glob("*.jpg"))[:n]:
            (dst / p.name).write_bytes(p.read_bytes())
    return root


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["image_path"]: r for r in csv.DictReader(f)}


def _ray(*args: str) -> object:
    return CliRunner().invoke(app, ["detect", *args, *TINY, "--engine", "ray"], catch_exceptions=False)


def test_ray_equals_local_for_a_per_image_method(tiles: Path, tmp_path: Path) -> None:
    folders = [str(tiles / "MT_Free"), str(tiles / "MT_Crack")]
    runs.detect(folders, tmp_path / "local", method="winclip", backbone=BB, class_name="tile", overlays=False)
    res = _ray(*folders, "--out", str(tmp_path / "ray"), "--class-name", "tile", "--actors", "2", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    local = _rows(tmp_path / "local" / "predictions.csv")
    got = _rows(tmp_path / "ray" / "predictions.csv")
    assert set(got) == set(local) and len(got) == 11
    d = max(abs(float(got[k]["pred_score"]) - float(local[k]["pred_score"])) for k in local)
    assert d <= 1e-6, d
    for k in local:
        assert got[k]["pred_label"] == local[k]["pred_label"] and got[k]["threshold_source"] == "robust_outlier"
        assert float(got[k]["map_max"]) == pytest.approx(float(local[k]["map_max"]), abs=1e-6)
        assert got[k]["image_size"] == local[k]["image_size"]
    # maps read back: model resolution in 16-bit levels of their range, resized to the image as detect writes it
    from zsad.engines.ray_data import load_map

    k = sorted(local)[0]
    amap = load_map(tmp_path / "ray", k)
    want = np.load(tmp_path / "local" / local[k]["anomaly_map_path"])
    assert amap.shape == want.shape
    np.testing.assert_allclose(amap, want, atol=2e-3 * float(np.abs(want).max()))
    table = runs.read_predictions(tmp_path / "ray")
    assert {r["image_path"] for r in table} == set(local)


def test_ray_groups_set_level_methods_by_folder(tiles: Path, tmp_path: Path) -> None:
    local: dict[str, dict[str, str]] = {}
    for name in ("MT_Free", "MT_Crack"):  # each folder one set, as --group-by parent makes it
        out = tmp_path / f"local_{name}"
        runs.detect([str(tiles / name)], out, method="dual-image", backbone=BB, class_name="tile", overlays=False)
        local.update(_rows(out / "predictions.csv"))
    args = [str(tiles), "--recursive", "--method", "dual-image", "--group-by", "parent", "--class-name", "tile"]
    res = _ray(*args, "--out", str(tmp_path / "r"), "--actors", "2")
    assert res.exit_code == 0, res.output
    got = _rows(tmp_path / "r" / "predictions.csv")
    assert set(got) == set(local)
    d = max(abs(float(got[k]["pred_score"]) - float(local[k]["pred_score"])) for k in local)
    assert d <= 1e-6, d
    assert {got[k]["group"] for k in got} == {str(tiles / "MT_Free"), str(tiles / "MT_Crack")}
    # the same sets named by a column of a CSV list (relative paths, two products)
    lines = ["image_path,product"] + [
        f"{tiles.name}/{name}/{p.name},{name.lower()}"
        for name in ("MT_Free", "MT_Crack")
        for p in sorted((tiles / name).glob("*.jpg"))
    ]
    listing = tiles.parent / "parts.csv"
    listing.write_text("\n".join(lines) + "\n")
    by_csv = _ray("--list", str(listing), "--method", "dual-image", "--group-by", "csv:product", "--class-name", "tile",
                  "--out", str(tmp_path / "c"))  # fmt: skip
    assert by_csv.exit_code == 0, by_csv.output
    got_csv = _rows(tmp_path / "c" / "predictions.csv")
    assert set(got_csv) == set(got)
    assert max(abs(float(got_csv[k]["pred_score"]) - float(got[k]["pred_score"])) for k in got) <= 1e-6
    assert {v["group"] for v in got_csv.values()} == {"mt_free", "mt_crack"}
    refused = _ray(str(tiles), "--recursive", "--method", "dual-image", "--out", str(tmp_path / "r2"))
    assert refused.exit_code == 2 and "--group-by" in refused.output


def test_bad_files_become_error_rows_and_exit_1(tiles: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((tiles / "MT_Free").glob("*.jpg"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    res = _ray(str(folder), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1, res.output
    assert len(_rows(tmp_path / "o" / "predictions.csv")) == 3
    errors = _rows(tmp_path / "o" / "errors.csv")
    assert {Path(k).name for k in errors} == {"broken.jpg", "empty.png"}
    assert "empty file" in errors[str(folder / "empty.png")]["error"]
    # a rerun with other settings is refused before anything runs; the same settings retry only the failures
    other = _ray(str(folder), "--out", str(tmp_path / "o"), "-o", "temperature=0.05")
    assert other.exit_code == 2 and "holds a run with other settings" in other.output
    again = _ray(str(folder), "--out", str(tmp_path / "o"))
    assert again.exit_code == 1 and "resuming: 3 of 5" in " ".join(again.output.split())


def test_killed_run_then_rerun_holds_each_image_once(tiles: Path, tmp_path: Path) -> None:
    many = tmp_path / "many"
    many.mkdir()
    srcs = sorted((tiles / "MT_Free").glob("*.jpg")) + sorted((tiles / "MT_Crack").glob("*.jpg"))
    for i in range(40):  # 40 distinct files (copies under new names)
        (many / f"img{i:03d}.jpg").write_bytes(srcs[i % len(srcs)].read_bytes())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "zsad", "detect", str(many), "--out", str(out), *TINY, "--engine", "ray",
           "--batch-size", "2"]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list((out / "shards").glob("part-*.parquet"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    partial = len(list((out / "shards").glob("part-*.parquet")))
    assert 3 <= partial < 20, partial
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader((out / "predictions.csv").open(newline="")))
    paths = [r["image_path"] for r in rows]
    assert len(paths) == 40 and len(set(paths)) == 40
    assert "resuming" in res.stderr or "resuming" in res.stdout


def test_without_ray_the_message_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from zsad.engines import ray_data
    from zsad.errors import ZsadInputError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ZsadInputError, match=r"pip install 'zsad\[ray\]'"):
        ray_data.import_ray()


def test_ray_options_need_the_ray_engine(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["detect", str(tmp_path), "--actors", "2", *TINY])
    assert res.exit_code == 2 and "--actors: only with --engine ray" in res.output


def test_file_uris_and_references_equal_local(tiles: Path, tmp_path: Path) -> None:
    crack = sorted((tiles / "MT_Crack").glob("*.jpg"))
    refs = tiles / "MT_Free"
    listing = tmp_path / "uris.txt"
    listing.write_text("".join(f"file://{p}\n" for p in crack))
    common = {"class_name": "tile", "reference_dir": refs, "k_shot": 2}
    runs.detect([str(p) for p in crack], tmp_path / "local", method="winclip", backbone=BB, overlays=False, **common)
    res = _ray("--list", str(listing), "--out", str(tmp_path / "ray"), "--class-name", "tile",
               "--reference-dir", str(refs), "--k-shot", "2")  # fmt: skip
    assert res.exit_code == 0, res.output
    local = _rows(tmp_path / "local" / "predictions.csv")
    got = _rows(tmp_path / "ray" / "predictions.csv")
    assert set(got) == {str(p) for p in crack} == set(local)
    for k in local:
        assert float(got[k]["pred_score"]) == pytest.approx(float(local[k]["pred_score"]), abs=1e-6)
        assert got[k]["threshold_source"] == local[k]["threshold_source"] == "normal_quantile"
        assert float(got[k]["threshold"]) == pytest.approx(float(local[k]["threshold"]), abs=1e-6)
        assert float(got[k]["pixel_threshold"]) == pytest.approx(float(local[k]["pixel_threshold"]), abs=1e-6)
        assert got[k]["pred_label"] == local[k]["pred_label"]


def test_gpu_actors_choose_their_own_device() -> None:
    from zsad.engines.ray_data import RayOptions, _actor_backbone

    resolved = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)  # as the driver (no GPU) resolved it
    assert _actor_backbone(resolved, RayOptions(gpus_per_actor=0.5), device_given=False)["device"] is None
    assert _actor_backbone(resolved, RayOptions(gpus_per_actor=0.5), device_given=True)["device"] == "cpu"
    assert _actor_backbone(resolved, RayOptions(), device_given=False)["device"] == "cpu"


def test_range16_maps_keep_narrow_maps_to_their_range() -> None:
    from zsad.runs.shards import decode_map, encode_map

    rng = np.random.default_rng(0)
    amap = (0.55 + 0.02 * rng.random((24, 24))).astype(np.float32)  # a narrow map, as the tiny model makes them
    blob, lo, hi = encode_map(amap, "range16")
    back = decode_map(blob, "range16", lo, hi)
    span = float(amap.max() - amap.min())
    # half a level of 65535, plus float32 rounding of values near 0.56 (3e-8, 1.5e-6 of this span)
    assert float(np.abs(back - amap).max()) <= span / 131070 + 3e-8
    old = amap.astype(np.float16).astype(np.float32)  # absolute float16, as shards were stored before
    assert float(np.abs(old - amap).max()) > 100 * span / 131070
    flat = np.zeros((8, 8), np.float32)  # a constant map (a set of 1 scored 0) comes back exactly
    blob, lo, hi = encode_map(flat, "range16")
    assert np.array_equal(decode_map(blob, "range16", lo, hi), flat)


def test_maps_of_shards_written_before_issue_25_still_read(tmp_path: Path) -> None:
    """Old shards name no encoding (absolute float16); a resumed run adds range16 shards beside them."""
    import json
    import zlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from zsad.runs.readback import load_map
    from zsad.runs.shards import encode_map

    out = tmp_path / "old"
    (out / "shards").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"ray": {"map_dtype": "float16", "actors": 1}}))
    amap = np.linspace(0.5, 0.6, 64, dtype=np.float32).reshape(8, 8)
    old_blob = zlib.compress(amap.astype("<f2").tobytes(), 1)  # what the old encode_map wrote
    pq.write_table(pa.table({"image_uri": ["/x/a.png"], "anomaly_map": [old_blob], "error": [""]}),
                   out / "shards" / "part-1.parquet")  # fmt: skip
    new_blob, lo, hi = encode_map(amap, "range16")
    new = {"image_uri": ["/x/b.png"], "anomaly_map": [new_blob], "error": [""], "map_encoding": ["range16"],
           "map_lo": [lo], "map_hi": [hi]}  # fmt: skip
    pq.write_table(pa.table(new), out / "shards" / "part-2.parquet")

    def up(a: np.ndarray) -> np.ndarray:  # detect's resize to the image (bilinear), the independent reference
        t = torch.from_numpy(a.astype(np.float32))[None, None]
        return torch.nn.functional.interpolate(t, size=(12, 16), mode="bilinear", align_corners=False)[0, 0].numpy()

    a_row = {"image_path": "/x/a.png", "anomaly_map_path": "shards/part-1.parquet", "map_size": "16x12"}
    b_row = {"image_path": "/x/b.png", "anomaly_map_path": "shards/part-2.parquet", "map_size": "16x12"}
    np.testing.assert_array_equal(load_map(out, a_row), up(amap.astype(np.float16)))
    np.testing.assert_allclose(load_map(out, b_row), up(amap), rtol=0, atol=0.1 / 131070 + 1e-7)


# ------------------------------------------------------------------------------------------- tiles (--tiles)
TILES = TileSpec(None, 0.25, tile_size=256)  # 512 px plates: a 3 x 3 grid of 256 px tiles (2 x 3 when cropped)


@pytest.fixture(scope="module")
def plates(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(3 test plates, one cropped to 512 x 384; 3 good reference plates; a folder of two sets for --group-by)."""
    from zsad.data import load_image

    good = sorted((assets_dir / "mpdd_metal_plate" / "good").glob("*.png"))
    root = tmp_path_factory.mktemp("plates")
    test, refs, sets = root / "test", root / "refs", root / "sets"
    for d in (test, refs, sets / "same", sets / "mixed"):
        d.mkdir(parents=True)
    for p in good[:2]:
        (test / p.name).write_bytes(p.read_bytes())
        (sets / "same" / p.name).write_bytes(p.read_bytes())
    load_image(good[3]).crop((0, 0, 512, 384)).save(test / "cropped.png")  # not square: a 300 x 225 map
    for p in good[4:7]:
        (refs / p.name).write_bytes(p.read_bytes())
    (sets / "mixed" / good[0].name).write_bytes(good[0].read_bytes())
    (sets / "mixed" / "cropped.png").write_bytes((test / "cropped.png").read_bytes())
    return test, refs, sets


def _tiled_ray(method: str, paths: list[Path], out: Path, group_by: str | None = None, **job: Any) -> DetectResult:
    from zsad.engines.ray_data import RayOptions, detect_ray
    from zsad.runs import DetectJob, MethodSpec

    tiled = DetectJob([str(p) for p in paths], out, tiles=TILES, **job)
    return detect_ray(MethodSpec(method, BB, {}), tiled, RayOptions(group_by=group_by))


def _same_as_local(local_out: Path, ray_out: Path, names: set[str] | None = None) -> dict[str, dict[str, str]]:
    """Ray's rows and maps equal the local engine's: scores, decisions, sizes, stitched maps (1e-5)."""
    local, got = _rows(local_out / "predictions.csv"), _rows(ray_out / "predictions.csv")
    assert set(local) == (names if names is not None else set(got))
    for k in local:
        assert float(got[k]["pred_score"]) == pytest.approx(float(local[k]["pred_score"]), abs=1e-5)
        for col in ("pred_label", "threshold_source", "image_size", "map_size"):
            assert got[k][col] == local[k][col], (k, col)
        want, amap = runs.load_map(local_out, local[k]), runs.load_map(ray_out, got[k])
        assert amap.shape == want.shape and amap.dtype == np.float32
        np.testing.assert_allclose(amap, want, rtol=0, atol=1e-5)
    manifests = [json.loads((o / "manifest.json").read_text()) for o in (local_out, ray_out)]
    assert manifests[1]["tiles"] == manifests[0]["tiles"] == {"grid": "auto", "overlap": 0.25, "tile_size": 256,
                                                              "score": "max_tile"}  # fmt: skip
    return got


def test_tiled_ray_equals_local(plates: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Full-resolution images and references to the actors (2 memorised, 1 calibrating, scored tiled); stitched
    maps at their written size (capped, one not square) as .npy, equal to the local engine's."""
    test, refs, _ = plates
    common = {"class_name": "metal plate", "reference_dir": refs, "k_shot": 2, "max_map_size": 300, "batch_size": 4}
    runs.detect([test], tmp_path / "local", method="winclip", backbone=BB, tiles=TILES, overlays=False, **common)
    assert _tiled_ray("winclip", [test], tmp_path / "ray", **common).exit_code == 0
    got = _same_as_local(tmp_path / "local", tmp_path / "ray")
    assert got[str(test / "cropped.png")]["map_size"] == "300x225" and len(got) == 3
    local = _rows(tmp_path / "local" / "predictions.csv")
    for k, r in got.items():
        assert r["threshold_source"] == "normal_quantile"
        assert float(r["threshold"]) == pytest.approx(float(local[k]["threshold"]), abs=1e-5)
        assert float(r["pixel_threshold"]) == pytest.approx(float(local[k]["pixel_threshold"]), abs=1e-5)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["ray"]["map_encoding"] == "float32"
    # the run key holds the tiles: the same folder untiled is refused before anything runs
    refused = _ray(str(test), "--out", str(tmp_path / "ray"), "--class-name", "metal plate", "--reference-dir",
                   str(refs), "--k-shot", "2", "--max-map-size", "300")  # fmt: skip
    assert refused.exit_code == 2 and "other settings" in refused.output


def test_tiled_ray_sets_equal_local(plates: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Dual-image by folder: the set of one size equals the local run; the set of two sizes is two error rows."""
    _, _, sets = plates
    common = {"class_name": "metal plate", "max_map_size": 300}
    runs.detect([sets / "same"], tmp_path / "local", method="dual-image", backbone=BB, tiles=TILES, overlays=False,
                **common)  # fmt: skip
    res = _tiled_ray("dual-image", [sets], tmp_path / "ray", "parent", recursive=True, **common)
    assert res.exit_code == 1 and res.num_failed == 2
    _same_as_local(tmp_path / "local", tmp_path / "ray", names={str(p) for p in (sets / "same").iterdir()})
    errors = _rows(tmp_path / "ray" / "errors.csv")
    assert {Path(k).parent.name for k in errors} == {"mixed"}
    assert all("one size" in e["error"] and "\n" not in e["error"] for e in errors.values())
