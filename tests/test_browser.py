"""The real app in headless Chromium (Debian's /usr/bin/chromium), as a person uses it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


LAPTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh --dev does).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url, viewport=LAPTOP):
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.wait_for_selector("#run", timeout=60_000)
    return page


@pytest.fixture(scope="module")
def page(browser, app_url):
    page = open_page(browser, app_url)
    yield page
    page.close()


def show_tab(page, tab: str) -> None:
    """Select a tab of the views (sequences, logprobs, value-reward, ppo, batch)."""
    page.click(f"#tab-{tab}-button")
    page.wait_for_selector(f"#tab-{tab}", state="visible", timeout=30_000)


PLOTTED = "sel => { const e = document.querySelector(sel + ' .js-plotly-plot'); return e && e.data && e.data.length; }"


def wait_plotted(page, *panels: str) -> None:
    for panel in panels:
        page.wait_for_function(PLOTTED, arg=panel, timeout=60_000)


DONE = """prev => { const s = document.querySelector('#status-line'); if (!s) return false;
                const t = s.innerText;  // while running, gradio overlays its progress (a % and 'processing')
                return /samples ×/.test(t) && !/%|processing|queue/i.test(t) && t !== prev; }"""


IDLE = "() => !Array.from(document.querySelectorAll('.progress-text')).some(e => e.offsetParent !== null)"


def wait_done(page, previous_status: str) -> None:
    """Until the status shows a new finished rollout and no panel shows progress any more."""
    page.wait_for_function(DONE, arg=previous_status, timeout=300_000)
    page.wait_for_function(IDLE, timeout=60_000)


def run_and_wait(page, previous_status: str = "") -> str:
    page.click("#run button, button#run")
    wait_done(page, previous_status)
    return page.inner_text("#status-line")


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1440x900", "390x844"])
def test_the_run_button_is_in_the_first_screen(browser, app_url, viewport):
    page = open_page(browser, app_url, viewport)
    try:
        box = page.locator("#run").bounding_box()
        assert box is not None and box["height"] > 0
        assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], box
        assert 0 <= box["x"] and box["x"] + box["width"] <= viewport["width"], box
        # the prompts the button runs are on the same screen
        prompts = page.locator("#prompts textarea").bounding_box()
        assert prompts["y"] + prompts["height"] <= viewport["height"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"arrival-{viewport['width']}x{viewport['height']}.png"))
    finally:
        page.close()


def test_default_rollout_renders_every_panel(page):
    previous = page.inner_text("#status-line")
    page.locator("#prompts textarea").click()
    page.keyboard.press("Control+Enter")  # runs, as the Run button does
    wait_done(page, previous)
    status = page.inner_text("#status-line")
    batch, width = map(int, re.search(r"(\d+) samples × (\d+) tokens", status).groups())
    assert batch == 4  # the default prompt set
    assert page.input_value("#prompts textarea").count("\n") == 3  # Ctrl+Enter ran it, it added no line
    show_tab(page, "logprobs")
    wait_plotted(page, "#panel-logprobs", "#panel-entropy", "#panel-gap")

    # the heatmap: one row per sample, one column per response position
    z_shape = page.evaluate(  # _fullData holds the decoded arrays (data keeps plotly's base64 typed arrays)
        "() => { const z = document.querySelector('#panel-logprobs .js-plotly-plot')._fullData[0].z;"
        " return [z.length, z[0].length]; }"
    )
    assert z_shape == [batch, width]
    assert page.locator("#panel-logprobs .ytick").count() == batch

    # a plot drawn when its tab is shown fills the panel's width (not plotly's 700 px default of a hidden div)
    widths = page.evaluate("() => ['#panel-logprobs', '#panel-entropy'].map(s => [document.querySelector(s)"
                           ".getBoundingClientRect().width, document.querySelector(s + ' .main-svg').getBoundingClientRect().width])")
    for panel_width, svg_width in widths:
        assert svg_width == pytest.approx(panel_width, abs=40)
    assert "first-epoch ratio" in page.inner_text("#panel-agreement")

    # raw sequences: one row per sample, the context_length boundary and the stop / reward marks
    show_tab(page, "sequences")
    seq = page.locator("#panel-sequences")
    assert seq.locator("[data-sample]").count() == batch
    assert seq.locator(".ctx-boundary").count() == batch
    assert seq.locator('[data-role~="reward"]').count() == batch
    assert seq.locator('[data-role~="stop"]').count() >= 1

    assert page.inner_text("#panel-split").strip() and page.inner_text("#panel-stops").strip()

    # the scores are displayed: one per sample in the batch table, and the picked one beside the reward input
    show_tab(page, "batch")
    batch_text = page.inner_text("#panel-batch")
    assert "score" in batch_text
    assert len(re.findall(r"-?\d+\.\d{2,}", batch_text)) >= batch
    page.wait_for_selector("#panel-compare [data-compare]", timeout=60_000)
    assert page.locator("#panel-compare [data-compare]").count() == 2

    show_tab(page, "value-reward")
    wait_plotted(page, "#panel-values")
    assert re.search(r"score\s*[+-]?\d+\.\d+", page.inner_text("#panel-value-reward"))
    assert page.locator('#panel-value-reward [data-role~="reward"]').count() >= 1

    # the diagnostics name the pad == eos trap of the default models; the PPO rows sit under the tokens
    assert page.locator('#panel-diagnostics [data-code="pad_equals_eos"]').count() == 1
    # the diagnostics sit above the tabs, visible whatever tab is shown
    assert page.locator("#panel-diagnostics").is_visible()
    show_tab(page, "ppo")
    page.wait_for_selector("#panel-ppo tr[data-row='advantages']", timeout=60_000)
    assert page.locator("#panel-ppo tr.tokrow td").count() == width
    assert "objective/kl" in page.inner_text("#panel-ppo-metrics")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshot.png"), full_page=True)


def test_truncation_shows_where_value_and_reward_inputs_differ(page):
    previous = page.inner_text("#status-line")
    page.fill("#prompts textarea", "Write three short sentences about dogs.\nWrite two short sentences about rain.")
    if not page.locator("#stop-choice").is_visible():
        page.get_by_text("Generation settings", exact=True).click()  # the accordion starts closed
    page.get_by_label("Custom token").check()
    page.locator("#compare-masks input").check()
    page.fill("#stop-custom textarea, #stop-custom input", ".")
    run_and_wait(page, previous)
    show_tab(page, "value-reward")
    truncated = page.locator("#panel-value-reward .tok-truncated")
    assert truncated.count() >= 1
    assert page.locator('#panel-diagnostics [data-code="mask_changes_reward"]').count() == 1
    page.screenshot(path=str(ARTIFACTS / "screenshot-truncation.png"), full_page=True)


def test_a_trl_completion_table_opens_in_the_same_panels(page, tmp_path):
    previous = page.inner_text("#status-line")
    table = tmp_path / "completions.csv"
    table.write_text("prompt,completion,reward\nHow was your day?,It was wonderful!,0.9\n"
                     "How was your day?,It was awful.,-0.7\n", encoding="utf-8")
    if page.locator("#upload input[type=file]").count() == 0:
        page.get_by_text("Open a file", exact=True).click()  # the accordion starts closed
    page.set_input_files("#upload input[type=file]", str(table))
    # the file travels to the server first: click only once the component shows it
    page.wait_for_function("() => document.querySelector('#upload').innerText.includes('completions.csv')",
                           timeout=60_000)
    page.click("#import")
    wait_done(page, previous)
    assert "2 samples ×" in page.inner_text("#status-line")
    show_tab(page, "sequences")
    assert page.locator("#panel-sequences [data-sample]").count() == 2
    show_tab(page, "batch")
    assert "It was wonderful" in page.inner_text("#panel-batch")
