"""Reward functions with TRL's signature: the built-ins on hand-built completions, the table over a rollout,
loading a function by name, and the reward model called exactly as TRL 1.16's GRPOTrainer calls one."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch

from inspector.errors import InputError
from inspector.trainers.rewards import (
    ARITHMETIC_FILE,
    RewardModelFunc,
    arithmetic_answers,
    builtin_reward,
    completion_inputs,
    exact_answer_reward,
    load_reward_func,
    make_format_reward,
    make_length_reward,
    score_rewards,
)

ROOT = Path(__file__).resolve().parent.parent


def chat(text, role="assistant"):
    return [{"role": role, "content": text}]


def test_length_reward_is_distance_to_the_target_in_tokens():
    f = make_length_reward(4)
    assert f(prompts=["a"] * 3, completions=["x"] * 3, completion_ids=[[1, 2, 3, 4], [1, 2], [1] * 10]) == [0.0, -0.5, -1.5]
    with pytest.raises(InputError, match="length_target"):
        make_length_reward(0)


def test_format_reward_matches_the_whole_completion():
    f = make_format_reward(r"\d+")
    assert f(prompts=["p"] * 3, completions=["42", "the answer is 42", chat("7")], completion_ids=None) == [1.0, 0.0, 1.0]
    with pytest.raises(InputError, match="format_pattern"):
        make_format_reward("(unclosed")


def test_exact_answer_reads_the_last_number_and_gives_none_without_an_answer():
    prompts = ["What is 2 + 2? Answer with one number.", chat("What is 2 + 2? Answer with one number.", "user"),
               "What is 3 + 5? Answer with one number.", "Tell me a story."]
    out = exact_answer_reward(prompts=prompts, completions=["2 + 2 = 4", chat("4."), "It is 9", "Once upon a time"],
                              completion_ids=None)
    assert out == [1.0, 1.0, 0.0, None]
    # a column of the data wins over the shipped set (as TRL passes dataset columns), verl's gts too
    assert exact_answer_reward(prompts=["anything"], completions=["1,000"], answer=["1000"]) == [1.0]
    assert exact_answer_reward(prompts=["anything"], completions=["5"], gts=["6"]) == [0.0]


def test_the_arithmetic_set_is_the_scripts_output_and_its_answers_are_right():
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_arithmetic_prompts as builder

    assert ARITHMETIC_FILE.read_text(encoding="utf-8") == builder.render(builder.build())
    answers = arithmetic_answers()
    assert len(answers) == builder.COUNT
    for prompt, answer in answers.items():
        expression = prompt.removeprefix("What is ").split("?")[0]
        a, op, b = expression.split()
        assert int(answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op], prompt


def _fake_rollout(responses, eos=0, chat_template=True, texts=None):
    B = len(responses)
    return types.SimpleNamespace(
        responses=torch.tensor(responses), eos_token_id=eos, stop_token_id=eos, chat_template_applied=chat_template,
        prompts=list(arithmetic_answers())[:B],
        postprocessed_response_texts=texts or [""] * B, columns={}, batch_size=B, pad_token_id=eos, settings={},
    )


def test_score_rewards_stacks_one_column_per_function_with_nan_for_none():
    r = _fake_rollout([[5, 6, 0, 0], [5, 0, 0, 0], [5, 6, 7, 8]], texts=["4", "2", "x 6"])
    prompts, completions, ids = completion_inputs(r)
    assert ids == [[5, 6, 0], [5, 0], [5, 6, 7, 8]]  # cut after the first EOS, EOS kept (TRL's completion_ids)
    assert prompts[0] == chat("What is 2 + 2? Answer with one number.", "user") and completions[2] == chat("x 6")

    def sometimes_none(prompts, completions, completion_ids, **kwargs):
        return [None, 1, 2.5]

    table = score_rewards(r, [make_length_reward(2), exact_answer_reward, sometimes_none], [1.0, 2.0, 0.5])
    assert table.names == ["length_reward", "exact_answer_reward", "sometimes_none"]
    assert table.weights == [1.0, 2.0, 0.5]
    expected = torch.tensor([[-0.5, 1.0, math.nan], [0.0, 0.0, 1.0], [-1.0, 1.0, 2.5]])
    torch.testing.assert_close(table.rewards_per_func, expected, equal_nan=True)


def test_score_rewards_refuses_wrong_lengths_and_weights():
    r = _fake_rollout([[5, 0], [6, 0]])
    with pytest.raises(InputError, match="returned 1 rewards for 2"):
        score_rewards(r, [lambda prompts, completions, completion_ids, **kw: [1.0]])
    with pytest.raises(InputError, match="reward_weights has 2 values for 1"):
        score_rewards(r, [exact_answer_reward], [1.0, 2.0])
    with pytest.raises(InputError, match="not a number"):
        score_rewards(r, [lambda prompts, completions, completion_ids, **kw: ["a", "b"]])


def test_load_reward_func_by_name_locally_and_never_when_hosted(monkeypatch):
    f = load_reward_func("inspector.trainers.rewards:exact_answer_reward")
    assert f is exact_answer_reward
    assert load_reward_func("length").__name__ == "length_reward"
    with pytest.raises(InputError, match="module:function"):
        load_reward_func("no_colon_here")
    with pytest.raises(InputError, match="cannot import"):
        load_reward_func("no_such_module_xyz:f")
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    with pytest.raises(InputError, match="only the built-in"):
        load_reward_func("inspector.trainers.rewards:exact_answer_reward")
    with pytest.raises(InputError, match="Unknown reward function"):
        builtin_reward("os.system")


def _trl_calculate_rewards(reward_funcs, processing_classes, prompts, completions, completion_ids, inputs):
    """TRL 1.16's own `GRPOTrainer._calculate_rewards`, called on a trainer object that holds only what the
    method reads (building a whole trainer would load another policy and optimizer)."""
    from accelerate import PartialState
    from trl import GRPOTrainer

    PartialState()
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.__dict__.update(
        reward_funcs=reward_funcs, reward_processing_classes=processing_classes,
        reward_func_names=[getattr(f, "__name__", "reward_model") for f in reward_funcs],
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=types.SimpleNamespace(device=torch.device("cpu"), report_to=[]), is_deepspeed_enabled=False,
        state=types.SimpleNamespace(global_step=0), environments=None, chat_template_kwargs={},
        _pending_extra_logs={}, _pending_metrics={},
    )
    return trainer._calculate_rewards(inputs, prompts, completions, completion_ids)


@pytest.mark.integration
def test_reward_model_func_gives_trls_grpo_rewards(models, greedy_rollout):
    """The sentiment reward model and the other built-ins through TRL's `_calculate_rewards` (chat format, as
    the rollout used the chat template) and through ours: the same rewards_per_func."""
    r = greedy_rollout
    prompts, completions, ids = completion_inputs(r, models.tokenizer)
    funcs = [builtin_reward("sentiment", models), make_length_reward(8), make_format_reward(), exact_answer_reward]
    ours = score_rewards(r, funcs, tokenizer=models.tokenizer).rewards_per_func
    trl_funcs = [models.reward] + funcs[1:]
    theirs = _trl_calculate_rewards(trl_funcs, [models.reward_tokenizer, None, None, None], prompts, completions, ids,
                                    inputs=[{"prompt": p} for p in prompts])
    torch.testing.assert_close(ours, theirs.float(), equal_nan=True, atol=1e-5, rtol=1e-5)
    # the GRPO reward reads the model where its own head reads (the last non-pad token of the chat text),
    # not where PPO's get_reward reads: the two differ on this rollout
    assert not torch.allclose(ours[:, 0], r.scores, atol=1e-3)
    # and the plain-text path (no chat template) agrees too
    plain = [p[0]["content"] for p in prompts]
    texts = [c[0]["content"] for c in completions]
    theirs_plain = _trl_calculate_rewards([models.reward], [models.reward_tokenizer], plain, texts, ids,
                                          inputs=[{"prompt": p} for p in plain])
    ours_plain = RewardModelFunc(models.reward, models.reward_tokenizer)(plain, texts, ids)
    torch.testing.assert_close(torch.tensor(ours_plain), theirs_plain[:, 0].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.integration
def test_the_cli_takes_reward_functions_by_name(models, tmp_path, monkeypatch, capsys):
    import json

    from inspector.__main__ import main

    (tmp_path / "my_rewards.py").write_text(
        "def shouting(prompts, completions, completion_ids, **kwargs):\n"
        "    return [float(sum(ch.isupper() for ch in c[-1]['content'])) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r.json"
    argv = ["What is 2 + 2? Answer with one number.", "--trainer", "grpo", "--num-generations", "2",
            "--max-new-tokens", "6", "--reward-func", "exact_answer", "--reward-func", "my_rewards:shouting",
            "--reward-weights", "1", "0.5", "--json", str(out)]
    assert main(argv) == 0
    step = json.loads(out.read_text())["grpo_step"]
    assert step["reward_func_names"] == ["exact_answer_reward", "shouting"]
    assert step["config"]["reward_weights"] == [1.0, 0.5] and len(step["rewards_per_func"]) == 2
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    assert main(argv) == 1
    assert "only the built-in reward functions" in capsys.readouterr().err
