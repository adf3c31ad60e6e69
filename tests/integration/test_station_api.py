"""The station through its HTTP API (FastAPI TestClient, tiny seeded backbone, SQLite): profiles, history, review,
feedback, rollback and a restart.

A profile's request must decide exactly as ``zsad detect --profile`` does on the same revision (one decision stage
for every front end); feedback values are checked against ``zsad.feedback`` on the rows read back.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from zsad.feedback import refit_threshold
from zsad.runs.build import BackboneSpec
from zsad.serve.app import create_app
from zsad.serve.service import ServeConfig, Service

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    from zsad.data import make_sample_images

    root = make_sample_images(tmp_path_factory.mktemp("samples"), n_normal=8, n_anomalous=3, size=112, seed=1)
    good = sorted((root / "good").glob("*.png"))
    return good[:3], good[3:] + sorted((root / "defect").glob("*.png"))


def _files(field: str, paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in paths]


def _service(out: Path, **cfg: object) -> Service:
    return Service(ServeConfig(backbone=BB, out=out, station=True, max_images=16, **cfg))  # type: ignore[arg-type]


def test_station_loop_and_restart(
    samples: tuple[list[Path], list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "cache"))  # detect --profile writes the references there
    refs, parts = samples
    out = tmp_path / "station"
    svc = _service(out)
    c = TestClient(create_app(svc))
    r = c.post(
        "/v1/profiles",
        data={"name": "plate", "method": "winclip", "class_name": "plate"},
        files=_files("references", refs),
    )
    assert r.status_code == 200, r.text
    p1 = r.json()
    assert p1["revision"] == 1 and len(p1["setup"]["references"]) == 3
    assert p1["setup"]["threshold"]["rule"] == "normal_quantile" and p1["threshold"]["value"] is not None
    assert c.post("/v1/profiles", data={"name": "plate"}).status_code == 422  # exists

    r = c.post("/v1/detect", data={"profile": "plate", "source": "upload"}, files=_files("images", parts))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["revision"] == 1 and answer["threshold"]["source"] == "normal_quantile"
    served = {x["file_name"]: x for x in answer["results"]}
    bad = c.post("/v1/detect", data={"profile": "plate", "method": "sdp"}, files=_files("images", parts[:1]))
    assert bad.status_code == 422 and "leave out method" in bad.json()["detail"]
    assert c.post("/v1/detect", data={"profile": "nope"}, files=_files("images", parts[:1])).status_code == 422

    # the same revision through `zsad detect --profile` decides the same (one decision stage for every front end)
    from zsad.cli.main import app

    db = f"sqlite:///{out / 'station.db'}"
    res = CliRunner().invoke(
        app,
        [
            "detect",
            *map(str, parts),
            "--profile",
            "plate",
            "--db",
            db,
            "--out",
            str(tmp_path / "offline"),
            "--no-overlays",
        ],
    )
    assert res.exit_code == 0, res.output
    with (tmp_path / "offline" / "predictions.csv").open(newline="") as f:
        offline = {Path(row["image_path"]).name: row for row in csv.DictReader(f)}
    assert set(offline) == set(served)
    for name, row in offline.items():
        assert float(row["pred_score"]) == pytest.approx(served[name]["pred_score"], rel=1e-5, abs=1e-7)
        assert int(row["pred_label"]) == served[name]["pred_label"]
        assert float(row["threshold"]) == pytest.approx(served[name]["threshold"], rel=1e-6)

    # history: newest first, filters, score sort, cursor pagination visiting every row once
    h = c.get("/v1/inspections", params={"profile": "plate"}).json()["inspections"]
    assert len(h) == len(parts) and all(x["revision"] == 1 and x["source"] == "upload" for x in h)
    by_score, cursor = [], None
    while True:
        page = c.get("/v1/inspections", params={"sort": "score", "limit": 3, **({"cursor": cursor} if cursor else {})})
        by_score += page.json()["inspections"]
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    scores = [x["score"] for x in by_score]
    assert scores == sorted(scores, reverse=True) and len({x["uid"] for x in by_score}) == len(parts)
    flagged = c.get("/v1/inspections", params={"label": 1}).json()["inspections"]
    assert {x["uid"] for x in flagged} == {x["uid"] for x in h if x["label"] == 1}
    assert c.get(h[0]["image_url"]).content == next(p for p in parts if p.name == h[0]["file_name"]).read_bytes()
    assert c.get(h[0]["overlay_url"]).status_code == 200

    # review: the highest score a defect, the lowest a normal; the re-fit is zsad.feedback's on the rows read back
    top, low = by_score[0], by_score[-1]
    assert (
        c.post(f"/v1/inspections/{top['uid']}/review", json={"label": "defect", "note": "crack"}).json()["review_label"]
        == "defect"
    )
    assert c.post(f"/v1/inspections/{low['uid']}/review", json={"label": "normal"}).json()["review_label"] == "normal"
    assert c.post(f"/v1/inspections/{low['uid']}/review", json={"label": "maybe"}).status_code == 422
    assert c.post("/v1/inspections/" + "0" * 32 + "/review", json={"label": "normal"}).status_code == 404
    proposal = c.get("/v1/profiles/plate/feedback").json()
    review = np.array([1 if x["uid"] == top["uid"] else 0 if x["uid"] == low["uid"] else -2 for x in by_score])
    expected = refit_threshold(np.array(scores), review, p1["threshold"]["value"])
    assert proposal["refit"]["threshold"] == pytest.approx(expected.threshold)
    assert proposal["confirmed_normals"] == {"count": 1, "new": 1}
    r = c.post("/v1/profiles/plate/feedback", json={"action": "refit"})
    assert r.status_code == 200, r.text
    p2 = r.json()["profile"]
    assert p2["revision"] == 2 and p2["setup"]["threshold"] == {
        "rule": "refit",
        "value": pytest.approx(expected.threshold),
    }
    assert p2["scoring_key"] == p1["scoring_key"]  # a threshold change keeps the scores comparable
    r = c.post("/v1/profiles/plate/feedback", json={"action": "add_normals"})
    assert r.status_code == 200, r.text
    p3 = r.json()["profile"]
    assert p3["revision"] == 3 and len(p3["setup"]["references"]) == 4 and p3["scoring_key"] != p1["scoring_key"]
    assert p3["setup"]["threshold"]["rule"] == "normal_quantile"  # winclip memorises: the old fit means nothing now
    assert p3["threshold"]["value"] != p1["threshold"]["value"]
    dash = c.get("/v1/profiles/plate/dashboard", params={"days": 1, "bucket": "hour"}).json()
    assert dash["inspections"] == len(parts) and dash["reviewed"] == 2
    assert dash["false_alarms"] + dash["missed_defects"] == int(top["label"] == 0) + int(low["label"] == 1)
    r = c.post("/v1/profiles/plate/rollback", json={"revision": 1})
    p4 = r.json()
    assert p4["revision"] == 4 and p4["setup"] == p1["setup"] and p4["scoring_key"] == p1["scoring_key"]
    again = c.post("/v1/detect", data={"profile": "plate"}, files=_files("images", parts[:2])).json()
    svc.close()

    # a restart finds everything, and rebuilds the profile's references from the database alone
    svc = _service(out)
    c = TestClient(create_app(svc))
    p = c.get("/v1/profiles/plate").json()
    assert p["revision"] == 4 and [r["revision"] for r in p["revisions"]] == [4, 3, 2, 1]
    rows = c.get("/v1/inspections", params={"limit": 50}).json()["inspections"]
    assert len(rows) == len(parts) + 2
    reviewed = {x["uid"]: x["review_label"] for x in rows if x["review_label"]}
    assert reviewed == {top["uid"]: "defect", low["uid"]: "normal"}
    after = c.post("/v1/detect", data={"profile": "plate"}, files=_files("images", parts[:2])).json()
    for a, b in zip(again["results"], after["results"], strict=True):
        assert a["pred_score"] == pytest.approx(b["pred_score"], rel=1e-6) and a["pred_label"] == b["pred_label"]
    r = c.patch("/v1/profiles/plate", json={"threshold": 0.25, "reason": "line lead's call"})
    assert r.status_code == 200, r.text
    p5 = r.json()
    assert p5["revision"] == 5 and p5["setup"]["threshold"] == {"rule": "manual", "value": 0.25}
    assert p5["reason"] == "line lead's call" and p5["scoring_key"] == p1["scoring_key"]
    assert c.patch("/v1/profiles/plate", json={"colour": "red"}).status_code == 422
    manual = c.post("/v1/detect", data={"profile": "plate"}, files=_files("images", parts[:2])).json()
    assert manual["revision"] == 5 and manual["threshold"]["source"] == "manual"
    assert [x["pred_label"] for x in manual["results"]] == [int(x["pred_score"] > 0.25) for x in manual["results"]]
    svc.close()


def test_no_station_and_one_sqlite_writer(tmp_path: Path) -> None:
    svc = Service(ServeConfig(backbone=BB, out=tmp_path / "plain"))
    c = TestClient(create_app(svc))
    r = c.get("/v1/inspections")
    assert r.status_code == 409 and "--station" in r.json()["detail"]
    assert c.get("/v1/station").json()["enabled"] is False
    svc.close()
    assert not (tmp_path / "plain" / "station.db").exists()
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    first = _service(tmp_path / "a", db=db)
    try:
        with pytest.raises(Exception, match="in use by another"):
            _service(tmp_path / "b", db=db)
    finally:
        first.close()
    with pytest.raises(Exception, match="give --out"):
        ServeConfig(backbone=BB, station=True).validate()


def test_profile_cli(samples: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    """zsad profile create/list/show/export on a SQLite file, read back through the store."""
    import json

    from zsad.cli.main import app
    from zsad.store import Station

    refs, _ = samples
    (tmp_path / "good").mkdir()
    for p in refs:
        (tmp_path / "good" / p.name).write_bytes(p.read_bytes())
    db = f"sqlite:///{tmp_path / 'st.db'}"
    tiny = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "96", "--device", "cpu"]
    run = CliRunner().invoke
    made = run(app, ["profile", "create", "cap-1", "--db", db, "--method", "winclip", "--class-name", "cap",
                     "--reference-dir", str(tmp_path / "good"), "-o", "temperature=0.05", *tiny])  # fmt: skip
    assert made.exit_code == 0, made.output
    again = run(app, ["profile", "create", "cap-1", "--db", db, *tiny])
    assert again.exit_code == 2 and "exists" in again.output
    bad = run(app, ["profile", "create", "no spaces", "--db", db, *tiny])
    assert bad.exit_code == 2 and "profile name" in bad.output
    listed = run(app, ["profile", "list", "--db", str(tmp_path / "st.db")])
    assert listed.exit_code == 0 and "cap-1" in listed.output
    shown = run(app, ["profile", "show", "cap-1", "--db", db])
    setup = json.loads(shown.output)["setup"]
    assert setup["options"] == {"temperature": 0.05} and setup["class_name"] == "cap"
    assert len(setup["references"]) == len(refs)
    assert setup["threshold"] == {"rule": "normal_quantile", "value": None}  # computed by the first run that uses it
    out = run(app, ["profile", "export", "cap-1", "--db", db, "--to", str(tmp_path / "exported")])
    assert out.exit_code == 0, out.output
    written = sorted((tmp_path / "exported" / "references").iterdir())
    st = Station(db, tmp_path, lock=False)
    try:
        assert [f.read_bytes() for f in written] == [st.blob(s) for s in setup["references"]]
    finally:
        st.close()
    assert json.loads((tmp_path / "exported" / "profile.json").read_text())["setup"] == setup


def test_profile_with_its_own_backbone(
    samples: tuple[list[Path], list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile made on another backbone (here 64 px, the server runs 96): the server builds that one for it, and
    zsad detect --profile scores alike."""
    from zsad.cli.main import app

    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "cache"))
    refs, parts = samples
    out = tmp_path / "station"
    out.mkdir()
    db = f"sqlite:///{out / 'station.db'}"
    tiny64 = ["--backbone", "zsad-tiny", "--pretrained", "none", "--image-size", "64", "--device", "cpu"]
    made = CliRunner().invoke(app, ["profile", "create", "small", "--db", db, "--method", "sdp", *tiny64])
    assert made.exit_code == 0, made.output
    svc = _service(out)
    try:
        c = TestClient(create_app(svc))
        answer = c.post("/v1/detect", data={"profile": "small"}, files=_files("images", parts[:3])).json()
        sizes = {m.method.backbone.preprocess.image_size for m in svc.pool._models.values()}
        assert 64 in sizes and answer["revision"] == 1 and answer["threshold"]["source"] == "robust_outlier"
    finally:
        svc.close()
    res = CliRunner().invoke(
        app, ["detect", *map(str, parts[:3]), "--profile", "small", "--db", db, "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    with (tmp_path / "o" / "predictions.csv").open(newline="") as f:
        offline = {Path(r["image_path"]).name: float(r["pred_score"]) for r in csv.DictReader(f)}
    for r in answer["results"]:
        assert offline[r["file_name"]] == pytest.approx(r["pred_score"], rel=1e-5, abs=1e-7)


def test_two_servers_share_one_postgresql(
    samples: tuple[list[Path], list[Path]], postgres_url: str, tmp_path: Path
) -> None:
    """Two servers (own --out each) on one PostgreSQL database: a profile made on one scores on the other (its
    references rebuilt from the database), and each server's history lists both servers' rows."""
    import uuid

    from zsad.store.throwaway import create_database

    refs, parts = samples
    db = create_database(postgres_url, f"s_{uuid.uuid4().hex[:12]}")
    a = _service(tmp_path / "a", db=db, station_name="line-a")
    b = _service(tmp_path / "b", db=db, station_name="line-b")
    try:
        ca, cb = TestClient(create_app(a)), TestClient(create_app(b))
        made = ca.post("/v1/profiles", data={"name": "shared", "method": "winclip"}, files=_files("references", refs))
        assert made.status_code == 200, made.text
        ra = ca.post("/v1/detect", data={"profile": "shared"}, files=_files("images", parts[:2])).json()
        rb = cb.post("/v1/detect", data={"profile": "shared"}, files=_files("images", parts[:2])).json()
        for x, y in zip(ra["results"], rb["results"], strict=True):  # the same revision scores alike on both
            assert x["pred_score"] == pytest.approx(y["pred_score"], rel=1e-6) and x["pred_label"] == y["pred_label"]
        for c in (ca, cb):
            rows = c.get("/v1/inspections", params={"profile": "shared"}).json()["inspections"]
            assert sorted(r["station"] for r in rows) == ["line-a", "line-a", "line-b", "line-b"]
        assert cb.get("/v1/station").json()["db"] == "postgresql"
    finally:
        a.close()
        b.close()
