"""The web page in a real browser: Debian's chromium driven by Playwright, against `zsad serve` on localhost.

Two real Magnetic Tile images are uploaded; the table, the overlays, the live threshold slider and the CSV
download are checked, and a screenshot is saved under the test's tmp dir (its path is printed).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import httpx
import pytest
from serve_helpers import TINY, serving

pytestmark = pytest.mark.assets  # `browser` (chromium driven by Playwright) is in conftest.py


def _label_texts(page) -> list[str]:
    return page.locator("#results-table tbody tr.result-row td.label").all_inner_texts()


def test_page_scores_two_images_end_to_end(browser, assets_dir: Path, tmp_path: Path) -> None:
    tile = assets_dir / "magnetic_tile"
    images = [
        sorted((tile / "MT_Free" / "Imgs").glob("*.jpg"))[0],
        sorted((tile / "MT_Crack" / "Imgs").glob("*.jpg"))[0],
    ]
    out = tmp_path / "out"
    with serving(*TINY, "--out", str(out), log=tmp_path / "serve.log") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/#history")  # asked for History without a station: the page stays on Score and says why
        page.wait_for_function("document.querySelector('#method').options.length > 1")
        page.wait_for_function("document.querySelector('#station-note').textContent.length > 0")
        reason = httpx.get(url + "/v1/station").json()["reason"]
        assert page.locator("#tab-history").is_disabled() and reason
        assert page.inner_text("#station-note") == f"History unavailable: {reason}"
        assert page.locator("#view-history").is_hidden() and page.locator("#profile-row").is_hidden()
        assert page.locator("#random-warning").is_visible()  # --pretrained none is said plainly
        page.fill("#class-name", "magnetic tile")
        page.set_input_files("#file-input", [str(p) for p in images])
        page.click("#score-btn")
        rows = page.locator("#results-table tbody tr.result-row")
        rows.nth(1).wait_for(timeout=120_000)
        assert rows.count() == 2
        scores = [float(t) for t in page.locator("#results-table tbody td.score").all_inner_texts()]
        assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
        assert scores == sorted(scores, reverse=True)  # sorted by score
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#overlays .overlay-img'))"
            ".filter(i => i.complete && i.naturalWidth > 0).length === 2",
            timeout=30_000,
        )
        widths = page.eval_on_selector_all("#overlays .overlay-img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 2 and all(w > 0 for w in widths)

        def slide(to: str) -> None:
            page.eval_on_selector(
                "#threshold",
                f"el => {{ el.value = el.{to}; el.dispatchEvent(new Event('input', {{bubbles: true}})); }}",
            )

        slide("min")  # every score is above the lowest threshold
        assert _label_texts(page) == ["anomalous", "anomalous"]
        slide("max")
        assert _label_texts(page) == ["normal", "normal"]
        assert "manual" in page.inner_text("#threshold-value")
        with page.expect_download() as dl:
            page.click("#csv-btn")
        text = Path(dl.value.path()).read_text()
        table = list(csv.DictReader(io.StringIO(text)))
        assert len(table) == 2 and {r["file_name"] for r in table} == {p.name for p in images}
        assert [r["pred_label"] for r in table] == ["0", "0"]  # the slider's labels, not the server's
        shot = tmp_path / "serve_page.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        assert not errors, errors
        page.close()
    with (out / "predictions.csv").open(newline="") as f:
        stored = {r["file_name"]: float(r["pred_score"]) for r in csv.DictReader(f)}
    assert len(stored) == 2  # the page's request is in --out after the server stopped
    for r in table:  # the page's CSV carries the server's scores
        assert float(r["pred_score"]) == pytest.approx(stored[r["file_name"]], rel=1e-6)
