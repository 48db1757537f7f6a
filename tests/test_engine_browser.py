"""The sampler-mismatch tab in headless Chromium, fed by the real vLLM CPU server; an engine that fails leaves
the page serving."""

from __future__ import annotations

import re
import socket

import pytest
from test_browser import (ARTIFACTS, browser, open_page, run_and_wait, show_tab, shows,  # noqa: F401 (fixture)
                          wait_plotted)

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
        status = run_and_wait(page)
        batch = int(re.search(r"(\d+) samples ×", status).group(1))
        show_tab(page, "mismatch")
        wait_plotted(page, "#panel-mismatch-plot")
        for part in (f"the engine at {vllm_raw}", "HuggingFaceTB/SmolLM2-135M-Instruct", "before the temperature (T = 0.7)",
                     "--logprobs-mode processed_logprobs"):
            shows(page, "#panel-mismatch", part)
        z_rows = page.evaluate("() => document.querySelector('#panel-mismatch-plot .js-plotly-plot')._fullData[0].z.length")
        assert z_rows == batch == 2
        shows(page, "#panel-mismatch-sequences", "0: Write a happy sentence.")
        shows(page, "#panel-mismatch-sequences", "1: Name a fruit.")
        shows(page, "#panel-mismatch-metrics", "sampling/importance_sampling_ratio/mean")
        shows(page, "#panel-mismatch-metrics", "training/rollout_probs_diff_max")

        # another correction mode and clip values: recomputed without a model pass; the panel says the new clip
        # once done (while it runs it shows gradio's timer, "0.2s", so "the text changed" is not "done")
        page.fill("#is-clip-max input", "1.5")
        page.locator("#is-clip-max input").press("Enter")
        shows(page, "#panel-mismatch", "clip_max=1.5")
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
        for part in (dead, "unreachable", "start the server"):
            shows(page, "#run-message", part, timeout=120_000)
        # the same page, the field cleared: an in-process rollout runs
        page.fill(ENGINE_FIELD, "")
        page.fill("#prompts textarea", "Name a fruit.")
        run_and_wait(page)
        shows(page, "#status-line", re.compile(r"(?<!\d)1 samples? ×"))
    finally:
        page.close()
