"""A run's step as a Rollout: the existing views' inputs built from the trainer's own tokens (default tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inspector.errors import InputError
from inspector.sources.runs import open_run

DATA = Path(__file__).parent / "data" / "runs"


@pytest.fixture(autouse=True)
def _summaries(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_RUN_SUMMARIES", str(tmp_path / "summaries"))


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from inspector.weights import converted_default_policy

    return AutoTokenizer.from_pretrained(converted_default_policy())


@pytest.mark.parametrize("name", ["prime_rl", "nemo_rl", "skyrl", "slime"])
def test_token_level_step_keeps_the_trainer_ids(name, tok):
    from inspector.diagnostics.sampler import sampler_mismatch
    from inspector.views.report import format_rollout

    step = open_run(DATA / name).step(1)
    r = step.to_rollout(tok)
    i = 1
    n = len(step.completion_ids[i])
    assert r.responses[i, :n].tolist() == step.completion_ids[i].tolist()
    assert r.queries[i, -len(step.prompt_ids[i]):].tolist() == step.prompt_ids[i].tolist()
    assert r.logprobs[i, :n].tolist() == pytest.approx(step.logprobs[i].tolist())
    assert r.new_logprobs[i, :n].tolist() == pytest.approx(step.new_logprobs[i].tolist())
    assert r.settings["samples_per_prompt"] == 2 and r.prompt_index == [0, 0, 1, 1]
    assert bool(r.contain_eos_token[i]) and r.response_texts[i] == tok.decode(step.completion_ids[i], skip_special_tokens=True)
    assert any("not in this format" in n for n in r.notes)
    # the step follows its GRPO-family trainer, so the GRPO tab shows it without a PPO-convention refusal
    from inspector.trainers.grpo import trainer_mismatch

    assert r.trainer == "grpo" and r.attention == "tokenizer" and trainer_mismatch(r, "grpo") is None
    assert format_rollout(r)                      # the Sequences report renders
    assert sampler_mismatch(r).metrics is not None  # the Sampler mismatch tab's numbers


def test_missing_fields_are_named_in_the_notes(tok):
    r = open_run(DATA / "prime_rl").step(1).to_rollout(tok)
    assert any(n.startswith("reference logprobs: not in this format (prime-rl)") for n in r.notes)
    assert any(n.startswith("rewards: not in this format (prime-rl)") for n in r.notes)
    r = open_run(DATA / "skyrl").step(1).to_rollout(tok)
    assert any(n.startswith("entropy: not in this format (skyrl)") for n in r.notes)


def test_text_only_step_needs_a_tokenizer_and_says_ids_may_differ(tok):
    step = open_run(DATA / "verl").step(1)
    with pytest.raises(InputError, match="holds text only.*--tokenizer"):
        step.to_rollout()
    r = step.to_rollout(tok)
    assert r.batch_size == 4 and any("may differ from the ids the trainer saw" in n for n in r.notes)
    assert r.scores.tolist() == pytest.approx(step.rewards.tolist())


def test_trl_step_opens_in_the_grpo_math(tok):
    from inspector.trainers.grpo import rollout_grpo_step
    from inspector.trainers.grpo_config import GRPOConfig

    step = open_run(DATA / "trl").step(1)
    r = step.to_rollout(tok)
    assert r.settings["samples_per_prompt"] == 4 and r.settings["reward_columns"] == ["length_reward", "e_reward"]
    rpf = torch.tensor([r.columns[c] for c in r.settings["reward_columns"]]).T
    grpo = rollout_grpo_step(r, rpf, GRPOConfig(num_generations=4))
    assert grpo.advantages.tolist() == pytest.approx(r.columns["advantage"], abs=1e-5)  # TRL's logged advantages


def test_a_step_without_sampler_logprobs_shows_the_trainers_in_their_place(tmp_path):
    from inspector.sources.runs import RunWriter

    RunWriter(tmp_path).write_step(1, prompt_ids=torch.tensor([[5, 6]] * 2), prompt_mask=torch.ones(2, 2),
                                   completion_ids=torch.tensor([[7, 2], [8, 2]]), completion_mask=torch.ones(2, 2),
                                   old_logprobs=torch.tensor([[-0.5, -0.25], [-1.0, -0.125]]),
                                   advantages=torch.tensor([1.0, -1.0]), rewards_per_func=torch.tensor([[1.0], [0.0]]),
                                   reward_func_names=["r"], reward_weights=[1.0], extra={"eos_token_ids": [2]})
    r = open_run(tmp_path).step(1).to_rollout()
    assert r.logprobs.tolist() == r.new_logprobs.tolist() == [[-0.5, -0.25], [-1.0, -0.125]]
    assert any(n.startswith("sampler logprobs: not in this format (inspector)") for n in r.notes)
