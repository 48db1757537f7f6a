"""Multi-turn views on hand-built trajectories (no model): mask classes, greyed heatmap cells, the GRPO table,
drift, findings, reward inputs, and the tab's callbacks over a trainer's file."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from inspector.record.trajectory import MultiTurnRollout, Trajectory
from inspector.views import turns as v

DATA = Path(__file__).parent / "data" / "multiturn"


def hand_built() -> MultiTurnRollout:
    """prompt (0-1) | assistant sampled+trained (2-3) | tool not sampled, tool_mask 0 (4) | tool not sampled but
    trained (5: the trap) | assistant sampled but masked (6)."""
    t = Trajectory(
        token_ids=[10, 11, 20, 21, 30, 31, 40], role=["user", "user", "assistant", "assistant", "tool", "tool", "assistant"],
        turn=[0, 0, 1, 1, 1, 1, 2], sampled=[False, False, True, True, False, False, True],
        logprobs=[None, None, -0.5, -1.5, None, None, -2.0], completion_mask=[1, 1, 1, 1, 1], tool_mask=[1, 1, 0, 1, 0],
        prompt_length=2, messages=[{"role": "user", "content": "q"}], source="inspector",
        reward_input={"prompts": [[{"role": "user", "content": "q"}]], "completions": [[{"role": "assistant", "content": "a"}]]})
    tokens = {10: "Q", 11: "?", 20: "A", 21: "\n", 30: "<tool_response>", 31: "7", 40: "<|im_end|>"}
    return MultiTurnRollout(trajectories=[t], tokens=tokens, rewards=[1.0], advantages=[0.5],
                            rewards_per_func=[[1.0]], reward_func_names=["answered"],
                            drift=[{"sample": 0, "first_diff": 3, "differing": 2, "stream_length": 7, "rendered_length": 8,
                                    "trailing": 0, "stream_token": 21, "rendered_token": 31, "first_turn": 1,
                                    "retokenized": [], "think_dropped": []}],
                            findings=[{"code": "mt-tool-trained", "title": "Tool tokens in the loss", "severity": "warning",
                                       "detail": "d", "why": "w", "fix": "f", "samples": [0], "positions": [[0, 5]]}])


def test_every_token_gets_its_mask_class():
    t = hand_built().trajectories[0]
    assert [v.mask_class(t, i) for i in range(7)] == [
        "not-trained", "not-trained", "trained", "trained", "not-trained", "unsampled-trained", "sampled-masked"]
    assert v.mask_counts(t) == {"trained": 2, "not-trained": 3, "sampled-masked": 1, "unsampled-trained": 1}


def test_turns_html_blocks_by_role_and_marks_each_token():
    r = hand_built()
    html = v.turns_html(r, 0)
    assert re.findall(r"data-turn='(\d+)'", html) == ["0", "1", "2"]
    assert re.findall(r"class='tk m-([a-z-]+)' data-i='(\d)'", html) == [
        ("not-trained", "0"), ("not-trained", "1"), ("trained", "2"), ("trained", "3"), ("not-trained", "4"),
        ("unsampled-trained", "5"), ("sampled-masked", "6")]
    assert html.count("data-role='tool'") == 2  # one block + the legend
    assert "&lt;tool_response&gt;" in html and "logprob -1.500" in html
    one = v.turns_html(r, 0, 1)
    assert re.findall(r"data-turn='(\d+)'", one) == ["1"] and "showing turn 1 of 2" in one
    assert "No multi-turn rollout" in v.turns_html(None)


def test_heatmaps_grey_what_the_loss_ignores():
    r = hand_built()
    z = np.array(v.logprob_heatmap(r).data[0].z, dtype=float)
    # completion = ids 20 21 30 31 40, loss mask 1 1 0 1 0: only trained sampled tokens are coloured
    assert z[0, 0] == -0.5 and z[0, 1] == -1.5
    assert math.isnan(z[0, 2]) and math.isnan(z[0, 3]) and math.isnan(z[0, 4])  # 3: trained, but no logprob
    w = np.array(v.token_weight_heatmap(r).data[0].z, dtype=float)
    assert list(w[0, [0, 1, 3]]) == [0.5, 0.5, 0.5] and math.isnan(w[0, 2]) and math.isnan(w[0, 4])
    r.grpo = {"token_weights": [[0.1, 0.2, 0.0, 0.3, 0.0]]}
    w = np.array(v.token_weight_heatmap(r).data[0].z, dtype=float)
    assert list(w[0, [0, 1, 3]]) == [0.1, 0.2, 0.3]
    assert "ignored by the loss" in str(v.logprob_heatmap(r).data[0].customdata[0][2][4])


def test_grpo_table_counts_what_the_loss_takes():
    row = v.grpo_table(hand_built()).iloc[0]
    assert row["advantage"] == "+0.5000" and row["answered"] == "1.000" and row["trained"] == 3
    assert row["tool / env tokens"] == 2 and row["sampled but masked"] == 1 and row["not sampled but trained"] == 1


def test_drift_findings_and_reward_inputs():
    r = hand_built()
    html = v.drift_html(r, 0)
    assert "data-drift='3'" in html and "2 tokens differ" in html and "(id 31)" in html
    assert re.search(r"class='tk diff' title='#3 id 21'", html)
    r.drift[0].update(first_diff=None)
    assert "No drift" in v.drift_html(r, 0)
    r.drift = []
    assert "not computed" in v.drift_html(r, 0)
    assert "data-code='mt-tool-trained'" in v.findings_html(r)
    rew = v.reward_input_html(r.trajectories[0])
    assert "<code>prompts=</code>" in rew and "<code>completions=</code>" in rew
    assert "not recorded" in v.reward_input_html(None)


def test_the_tab_shows_a_trainer_file_and_steps_through_its_turns():
    pytest.importorskip("gradio")
    from inspector.app.tabs.turns import ALL, step_turn, turn_views
    from inspector.models import DEFAULT_POLICY, _tokenizer_only
    from inspector.sources.multiturn_files import open_multiturn

    r = open_multiturn(DATA / "prime_rl_traces.jsonl", _tokenizer_only(DEFAULT_POLICY))
    out = turn_views(r, 1, ALL)
    assert "2 trajectories" in out[0] and "prime-rl" in out[0]
    assert re.findall(r"data-turn='(\d+)'", out[3]) == ["0", "1", "2"]
    assert "not computed" in out[6] and out[7]["advantage"].tolist() == ["+0.7071", "-0.7071"]
    assert step_turn(r, 1, ALL, 1) == "prompt 0" and step_turn(r, 1, "prompt 0", 1) == "turn 1"
    assert step_turn(r, 1, "turn 2", 1) == "turn 2" and step_turn(r, 1, ALL, -1) == ALL
    out = turn_views(r, 1, "turn 2")
    assert re.findall(r"data-turn='(\d+)'", out[3]) == ["2"] and "data-role='assistant'" in out[3]
