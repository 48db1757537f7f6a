"""The multi-turn loop without a model: scripted completions through the default tokenizer and the shipped
template; bounded tools; the GRPO step under the mask; template drift on a real re-render."""

from __future__ import annotations

import pytest
import torch

from inspector.diagnostics.drift import template_drift
from inspector.errors import InputError
from inspector.sources.multiturn import rollout_multiturn
from inspector.sources.multiturn_template import RESPONSE_TEMPLATE, tool_chat_template, tool_suffix_ids
from inspector.sources.multiturn_tools import calculator, call_tool
from inspector.trainers.grpo_config import GRPOConfig
from inspector.trainers.grpo_multiturn import multiturn_grpo_step, trajectory_batch


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from inspector.weights import converted_default_policy

    path = converted_default_policy()
    assert path is not None
    return AutoTokenizer.from_pretrained(path)


def fresh(tok):
    import copy

    return copy.deepcopy(tok)


def scripted(tok, turns: dict[int, list[str]], eos=True):
    """generate(batch, samples): sample s's k-th call gets turns[s][k] (the last one repeats)."""
    calls: dict[int, int] = {}

    def gen(batch, samples):
        outs = []
        for s in samples:
            k = calls.get(s, 0)
            calls[s] = k + 1
            text = turns[s][min(k, len(turns[s]) - 1)]
            outs.append(tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else []))
        return outs, [[-0.5] * len(o) for o in outs]

    return gen


CALL = '<tool_call>\n{{"name": "{}", "arguments": {}}}\n</tool_call>'


def test_shipped_template_is_trls_and_trl_accepts_it(tok):
    from trl.chat_template_utils import (add_response_schema, is_chat_template_prefix_preserving,
                                         qwen2_5_chat_template, qwen3_template, supports_tool_calling)

    assert tool_chat_template() == qwen2_5_chat_template
    assert RESPONSE_TEMPLATE == qwen3_template
    t = fresh(tok)
    t.chat_template = tool_chat_template()
    assert supports_tool_calling(t) and is_chat_template_prefix_preserving(t)
    assert add_response_schema(t).response_template == RESPONSE_TEMPLATE


def test_stream_is_prompt_turn_suffix_turn_by_concatenation(tok):
    t = fresh(tok)
    t.chat_template = tool_chat_template()
    gen = scripted(t, {0: [CALL.format("calculator", '{"expression": "3*4"}'), "It is 12."], 1: ["12"]})
    ro = rollout_multiturn(gen, t, ["What is 3*4?"], mode="tools", tools=["calculator"], max_turns=3,
                           max_completion_length=200, num_generations=2)
    a = ro.trajectories[0]
    first = t(CALL.format("calculator", '{"expression": "3*4"}'), add_special_tokens=False)["input_ids"] + [2]
    suffix = tool_suffix_ids(t, [{"role": "tool", "name": "calculator", "content": "12"}])
    second = t("It is 12.", add_special_tokens=False)["input_ids"] + [2]
    assert a.completion_ids == first + suffix + second
    assert a.tool_mask == [1] * len(first) + [0] * len(suffix) + [1] * len(second)
    assert a.role[a.prompt_length:] == ["assistant"] * len(first) + ["tool"] * len(suffix) + ["assistant"] * len(second)
    assert a.turn[a.prompt_length:] == [1] * len(first) + [1] * len(suffix) + [2] * len(second)
    assert a.logprobs[a.prompt_length:] == [-0.5] * len(first) + [None] * len(suffix) + [-0.5] * len(second)
    assert t.decode(suffix) == "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert a.messages[-2:] == [{"role": "tool", "name": "calculator", "content": "12"},
                               {"role": "assistant", "content": "It is 12."}]
    assert ro.trajectories[1].tool_mask == [1] * len(ro.trajectories[1].completion_ids)
    assert set(a.role[:a.prompt_length]) == {"system", "user"}


def test_overlong_rollback_and_cut_across_turns(tok):
    t = fresh(tok)
    t.chat_template = tool_chat_template()
    call = CALL.format("calculator", '{"expression": "1+1"}')
    n_call = len(t(call, add_special_tokens=False)["input_ids"]) + 1
    n_suffix = len(tool_suffix_ids(t, [{"role": "tool", "name": "calculator", "content": "2"}]))
    limit = n_call + n_suffix + 3
    gen = scripted(t, {0: [call, "The answer is two, surely, without any doubt at all."], 1: [call]})
    ro = rollout_multiturn(gen, t, ["1+1?"], mode="tools", tools=["calculator"], max_turns=3,
                           max_completion_length=limit, num_generations=2)
    a = ro.trajectories[0]
    assert len(a.completion_ids) == limit and a.events[1]["cut_tokens"] > 0
    assert a.completion_ids[-1] != t.eos_token_id
    t2 = fresh(tok)
    ro2 = rollout_multiturn(scripted(t2, {0: [call], 1: [call]}), t2, ["1+1?"], mode="tools", tools=["calculator"],
                            max_turns=3, max_completion_length=n_call + n_suffix - 1, num_generations=2)
    b = ro2.trajectories[0]
    assert b.events[0]["rolled_back"]["suffix_tokens"] == n_suffix and len(b.completion_ids) == n_call
    assert all(m["role"] != "tool" for m in b.messages)   # TRL drops the tool message silently


def test_tool_errors_as_trl_formats_them_and_bounds(tok):
    t = fresh(tok)
    turns = {0: [CALL.format("failing_tool", '{"query": "a"}'), "ok"], 1: [CALL.format("nope", "{}"), "ok"],
             2: [CALL.format("looping_tool", '{"query": "a"}'), "ok"], 3: [CALL.format("huge_tool", '{"query": "a"}'), "ok"]}
    ro = rollout_multiturn(scripted(t, turns), t, ["a", "b"], mode="tools",
                           tools=["failing_tool", "looping_tool", "huge_tool"], max_turns=1, max_completion_length=400,
                           num_generations=2, tool_time_limit=1.0, tool_size_cap=100)
    outcome = [tr.events[0]["tool_outcomes"][0] for tr in ro.trajectories]
    assert [o["outcome"] for o in outcome] == ["error", "unknown-tool", "timeout", "too-large"]
    tool_msgs = [next(m for m in tr.messages if m["role"] == "tool")["content"] for tr in ro.trajectories]
    assert tool_msgs[0] == str({"error": "failing_tool cannot answer 'a'"})
    assert tool_msgs[1] == str({"error": "Tool nope not found."})
    assert "time limit" in tool_msgs[2] and len(tool_msgs[3]) == 100 and outcome[3]["size"] == 1 << 20
    assert all(len(tr.events) == 2 for tr in ro.trajectories)  # every rollout went on after its tool


def test_call_tool_direct():
    assert call_tool({"calculator": calculator}, "calculator", {"expression": "2**5"})[0] == "32"
    res, ev = call_tool({"calculator": calculator}, "calculator", {"expression": "__import__('os')"})
    assert ev["outcome"] == "error" and "error" in res


def test_the_callers_tokenizer_is_left_unchanged(tok):
    t = fresh(tok)
    before = t.chat_template
    rollout_multiturn(scripted(t, {0: ["12"], 1: ["12"]}), t, ["3*4?"], mode="tools", max_turns=1,
                      max_completion_length=50, num_generations=2)
    assert t.chat_template == before and getattr(t, "response_template", None) is None


def test_environment_mode_reset_tools_and_reward(tok):
    t = fresh(tok)
    guess = CALL.format("guess", '{"number": 5}')
    ro = rollout_multiturn(scripted(t, {0: [guess, "done"], 1: ["no"]}), t, ["Play."], mode="env", env="guess",
                           max_turns=2, max_completion_length=300, num_generations=2, seed=0)
    a = ro.trajectories[0]
    assert ro.reward_func_names == ["answered_reward", "GuessEnv"]
    assert "I picked a number" in a.messages[-4]["content"] or "I picked a number" in a.reward_input["prompt"][-1]["content"]
    assert a.events[0]["tool_outcomes"][0]["outcome"] == "ok"
    assert next(m for m in a.messages if m["role"] == "tool")["content"] in ("correct", "higher", "lower")
    assert "environments" in a.reward_input["kwargs"]


def test_scripted_mode_environment_tokens(tok):
    t = fresh(tok)
    ro = rollout_multiturn(scripted(t, {0: ["Twelve.", "Yes."], 1: ["12"]}), t, ["3*4?"], mode="scripted",
                           max_turns=1, max_completion_length=100, num_generations=2, scripted_replies=["Sure?"])
    a = ro.trajectories[0]
    env = [k for k in range(a.prompt_length, len(a.token_ids)) if a.role[k] == "environment"]
    assert env and all(a.tool_mask[k - a.prompt_length] == 0 and not a.sampled[k] for k in env)
    assert "Sure?" in t.decode([a.token_ids[k] for k in env])
    assert a.reward_input["completion"] == [{"role": "assistant", "content": t.decode(a.completion_ids, skip_special_tokens=True)}]


def test_grpo_step_weights_only_model_tokens(tok):
    t = fresh(tok)
    gen = scripted(t, {0: [CALL.format("calculator", '{"expression": "3*4"}'), "It is 12."], 1: ["none"]})
    ro = rollout_multiturn(gen, t, ["What is 3*4?"], mode="tools", max_turns=2, max_completion_length=200,
                           num_generations=2)
    batch = trajectory_batch(ro, t.pad_token_id, [t.eos_token_id])
    lp = -torch.rand(batch["completion_ids"].shape)
    step, _ = multiturn_grpo_step(ro, GRPOConfig(num_generations=2, max_completion_length=200), lp, batch=batch)
    tm = batch["tool_mask"].bool()
    pad = batch["completion_mask"] == 0
    assert pad.any() and batch["tool_mask"][pad].eq(1).all()     # TRL right-pads tool_mask with 1
    assert step.advantages.abs().sum() > 0
    assert (step.token_weights[~tm] == 0).all() and (step.token_weights[tm & batch["completion_mask"].bool()] != 0).all()
    assert torch.equal(step.completion_mask, batch["completion_mask"] * batch["tool_mask"])


def test_drift_on_a_real_rerender(tok):
    t = fresh(tok)
    spaced = CALL.format("calculator", '{"expression": "3*4"}')
    tight = '<tool_call>\n{"name":"calculator","arguments":{"expression":"3*4"}}\n</tool_call>'
    for text, drifted in ((spaced, False), (tight, True)):
        ro = rollout_multiturn(scripted(t, {0: [text, "12"], 1: ["12"]}), t, ["3*4?"], mode="tools", max_turns=1,
                               max_completion_length=200, num_generations=2)
        d = template_drift(ro.trajectories[0], t, tools=ro.settings["tool_schemas"], chat_template=tool_chat_template())
        assert bool(d["differing"]) is drifted and d["trailing"] in (0, 1)
        if drifted:
            assert d["first_turn"] == 1 and d["stream_token"] != d["rendered_token"]


def test_think_block_dropped_by_a_template(tok):
    t = fresh(tok)
    ro = rollout_multiturn(scripted(t, {0: ["<think>hmm</think>Twelve.", "Yes."], 1: ["12"]}), t, ["3*4?"],
                           mode="scripted", max_turns=1, max_completion_length=100, num_generations=2)
    a = ro.trajectories[0]
    first = next(m for m in a.messages if m["role"] == "assistant")
    assert first["content"] == "<think>hmm</think>Twelve."
    first["content"] = "Twelve."   # what a Qwen3-style template renders for a past turn
    d = template_drift(a, t)
    assert d["think_dropped"] and d["think_dropped"][0]["turn"] == 1 and d["differing"] > 0


def test_bad_settings_are_refused(tok):
    with pytest.raises(InputError):
        rollout_multiturn(scripted(tok, {0: ["x"]}), tok, ["a"], mode="chat")
    with pytest.raises(InputError):
        rollout_multiturn(scripted(tok, {0: ["x"]}), tok, ["a"], mode="tools", tools=["no_such_tool"])


def test_a_tool_call_that_does_not_parse_is_recorded(tok):
    t = fresh(tok)
    bad = '<tool_call>\n{"name": "calculator", "arguments": {"expression": \n</tool_call>'
    ro = rollout_multiturn(scripted(t, {0: [bad], 1: ["12"]}), t, ["3*4?"], mode="tools", max_turns=2,
                           max_completion_length=100, num_generations=2)
    a = ro.trajectories[0]
    assert a.events[0]["parse_failed"] and len(a.events) == 1 and 0 not in a.tool_mask
    assert a.messages[-1] == {"role": "assistant", "content": t.decode(a.completion_ids, skip_special_tokens=True)}
    assert "parse_failed" not in ro.trajectories[1].events[0]
