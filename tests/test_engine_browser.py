"""The sampler-mismatch tab in headless Chromium, fed by the real vLLM CPU server; an engine that fails leaves
the page serving."""

from __future__ import annotations

import re
import socket

import pytest
from test_browser import ARTIFACTS, browser, open_page, run_and_wait, show_tab, wait_plotted  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ENGINE_FIELD = "#engine-url textarea, #engine-url input"


def settings_open(page) -> None:
    if not page.locator("#engine-url").is_visible():
        page.get_by_text("Generation settings", exact=True).click()  # the accordion starts closed


def test_the_mismatch_tab_shows_a_raw_logprobs_server(browser, app_url, vllm_raw):  # noqa: F811
    page = open_page(browser, app_url)
    try:
        page.fill("#prompts textarea", "Write a happy sentence.\nName a fruit.")
        settings_open(page)
        page.fill(ENGINE_FIELD, vllm_raw)
        page.get_by_label("Tokenizer's true mask").check()
        status = run_and_wait(page, page.inner_text("#status-line"))
        batch = int(re.search(r"(\d+) samples ×", status).group(1))
        show_tab(page, "mismatch")
        wait_plotted(page, "#panel-mismatch-plot")
        text = page.inner_text("#panel-mismatch")
        assert f"the engine at {vllm_raw}" in text and "HuggingFaceTB/SmolLM2-135M-Instruct" in text
        assert "before the temperature (T = 0.7)" in text and "--logprobs-mode processed_logprobs" in text
        z_rows = page.evaluate("() => document.querySelector('#panel-mismatch-plot .js-plotly-plot')._fullData[0].z.length")
        assert z_rows == batch == 2
        sequences = page.inner_text("#panel-mismatch-sequences")
        assert "0: Write a happy sentence." in sequences and "1: Name a fruit." in sequences
        assert "sampling/importance_sampling_ratio/mean" in page.inner_text("#panel-mismatch-metrics")
        assert "training/rollout_probs_diff_max" in page.inner_text("#panel-mismatch-metrics")

        # another correction mode and clip values: recomputed without a model pass
        before = page.inner_text("#panel-mismatch")
        page.fill("#is-clip-max input", "1.5")
        page.locator("#is-clip-max input").press("Enter")
        page.wait_for_function("prev => { const t = document.querySelector('#panel-mismatch').innerText;"
                               " return t !== prev && !/processing/.test(t); }", arg=before, timeout=60_000)
        assert "clip_max=1.5" in page.inner_text("#panel-mismatch")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "screenshot-mismatch.png"), full_page=True)
    finally:
        page.close()


def test_an_engine_failure_is_a_message_and_the_page_keeps_serving(browser, app_url):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the block ends
    page = open_page(browser, app_url)
    try:
        page.fill("#prompts textarea", "Name a fruit.")
        settings_open(page)
        page.fill(ENGINE_FIELD, dead)
        page.click("#run button, button#run")
        # the refusal is written under the Run button, where the run was asked for
        page.wait_for_function("() => { const m = document.querySelector('#run-message');"
                               " return m && m.offsetParent && m.innerText.trim().length > 0; }", timeout=120_000)
        message = page.inner_text("#run-message")
        assert dead in message and "unreachable" in message and "start the server" in message
        # the same page, the field cleared: an in-process rollout runs
        page.fill(ENGINE_FIELD, "")
        page.fill("#prompts textarea", "Name a fruit.")
        status = run_and_wait(page, page.inner_text("#status-line"))
        assert re.search(r"(\d+) samples? ×", status).group(1) == "1", status
    finally:
        page.close()
