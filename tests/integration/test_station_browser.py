"""The inspection station in a real browser: Debian's chromium driven by Playwright, against `zsad serve --station`.

One loop, as an operator would run it: create a profile from the page (winclip, two real normal Magnetic Tile
images), score six images with it from the Score view, open History, filter the flagged ones, review two images
with the keyboard (d, then n) from the "Review flagged" queue, add the confirmed normal to the references (a new
revision with a new threshold), then stop the server, start it again on the same --out and find the profile, its
revisions, the six inspections and the two reviews again. Screenshots of the History view with the review panel
open, at 1280 and 390 px wide, are saved under the test's tmp dir (their paths are printed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from serve_helpers import TINY, serving
from watch_helpers import make_station, tile_images, write_files

pytestmark = pytest.mark.assets  # `browser` (chromium driven by Playwright) is in conftest.py

PROFILE = "tile-line-1"
ROWS = "#history-table tbody tr.insp-row"


def _images(assets_dir: Path) -> tuple[list[Path], list[Path]]:
    tile = assets_dir / "magnetic_tile"
    free = sorted((tile / "MT_Free" / "Imgs").glob("*.jpg"))
    defects = [sorted((tile / d / "Imgs").glob("*.jpg"))[0] for d in ("MT_Crack", "MT_Blowhole", "MT_Break")]
    return free[:2], [*free[2:5], *defects]


def _api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60)


def _inspections(api: httpx.Client, **params: str) -> list[dict]:
    r = api.get("/v1/inspections", params={"profile": PROFILE, "limit": "100", **params})
    assert r.status_code == 200, r.text
    return r.json()["inspections"]


def _until(page, condition: str, timeout: float = 30_000) -> None:
    """Wait until the JS ``condition`` holds; an error message the page shows instead fails at once, with its text."""
    shown = "['error', 'history-error'].some(id => !document.getElementById(id).hidden)"
    page.wait_for_function(f"({condition}) || {shown}", timeout=timeout)
    for box in ("#error", "#history-error"):
        assert page.locator(box).is_hidden(), f"the page says: {page.inner_text(box)}"


def _wait_rows(page, n: int) -> None:
    _until(
        page,
        f"document.querySelectorAll('{ROWS}').length === {n} && !document.querySelector('#history-meta')"
        ".textContent.startsWith('Loading')",
    )


def _files(paths: list[Path], field: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _threshold_between(api: httpx.Client, refs: list[Path], images: list[Path]) -> float:
    """A threshold half-way through the scores winclip gives ``images`` with ``refs`` (an ad hoc request, source api).

    Random weights score real tiles in a narrow band that the references' normal quantile may lie above, so the
    profile gets a manual threshold that flags some of its images (the references' quantile comes back later, when
    the confirmed normal is added).
    """
    form = {"method": "winclip", "class_name": "magnetic tile"}
    ref = api.post("/v1/references", data=form, files=_files(refs, "images"))
    assert ref.status_code == 200, ref.text
    r = api.post(
        "/v1/detect", data={**form, "reference_id": ref.json()["reference_id"]}, files=_files(images, "images")
    )
    assert r.status_code == 200, r.text
    s = sorted((x["pred_score"] for x in r.json()["results"]), reverse=True)
    assert s[2] > s[3], s
    return round((s[2] + s[3]) / 2, 6)


def _column(page, cls: str) -> list[str]:
    return page.locator(f"{ROWS} td.{cls}").all_inner_texts()


def test_station_loop_in_the_browser(browser, assets_dir: Path, tmp_path: Path) -> None:
    refs, scored = _images(assets_dir)
    out = tmp_path / "out"
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.on("pageerror", lambda e: errors.append(str(e)))

    with serving(*TINY, "--out", str(out), "--station", log=tmp_path / "serve1.log") as url, _api(url) as api:
        methods = {m["name"]: m for m in api.get("/v1/methods").json()["methods"]}
        assert methods["winclip"]["few_shot"] and methods["winclip"]["available"]
        manual = _threshold_between(api, refs, scored)
        page.goto(url + "/")
        _until(page, "document.querySelector('#np-method').options.length > 1")
        assert page.locator("#profile-row").is_visible()
        assert page.locator("#tab-history").is_enabled()

        # --- a profile from the page's form: winclip with two normal references
        page.click("#new-profile summary")
        page.fill("#np-name", PROFILE)
        page.select_option("#np-method", "winclip")
        page.fill("#np-class", "magnetic tile")
        page.set_input_files("#np-refs", [str(p) for p in refs])
        page.fill("#np-threshold", str(manual))
        page.click("#np-create")
        _until(page, f"document.querySelector('#profile').value === {PROFILE!r}", timeout=60_000)
        created = api.get(f"/v1/profiles/{PROFILE}").json()
        assert created["revision"] == 1 and len(created["setup"]["references"]) == 2
        thr1 = created["threshold"]["value"]
        assert created["setup"]["method"] == "winclip" and thr1 == pytest.approx(manual)
        info = page.inner_text("#profile-info")
        assert "Revision 1" in info and "2 reference images" in info and f"{thr1:.4g}" in info
        assert page.locator("#method").is_disabled() and page.locator("#class-name").is_disabled()

        # --- six images scored with the profile from the Score view
        page.set_input_files("#file-input", [str(p) for p in scored])
        page.click("#score-btn")
        page.locator("#results-table tbody tr.result-row").nth(5).wait_for(timeout=60_000)
        assert f"profile {PROFILE} @ revision 1" in page.inner_text("#results-meta")
        rows = _inspections(api)
        assert len(rows) == 6
        assert {r["file_name"] for r in rows} == {p.name for p in scored}
        assert {(r["source"], r["revision"], r["threshold"]) for r in rows} == {("upload", 1, thr1)}
        flagged = [r for r in rows if r["label"] == 1]
        assert flagged == [r for r in rows if r["score"] > thr1] and len(flagged) >= 2, [r["score"] for r in rows]

        # --- History: the profile's six inspections; then only the flagged ones
        page.click("#tab-history")
        assert page.input_value("#f-profile") == PROFILE  # the Score view's profile is the starting filter
        _wait_rows(page, 6)
        assert sorted(_column(page, "file")) == sorted(p.name for p in scored)
        page.select_option("#f-label", "1")
        _wait_rows(page, len(flagged))
        assert set(_column(page, "label")) <= {"flagged"}
        page.select_option("#f-label", "")
        _wait_rows(page, 6)

        # --- the review queue: unreviewed flagged by score, then the rest by score; d then n by keyboard
        page.click("#review-flagged-btn")
        _until(page, "document.querySelector('#review-position').textContent.startsWith('1 of 6')")
        queue = [r["uid"] for r in sorted(flagged, key=lambda r: -r["score"])]
        queue += [r["uid"] for r in sorted(rows, key=lambda r: -r["score"]) if r["label"] != 1]
        first, second = (next(r for r in rows if r["uid"] == u) for u in queue[:2])
        assert page.inner_text("#review-file") == first["file_name"]
        _until(
            page,
            "['review-image', 'review-overlay'].every(id => { const i = document.getElementById(id);"
            " return i && i.tagName === 'IMG' && i.complete && i.naturalWidth > 0; })",
            timeout=30_000,
        )
        page.keyboard.press("d")
        _until(page, "document.querySelector('#review-position').textContent.startsWith('2 of 6')")
        assert page.inner_text("#review-file") == second["file_name"]
        page.fill("#review-note", "fine, only texture")
        page.keyboard.press("n")  # typed into the note: no verdict
        assert page.input_value("#review-note") == "fine, only texturen"
        page.fill("#review-note", "fine, only texture")
        page.locator("#review-note").press("Escape")  # leaves the field, so the shortcuts work again
        page.keyboard.press("n")
        _until(page, "document.querySelector('#review-position').textContent.startsWith('3 of 6')")
        page.keyboard.press("ArrowLeft")  # back to the one just judged: its verdict and note are shown
        _until(page, "document.querySelector('#review-position').textContent.startsWith('2 of 6')")
        assert page.input_value("#review-note") == "fine, only texture"
        assert page.inner_text("#review-current").startswith("Reviewed: normal")
        page.keyboard.press("ArrowRight")
        _until(page, "document.querySelector('#review-position').textContent.startsWith('3 of 6')")
        reviewed = {u: api.get(f"/v1/inspections/{u}").json() for u in queue[:2]}
        assert reviewed[first["uid"]]["review_label"] == "defect"
        assert reviewed[second["uid"]]["review_label"] == "normal"
        assert reviewed[second["uid"]]["review_note"] == "fine, only texture"
        assert sorted(t for t in _column(page, "review") if t != "—") == ["defect", "normal"]
        _until(page, "document.querySelector('#dash-stats').textContent.includes('Reviewed2')")
        assert "1 of 2 reviewed flagged" in page.inner_text("#dash-stats")  # d then n on the two highest, both flagged
        refit = api.get(f"/v1/profiles/{PROFILE}/feedback").json()["refit"]
        expected = f"{refit['flags_before']} → {refit['flags_after']}"
        _until(page, f"document.querySelector('#fb-facts').textContent.includes({expected!r})")

        # --- feedback: the one confirmed normal goes into the references: revision 2, a new threshold
        _until(page, "document.querySelector('#fb-normals').dataset.newNormals === '1'")
        assert page.locator("#fb-normals").is_enabled()
        page.click("#fb-normals")
        _until(page, "document.querySelector('#pp-summary').dataset.revision === '2'", timeout=60_000)
        revised = api.get(f"/v1/profiles/{PROFILE}").json()
        assert revised["revision"] == 2 and len(revised["setup"]["references"]) == 3
        thr2 = revised["threshold"]["value"]
        assert thr2 != thr1  # the references' normal quantile moved with the third image
        assert float(page.get_attribute("#pp-summary", "data-threshold")) == pytest.approx(thr2)
        assert f"{thr2:.4g}" in page.inner_text("#pp-summary") and "now revision 2" in page.inner_text("#fb-result")
        assert page.locator("#revisions-table tbody tr").count() == 2
        assert page.get_attribute("#fb-normals", "data-new-normals") == "0"
        _until(page, "document.querySelector('#profile').selectedOptions[0].textContent.includes('rev. 2')")

        # --- screenshots of the History view with the review panel open
        assert page.locator("#review-panel").is_visible()
        shots = {w: tmp_path / f"station_history_{w}px.png" for w in (1280, 390)}
        page.screenshot(path=str(shots[1280]), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)  # the charts redraw at the new width
        page.screenshot(path=str(shots[390]), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page scrolls sideways at 390 px by {overflow} px: {shots[390]}"
        page.set_viewport_size({"width": 1280, "height": 1000})
        for w, shot in shots.items():
            print(f"screenshot {w}px: {shot}")
            assert shot.stat().st_size > 20_000
        assert page.locator("#history-error").is_hidden(), page.inner_text("#history-error")
    assert serving.returncode == 0  # type: ignore[attr-defined]

    # --- a new server on the same --out: the profile, its revisions, the inspections and the reviews are back
    with serving(*TINY, "--out", str(out), "--station", log=tmp_path / "serve2.log") as url, _api(url) as api:
        page.goto(url + "/#history")
        _until(page, f"Array.from(document.querySelector('#f-profile').options).some(o => o.value === {PROFILE!r})")
        assert page.locator("#view-history").is_visible()
        page.select_option("#f-profile", PROFILE)
        _wait_rows(page, 6)
        assert sorted(_column(page, "file")) == sorted(p.name for p in scored)
        assert sorted(t for t in _column(page, "review") if t != "—") == ["defect", "normal"]
        _until(page, "document.querySelector('#pp-summary').dataset.revision === '2'")
        revisions = page.locator("#revisions-table tbody tr td.num:first-child").all_inner_texts()
        assert [int(t) for t in revisions] == [2, 1]
        assert float(page.get_attribute("#pp-summary", "data-threshold")) == pytest.approx(thr2)
        page.select_option("#f-reviewed", "true")
        _wait_rows(page, 2)
        again = {r["uid"]: r["review_label"] for r in _inspections(api, reviewed="true")}
        assert again == {first["uid"]: "defect", second["uid"]: "normal"}
        assert len(_inspections(api)) == 6
        page.select_option("#f-reviewed", "")
        page.fill("#f-score-min", str(thr1))  # a score range: exactly the flagged ones lie above the threshold
        page.click("#f-apply")
        _wait_rows(page, len(flagged))

        # --- roll back to revision 1: a third revision with the first one's threshold
        page.click(f"#revisions-table button[aria-label='Roll back {PROFILE} to revision 1']:visible")
        _until(page, "document.querySelector('#pp-summary').dataset.revision === '3'", timeout=60_000)
        rolled = api.get(f"/v1/profiles/{PROFILE}").json()
        assert rolled["revision"] == 3 and rolled["reason"] == "rollback to 1"
        assert rolled["threshold"]["value"] == pytest.approx(thr1) and len(rolled["setup"]["references"]) == 2
        assert float(page.get_attribute("#pp-summary", "data-threshold")) == pytest.approx(thr1)
        assert page.locator("#revisions-table tbody tr").count() == 3
        assert page.locator("#history-error").is_hidden(), page.inner_text("#history-error")
    assert not errors, errors
    page.close()


# Every call of the page to /v1/stats, with the page's clock time, read back by the intake panel's test.
COUNT_STATS = """
window.__statsCalls = [];
const pageFetch = window.fetch.bind(window);
window.fetch = (input, init) => {
  if (String(input).endsWith("/v1/stats")) window.__statsCalls.push(performance.now());
  return pageFetch(input, init);
};
"""


def _cell(row, field: str):
    """A cell of the intake panel's row by what it counts (``data-field``; counts carry ``data-value`` exactly)."""
    return row.locator(f'[data-field="{field}"]')


def test_intake_and_delivery_panel(browser, assets_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    out, inbox = tmp_path / "out", tmp_path / "inbox"
    make_station(out)  # profile "tile", a manual threshold
    inbox.mkdir()
    sink = f"file:{tmp_path}/events.jsonl"
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.clock.install()  # time flows as usual; run_for() below jumps ahead
    context.add_init_script(COUNT_STATS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    watch = ["--watch", f"{inbox}=tile", "--settle", "0.3", "--sink", sink]
    with serving(*TINY, "--out", str(out), "--station", *watch, log=tmp_path / "serve.log") as url:
        page.goto(url + "/#history")
        panel = page.locator("#intake-panel")
        expect(panel).to_be_visible(timeout=30_000)
        folder = page.locator(f'#watch-table tbody tr[data-folder="{inbox}"]')
        sink_row = page.locator(f'#sinks-table tbody tr[data-sink="{sink}"]')
        expect(folder).to_have_count(1)
        expect(sink_row).to_have_count(1)
        assert page.locator("#watch-table tbody tr").count() == 1
        expect(_cell(folder, "state")).to_have_text("watching")
        expect(_cell(folder, "scored")).to_have_attribute("data-value", "0")
        expect(_cell(sink_row, "delivered")).to_have_attribute("data-value", "0")
        assert folder.locator("td.prof").inner_text() == "tile"
        assert sink_row.locator("td.kind").inner_text().startswith("file")

        # Switching views back and forth, or clicking History again, must leave one refresh chain, not one per click.
        for _ in range(3):
            page.click("#tab-score")
            page.click("#tab-history")
            page.click("#tab-history")  # again, while it shows
        since = page.evaluate("window.__statsCalls[window.__statsCalls.length - 1]")  # the last visit's refresh

        write_files(tile_images(assets_dir, 3), inbox)
        expect(_cell(folder, "scored")).to_have_attribute("data-value", "3", timeout=60_000)
        expect(_cell(folder, "scored")).to_have_text("3")
        expect(_cell(sink_row, "delivered")).to_have_attribute("data-value", "3", timeout=30_000)
        expect(_cell(sink_row, "pending")).to_have_attribute("data-value", "0")
        expect(_cell(folder, "pending")).to_have_attribute("data-value", "0")
        for field in ("errors", "routed"):
            expect(_cell(folder, field)).to_have_attribute("data-value", "0")
        assert _cell(sink_row, "oldest_pending_s").inner_text() == "—"
        assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 3

        shutil.rmtree(inbox)
        expect(_cell(folder, "state")).to_have_text("MISSING", timeout=30_000)
        assert folder.get_attribute("data-state") == "missing"
        expect(_cell(folder, "scored")).to_have_attribute("data-value", "3")  # the counts stay
        assert page.locator("#intake-note").is_hidden()
        shot = tmp_path / "intake_panel.png"
        panel.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the tables scroll inside the panel
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page scrolls sideways at 390 px by {overflow} px"
        page.set_viewport_size({"width": 1280, "height": 1000})

        calls = page.evaluate("window.__statsCalls")
        after = [t for t in calls if t >= since]
        gaps = [round(b - a) for a, b in zip(after, after[1:], strict=False)]
        assert len(after) >= 3 and all(g >= 4_500 for g in gaps), gaps  # one refresh per 5 s, never stacked

        # The Score view stops the refresh: a minute of the page's time passes without a request.
        page.click("#tab-score")
        before = page.evaluate("window.__statsCalls.length")
        page.clock.run_for(60_000)
        assert page.evaluate("window.__statsCalls.length") == before
        page.click("#tab-history")  # back: refreshed at once
        page.wait_for_function(f"window.__statsCalls.length === {before + 1}")

        # /v1/stats failing: one line in the panel, the last tables kept, the rest of the page as before.
        page.route("**/v1/stats", lambda route: route.fulfill(status=500, json={"detail": "stats broke"}))
        page.click("#tab-history")
        expect(page.locator("#intake-note")).to_contain_text("Error 500: stats broke")
        expect(_cell(folder, "scored")).to_have_attribute("data-value", "3")
        expect(page.locator(ROWS)).to_have_count(3)  # the three watched files, in the inspection list
        assert page.locator("#history-error").is_hidden(), page.inner_text("#history-error")
        page.unroute("**/v1/stats")
        page.click("#tab-history")
        expect(page.locator("#intake-note")).to_be_hidden()
    assert serving.returncode == 0  # type: ignore[attr-defined]
    assert page.locator("#history-error").is_hidden(), page.inner_text("#history-error")
    assert not errors, errors
    context.close()
