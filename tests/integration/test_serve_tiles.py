"""``zsad serve --tiles``: the service scores, calibrates and answers tiled exactly as ``zsad detect --tiles`` does.

Real MPDD metal plates (512 px) on the tiny random backbone at 96 px with 256 px tiles (a 3 x 3 grid): plumbing and
exactness, never quality.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from zsad import runs
from zsad.errors import ZsadInputError
from zsad.runs.build import BackboneSpec
from zsad.serve.app import create_app
from zsad.serve.service import ServeConfig, Service
from zsad.tiling import TileSpec

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
SPEC = TileSpec(None, 0.25, tile_size=256)
RECORD = {"grid": "auto", "overlap": 0.25, "tile_size": 256, "score": "max_tile"}

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def plates(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """(3 test plates: 2 defective, 1 good; 3 good reference plates), in sorted order."""
    root = tmp_path_factory.mktemp("plates")
    src = assets_dir / "mpdd_metal_plate"
    test = sorted((src / "defect").glob("*.png"))[:2] + sorted((src / "good").glob("*.png"))[:1]
    (root / "refs").mkdir()
    for p in sorted((src / "good").glob("*.png"))[2:5]:
        shutil.copy(p, root / "refs")
    return test, sorted((root / "refs").iterdir())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    svc = Service(ServeConfig(backbone=BB, out=tmp_path_factory.mktemp("served") / "out", tiles=SPEC,
                              max_map_size=300))  # fmt: skip
    yield TestClient(create_app(svc))
    svc.close()


def _files(paths: list[Path], field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in paths]


def _offline(paths: list[Path], out: Path, **job: object) -> dict[str, dict[str, str]]:
    runs.detect([str(p) for p in paths], out, backbone=BB, overlays=False, tiles=SPEC, max_map_size=300, **job)
    with (out / "predictions.csv").open(newline="") as f:
        return {Path(r["image_path"]).name: r for r in csv.DictReader(f)}


def _check(client: TestClient, answer: dict, offline: dict[str, dict[str, str]], out: Path) -> None:
    assert answer["tiles"] == RECORD
    for res in answer["results"]:
        row = offline[res["file_name"]]
        assert res["pred_score"] == pytest.approx(float(row["pred_score"]), rel=1e-6)
        assert res["map_size"] == [300, 300] and res["image_size"] == [512, 512]
        got = np.load(io.BytesIO(client.get(res["anomaly_map_npy_url"]).content))
        np.testing.assert_allclose(got, np.load(out / row["anomaly_map_path"]), rtol=1e-5, atol=1e-6)


def test_tiled_service_equals_tiled_detect(client: TestClient, plates: tuple, tmp_path: Path) -> None:
    test, _ = plates
    assert client.get("/v1/methods").json()["tiles"] == RECORD
    r = client.post("/v1/detect", files=_files(test), data={"method": "sdp"})
    assert r.status_code == 200, r.text
    _check(client, r.json(), _offline(test, tmp_path / "sdp", method="sdp"), tmp_path / "sdp")
    # a set-level method: the request's images are the set, compared tile position by tile position
    r = client.post("/v1/detect", files=_files(test), data={"method": "musc"})
    assert r.status_code == 200, r.text
    _check(client, r.json(), _offline(test, tmp_path / "musc", method="musc"), tmp_path / "musc")
    # a set-wide re-scaling cannot be carried through tiles: refused in one line
    minmax = {"method": "sdp", "options": '{"transductive_minmax": true}'}
    bad = client.post("/v1/detect", files=_files(test), data=minmax)
    assert bad.status_code == 422 and "--tiles" in bad.json()["detail"]


def test_tiled_references_and_threshold(client: TestClient, plates: tuple, tmp_path: Path) -> None:
    test, refs = plates
    r = client.post("/v1/references", files=_files(refs), data={"k_shot": "2"})
    assert r.status_code == 200, r.text
    ref = r.json()
    assert ref["k_shot"] == 2 and ref["num_calibration"] == 1
    d = client.post("/v1/detect", files=_files(test), data={"reference_id": ref["reference_id"]})
    assert d.status_code == 200, d.text
    answer = d.json()
    # the offline tiled run with the same references, split alike (seed 0): same memory, same calibration
    offline = _offline(test, tmp_path / "ref", method="winclip", reference_dir=refs[0].parent, k_shot=2)
    _check(client, answer, offline, tmp_path / "ref")
    assert answer["threshold"]["source"].startswith("normal")
    assert answer["threshold"]["value"] == pytest.approx(float(next(iter(offline.values()))["threshold"]), rel=1e-6)


def test_bad_tile_settings_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ZsadInputError, match="--tile-overlap"):
        ServeConfig(backbone=BB, tiles=TileSpec(None, 0.95)).validate()


def test_station_profile_carries_its_tiles(plates: tuple, tmp_path: Path) -> None:
    """A profile's own tiles decide how its parts are scored (its scoring key says so); untiled keys are unchanged."""
    import hashlib
    import json

    from zsad.store import scoring_key

    test, refs = plates
    svc = Service(ServeConfig(backbone=BB, out=tmp_path / "station", station=True, max_map_size=300))
    try:
        c = TestClient(create_app(svc))
        r = c.post("/v1/profiles", data={"name": "plate", "method": "winclip", "k_shot": "2",
                                         "tiles": json.dumps(RECORD)}, files=_files(refs, "references"))  # fmt: skip
        assert r.status_code == 200, r.text
        p1 = r.json()
        assert p1["setup"]["tiles"] == RECORD
        d = c.post("/v1/detect", data={"profile": "plate"}, files=_files(test))
        assert d.status_code == 200, d.text
        answer = d.json()
        offline = _offline(test, tmp_path / "offline", method="winclip", reference_dir=refs[0].parent, k_shot=2)
        _check(c, answer, offline, tmp_path / "offline")
        assert answer["threshold"]["value"] == pytest.approx(float(next(iter(offline.values()))["threshold"]))
        # tiles off: a new revision, a new scoring key, and the key an untiled setup always had
        r = c.patch("/v1/profiles/plate", json={"tiles": "none"})
        assert r.status_code == 200, r.text
        p2 = r.json()
        assert "tiles" not in p2["setup"] and p2["scoring_key"] != p1["scoring_key"]
        fields = ("method", "options", "backbone", "class_name", "references", "k_shot")
        plain = json.dumps({k: p2["setup"].get(k) for k in fields}, sort_keys=True, separators=(",", ":"))
        assert scoring_key(p2["setup"]) == p2["scoring_key"] == hashlib.sha256(plain.encode()).hexdigest()
        d2 = c.post("/v1/detect", data={"profile": "plate"}, files=_files(test[:1])).json()
        assert d2["tiles"] is None and d2["results"][0]["map_size"] == [300, 300]
        bad = c.patch("/v1/profiles/plate", json={"tiles": "3y3"})
        assert bad.status_code == 422 and "--tiles" in bad.json()["detail"]
    finally:
        svc.close()
