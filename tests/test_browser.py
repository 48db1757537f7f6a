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


ARRIVED = "() => { const s = document.querySelector('#status-line'); return s && /Saved example/.test(s.innerText); }"


def open_page(browser, url, viewport=LAPTOP):
    """The page as a visitor gets it: open, and the saved example shown (nothing pressed)."""
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.wait_for_selector("#run", timeout=60_000)
    page.wait_for_function(ARRIVED, timeout=60_000)
    return page


@pytest.fixture(scope="module")
def page(browser, app_url):
    page = open_page(browser, app_url)
    yield page
    page.close()


def shows(page, selector: str, text, timeout: int = 60_000) -> None:
    """Until the element's text holds `text` (a string, or a compiled pattern): every check waits for the content
    it asserts, never for "the panel changed" (a panel that changed may still show gradio's progress timer)."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_contain_text(text, timeout=timeout)


def counts(page, selector: str, n: int, timeout: int = 60_000) -> None:
    """Until exactly `n` elements match `selector`."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_count(n, timeout=timeout)


def has_value(page, selector: str, value, timeout: int = 60_000) -> None:
    """Until the input's value is `value` (a string, or a compiled pattern)."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_value(value, timeout=timeout)


NOT_EMPTY = re.compile(r"\S")


def show_tab(page, tab: str, shown: str | None = None) -> None:
    """Select a tab of the views (sequences, logprobs, value-reward, ppo, batch), until `shown` (the tab, by default)
    is visible. A click that lands while gradio redraws the tab bar (the page's first events still drawing) is lost
    (seen once in a full run): the click is made again, three times at most, each given 15 s."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        page.click(f"#tab-{tab}-button")
        try:
            page.wait_for_selector(shown or f"#tab-{tab}", state="visible", timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


PLOTTED = "sel => { const e = document.querySelector(sel + ' .js-plotly-plot'); return e && e.data && e.data.length; }"


def wait_plotted(page, *panels: str) -> None:
    for panel in panels:
        page.wait_for_function(PLOTTED, arg=panel, timeout=60_000)


SETTLED = "t => /samples? ×/.test(t) && !/%|processing|queue/i.test(t)"  # gradio overlays its progress (a % and 'processing')

DONE = """([prev, fresh]) => { const s = document.querySelector('#status-line'); if (!s) return false;
                const t = s.innerText;  // a fresh rollout's status gives its times; a saved example's or a file's does not
                return /samples? ×/.test(t) && !/%|processing|queue/i.test(t) && t !== prev
                       && (!fresh || /· generate [0-9.]+ s/.test(t)); }"""


IDLE = "() => !Array.from(document.querySelectorAll('.progress-text')).some(e => e.offsetParent !== null)"


def wait_done(page, previous_status: str, fresh: bool = False) -> None:
    """Until the status shows a new finished rollout (`fresh`: one just generated, not a saved or opened one) and no
    panel shows progress any more."""
    page.wait_for_function(DONE, arg=[previous_status, fresh], timeout=300_000)
    page.wait_for_function(IDLE, timeout=300_000)  # the panels after the status: as long as the run may take


def run_and_wait(page) -> str:
    """Press Run and wait for the new rollout's status. The status to see replaced is read once the page is idle and
    the status itself settled (no progress overlaid on it), right before the click: settings changed just before can
    re-render the status, and a status read earlier, or read with gradio's progress on it, would let the old status
    pass for the new rollout."""
    page.wait_for_function(IDLE, timeout=60_000)
    page.wait_for_function(f"() => {{ const s = document.querySelector('#status-line'); return s && ({SETTLED})(s.innerText); }}",
                           timeout=60_000)
    previous_status = page.inner_text("#status-line")
    page.click("#run button, button#run")
    wait_done(page, previous_status, fresh=True)
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


def test_the_page_opens_on_the_saved_example(browser, app_url):
    """Before anything is pressed: the saved example's panels, a line saying it is saved, a button for a fresh one."""
    page = open_page(browser, app_url)
    try:
        status = page.inner_text("#status-line")
        assert "Saved example" in status and "sentiment-contrast.json" in status and "made 20" in status
        assert "4 samples × " in status
        assert page.locator("#run-fresh").is_visible()
        counts(page, "#panel-sequences [data-sample]", 4)
        counts(page, '#panel-diagnostics [data-code="pad_equals_eos"]', 1)
        has_value(page, "#sample-picker input", re.compile(r"^0: "))
        shows(page, "#panel-split", NOT_EMPTY)
        show_tab(page, "logprobs")
        wait_plotted(page, "#panel-logprobs", "#panel-entropy", "#panel-gap")
        show_tab(page, "ppo")
        page.wait_for_selector("#panel-ppo tr[data-row='advantages']", timeout=60_000)
        shows(page, "#panel-ppo-metrics", "objective/kl")
        show_tab(page, "batch")
        page.wait_for_selector("#panel-compare [data-compare]", timeout=60_000)
    finally:
        page.close()


TAB_BAR = [  # (id, label, the first words of the panel's own heading), in the order of the tab bar
    ("sequences", "Sequences", "Raw output.sequences"),
    ("logprobs", "Logprobs", "Logprobs and entropy of each response token"),
    ("value-reward", "Value & reward", "Value model input versus reward model input"),
    ("ppo", "PPO step", "The PPO step, token by token"),
    ("grpo", "GRPO", "The GRPO step: groups, advantages"),
    ("mismatch", "Sampler mismatch", "The sampler's logprobs"),
    ("turns", "Multi-turn", "Multi-turn rollouts: which tokens the model wrote"),
    ("batch", "Batch & compare", "The batch, one row per sample"),
    ("run", "Run", "A training run: trends per step"),
]
LABELS = "() => Array.from(document.querySelectorAll('#views [role=tab]')).map(b => [b.id, b.innerText.trim()])"


def test_every_tab_keeps_its_label_and_shows_its_own_heading(browser, app_url):
    """A click on each tab, in order and back: every label stays its own, and the panel shown is the tab's."""
    expected = [[f"tab-{tab}-button", label] for tab, label, _ in TAB_BAR]
    page = open_page(browser, app_url)
    try:
        assert page.evaluate(LABELS) == expected
        for tab, label, heading in TAB_BAR + TAB_BAR[-2::-1]:
            show_tab(page, tab, shown=f"#heading-{tab}")
            assert page.inner_text(f"#heading-{tab}").startswith(heading)
            assert page.get_attribute(f"#tab-{tab}-button", "aria-selected") == "true"
            assert page.evaluate(LABELS) == expected, f"after a click on {label!r}"
            shown = [t for t, _, _ in TAB_BAR if page.locator(f"#heading-{t}").is_visible()]
            assert shown == [tab]
    finally:
        page.close()


def test_a_tab_picked_while_the_page_arrives_is_kept(browser, app_url):
    """The link names a tab; the visitor picks another before the page's arrival has ended: when it ends (the
    link's tab handed to the page's script), the page stays on the visitor's tab."""
    page = browser.new_page(viewport=LAPTOP)
    try:
        page.goto(app_url + "/?tab=ppo")
        page.click("#tab-logprobs-button", timeout=60_000)  # as soon as the tab bar is there
        assert not page.input_value("#arrival-tab textarea"), "the arrival ended before the click: nothing checked"
        has_value(page, "#arrival-tab textarea", "ppo")  # the arrival's result
        page.wait_for_selector("html[data-arrival=done]", state="attached", timeout=60_000)  # and its script ran
        assert page.get_attribute("#tab-logprobs-button", "aria-selected") == "true"
        assert page.locator("#heading-logprobs").is_visible() and not page.locator("#heading-ppo").is_visible()
    finally:
        page.close()


def test_a_deep_link_lands_on_the_named_sample(browser, app_url):
    page = open_page(browser, app_url + "/?example=short-answers-pad-eos&sample=2")
    try:
        shows(page, "#status-line", "“Short answers (pad == EOS)”")
        has_value(page, "#sample-picker input", re.compile(r"^2: Name one colour\."))
        has_value(page, "#prompts textarea", re.compile(r"^[^\n]*\n[^\n]*\nName one colour\.(\n|$)"))
        shows(page, "#panel-split", "Name one colour")
        show_tab(page, "ppo")
        page.wait_for_selector("#panel-ppo .ppo-view[data-sample='2']", timeout=60_000)
        show_tab(page, "value-reward")
        wait_plotted(page, "#panel-values")
        page.wait_for_function("() => { const e = document.querySelector('#panel-values .js-plotly-plot');"
                               " return e && e.layout && /^sample 2:/.test(e.layout.title.text); }", timeout=60_000)
    finally:
        page.close()
    # a link naming what is not there says so, and shows the default example
    page = open_page(browser, app_url + "/?example=nothing-here&sample=9")
    try:
        shows(page, "#status-line", "Sentiment contrast")
        shows(page, "#run-message", "nothing-here")
        shows(page, "#run-message", "sentiment-contrast")
    finally:
        page.close()


def test_default_rollout_renders_every_panel(page):
    previous = page.inner_text("#status-line")
    page.locator("#prompts textarea").click()
    page.keyboard.press("Control+Enter")  # runs, as the Run button does
    wait_done(page, previous, fresh=True)
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
    shows(page, "#panel-agreement", "first-epoch ratio")

    # raw sequences: one row per sample, the context_length boundary and the stop / reward marks
    show_tab(page, "sequences")
    counts(page, "#panel-sequences [data-sample]", batch)
    counts(page, "#panel-sequences .ctx-boundary", batch)
    counts(page, '#panel-sequences [data-role~="reward"]', batch)
    page.wait_for_selector('#panel-sequences [data-role~="stop"]', state="attached", timeout=60_000)  # at least one

    shows(page, "#panel-split", NOT_EMPTY)
    shows(page, "#panel-stops", NOT_EMPTY)

    # the scores are displayed: one per sample in the batch table, and the picked one beside the reward input
    show_tab(page, "batch")
    shows(page, "#panel-batch", "score")
    page.wait_for_function("n => (document.querySelector('#panel-batch').innerText.match(/-?\\d+\\.\\d{2,}/g) || [])"
                           ".length >= n", arg=batch, timeout=60_000)  # at least one number per sample
    counts(page, "#panel-compare [data-compare]", 2)

    show_tab(page, "value-reward")
    wait_plotted(page, "#panel-values")
    shows(page, "#panel-value-reward", re.compile(r"score\s*[+-]?\d+\.\d+"))
    page.wait_for_selector('#panel-value-reward [data-role~="reward"]', state="attached", timeout=60_000)

    # the diagnostics name the pad == eos trap of the default models; the PPO rows sit under the tokens
    counts(page, '#panel-diagnostics [data-code="pad_equals_eos"]', 1)
    # the diagnostics sit above the tabs, visible whatever tab is shown
    assert page.locator("#panel-diagnostics").is_visible()
    show_tab(page, "ppo")
    page.wait_for_selector("#panel-ppo tr[data-row='advantages']", timeout=60_000)
    counts(page, "#panel-ppo tr.tokrow td", width)
    shows(page, "#panel-ppo-metrics", "objective/kl")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "screenshot.png"), full_page=True)
    assert_no_negative_zero(page)


NEGATIVE_ZERO = re.compile(r"[-−]0(\.0+)?(?![.\d])")  # -0, -0.000, −0.0 (not -0.001)


def assert_no_negative_zero(page) -> None:
    """No '-0.000' (or any negative zero) in the text of any tab, nor in any plot's hover labels."""
    for tab in ("sequences", "logprobs", "value-reward", "ppo", "batch"):
        show_tab(page, tab)
        text = page.inner_text("body")
        assert not NEGATIVE_ZERO.search(text), (tab, NEGATIVE_ZERO.search(text).group(), text[:200])
    hovers = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(e => "
                           "JSON.stringify((e._fullData || []).map(t => t.customdata || t.text || null)))")
    for data in hovers:
        assert not re.search(r'"[-−]0\.0+"', data), data[:200]


def test_a_bad_ppo_setting_is_refused_on_its_field_and_the_results_stay(page):
    show_tab(page, "ppo")
    page.wait_for_selector("#panel-ppo tr[data-row='advantages']", timeout=60_000)
    shows(page, "#panel-ppo", "KL is 0 by construction")  # the reference is the policy
    shows(page, "#panel-ppo", "Reference model")
    shows(page, "#panel-ppo-metrics", "objective/kl")
    table, metrics = page.inner_text("#panel-ppo"), page.inner_text("#panel-ppo-metrics")
    for typed in ("-1", ""):
        page.fill("#kl-coef input", typed)
        page.press("#kl-coef input", "Enter")
        page.wait_for_function("() => /kl_coef (must be|is empty)/.test(document.querySelector('#kl-coef').innerText)",
                               timeout=30_000)
        message = page.inner_text("#kl-coef")
        assert "at least 0" in message, message  # the field, by name, with its allowed range
        page.wait_for_function(IDLE, timeout=300_000)
        assert page.inner_text("#panel-ppo") == table and page.inner_text("#panel-ppo-metrics") == metrics
        assert page.locator("#panel-ppo tr[data-row='advantages']").is_visible()
        assert "Something went wrong" not in page.inner_text("body")
        assert page.locator(".error:visible").count() == 0  # no Error badge over a panel
    page.fill("#kl-coef input", "0.05")
    page.press("#kl-coef input", "Enter")
    page.wait_for_function("() => !/must be|is empty/.test(document.querySelector('#kl-coef').innerText)",
                           timeout=30_000)


def test_an_empty_prompt_box_keeps_the_results(page):
    previous = page.inner_text("#status-line")
    choices = page.input_value("#sample-picker input")
    prompts = page.input_value("#prompts textarea")
    page.fill("#prompts textarea", "  \n ")
    page.click("#run")
    page.wait_for_function("() => /no prompts/i.test(document.querySelector('#prompts').innerText)", timeout=30_000)
    page.wait_for_function(IDLE, timeout=300_000)
    assert page.inner_text("#status-line") == previous
    assert page.input_value("#sample-picker input") == choices and choices
    assert page.locator(".error:visible").count() == 0
    page.fill("#prompts textarea", prompts)


def test_truncation_shows_where_value_and_reward_inputs_differ(page):
    page.fill("#prompts textarea", "Write three short sentences about dogs.\nWrite two short sentences about rain.")
    if not page.locator("#stop-choice").is_visible():
        page.get_by_text("Generation settings", exact=True).click()  # the accordion starts closed
    page.get_by_label("Custom token").check()
    page.locator("#compare-masks input").check()
    page.fill("#stop-custom textarea, #stop-custom input", ".")
    run_and_wait(page)
    show_tab(page, "value-reward")
    page.wait_for_selector("#panel-value-reward .tok-truncated", state="attached", timeout=60_000)  # at least one
    counts(page, '#panel-diagnostics [data-code="mask_changes_reward"]', 1)
    page.screenshot(path=str(ARTIFACTS / "screenshot-truncation.png"), full_page=True)


def open_file(page, path) -> None:
    previous = page.inner_text("#status-line")
    if page.locator("#upload").count() == 0:
        page.get_by_text("Open a file", exact=True).click()  # the accordion starts closed
    page.wait_for_selector("#upload input[type=file], #upload button[aria-label='Clear']", state="attached",
                           timeout=30_000)
    if page.locator("#upload input[type=file]").count() == 0:  # a file opened before: clear it first
        page.locator("#upload button[aria-label='Clear']").click()
    page.set_input_files("#upload input[type=file]", str(path))
    # the file travels to the server first: click only once the component lists it. By the row's aria-label, not by
    # the text: gradio draws the name as a stem and an extension, and a narrow column wraps them onto two lines
    # ("completions\n.csv", seen in a full run).
    page.wait_for_function("name => Array.from(document.querySelectorAll('#upload td.filename'))"
                           ".some(td => td.getAttribute('aria-label') === name)", arg=path.name, timeout=60_000)
    page.click("#import")
    wait_done(page, previous)
    shows(page, "#status-line", path.name)  # the opened file's own status, not the one before it


def test_a_reopened_record_says_which_file_it_is(page, tmp_path):
    show_tab(page, "batch")
    link = page.locator("#download-record a[href*='rollout.json']").first
    record = tmp_path / "my-rollout.json"
    record.write_bytes(page.request.get(link.get_attribute("href")).body())
    open_file(page, record)
    shows(page, "#status-line", "our rollout record")
    shows(page, "#status-line", re.compile(r"made 20\d\d-"))
    status = page.inner_text("#status-line")
    assert "my-rollout.json" in status
    assert "generate" not in status  # not a fresh run's timings


def test_a_trl_completion_table_opens_in_the_same_panels(page, tmp_path):
    table = tmp_path / "completions.csv"
    table.write_text("prompt,completion,reward\nHow was your day?,It was wonderful!,0.9\n"
                     "How was your day?,It was awful.,-0.7\n", encoding="utf-8")
    open_file(page, table)
    for part in ("2 samples ×", "completions.csv", "TRL completions table"):
        shows(page, "#status-line", part)
    show_tab(page, "sequences")
    counts(page, "#panel-sequences [data-sample]", 2)
    show_tab(page, "batch")
    shows(page, "#panel-batch", "It was wonderful")
