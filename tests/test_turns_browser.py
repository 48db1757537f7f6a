"""The Multi-turn tab in headless Chromium: a multi-turn rollout on the default model through the page, clicked
through turn by turn (roles, masks, drift visible), a trainer's file opened on a phone, and the /multiturn endpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_browser import ARTIFACTS, LAPTOP, PHONE, browser, open_page, show_tab, wait_plotted  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DATA = Path(__file__).parent / "data" / "multiturn"
SHOWN = """() => { const s = document.querySelector('#mt-status'); const v = document.querySelector('#mt-view .mt-turn');
                   return s && /trajector/.test(s.innerText) && v; }"""
TURN = "k => { const t = [...document.querySelectorAll('#mt-view section.mt-turn')]; return t.length === 1 && t[0].dataset.turn === String(k); }"


def roles_in_view(page) -> set[str]:
    return set(page.eval_on_selector_all("#mt-view .mt-seg", "els => els.map(e => e.dataset.role)"))


def test_a_multiturn_rollout_through_the_page_clicks_through_its_turns(browser, app_url):
    page = open_page(browser, app_url)
    try:
        show_tab(page, "turns")
        page.fill("#mt-prompts textarea", "Say hi in three words.")
        page.fill("#mt-max-len input", "96")
        page.click("#mt-run")
        page.wait_for_function(SHOWN, timeout=600_000)
        page.wait_for_function(TURN, arg=1, timeout=30_000)
        assert "2 trajectories" in page.inner_text("#mt-status")
        # turn 1: the model's reply (trained tokens) and the scripted environment's answer (not trained)
        assert {"assistant", "environment"} <= roles_in_view(page)
        assert page.locator("#mt-view .tk.m-trained").count() > 0
        assert page.locator("#mt-view section .tk.m-not-trained").count() > 0
        assert "trained (in the loss)" in page.inner_text("#mt-view .mt-legend")
        page.click("#mt-next")
        page.wait_for_function(TURN, arg=2, timeout=30_000)
        assert "assistant" in roles_in_view(page)
        page.click("#mt-prev")
        page.wait_for_function(TURN, arg=1, timeout=30_000)
        page.click("#mt-prev")
        page.wait_for_function(TURN, arg=0, timeout=30_000)
        assert roles_in_view(page) <= {"system", "user"} and "user" in roles_in_view(page)
        assert page.locator("#mt-view .tk.m-trained").count() == 0       # the prompt is never trained
        drift = page.inner_text("#mt-drift")
        assert "Drift at token" in drift or "No drift" in drift
        assert page.locator("#mt-findings .diag").count() > 0
        assert len(re.findall(r"[+-]?\d\.\d{4}", page.inner_text("#mt-grpo"))) >= 2   # an advantage per sample
        assert "completion_ids=" in page.inner_text("#mt-reward")
        wait_plotted(page, "#mt-weights", "#mt-logprobs")
        page.click("#mt-sample input")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        page.wait_for_function("() => /sample 1/.test(document.querySelector('#mt-status').innerText)", timeout=30_000)
        page.wait_for_function(SHOWN, timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#tab-turns").screenshot(path=str(ARTIFACTS / "turns-1440.png"))
    finally:
        page.close()


def test_a_trainer_file_opens_readably_on_a_phone(browser, app_url):
    page = open_page(browser, app_url, PHONE)
    try:
        show_tab(page, "turns")
        page.click("text=Open a multi-turn file")
        page.set_input_files("#mt-file input[type=file]", str(DATA / "verl_agent_loop.jsonl"))
        page.wait_for_selector("#mt-file .file-preview, #mt-file a", timeout=60_000)
        page.click("#mt-open")
        page.wait_for_function(SHOWN, timeout=300_000)
        assert "verl" in page.inner_text("#mt-status")
        assert {"system", "user", "assistant", "tool"} <= roles_in_view(page)
        assert page.locator("#mt-view .tk.m-trained").count() == 39   # sample 0's response_mask ones
        assert "not computed" in page.inner_text("#mt-drift")
        # nothing wider than the phone: tokens wrap inside the view
        view = page.eval_on_selector("#mt-view", "e => [e.scrollWidth, e.clientWidth, e.getBoundingClientRect().right]")
        assert view[0] <= view[1] + 1 and view[2] <= PHONE["width"] + 1, view
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "turns-390.png"))
        page.locator("#mt-view").screenshot(path=str(ARTIFACTS / "turns-390-view.png"))
    finally:
        page.close()


def test_the_multiturn_endpoint_takes_the_settings(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    record = client.predict(prompts=["Say hi."], mode="scripted", max_turns=1, max_completion_length=16,
                            num_generations=2, api_name="/multiturn")
    assert len(record["trajectories"]) == 2 and record["num_generations"] == 2
    t = record["trajectories"][0]
    assert len(t["tool_mask"]) == len(t["token_ids"]) - t["prompt_length"] and len(record["advantages"]) == 2
    with pytest.raises(Exception, match="num_generations"):
        client.predict(prompts=["Say hi."], num_generations=1, api_name="/multiturn")
