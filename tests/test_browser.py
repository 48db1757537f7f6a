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


@pytest.fixture(scope="module")
def page(app_url):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh --dev does).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(app_url)
        page.wait_for_selector("#run", timeout=60_000)
        yield page
        browser.close()


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
    for panel in ("#panel-logprobs", "#panel-entropy", "#panel-values", "#panel-gap"):
        page.wait_for_function(
            "sel => { const e = document.querySelector(sel + ' .js-plotly-plot'); return e && e.data && e.data.length; }",
            arg=panel, timeout=60_000,
        )
    return page.inner_text("#status-line")


def test_default_rollout_renders_every_panel(page):
    status = run_and_wait(page)
    batch, width = map(int, re.search(r"(\d+) samples × (\d+) tokens", status).groups())
    assert batch == 4  # the default prompt set

    # the heatmap: one row per sample, one column per response position
    z_shape = page.evaluate(  # _fullData holds the decoded arrays (data keeps plotly's base64 typed arrays)
        "() => { const z = document.querySelector('#panel-logprobs .js-plotly-plot')._fullData[0].z;"
        " return [z.length, z[0].length]; }"
    )
    assert z_shape == [batch, width]
    assert page.locator("#panel-logprobs .ytick").count() == batch

    # raw sequences: one row per sample, the context_length boundary and the stop / reward marks
    seq = page.locator("#panel-sequences")
    assert seq.locator("[data-sample]").count() == batch
    assert seq.locator(".ctx-boundary").count() == batch
    assert seq.locator('[data-role~="reward"]').count() == batch
    assert seq.locator('[data-role~="stop"]').count() >= 1

    # the scores are displayed: one per sample in the batch table, and the picked one beside the reward input
    batch_text = page.inner_text("#panel-batch")
    assert "score" in batch_text
    assert len(re.findall(r"-?\d+\.\d{2,}", batch_text)) >= batch
    assert re.search(r"score\s*[+-]?\d+\.\d+", page.inner_text("#panel-value-reward"))
    assert page.locator('#panel-value-reward [data-role~="reward"]').count() >= 1
    # every panel has content
    for panel in ("#panel-sequences", "#panel-split", "#panel-value-reward", "#panel-stops", "#panel-batch"):
        assert page.inner_text(panel).strip(), panel

    # the diagnostics name the pad == eos trap of the default models; the PPO rows sit under the tokens
    assert page.locator('#panel-diagnostics [data-code="pad_equals_eos"]').count() == 1
    page.wait_for_selector("#panel-ppo tr[data-row='advantages']", timeout=60_000)
    assert page.locator("#panel-ppo tr.tokrow td").count() == width
    assert "objective/kl" in page.inner_text("#panel-ppo-metrics")
    assert "first-epoch ratio" in page.inner_text("#panel-agreement")
    page.wait_for_selector("#panel-compare [data-compare]", timeout=60_000)
    assert page.locator("#panel-compare [data-compare]").count() == 2

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshot.png"), full_page=True)


def test_truncation_shows_where_value_and_reward_inputs_differ(page):
    previous = page.inner_text("#status-line")
    page.fill("#prompts textarea", "Write three short sentences about dogs.\nWrite two short sentences about rain.")
    page.get_by_label("Custom token").check()
    page.locator("#compare-masks input").check()
    page.fill("#stop-custom textarea, #stop-custom input", ".")
    run_and_wait(page, previous)
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
    assert page.locator("#panel-sequences [data-sample]").count() == 2
    assert "It was wonderful" in page.inner_text("#panel-batch")
