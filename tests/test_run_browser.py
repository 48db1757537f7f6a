"""The Run tab in headless Chromium: the example run, a click on a trend point opening that step in every tab, a
link naming run, step, sample and tab, a Hub id not cached offline, and an upload with bad files."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from test_browser import ARTIFACTS, LAPTOP, PHONE, open_page, show_tab, wait_plotted

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DATA = Path(__file__).parent / "data" / "runs"
SHOTS = Path(os.environ.get("INSPECTOR_SCREENSHOTS", ARTIFACTS))
RUN_SHOWN = "() => { const s = document.querySelector('#run-status'); return s && /complete step/.test(s.innerText); }"
STEP_SHOWN = """n => { const s = document.querySelector('#status-line');
                   return s && s.innerText.includes('Step ' + n + ' of') && /samples? ×/.test(s.innerText); }"""


@pytest.fixture(scope="module")
def browser():
    from test_browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _run_tab(page):
    show_tab(page, "run")
    page.wait_for_function(RUN_SHOWN, timeout=60_000)
    wait_plotted(page, "#run-trends")


def _click_point(page, index: int) -> int:
    """Move to and click the `index`-th marker of the first trend (a real mouse click); returns its step."""
    pts = page.locator("#run-trends .scatterlayer .trace:first-child .points path")
    pts.nth(index).scroll_into_view_if_needed()
    box = pts.nth(index).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 3, y)
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    return int(page.evaluate("i => document.querySelector('#run-trends .js-plotly-plot').calcdata[0][i].x", index))


def test_a_click_on_a_trend_point_opens_that_step_in_every_tab(browser, app_url):
    page = open_page(browser, app_url)
    try:
        _run_tab(page)
        assert "example run" in page.inner_text("#run-status")
        assert page.locator("#run-findings .diag").count() >= 1
        step = _click_point(page, 1)
        page.wait_for_function(STEP_SHOWN, arg=step, timeout=120_000)
        page.wait_for_function(f"() => new URL(location.href).searchParams.get('step') === '{step}'", timeout=30_000)
        assert new_url(page).get("run") == "example"
        show_tab(page, "sequences")
        page.wait_for_function("() => document.querySelectorAll('#panel-sequences [data-sample]').length === 4",
                               timeout=30_000)
        show_tab(page, "grpo")
        page.wait_for_function("() => /TRL 1.16 GRPOTrainer/.test(document.querySelector('#tab-grpo').innerText)",
                               timeout=180_000)
        page.wait_for_function("() => new URL(location.href).searchParams.get('tab') === 'grpo'", timeout=10_000)
        show_tab(page, "run")
        page.wait_for_function("() => document.querySelectorAll('#run-side-by-side .run-side').length === 2",
                               timeout=60_000)
    finally:
        page.close()


def new_url(page) -> dict:
    from urllib.parse import parse_qs, urlparse

    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1440x900", "390x844"])
def test_a_link_opens_the_run_step_sample_and_tab_it_names(browser, app_url, viewport):
    page = browser.new_page(viewport=viewport)
    try:
        page.goto(app_url + "/?run=example&step=3&sample=1&tab=logprobs")
        page.wait_for_function(STEP_SHOWN, arg=3, timeout=120_000)
        page.wait_for_selector("#tab-logprobs", state="visible", timeout=30_000)
        page.wait_for_function("() => (document.querySelector('#sample-picker input') || {}).value?.startsWith('1: ')",
                               timeout=30_000)
        wait_plotted(page, "#panel-logprobs")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"run-link-logprobs-{viewport['width']}x{viewport['height']}.png"),
                        full_page=False)
        if viewport is PHONE:  # the heatmap keeps most of the width for the tokens
            box = page.locator("#panel-logprobs .js-plotly-plot").bounding_box()
            assert box["width"] >= 0.8 * viewport["width"], box
        _run_tab(page)
        if viewport is PHONE:  # one column of trends, each the full width, no title over another
            page.wait_for_function("() => { const L = document.querySelector('#run-trends .js-plotly-plot').layout;"
                                   " return L.xaxis2 && L.xaxis2.domain[0] === 0; }", timeout=30_000)
            boxes = page.evaluate("""() => Array.from(document.querySelectorAll('#run-trends .draglayer .nsewdrag'))
                                       .map((e) => e.getBoundingClientRect()).filter((b) => b.width > 0)
                                       .map((b) => [b.left, b.top, b.width, b.height])""")
            titles = page.evaluate("""() => Array.from(document.querySelectorAll('#run-trends .annotation'))
                                        .map((e) => e.getBoundingClientRect()).map((b) => [b.top, b.bottom])""")
            legend = page.evaluate("() => document.querySelector('#run-trends .legend').getBoundingClientRect().top")
            assert len(boxes) >= 4 and all(w >= 0.7 * viewport["width"] for _, _, w, _ in boxes), boxes
            tops = sorted(t for _, t, _, _ in boxes)
            assert all(b - a >= min(h for *_, h in boxes) for a, b in zip(tops, tops[1:])), boxes  # stacked, apart
            spans = sorted(titles)
            assert all(a[1] <= b[0] + 1 for a, b in zip(spans, spans[1:])), titles  # no title over another
            assert legend >= max(t + h for _, t, _, h in boxes), (legend, boxes)  # the legend below the last panel
        page.screenshot(path=str(SHOTS / f"run-tab-{viewport['width']}x{viewport['height']}.png"), full_page=True)
    finally:
        page.close()


def test_a_hub_id_not_cached_offline_is_named(browser, app_url):
    page = open_page(browser, app_url)
    try:
        _run_tab(page)
        page.fill("#run-source textarea, #run-source input", "nobody-here/not-a-cached-run")
        page.click("#run-open")
        page.wait_for_function("() => /nobody-here\\/not-a-cached-run/.test(document.querySelector('#run-problems')"
                               ".innerText)", timeout=60_000)
        assert "example run" in page.inner_text("#run-status")  # the run on screen stays
    finally:
        page.close()


def _bad_run_zip(tmp: Path) -> Path:
    """verl steps 1, 2, 4, 5: step 1 with a truncated line and a score of the wrong type, step 3 missing, step 5
    over the upload limit the test sets."""
    root = tmp / "verl-run"
    root.mkdir()
    lines = (DATA / "verl" / "1.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][:60] + "\n"
    lines[2] = lines[2].replace('"score": 1.0', '"score": "high"')
    (root / "1.jsonl").write_text("".join(lines))
    shutil.copy(DATA / "verl" / "2.jsonl", root / "2.jsonl")
    shutil.copy(DATA / "verl" / "2.jsonl", root / "4.jsonl")
    (root / "5.jsonl").write_text((DATA / "verl" / "2.jsonl").read_text() * 40)
    old = time.time() - 600
    for p in root.iterdir():
        os.utime(p, (old, old))
    path = tmp / "verl-run.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.iterdir()):
            z.write(p, f"verl-run/{p.name}")
    return path


def test_bad_files_get_messages_and_the_rest_of_the_run_opens(browser, app_url, tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_MAX_UPLOAD_BYTES", "20000")
    page = open_page(browser, app_url)
    try:
        _run_tab(page)
        page.set_input_files("#run-upload input[type=file]", str(_bad_run_zip(tmp_path)))
        page.wait_for_selector("#run-upload td.download a", timeout=60_000)  # stored: the link to it is shown
        page.click("#run-open")
        page.wait_for_function("() => /format verl|Not opened/.test(document.querySelector('#run-status').innerText"
                               " + document.querySelector('#run-problems').innerText)", timeout=60_000)
        assert "format verl" in page.inner_text("#run-status"), \
            page.inner_text("#run-problems")
        problems = page.inner_text("#run-problems")
        assert "5.jsonl" in problems and "over the upload limit" in problems
        assert "1.jsonl line 2: not valid JSON" in problems
        assert "step(s) 3 missing" in problems
        assert "'score' is str" in problems
        assert "3 complete step(s) (1 to 4)" in page.inner_text("#run-status")
        wait_plotted(page, "#run-trends")
        page.screenshot(path=str(SHOTS / "run-bad-files-1440x900.png"), full_page=True)
    finally:
        page.close()
