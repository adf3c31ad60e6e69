"""``/metrics`` (Prometheus text format, parsed back with prometheus_client's parser) and ``/readyz``.

The counters are checked against what the requests did: images decided by profile and label, requests, latency
observations, the batch-size histogram against ``/v1/stats``; readiness against a model being built and a
PostgreSQL database dropped under a running station.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from zsad.runs.build import BackboneSpec
from zsad.serve.app import create_app
from zsad.serve.models import ModelKey
from zsad.serve.service import ServeConfig, Service

BB = BackboneSpec("zsad-tiny", "none", None, 96, "cpu", 0)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from zsad.data import make_sample_images

    root = make_sample_images(tmp_path_factory.mktemp("m"), n_normal=3, n_anomalous=2, size=96, seed=2)
    return sorted(root.rglob("*.png"))


def test_metrics_count_what_the_requests_did(images: list[Path], tmp_path: Path) -> None:
    svc = Service(ServeConfig(backbone=BB, out=tmp_path / "out", station=True))
    try:
        c = TestClient(create_app(svc))
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
        a = c.post("/v1/detect", files=files).json()
        b = c.post("/v1/detect", files=files[:2], data={"threshold": "0.5"}).json()
        labels = [r["pred_label"] for r in a["results"] + b["results"]]
        got = _samples(c.get("/metrics").text)
        for name in ("anomalous", "normal", "none"):
            want = sum(1 for x in labels if {None: "none", 1: "anomalous", 0: "normal"}[x] == name)
            assert got.get(("zsad_decisions_total", (("label", name), ("profile", "")))) == (want or None)
        assert got[("zsad_requests_total", ())] == 2
        assert got[("zsad_images_scored_total", ())] == len(labels)
        assert got[("zsad_request_seconds_count", ())] == 2
        assert got[("zsad_station_inspections_recorded_total", ())] == len(labels)
        stats = c.get("/v1/stats").json()["batching"]
        assert got[("zsad_batches_total", ())] == stats["batches"]
        assert got[("zsad_batch_images_count", ())] == stats["batches"]
        assert got[("zsad_batch_images_sum", ())] == stats["images"]
        assert got[("zsad_queue_depth", ())] == 0
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}
        svc.pool._building[ModelKey("winclip", "{}", "screw")] = Future()  # a model being built: not ready
        loading = c.get("/readyz")
        assert (
            loading.status_code == 503 and "loading the model of winclip for class 'screw'" in loading.json()["reasons"]
        )
        svc.pool._building.clear()
    finally:
        svc.close()


def test_not_ready_when_the_database_is_gone(postgres_url: str, tmp_path: Path) -> None:
    from zsad.store.throwaway import create_database

    name = f"r_{uuid.uuid4().hex[:12]}"
    svc = Service(ServeConfig(backbone=BB, out=tmp_path / "out", db=create_database(postgres_url, name)))
    try:
        c = TestClient(create_app(svc))
        assert c.get("/readyz").status_code == 200
        svc.station._engine.dispose()  # type: ignore[union-attr]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        gone = c.get("/readyz")
        assert gone.status_code == 503
        assert gone.json()["reasons"][0].startswith("the station's database is unreachable")
    finally:
        svc.close()
