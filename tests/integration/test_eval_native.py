"""``zsad eval --eval-resolution native`` and ``--tiles``: maps at each image's own size, tiled scoring, resume, keys.

A tiny folder dataset whose images come in two sizes (as Magnetic Tile's do), on the seeded random tiny backbone:
native pixel metrics are checked against scikit-learn on the written maps and the masks read with PIL; model
resolution stays what it was; ``--tiles 1x1`` is the untiled path; a 2x2 run stitches native-size maps and resumes
without rescoring; a set-level method is tiled as one set and rescored for a missing row against every partner.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from metrics_check import assert_metrics_match
from outputs_check import BB, TINY, cli, one_line_error
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.runs import DatasetSpec, evaluate
from zsad.tiling import TileSpec

SIZES = {"a": (80, 120), "b": (100, 64)}  # (H, W) of the two kinds of image
# 48 sentences, not 418: the text tower is most of a tiny run
SDP = {"sdp": {"prompt_set": "adaclip", "text_aggregation": "raw_mean"}}
SDP_ARGS = ["--method", "sdp", "-o", "prompt_set=adaclip", "-o", "text_aggregation=raw_mean"]


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 normal and 3 defective images of each size; a bright rectangle in each defective one, its mask beside."""
    root = tmp_path_factory.mktemp("two_sizes")
    rng = np.random.default_rng(0)
    for d in ("good", "defect", "masks"):
        (root / d).mkdir()
    for kind, (h, w) in SIZES.items():
        for i in range(3):
            Image.fromarray((rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)).save(root / "good" / f"{kind}{i}.png")
            img = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            y, x = int(rng.integers(4, h - 20)), int(rng.integers(4, w - 20))
            mask[y : y + 6 + 3 * i, x : x + 5 + 2 * i] = 255
            img[mask > 0] = 245
            Image.fromarray(img).save(root / "defect" / f"{kind}{i}.png")
            Image.fromarray(mask).save(root / "masks" / f"{kind}{i}.png")
    return root


def spec(root: Path, glob: str = "*") -> DatasetSpec:
    return DatasetSpec(
        "folder", root, normal_dir="good", abnormal_dir="defect", mask_dir="masks", class_name="tile", image_glob=glob
    )


def data_args(root: Path) -> list[object]:
    folders = ["--normal-dir", "good", "--abnormal-dir", "defect", "--mask-dir", "masks"]
    return ["--dataset", "folder", "--root", root, *folders, "--class-name", "tile", *SDP_ARGS]


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["image_path"])


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def model_run(two_sizes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdp evaluated as always (no new option given): the reference every other run is compared with."""
    out = tmp_path_factory.mktemp("model") / "eval"
    evaluate(spec(two_sizes), out, methods=["sdp"], options=SDP, backbone=BB, overlays=0)
    return out


def test_native_pixel_metrics_equal_sklearn_on_the_written_maps(two_sizes: Path, tmp_path: Path) -> None:
    out = tmp_path / "native"
    res = evaluate(
        spec(two_sizes), out, methods=["sdp"], options=SDP, backbone=BB, overlays=2, eval_resolution="native"
    )
    scores, labels = [], []
    for r in rows(out):
        amap = np.load(out / r["anomaly_map_path"])
        with Image.open(r["image_path"]) as im:
            assert amap.shape == (im.height, im.width)  # each image's own size, not 96 x 96
        if r["mask_path"]:
            with Image.open(r["mask_path"]) as m:
                mask = np.asarray(m) > 0
        else:
            mask = np.zeros(amap.shape, dtype=bool)
        scores.append(amap.ravel())
        labels.append(mask.ravel())
    assert {np.load(out / r["anomaly_map_path"]).shape for r in rows(out)} == set(SIZES.values())
    got = metrics(out)
    y, s = np.concatenate(labels), np.concatenate(scores)
    assert got["mean"]["pixel_AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert got["mean"]["pixel_AP"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert got["evaluation"] == {"resolution": "native", "tiles": None}
    assert any("native resolution" in n for n in got["notes"]) and "native resolution" in res["sdp"].title
    assert json.loads((out / "run_key.json").read_text())["eval"] == {"resolution": "native"}
    assert len(list((out / "overlays").rglob("*.png"))) == 2  # drawn at model size from native maps


def test_model_resolution_is_unchanged_and_folders_never_mix(two_sizes: Path, model_run: Path, tmp_path: Path) -> None:
    key = json.loads((model_run / "run_key.json").read_text())
    assert "eval" not in key  # the default adds nothing to the key: older folders resume as they are
    assert all(np.load(model_run / r["anomaly_map_path"]).shape == (96, 96) for r in rows(model_run))
    assert metrics(model_run)["evaluation"] == {"resolution": "model", "tiles": None}
    assert_metrics_match(model_run, metrics(model_run)["mean"])  # masks squashed to 96 px, as before
    # the same folder with the other resolution: refused in one line, before any model loads, nothing written
    before = (model_run / "predictions.csv").read_bytes()
    res = cli("eval", *data_args(two_sizes), "--eval-resolution", "native", "--out", model_run, *TINY)
    one_line_error(res, "eval.resolution", "'native' now")
    assert (model_run / "predictions.csv").read_bytes() == before
    native = tmp_path / "native"
    native.mkdir()
    (native / "run_key.json").write_text(json.dumps({**key, "eval": {"resolution": "native"}}))
    res = cli("eval", *data_args(two_sizes), "--eval-resolution", "model", "--out", native, *TINY)
    one_line_error(res, "eval.resolution", "'native' there")
    one_line_error(cli("eval", *data_args(two_sizes), "--eval-resolution", "full", "--out", native, *TINY), "model")


def test_tiles_1x1_is_the_untiled_path(two_sizes: Path, model_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "t11"
    evaluate(spec(two_sizes), out, methods=["sdp"], options=SDP, backbone=BB, overlays=0, tiles=TileSpec.parse("1x1"))
    tiled, plain = rows(out), rows(model_run)
    assert [r["image_path"] for r in tiled] == [r["image_path"] for r in plain]
    for a, b in zip(tiled, plain, strict=True):
        assert float(a["pred_score"]) == pytest.approx(float(b["pred_score"]), abs=1e-6)
        np.testing.assert_allclose(np.load(out / a["anomaly_map_path"]), np.load(model_run / b["anomaly_map_path"]),
                                   atol=1e-6)  # fmt: skip
    for key, value in metrics(model_run)["mean"].items():
        assert metrics(out)["mean"][key] == pytest.approx(value, abs=1e-6)
    key = json.loads((out / "run_key.json").read_text())
    assert key["tiles"] == {"grid": "1x1", "overlap": 0.25, "tile_size": None, "score": "max_tile"}
    assert "eval" not in key


def test_tiles_2x2_stitch_native_maps_and_resume(two_sizes: Path, tmp_path: Path) -> None:
    out = tmp_path / "t22"
    args = [*data_args(two_sizes), "--tiles", "2x2", "--eval-resolution", "native", "--overlays", "0", "--out", out]
    assert (res := cli("eval", *args, *TINY)).exit_code == 0, res.output
    first = rows(out)
    assert len(first) == 12
    for r in first:
        with Image.open(r["image_path"]) as im:
            assert np.load(out / r["anomaly_map_path"]).shape == (im.height, im.width)
    stamps = {r["anomaly_map_path"]: (out / r["anomaly_map_path"]).stat().st_mtime_ns for r in first}
    got = metrics(out)
    assert got["evaluation"]["tiles"]["grid"] == "2x2" and any("stitched maps" in n for n in got["notes"])
    assert (res := cli("eval", *args, *TINY)).exit_code == 0, res.output  # resumed: nothing left to score
    assert rows(out) == first
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps
    # another tiling in the same folder is another run
    one_line_error(cli("eval", *args, "--tile-score", "map_max", *TINY), "tiles.score")
    untiled = cli("eval", *data_args(two_sizes), "--eval-resolution", "native", "--out", out, *TINY)
    one_line_error(untiled, "tiles.grid", "'2x2' there")


def test_set_level_tiles_score_one_set_and_resume_a_missing_row(two_sizes: Path, tmp_path: Path) -> None:
    out = tmp_path / "musc"
    data, tiles = spec(two_sizes, glob="a[01]*"), TileSpec.parse("2x2")
    evaluate(data, out, methods=["musc"], backbone=BB, overlays=0, tiles=tiles)
    first = rows(out)
    assert len(first) == 4 and {np.load(out / r["anomaly_map_path"]).shape for r in first} == {(96, 96)}
    # drop one row and its map: the rerun scores the set again (every image a partner) and writes only that row
    gone = first[2]
    kept = [r for r in first if r is not gone]
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(first[0]))
        w.writeheader()
        w.writerows(kept)
    (out / gone["anomaly_map_path"]).unlink()
    stamps = {r["anomaly_map_path"]: (out / r["anomaly_map_path"]).stat().st_mtime_ns for r in kept}
    evaluate(data, out, methods=["musc"], backbone=BB, overlays=0, tiles=tiles)
    again = {r["image_path"]: r for r in rows(out)}
    assert len(again) == 4
    assert float(again[gone["image_path"]]["pred_score"]) == pytest.approx(float(gone["pred_score"]), abs=1e-6)
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps
    # a set of two sizes cannot be compared tile by tile: one line
    with pytest.raises(Exception, match="need one size"):
        evaluate(spec(two_sizes), tmp_path / "mixed", methods=["musc"], backbone=BB, overlays=0, tiles=tiles)


def test_tile_options_refused_in_one_line(two_sizes: Path, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    res = cli("eval", *data_args(two_sizes), "--tile-overlap", "0.5", "--out", out, *TINY)
    one_line_error(res, "--tile-overlap", "only with --tiles")
    res = cli("eval", *data_args(two_sizes), "--tiles", "2x2", "-o", "transductive_minmax=true", "--out", out, *TINY)
    one_line_error(res, "--tiles: sdp", "re-scales image scores")
    assert not (out / "predictions.csv").exists()


def test_native_masks_stored_at_another_size_are_resized_to_the_image(tmp_path: Path) -> None:
    from zsad.data.spec import native_gt_masks, open_datasets

    for d in ("good", "defect", "masks"):
        (tmp_path / d).mkdir()
    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(tmp_path / "good" / "g.png")
    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(tmp_path / "defect" / "d.png")
    half = np.zeros((40, 60), np.uint8)
    half[10:20, 30:45] = 255
    Image.fromarray(half).save(tmp_path / "masks" / "d.png")
    ((_, ds, _),) = open_datasets(spec(tmp_path))
    idx = [i for i, s in enumerate(ds.samples) if s.label == 1] + [i for i, s in enumerate(ds.samples) if s.label == 0]
    masks, known = native_gt_masks(ds, idx, [(80, 120), (80, 120)])
    assert known.tolist() == [True, True] and masks[0].shape == masks[1].shape == (80, 120)
    assert masks[0][20:40, 60:90].all() and masks[0].sum() == 20 * 30 and not masks[1].any()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "masks" / "d.png")  # another aspect ratio
    with pytest.raises(Exception, match="different aspect ratio"):
        native_gt_masks(ds, idx, [(80, 120), (80, 120)])
