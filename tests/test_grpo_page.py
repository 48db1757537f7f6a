"""The GRPO tab in headless Chromium and the `/rollout` endpoint's trainer choice through gradio_client, on the
real app and the default models."""

from __future__ import annotations

import pytest
from test_browser import (ARTIFACTS, browser, counts, has_value, open_page, run_and_wait, show_tab,  # noqa: F401
                          shows, wait_plotted)

from inspector.app.rollouts import import_callback, run_callback
from inspector.app.tabs.grpo import GRPO_SETTINGS, grpo_rewards, grpo_views
from inspector.app.validation import check_trainer
from inspector.trainers.rewards import arithmetic_prompts

pytestmark = [pytest.mark.integration]

PROMPTS = arithmetic_prompts(3)  # at T=0.4 (seed 0) the model answers 10 - 4 alike in all four: a zero-std group


def test_grpo_with_one_sample_per_prompt_is_refused_before_generating():
    with pytest.raises(Exception, match="num_generations .* must be at least 2"):
        run_callback("", "", "", "", "Say hi.", True, 8, True, 0.7, 0, 1.0, 0, 1, "EOS token", "", "trl",
                        trainer="grpo")
    with pytest.raises(Exception, match="trainer must be one of"):
        check_trainer("dpo", 4)


def set_slider(page, elem: str, value: str) -> None:
    """Type `value` into a slider's number box, until the slider itself shows it: the value the event will send. A
    number typed while gradio redraws the settings was dropped once in a full run (the rollout ran 48 tokens, the
    slider's default, not the 16 typed), so the typing is repeated, three times at most."""
    box = page.locator(f"{elem} input[type=number]")
    for attempt in range(3):
        box.fill(value)
        box.press("Enter")
        try:
            has_value(page, f"{elem} input[type=range]", value, timeout=5_000)
            return
        except AssertionError:
            if attempt == 2:
                raise


@pytest.mark.browser
def test_the_grpo_tab_shows_groups_token_weights_and_a_zero_std_group(browser, app_url):
    page = open_page(browser, app_url)
    try:
        page.fill("#prompts textarea", "\n".join(PROMPTS))
        page.get_by_label("GRPO (TRL 1.16)").check()
        page.get_by_text("Generation settings", exact=True).click()
        page.wait_for_function("() => document.querySelector('#samples input[type=number]').value === '4'",
                               timeout=30_000)  # choosing GRPO made samples per prompt num_generations = 4
        for elem, value in (("#max-new-tokens", "16"), ("#temperature", "0.4")):
            set_slider(page, elem, value)
        page.get_by_text("GRPO reward functions", exact=True).click()
        page.locator("#reward-funcs").get_by_label("exact answer (arithmetic set)").check()
        page.locator("#reward-funcs").get_by_label("sentiment reward model").uncheck()
        page.fill("#prompts textarea", "\n".join(PROMPTS))  # again: the example shown on arrival may refill it
        assert page.input_value("#prompts textarea") == "\n".join(PROMPTS)
        run_and_wait(page)
        shows(page, "#status-line", "12 samples × 16 tokens")
        show_tab(page, "grpo")
        page.wait_for_selector("#panel-grpo-groups [data-group='2']", timeout=120_000)
        counts(page, "#panel-grpo-groups .grpo-group", 3)
        counts(page, "#panel-grpo-groups [data-sample]", 12)
        shows(page, "#panel-grpo-groups .grpo-group.zero-std >> nth=0", "zero std")  # at least one zero-std group
        shows(page, "#panel-grpo-groups", "exact_answer_reward")
        counts(page, '#panel-grpo-diagnostics [data-code="grpo_zero_std"]', 1)
        wait_plotted(page, "#panel-grpo-weights", "#panel-grpo-loss-types", "#panel-grpo-kl", "#panel-grpo-sampler")
        z_shape = page.evaluate(
            "() => { const z = document.querySelector('#panel-grpo-weights .js-plotly-plot')._fullData[0].z;"
            " return [z.length, z[0].length]; }")
        assert z_shape == [12, 16]
        # hover over the first cell: its token, its advantage, the ratios and the mask
        page.locator("#panel-grpo-weights").scroll_into_view_if_needed()
        area = page.locator("#panel-grpo-weights .nsewdrag").first.bounding_box()
        page.mouse.move(area["x"] + area["width"] * 0.5 / 16, area["y"] + area["height"] * 0.5 / 12)
        page.wait_for_selector("#panel-grpo-weights .hovertext", timeout=30_000)
        hover = page.evaluate("() => document.querySelector('#panel-grpo-weights .hoverlayer').textContent")
        for part in ("completion g0 · 0: What is 2 + 2?", "position 0", "advantage 0.4999", "sampler ratio", "policy ratio 1.0000",
                     "completion_mask 1"):
            assert part in hover, hover
        page.screenshot(path=str(ARTIFACTS / "grpo-token-weights-hover.png"))
        shows(page, "#panel-grpo-metrics", "frac_reward_zero_std")
        shows(page, "#grpo-status", "TRL 1.16 GRPOTrainer")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "grpo-tab.png"), full_page=True)

        # a setting changes the step without a model pass: the loss type shows in the status
        page.get_by_text("GRPO settings", exact=False).first.click()
        page.locator("#loss-type input").click()
        page.get_by_role("option", name="dr_grpo", exact=True).click()
        shows(page, "#grpo-status", "dr_grpo")
        shows(page, "#status-line", "12 samples × 16 tokens")
    finally:
        page.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_the_rollout_endpoint_takes_the_trainer_choice(client):
    record = client.predict(
        prompts=PROMPTS[:2], samples_per_prompt=3, max_new_tokens=8, seed=0, trainer="grpo",
        reward_funcs=["exact_answer", "length"], reward_weights=[1.0, 0.5], grpo_settings={"loss_type": "grpo"},
        api_name="/rollout",
    )
    assert record["trainer"] == "grpo"
    step = record["grpo"]
    assert step["reward_func_names"] == ["exact_answer_reward", "length_reward"]
    assert step["config"]["loss_type"] == "grpo" and step["config"]["num_generations"] == 3
    assert step["config"]["reward_weights"] == [1.0, 0.5]
    assert len(step["advantages"]) == 6 and len(step["token_weights"]) == 6
    assert len(step["token_weights"][0]) == len(record["responses"][0])
    assert "frac_reward_zero_std" in step["metrics"]
    assert isinstance(record["grpo_diagnostics"], list)
    verl = client.predict(prompts=PROMPTS[:1], samples_per_prompt=2, max_new_tokens=4, trainer="verl",
                          reward_funcs=["length"], grpo_settings={"loss_agg_mode": "seq-mean-token-mean"},
                          api_name="/rollout")
    assert verl["grpo"]["trainer"] == "verl" and verl["grpo"]["config"]["loss_agg_mode"] == "seq-mean-token-mean"
    plain = client.predict(prompts=PROMPTS[:1], max_new_tokens=4, api_name="/rollout")
    assert "grpo" not in plain  # PPO stays the default


@pytest.mark.parametrize("kwargs, message", [
    ({"trainer": "grpo", "samples_per_prompt": 1}, "at least 2"),
    ({"trainer": "grpo", "samples_per_prompt": 2, "reward_funcs": ["os:system"]}, "not built in"),
    ({"trainer": "grpo", "samples_per_prompt": 2, "grpo_settings": {"loss_type": "bogus"}}, "loss_type must be one of"),
    ({"trainer": "grpo", "samples_per_prompt": 2, "reward_weights": [1.0, 2.0]}, "reward_weights has 2"),
])
def test_bad_grpo_requests_through_the_api(client, kwargs, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompts=["Say hi."], max_new_tokens=3, api_name="/rollout", **kwargs)


GRPO_DEFAULTS = dict(loss_type="dapo", scale_rewards="group", multi_objective_aggregation="sum_then_normalize",
                     mask_truncated_completions=False, importance_sampling_level="token", epsilon=0.2, epsilon_high=None,
                     delta=None, beta=0.0, top_entropy_quantile=1.0, use_sampler_logprobs=False,
                     vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="sequence_mask",
                     vllm_importance_sampling_clip_min=None, vllm_importance_sampling_clip_max=3.0,
                     loss_agg_mode="token-mean", norm_adv_by_std_in_grpo=True, rollout_is="off", rollout_is_threshold=2.0)


def test_an_opened_trl_grpo_log_shows_its_rewards_beside_the_recomputed_ones(models):
    from pathlib import Path

    log = Path(__file__).parent / "data" / "trl_grpo_completions_00001.parquet"
    outputs = import_callback(str(log), "", "", "", "", True, "EOS token", "", "trl")
    r = outputs[0]
    state = grpo_rewards(r)
    assert state["from_file"] and state["table"].names == ["smollm2-sentiment", "length_reward", "format_reward",
                                                           "exact_answer_reward"]
    settings = [GRPO_DEFAULTS[k] for k in GRPO_SETTINGS]
    status, diag, groups, log_update, *_ = grpo_views(r, state, "grpo", ["sentiment"], 1, 1, 1, 1, *settings)
    assert log_update["visible"] is True
    frame = log_update["value"]
    assert {"advantage (file)", "advantage (recomputed)", "smollm2-sentiment (file)"} <= set(frame.columns)
    assert (frame["advantage (file)"] - frame["advantage (recomputed)"]).abs().max() < 1e-5
    # the decoded completions re-tokenized with an EOS count one token more than the trainer's cut ones: named
    assert "The file and the recompute disagree:** length_reward:" in status
    assert "advantage:" not in status and "smollm2-sentiment:" not in status
    assert groups.count(" data-group=") == 4


def test_an_opened_trl_log_takes_its_reward_columns_and_weights_from_the_fields(models):
    from pathlib import Path

    log = Path(__file__).parent / "data" / "trl_grpo_extra_completions_00001.parquet"
    settings = [GRPO_DEFAULTS[k] for k in GRPO_SETTINGS]
    statuses = {}
    for weights in ("", "1, 0.5"):
        r = import_callback(str(log), "", "", "", "", True, "EOS token", "", "trl", 1.0, "", weights)[0]
        state = grpo_rewards(r)
        assert state["table"].names == ["number_reward", "length_reward"]
        status, _, _, log_update, *_ = grpo_views(r, state, "grpo", ["sentiment"], 1, 1, 1, 1, *settings)
        frame = log_update["value"]
        statuses[weights] = (status, (frame["advantage (file)"] - frame["advantage (recomputed)"]).abs().max())
    status, gap = statuses["1, 0.5"]
    assert gap < 1e-5 and "`number_reward` ×1, `length_reward` ×0.5" in status
    assert "Reward columns by TRL's column order" in status and "completion_tokens, last_number taken as log_extra" in status
    status, gap = statuses[""]
    assert gap > 0.03 and "advantage: 4 of 12 completions disagree" in status  # weights 1: the run is not reproduced
    named = import_callback(str(log), "", "", "", "", True, "EOS token", "", "trl", 1.0, "number_reward", "2")[0]
    assert named.settings["reward_columns"] == ["number_reward"] and named.settings["reward_weights"] == [2.0]
    assert named.settings["extra_columns"] == ["length_reward", "completion_tokens", "last_number"]


def test_the_open_file_endpoint_takes_reward_columns_and_weights(client):
    from pathlib import Path

    from gradio_client import handle_file

    log = Path(__file__).parent / "data" / "trl_grpo_extra_completions_00001.parquet"
    record = client.predict(handle_file(str(log)), 1.0, "", "1, 0.5", api_name="/open_file")
    assert record["settings"]["reward_columns"] == ["number_reward", "length_reward"]
    assert record["settings"]["reward_weights"] == [1.0, 0.5]
    assert record["settings"]["prompt_messages"][0][0]["role"] == "system"
    with pytest.raises(Exception, match="reward_weights has 3"):
        client.predict(handle_file(str(log)), 1.0, "", "1, 2, 3", api_name="/open_file")
