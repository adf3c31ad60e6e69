"""`zsad serve` through its HTTP API (FastAPI TestClient) with the tiny seeded backbone.

Scores are checked against `zsad.runs.detect` on the same files (the offline path), maps against their own 16-bit
PNG encoding, thresholds against numpy on independently computed scores; every error code and the token.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from zsad import runs
from zsad.runs.build import BackboneSpec
from zsad.serve.app import create_app
from zsad.serve.service import ServeConfig, Service, Upload

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)
ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from zsad.data import make_sample_images

    root = make_sample_images(tmp_path_factory.mktemp("samples"), n_normal=4, n_anomalous=3, size=112, seed=0)
    return sorted((root / "good").glob("*.png")) + sorted((root / "defect").glob("*.png"))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    svc = Service(ServeConfig(backbone=BB, out=tmp_path_factory.mktemp("served") / "out", max_images=8))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service: Service) -> TestClient:
    return TestClient(create_app(service))


def _files(paths: list[Path], names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = names or [p.name for p in paths]
    return [("images", (n, p.read_bytes(), "image/png")) for n, p in zip(names, paths, strict=True)]


def _offline(paths: list[Path], out: Path, method: str = "winclip", **job: object) -> dict[str, dict[str, str]]:
    runs.detect([str(p) for p in paths], out, method=method, backbone=BB, overlays=False, **job)
    with (out / "predictions.csv").open(newline="") as f:
        return {Path(r["image_path"]).name: r for r in csv.DictReader(f)}


def test_health_and_methods(client: TestClient) -> None:
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["auth"] is False
    m = client.get("/v1/methods").json()
    by = {x["name"]: x for x in m["methods"]}
    assert m["default_method"] == "winclip" and set(by) >= {"winclip", "sdp", "sdp+", "adaclip", "dual-image", "rwda"}
    assert by["winclip"]["few_shot"] and not by["winclip"]["set_level"] and by["winclip"]["random_weights"]
    assert by["dual-image"]["set_level"] and by["dual-image"]["transductive"]
    assert not by["sdp+"]["available"] and "--checkpoint" in by["sdp+"]["unavailable_reason"]
    assert by["winclip"]["backbone"] == "zsad-tiny" and by["winclip"]["image_size"] == 96
    assert client.get("/docs").status_code == 200 and "/v1/detect" in client.get("/openapi.json").json()["paths"]


def test_detect_equals_offline_detect(client: TestClient, samples: list[Path], tmp_path: Path) -> None:
    r = client.post("/v1/detect", files=_files(samples[:4]), data={"class_name": "washer"})
    assert r.status_code == 200, r.text
    ans = r.json()
    ref = _offline(samples[:4], tmp_path / "offline", class_name="washer")
    assert ans["method"] == "winclip" and ans["random_weights"] is True and ans["transductive"] is False
    assert ans["threshold"]["source"] == "robust_outlier"
    assert ans["threshold"]["value"] == pytest.approx(float(ref[samples[0].name]["threshold"]), rel=1e-6)
    for res in ans["results"]:
        off = ref[res["file_name"]]
        assert res["pred_score"] == pytest.approx(float(off["pred_score"]), abs=1e-6)
        assert res["pred_label"] == int(off["pred_label"])
        assert res["image_size"] == [112, 112] and res["map_size"] == [112, 112]
        amap = np.load(io.BytesIO(client.get(res["anomaly_map_npy_url"]).content))
        np.testing.assert_allclose(amap, np.load(tmp_path / "offline" / off["anomaly_map_path"]), atol=1e-6)
        assert (float(amap.min()), float(amap.max())) == pytest.approx((res["map_min"], res["map_max"]))
        png = np.asarray(Image.open(io.BytesIO(client.get(res["anomaly_map_url"]).content)))
        assert png.dtype == np.uint16 and png.min() == 0 and png.max() == 65535
        decoded = res["map_min"] + png / 65535.0 * (res["map_max"] - res["map_min"])
        np.testing.assert_allclose(decoded, amap, atol=(res["map_max"] - res["map_min"]) / 65535 + 1e-7)
        overlay = Image.open(io.BytesIO(client.get(res["overlay_url"]).content))
        assert overlay.width >= 2 * 112 and overlay.height > 112
    lo = min(r["map_min"] for r in ans["results"])
    hi = max(r["map_max"] for r in ans["results"])
    assert ans["colour_range"] == pytest.approx([lo, hi])


def test_single_image_has_no_threshold_unless_given(client: TestClient, samples: list[Path]) -> None:
    one = client.post("/v1/detect", files=_files(samples[:1])).json()
    assert one["threshold"]["value"] is None and one["threshold"]["source"] == "none"
    assert "needs at least 3 images" in one["threshold"]["note"] and one["results"][0]["pred_label"] is None
    s = one["results"][0]["pred_score"]
    below = client.post("/v1/detect", files=_files(samples[:1]), data={"threshold": str(s - 1e-3)}).json()
    above = client.post("/v1/detect", files=_files(samples[:1]), data={"threshold": str(s + 1e-3)}).json()
    assert below["results"][0]["pred_label"] == 1 and above["results"][0]["pred_label"] == 0
    assert below["threshold"]["source"] == "manual"


def test_set_level_method_scores_the_request_as_one_set(
    client: TestClient, samples: list[Path], tmp_path: Path
) -> None:
    ans = client.post("/v1/detect", files=_files(samples[:5]), data={"method": "dual-image", "class_name": "washer"})
    assert ans.status_code == 200, ans.text
    body = ans.json()
    assert body["transductive"] is True and body["set_level"] is True and body["transductive_note"]
    ref = _offline(samples[:5], tmp_path / "offline", method="dual-image", class_name="washer")
    for res in body["results"]:
        assert res["pred_score"] == pytest.approx(float(ref[res["file_name"]]["pred_score"]), abs=1e-5)
    # the same image in another set gets another score: the set decides
    other = client.post("/v1/detect", files=_files(samples[2:7]), data={"method": "dual-image", "class_name": "washer"})
    s1 = {r["file_name"]: r["pred_score"] for r in body["results"]}
    s2 = {r["file_name"]: r["pred_score"] for r in other.json()["results"]}
    assert any(abs(s1[k] - s2[k]) > 1e-6 for k in set(s1) & set(s2))


def test_references_threshold_is_the_normal_quantile(client: TestClient, service: Service, samples: list[Path]) -> None:
    normals = samples[:4]
    r = client.post("/v1/references", files=_files(normals), data={"class_name": "washer", "k_shot": "2"})
    assert r.status_code == 200, r.text
    ref = r.json()
    assert ref["k_shot"] == 2 and ref["num_calibration"] == 2 and ref["threshold_source"] == "normal_quantile"
    # independently: the same model, its 2 references, the 2 other images scored by predict -> 0.99 quantile
    from zsad.data import load_image, squash_image
    from zsad.methods import create_method

    bb = service.pool._backbones and next(iter(service.pool._backbones.values()))
    m = create_method("winclip", bb)
    pre = bb.preprocess
    x = torch_stack([squash_image(load_image(p), pre.image_size, pre.mean, pre.std) for p in normals])
    m.setup("washer", reference_images=x[:2])
    calib = m.predict(x[2:]).pred_score.numpy()
    assert ref["threshold"] == pytest.approx(float(np.quantile(calib.astype(np.float64), 0.99)), rel=1e-5)
    d = client.post("/v1/detect", files=_files(samples[4:6]), data={"reference_id": ref["reference_id"]}).json()
    assert d["threshold"]["source"] == "normal_quantile" and d["reference_id"] == ref["reference_id"]
    want = m.predict(torch_stack([squash_image(load_image(p), 96, pre.mean, pre.std) for p in samples[4:6]]))
    for res, s in zip(d["results"], want.pred_score.numpy(), strict=True):
        assert res["pred_score"] == pytest.approx(float(s), abs=1e-6)
        assert res["pred_label"] == int(res["pred_score"] > ref["threshold"])
    mismatch = client.post(
        "/v1/detect", files=_files(samples[:1]), data={"reference_id": ref["reference_id"], "method": "sdp"}
    )
    assert mismatch.status_code == 422 and "made for method winclip" in mismatch.json()["detail"]


def torch_stack(xs: list) -> object:
    import torch

    return torch.stack(xs)


@pytest.mark.parametrize(
    ("files", "data", "code", "needle"),
    [
        (
            [("images", ("../../evil name.png", b"not an image", "image/png"))],
            {},
            422,
            "../../evil name.png: cannot read",
        ),
        ([("images", ("empty.png", b"", "image/png"))], {}, 422, "empty.png: cannot read image: empty file"),
        (None, {"method": "nosuch"}, 422, "method 'nosuch': unknown; available:"),
        (None, {"options": '{"nosuch": 1}'}, 422, "winclip: unknown option(s) nosuch"),
        (None, {"options": '{"temperature": -1}'}, 422, "temperature"),
        (None, {"options": "{not json"}, 422, "options: not JSON"),
        (None, {"options": '{"checkpoint": "/etc/passwd"}'}, 422, "checkpoint: set by the server"),
        (None, {"options": '{"backbone": "ViT-L-14"}'}, 422, "backbone: set by the server"),
        (None, {"threshold": "abc"}, 422, "threshold"),
        (None, {"method": "sdp+"}, 422, "needs trained parts"),
        (None, {"reference_id": "0" * 32}, 422, "unknown or expired"),
    ],
)
def test_bad_requests_get_one_line_422(
    client: TestClient, samples: list[Path], files: list | None, data: dict, code: int, needle: str
) -> None:
    r = client.post("/v1/detect", files=files or _files(samples[:1]), data=data)
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and needle in detail, detail


def test_too_many_images_and_none(client: TestClient, samples: list[Path]) -> None:
    r = client.post("/v1/detect", files=_files([samples[0]] * 9))
    assert r.status_code == 422 and r.json()["detail"] == "9 images: at most 8 per request"
    r = client.post("/v1/detect", data={"class_name": "x"})
    assert r.status_code == 422 and "images" in r.json()["detail"]


def test_unknown_and_traversing_result_ids_are_404(client: TestClient) -> None:
    for path in (
        "/v1/results/" + "0" * 32 + "/map.png",
        "/v1/results/..%2F..%2Fpredictions.csv/map.png",
        "/v1/results/%2e%2e/overlay.png",
        "/v1/results/" + "0" * 32 + "/..%2F..%2Frun_key.json",
    ):
        assert client.get(path).status_code == 404, path


def test_no_path_comes_from_client_input(client: TestClient, service: Service, samples: list[Path]) -> None:
    names = ["../../x.png", "..\\..\\y.png", "/etc/passwd", "测试 ✓ ünïcode.png", "a" * 300 + ".png", "ok\n\r\t.png"]
    r = client.post("/v1/detect", files=_files([samples[0]] * len(names), names))
    assert r.status_code == 200, r.text
    root = service.store.root
    for res, name in zip(r.json()["results"], names, strict=True):
        assert ID.match(res["image_id"])
        for url in (res["anomaly_map_url"], res["anomaly_map_npy_url"], res["overlay_url"]):
            assert url.startswith(f"/v1/results/{res['image_id']}/")
        assert len(res["file_name"]) <= 100 and "\n" not in res["file_name"]
        if len(name) > 100:
            assert res["file_name"] == "a" * 97 + "..."
        elif name.isprintable():
            assert res["file_name"] == name  # shown as sent (a label, never a path)
        else:
            assert res["file_name"].isprintable()  # httpx percent-encodes control characters; others become '?'

    made = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    allowed = re.compile(
        r"^((maps|overlays|images)/[0-9a-f]{32}\.(npy|png|jpg)|(predictions|errors)\.csv|manifest\.json|run_key\.json|\.zsad\.lock|\.zsad-folder\.json)$"
    )
    assert all(allowed.match(p) for p in made), sorted(p for p in made if not allowed.match(p))
    assert not (root.parent / "x.png").exists() and not Path("/x.png").exists()


def test_token(samples: list[Path], tmp_path: Path) -> None:
    svc = Service(ServeConfig(backbone=BB, token="s3cret"))
    try:
        c = TestClient(create_app(svc))
        assert c.get("/healthz").json()["auth"] is True
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
        ):
            r = c.get("/v1/methods", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            assert c.post("/v1/detect", files=_files(samples[:1]), headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        ans = c.post("/v1/detect", files=_files(samples[:1]), headers=ok)
        assert ans.status_code == 200
        url = ans.json()["results"][0]["overlay_url"]
        assert c.get(url).status_code == 401 and c.get(url, headers=ok).status_code == 200
    finally:
        svc.close()
    assert not svc.store.root.exists()  # no --out: the temporary results go with the server


def test_upload_limit_is_413(samples: list[Path]) -> None:
    svc = Service(ServeConfig(backbone=BB, max_upload_bytes=20_000))
    try:
        c = TestClient(create_app(svc))
        big = [("images", ("big.png", b"\0" * 30_000, "image/png"))]
        r = c.post("/v1/detect", files=big)
        assert r.status_code == 413 and "upload limit of 20000 bytes" in r.json()["detail"]

        def chunks():  # no Content-Length: counted as it streams
            yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
            for _ in range(10):
                yield b"\0" * 5000

        r = c.post("/v1/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        assert c.get("/healthz").status_code == 200
    finally:
        svc.close()


def test_full_queue_is_503_and_health_answers_while_busy(samples: list[Path]) -> None:
    svc = Service(ServeConfig(backbone=BB, max_queue=1))
    try:
        c = TestClient(create_app(svc))
        assert c.post("/v1/detect", files=_files(samples[:1])).status_code == 200  # model built
        gate = threading.Event()
        svc.batcher.call(gate.wait)  # the worker is busy
        time.sleep(0.1)
        svc.batcher.call(lambda: None)  # the queue (size 1) is full
        t0 = time.monotonic()
        h = c.get("/healthz").json()
        assert h["worker_busy"] is True and h["queue_depth"] == 1 and time.monotonic() - t0 < 2
        r = c.post("/v1/detect", files=_files(samples[:1]))
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue is full" in r.json()["detail"]
        gate.set()
        deadline = time.monotonic() + 10
        while svc.batcher.depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.post("/v1/detect", files=_files(samples[:1])).status_code == 200
    finally:
        gate.set()
        svc.close()


def test_concurrent_requests_share_forwards_with_the_same_scores(samples: list[Path]) -> None:
    svc = Service(ServeConfig(backbone=BB, max_batch=8, max_wait_ms=300))
    try:
        one = [Upload(p.name, p.read_bytes()) for p in samples[:6]]
        alone = [asyncio.run(svc.detect([u], class_name="washer"))["results"][0]["pred_score"] for u in one]
        before = svc.batcher.stats.batches

        async def together() -> list[dict]:
            return await asyncio.gather(*(svc.detect([u], class_name="washer") for u in one))

        answers = asyncio.run(together())
        st = svc.batcher.stats
        assert st.batches - before < len(one), "the six single-image requests were not gathered"
        assert st.largest >= 2
        for a, s in zip(answers, alone, strict=True):
            assert a["results"][0]["pred_score"] == pytest.approx(s, abs=1e-5)
    finally:
        svc.close()


def test_out_holds_every_scored_image_after_stop(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    svc = Service(ServeConfig(backbone=BB, out=out))
    c = TestClient(create_app(svc))
    with c:
        got = [
            c.post("/v1/detect", files=_files(samples[i : i + 2]), data={"class_name": "washer"}).json()
            for i in (0, 2, 4)
        ]
    # the app's shutdown closed the service: the folder is released and complete
    with (out / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [r["image_id"] for a in got for r in [*a["results"]]]
    assert [r["image_id"] for r in rows] == ids and len(rows) == 6
    by = {r["image_id"]: r for r in rows}
    for a in got:
        for res in a["results"]:
            row = by[res["image_id"]]
            assert float(row["pred_score"]) == pytest.approx(res["pred_score"], rel=1e-7)
            assert (out / row["anomaly_map_path"]).is_file() and (out / row["overlay_path"]).is_file()
            assert (
                Path(row["image_path"]).read_bytes()
                == next(p for p in samples if p.name == res["file_name"]).read_bytes()
            )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "serve" and manifest["num_images"] == 6 and rows[0]["model_id"] in manifest["models"]
    assert "token" not in json.dumps(manifest)
    # a second server on the same folder appends; a detect run there is refused (another run's folder)
    svc2 = Service(ServeConfig(backbone=BB, out=out))
    asyncio.run(svc2.detect([Upload("z.png", samples[6].read_bytes())]))
    svc2.close()
    with (out / "predictions.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 7
    from zsad.errors import ZsadInputError

    with pytest.raises(ZsadInputError, match="holds the results of zsad serve"):
        runs.detect([str(samples[0])], out, backbone=BB)


def test_busy_out_folder_is_refused(tmp_path: Path) -> None:
    from zsad.errors import ZsadInputError

    svc = Service(ServeConfig(backbone=BB, out=tmp_path / "o"))
    try:
        with pytest.raises(ZsadInputError, match="another zsad run .* is writing to this folder"):
            Service(ServeConfig(backbone=BB, out=tmp_path / "o"))
    finally:
        svc.close()


def test_client_name_is_a_printable_label() -> None:
    from zsad.serve.service import client_name

    assert client_name("ok\n\r\t.png") == "ok???.png"
    assert client_name("") == "upload" and client_name(None) == "upload"
    assert client_name("x" * 101) == "x" * 97 + "..."


def test_bf16_service_equals_offline_bf16_and_ray_carries_precision(samples: list[Path], tmp_path: Path) -> None:
    """--precision reaches the service's models (reported) and the Ray actors' backbone spec."""
    from dataclasses import replace

    from zsad.engines.ray_data import RayOptions, _actor_backbone

    bf16 = replace(BB, precision="bf16")
    svc = Service(ServeConfig(backbone=bf16, out=tmp_path / "served"))
    try:
        client = TestClient(create_app(svc))
        from zsad.methods import get_method_class

        listed = {m["name"]: m["precision"] for m in client.get("/v1/methods").json()["methods"]}
        kept = {n for n in listed if "bf16" in get_method_class(n).full_precision}
        assert kept == {"rwda", "anomalyclip", "anomalyvfm"}  # measured to flip decisions in bf16 (RESULTS.md)
        assert {listed[n] for n in kept} == {"fp32"} and {listed[n] for n in listed if n not in kept} == {"bf16"}
        ans = client.post("/v1/detect", files=_files(samples[:3]), data={"method": "sdp", "class_name": "washer"})
        assert ans.status_code == 200, ans.text
        ans = ans.json()
    finally:
        svc.close()
    assert ans["precision"] == "bf16"
    runs.detect([str(p) for p in samples[:3]], tmp_path / "b", method="sdp", backbone=bf16, overlays=False,
                class_name="washer")  # fmt: skip
    fp32 = _offline(samples[:3], tmp_path / "f", method="sdp", class_name="washer")
    with (tmp_path / "b" / "predictions.csv").open(newline="") as f:
        ref = {Path(r["image_path"]).name: r for r in csv.DictReader(f)}
    for res in ans["results"]:
        assert res["pred_score"] == pytest.approx(float(ref[res["file_name"]]["pred_score"]), abs=1e-6)
    assert any(abs(r["pred_score"] - float(fp32[r["file_name"]]["pred_score"])) > 0 for r in ans["results"])
    sent = _actor_backbone(bf16, RayOptions(), device_given=True)
    assert BackboneSpec(**sent) == bf16
