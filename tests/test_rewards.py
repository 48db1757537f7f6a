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
    completion_text,
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


def _trl_calculate_rewards(reward_funcs, processing_classes, prompts, completions, completion_ids, inputs,
                           trainer_out=None):
    """TRL 1.16's own `GRPOTrainer._calculate_rewards`, called on a trainer object that holds only what the
    method reads (building a whole trainer would load another policy and optimizer), with TRL's own event loop
    in a daemon thread for `async` functions, as `GRPOTrainer.__init__` starts it. `trainer_out` (a dict)
    receives the trainer object, to read what `log_extra` / `log_metric` left on it."""
    from collections import defaultdict

    from accelerate import PartialState
    from transformers import TrainerState
    from trl import GRPOTrainer
    from trl.trainer.utils import get_callable_name, is_async_callable, shutdown_event_loop_in_daemon, start_event_loop_in_daemon

    PartialState()
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.__dict__.update(
        reward_funcs=reward_funcs, reward_processing_classes=processing_classes,
        reward_func_names=[get_callable_name(f) if callable(f) and not isinstance(f, torch.nn.Module) else "reward_model"
                           for f in reward_funcs],
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=types.SimpleNamespace(device=torch.device("cpu"), report_to=[]), is_deepspeed_enabled=False,
        state=TrainerState(), environments=None, chat_template_kwargs={},
        _pending_extra_logs=defaultdict(list), _pending_metrics=defaultdict(list),
    )
    loop = None
    if any(is_async_callable(f) for f in reward_funcs if not isinstance(f, torch.nn.Module)):
        thread, loop, ready = start_event_loop_in_daemon(name="test-async-rewards")
        ready.wait()
        trainer.async_loop = loop
    try:
        return trainer._calculate_rewards(inputs, prompts, completions, completion_ids)
    finally:
        if loop is not None:
            shutdown_event_loop_in_daemon(thread, loop)
        if trainer_out is not None:
            trainer_out["trainer"] = trainer


def _sync_logging(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **kwargs):
    """Reads the step, logs a column and a metric, as TRL 1.16's docs show."""
    lengths = [len(ids) for ids in completion_ids]
    log_extra("n_tokens", lengths)
    log_metric("mean_tokens", sum(lengths) / len(lengths))
    return [float(n) + trainer_state.global_step for n in lengths]


_SEEN: list[str] = []


async def _async_answer(prompts, completions, answer, log_extra, log_metric, **kwargs):
    """None where there is no answer; waits until the other async function has started too (it cannot, unless
    both are awaited together as TRL gathers them: run one after the other, it gives up and returns -1)."""
    import asyncio

    _SEEN.append("answer")
    for _ in range(1000):
        if "scorer" in _SEEN:
            break
        await asyncio.sleep(0)
    else:
        return [-1.0] * len(prompts)
    log_extra("has_answer", [a is not None for a in answer])
    log_metric("mean_tokens", 1.0)
    return [None if a is None else float(a in completion_text(c)) for a, c in zip(answer, completions)]


class _AsyncScorer:
    """An async callable object (TRL's `is_async_callable` reads its `__call__`)."""

    __name__ = "async_scorer"

    async def __call__(self, prompts, completions, **kwargs):
        import asyncio

        _SEEN.append("scorer")
        await asyncio.sleep(0)
        return [0.5 * len(completion_text(c)) for c in completions]


def test_async_functions_and_logging_kwargs_give_trls_rewards_and_logs():
    """Sync, async and async-callable reward functions with TRL's `trainer_state`, `log_extra` and
    `log_metric`, through TRL's own `_calculate_rewards` and through ours: the same rewards_per_func, the same
    extra columns, and the metric averaged as TRL averages it."""
    import functools

    r = _fake_rollout([[5, 6, 0, 0], [5, 0, 0, 0], [5, 6, 7, 8]], texts=["4", "2", "x 6"])
    r.columns = {"answer": ["4", None, "7"]}
    prompts, completions, ids = completion_inputs(r)
    funcs = [_sync_logging, functools.partial(_async_answer), _AsyncScorer(), exact_answer_reward]
    _SEEN.clear()
    ours = score_rewards(r, funcs, [1.0, 2.0, 0.5, 1.0])
    _SEEN.clear()
    held = {}
    inputs = [{"prompt": p, "answer": a} for p, a in zip(prompts, r.columns["answer"])]
    theirs = _trl_calculate_rewards(funcs, [None] * 4, prompts, completions, ids, inputs, trainer_out=held)
    torch.testing.assert_close(ours.rewards_per_func, theirs.float(), equal_nan=True)
    assert ours.rewards_per_func[0, 1] == 1.0 and math.isnan(ours.rewards_per_func[1, 1])   # awaited together
    trainer = held["trainer"]
    assert ours.extra == dict(trainer._pending_extra_logs) == {"n_tokens": [3, 2, 4], "has_answer": [True, False, True]}
    logged = trainer._pending_metrics["mean_tokens"]
    assert ours.metrics == {"mean_tokens": pytest.approx(sum(logged) / len(logged))} and len(logged) == 2


def test_reward_logs_are_attached_to_the_grpo_step():
    from inspector.trainers.grpo_config import GRPOConfig
    from inspector.trainers.grpo import grpo_step
    from inspector.trainers.rewards import attach_reward_logs

    r = _fake_rollout([[5, 6, 0, 0], [5, 0, 0, 0]], texts=["4", "2"])
    table = score_rewards(r, [_sync_logging])
    step = grpo_step(table.rewards_per_func, torch.ones(2, 4), torch.zeros(2, dtype=torch.bool), torch.zeros(2, 4),
                     config=GRPOConfig(num_generations=2))
    attach_reward_logs(step, table)
    assert step.metrics["mean_tokens"] == 2.5 and step.reward_extra == {"n_tokens": [3, 2]}
    assert step.to_dict()["reward_extra"] == {"n_tokens": [3, 2]}


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
