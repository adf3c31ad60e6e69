"""`zsad serve` as a real process: start, score through `zsad.client`, stop with Ctrl-C, and bad settings."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import TINY, serving
from typer.testing import CliRunner

from zsad import client
from zsad.cli.main import app


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from zsad.data import make_sample_images

    root = make_sample_images(tmp_path_factory.mktemp("samples"), n_normal=2, n_anomalous=2, size=96, seed=1)
    return sorted((root / "good").glob("*.png")) + sorted((root / "defect").glob("*.png"))


def test_serve_process_scores_and_keeps_rows_after_ctrl_c(samples: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    log = tmp_path / "serve.log"
    with serving(*TINY, "--out", str(out), "--token", "t0k", log=log) as url:
        with pytest.raises(client.ZsadServiceError) as e:
            client.detect(url, samples[:2], token="")
        assert e.value.status == 401
        res = client.detect(url, samples[:2], class_name="washer", token="t0k")
        ref = client.references(url, samples[:2], class_name="washer", token="t0k")
        res2 = client.detect(url, samples[2:], reference_id=ref["reference_id"], token="t0k")
        amap = client.anomaly_map(url, res["results"][0], token="t0k")
        assert amap.shape == (96, 96) and amap.dtype == np.float32
        assert float(amap.max()) == pytest.approx(res["results"][0]["map_max"])
        names = [m["name"] for m in client.methods(url, token="t0k")["methods"]]
        assert "winclip" in names
    assert serving.returncode == 0, log.read_text()[-2000:]  # type: ignore[attr-defined]
    text = log.read_text()
    assert "Traceback" not in text and "http://127.0.0.1:" in text
    with (out / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    want = [r["image_id"] for a in (res, res2) for r in a["results"]]
    assert [r["image_id"] for r in rows] == want
    assert rows[-1]["threshold_source"] == "normal_quantile" and rows[-1]["reference_id"] == ref["reference_id"]
    runner = CliRunner()
    assert runner.invoke(app, ["detect", str(samples[0]), "--out", str(out), *TINY]).exit_code == 2


def test_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = CliRunner().invoke(app, ["serve", "--port", str(port), *TINY])
    assert res.exit_code == 2 and "cannot bind" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-batch", "0"], "--max-batch 0: must be >= 1"),
        (["--max-wait-ms", "-1"], "--max-wait-ms -1.0"),
        (["-o", "nosuch=1"], "winclip has no option 'nosuch'"),
        (["-o", "winclip:temperature=0"], "temperature"),
        (["--method", "nosuch"], "nosuch"),
        (["--token", " "], "--token: empty"),
    ],
)
def test_bad_settings_are_one_line(args: list[str], needle: str) -> None:
    res = CliRunner().invoke(app, ["serve", "--port", "1", *TINY, *args])
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()) and len(res.output.strip().splitlines()) == 1, res.output


def test_overload_answers_503_never_hangs(samples: list[Path], tmp_path: Path) -> None:
    import threading

    import httpx

    blob = samples[0].read_bytes()
    codes: list[int] = []
    failures: list[str] = []
    with serving(*TINY, "--max-queue", "2", "--max-wait-ms", "0", log=tmp_path / "serve.log") as url:
        client.detect(url, samples[:1])  # the model is built before the rush

        def one() -> None:
            try:
                with httpx.Client(base_url=url, timeout=60) as c:
                    for _ in range(3):
                        r = c.post("/v1/detect", files=[("images", ("a.png", blob, "image/png"))])
                        codes.append(r.status_code)
                        if r.status_code == 503:
                            assert r.headers["retry-after"] == "1"
            except Exception as e:  # a hang (timeout) or a dropped connection
                failures.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads) and not failures, failures
        assert len(codes) == 48 and set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
        assert client.detect(url, samples[:1])["results"][0]["pred_score"] is not None
    assert serving.returncode == 0  # type: ignore[attr-defined]
