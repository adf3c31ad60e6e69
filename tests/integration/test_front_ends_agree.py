"""The four front ends decide alike: ``zsad detect`` (local), ``--engine ray``, ``POST /v1/detect`` and ``zsad detect
--model`` (an ONNX export) on the same real images and settings give the same scores, thresholds, labels and rows.

Each threshold source is covered (manual, normal references, robust_outlier, two_mode) for a per-image method (SDP,
exportable), plus a set-level one (MuSc: local, Ray and the service; it cannot be exported) and SDP with the paper's
transductive min-max (scores re-scaled over the set, normal references re-scaled with the set's statistics: the path
where the front ends had drifted furthest apart). Before issue 26
each front end decided by its own code; the service, for one, left the pixel threshold empty without references
where the others fitted the rule, and split posted references in another order.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from zsad import runs
from zsad.cli.main import app
from zsad.outputs import DETECT_FIELDS
from zsad.runs import BackboneSpec
from zsad.serve.app import create_app
from zsad.serve.service import ServeConfig, Service

pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'zsad[ray]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'zsad[runtime]')")
pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("local_ray")]

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
TINY = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]
SOURCES = ["manual", "references", "robust_outlier", "two_mode"]
FAST = {"prompt_set": "adaclip", "text_aggregation": "raw_mean"}  # sdp's text tower was most of each tiny run
MINMAX = {**FAST, "transductive_minmax": True}  # SDP's set-level re-scoring
FAST_ARGS = ["-o", "prompt_set=adaclip", "-o", "text_aggregation=raw_mean"]
# Every source on the per-image method (all four front ends); the set-level method and the set re-scoring on the
# paths they add (a set scored whole with an unlabelled rule; normal references scored as their own set, or
# re-scaled with the scored set's statistics). The manual value and robust_outlier take no set-specific path.
CASES = [
    *[("sdp", s) for s in SOURCES],
    ("musc", "references"),
    ("musc", "two_mode"),
    ("sdp-minmax", "references"),
]
# the columns every front end writes with the same meaning (paths differ: uploads, shards, .npy files)
NUMBERS = ["pred_score", "map_min", "map_max"]
SAME = ["image_size", "map_size", "input_missing"]


@pytest.fixture(scope="module")
def data(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Seven real Magnetic Tile images to score (4 free, 3 cracked) and 5 other free ones as normal references."""
    root = tmp_path_factory.mktemp("agree")
    images, refs = root / "images", root / "refs"
    images.mkdir()
    refs.mkdir()
    free = sorted((assets_dir / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))
    crack = sorted((assets_dir / "magnetic_tile" / "MT_Crack" / "Imgs").glob("*.jpg"))
    for p in [*free[:4], *crack[:3]]:
        (images / p.name).write_bytes(p.read_bytes())
    for p in free[4:9]:
        (refs / p.name).write_bytes(p.read_bytes())
    return images, refs


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Service]]:
    svc = Service(ServeConfig(backbone=BB, out=tmp_path_factory.mktemp("served") / "out", max_images=16))
    with TestClient(create_app(svc)) as client:
        yield client, svc
    svc.close()


@pytest.fixture(scope="module")
def manual(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """A manual threshold per method that splits its scores (the median of a first local run)."""
    out = {}
    for method in {m for m, s in CASES if s == "manual"}:
        folder = tmp_path_factory.mktemp(f"probe_{method}")
        name, options = ("sdp", MINMAX) if method == "sdp-minmax" else (method, FAST if method == "sdp" else {})
        runs.detect(data[0], folder, method=name, options=options, backbone=BB, class_name="tile", overlays=False)
        scores = sorted(float(r["pred_score"]) for r in _csv(folder / "predictions.csv").values())
        out[method] = (scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2
    return out


@pytest.fixture(scope="module")
def exports(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SDP exported to ONNX twice: plain, and with the references (their thresholds recorded in the manifest)."""
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for name, extra in (("plain", []), ("references", ["--reference-dir", str(data[1])])):
        res = _cli("export", "--method", "sdp", *FAST_ARGS, "--class-name", "tile", "--out", str(root / name), *extra,
                   *TINY)  # fmt: skip
        assert res.exit_code == 0, res.output
        made[name] = root / name
    return made


def _cli(*args: str) -> object:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {Path(r["image_path"]).name: r for r in csv.DictReader(f)}


def _settings(source: str, refs: Path, manual: float) -> list[str]:
    if source == "manual":
        return ["--threshold", repr(manual)]
    if source == "references":
        return ["--reference-dir", str(refs)]
    return ["--threshold-rule", source]


def _method(case: str) -> list[str]:
    if case.startswith("sdp"):
        return ["--method", "sdp", *FAST_ARGS, *(["-o", "transductive_minmax=true"] if case == "sdp-minmax" else [])]
    return ["--method", case]


def _local(method: str, source: str, data: tuple[Path, Path], manual: float, out: Path) -> dict[str, dict[str, str]]:
    args = ["detect", str(data[0]), *_method(method), "--class-name", "tile", "--out", str(out), "--no-overlays"]
    res = _cli(*args, *_settings(source, data[1], manual), *TINY)
    assert res.exit_code == 0, res.output
    return _csv(out / "predictions.csv")


def _ray(method: str, source: str, data: tuple[Path, Path], manual: float, out: Path) -> dict[str, dict[str, str]]:
    args = ["detect", str(data[0]), *_method(method), "--class-name", "tile", "--out", str(out), "--engine", "ray"]
    group = ["--group-by", "parent"] if method == "musc" else []  # the folder is the set, as locally
    res = _cli(*args, *group, *_settings(source, data[1], manual), *TINY)
    assert res.exit_code == 0, res.output
    return _csv(out / "predictions.csv")


def _serve(
    service: tuple[TestClient, Service], method: str, source: str, data: tuple[Path, Path], manual: float
) -> dict[str, dict[str, str]]:
    client, svc = service
    form: dict[str, str] = {"method": "sdp" if method == "sdp-minmax" else method, "class_name": "tile"}
    if method.startswith("sdp"):
        form["options"] = json.dumps(MINMAX if method == "sdp-minmax" else FAST)
    if source == "manual":
        form["threshold"] = repr(manual)
    elif source == "references":
        files = [("images", (p.name, p.read_bytes())) for p in sorted(data[1].iterdir())]
        posted = client.post("/v1/references", data=form, files=files)
        assert posted.status_code == 200, posted.text
        form = {"reference_id": posted.json()["reference_id"]}
    else:
        form["threshold_rule"] = source
    files = [("images", (p.name, p.read_bytes())) for p in sorted(data[0].iterdir())]
    got = client.post("/v1/detect", data=form, files=files)
    assert got.status_code == 200, got.text
    ids = {r["image_id"]: r["file_name"] for r in got.json()["results"]}
    stored = Path(svc.store.root) / "predictions.csv"
    with stored.open(newline="") as f:
        return {ids[r["image_id"]]: r for r in csv.DictReader(f) if r["image_id"] in ids}


def _onnx(
    source: str, data: tuple[Path, Path], manual: float, exports: dict[str, Path], out: Path
) -> dict[str, dict[str, str]]:
    from zsad.runtime.detect import run

    model = exports["references" if source == "references" else "plain"]
    extra = [] if source == "references" else _settings(source, data[1], manual)
    assert run([str(data[0]), "--model", str(model), "--out", str(out), *extra]) == 0
    return _csv(out / "predictions.csv")


def _close(a: str, b: str, rel: float) -> bool:
    if a == "" or b == "":
        return a == b
    x, y = float(a), float(b)
    return math.isclose(x, y, rel_tol=rel, abs_tol=rel)


def _agree(
    want: dict[str, dict[str, str]], got: dict[str, dict[str, str]], rel: float, who: str, parts: bool = True
) -> None:
    """Equal rows; ``parts`` False: the exported graph returns scores and maps only, so no score parts."""
    assert set(got) == set(want), who
    for name, w in want.items():
        g = got[name]
        # detect's columns first, in its order (Ray and the service add their own after them)
        assert list(w)[: len(DETECT_FIELDS)] == list(g)[: len(DETECT_FIELDS)] == DETECT_FIELDS, who
        for k in NUMBERS + ["threshold", "pixel_threshold"]:
            assert _close(w[k], g[k], rel), (who, name, k, w[k], g[k])
        for k in ["pred_label", "threshold_source", "pixel_threshold_source", *SAME]:
            assert w[k] == g[k], (who, name, k, w[k], g[k])
        if not parts:
            assert g["score_parts"] == "{}", who
            continue
        wp, gp = json.loads(w["score_parts"] or "{}"), json.loads(g["score_parts"] or "{}")
        assert set(wp) == set(gp) and all(math.isclose(wp[k], gp[k], rel_tol=rel, abs_tol=rel) for k in wp), who


@pytest.mark.parametrize(("method", "source"), CASES)
def test_front_ends_decide_alike(
    method: str,
    source: str,
    data: tuple[Path, Path],
    manual: dict[str, float],
    service: tuple[TestClient, Service],
    exports: dict[str, Path],
    tmp_path: Path,
) -> None:
    value = manual.get(method, 0.0)  # only read with source "manual"
    local = _local(method, source, data, value, tmp_path / "local")
    labels = [r["pred_label"] for r in local.values()]
    expected_source = {"references": "normal_quantile"}.get(source, source)
    assert {r["threshold_source"] for r in local.values()} == {expected_source}
    assert set(labels) <= {"0", "1"} and len(labels) == 7  # a decision was made for every image
    if source == "manual":
        assert set(labels) == {"0", "1"}  # the manual threshold splits the scores
    _agree(local, _ray(method, source, data, value, tmp_path / "ray"), 1e-6, "ray")
    _agree(local, _serve(service, method, source, data, value), 1e-6, "serve")
    if method == "sdp":  # set-level and transductive methods cannot be exported (their export_refusal)
        _agree(local, _onnx(source, data, value, exports, tmp_path / "onnx"), 1e-4, "onnx", parts=False)
