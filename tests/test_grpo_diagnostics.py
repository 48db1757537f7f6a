"""GRPO traps on hand-built steps: each finding appears where its trap is, names the samples, and stays away
from the clean case."""

from __future__ import annotations

import math
import types

import torch

from inspector.diagnostics import diagnose_grpo
from inspector.trainers.grpo_config import GRPOConfig
from inspector.trainers.grpo import grpo_step, trl_completion_mask

EOS, PAD, X = 0, 9, 5


def _case(responses, rewards, *, pad=PAD, config=None, sampler_gap=None, truncated=None):
    responses = torch.tensor(responses)
    rewards = torch.tensor(rewards, dtype=torch.float32)
    mask, is_truncated = trl_completion_mask(responses, [EOS], pad)
    if truncated is not None:
        is_truncated = torch.tensor(truncated)
    lp = torch.full(responses.shape, -1.0)
    sampling = None if sampler_gap is None else lp - sampler_gap
    config = config or GRPOConfig(num_generations=2)
    step = grpo_step(rewards if rewards.dim() == 2 else rewards.unsqueeze(1), mask, is_truncated, lp,
                     sampling_per_token_logps=sampling, config=config)
    r = types.SimpleNamespace(responses=responses, pad_token_id=pad, eos_token_id=EOS, token=lambda i: f"<{i}>")
    return r, step


def _codes(r, step):
    return {f.code: f for f in diagnose_grpo(r, step)}


ROWS = [[X, X, EOS, PAD], [X, EOS, PAD, PAD], [X, X, X, EOS], [X, EOS, PAD, PAD]]


def test_zero_std_groups_and_the_fraction_they_waste():
    found = _codes(*_case(ROWS, [1.0, 1.0, 0.0, 1.0]))
    f = found["grpo_zero_std"]
    assert f.samples == [0, 1] and "50% of the batch" in f.detail and "num_generations" in f.fix
    assert "grpo_zero_std" not in _codes(*_case(ROWS, [1.0, 0.0, 0.0, 1.0]))


def test_a_group_truncated_whole():
    rows = [[X, X, X, X], [X, X, X, X], [X, EOS, PAD, PAD], [X, X, X, X]]
    f = _codes(*_case(rows, [1.0, 0.0, 0.0, 1.0]))["grpo_group_truncated"]
    assert f.samples == [0, 1] and "max_completion_length" in f.fix
    masked = _codes(*_case(rows, [1.0, 0.0, 0.0, 1.0], config=GRPOConfig(num_generations=2, mask_truncated_completions=True)))
    assert "removed all of them from the loss" in masked["grpo_group_truncated"].detail
    clean = [[X, X, X, X], [X, EOS, PAD, PAD], [X, EOS, PAD, PAD], [X, X, X, X]]
    assert "grpo_group_truncated" not in _codes(*_case(clean, [1.0, 0.0, 0.0, 1.0]))


def test_length_bias_under_grpo_not_under_dapo():
    rewards = [1.0, 0.0, 1.0, 0.0]  # short and long completions with the same advantage
    rows = [[X, EOS, PAD, PAD], [X, X, X, EOS], [X, X, X, EOS], [X, EOS, PAD, PAD]]
    f = _codes(*_case(rows, rewards, config=GRPOConfig(num_generations=2, loss_type="grpo")))["grpo_length_bias"]
    assert f.samples == [0, 1] and "counts 2.00x" in f.detail and "dr_grpo" in f.fix
    for loss_type in ("dapo", "dr_grpo", "bnpo"):
        assert "grpo_length_bias" not in _codes(*_case(rows, rewards, config=GRPOConfig(num_generations=2, loss_type=loss_type)))


def test_completions_dropped_by_a_sequence_ratio():
    rows = [[X, X, X, X], [X, EOS, PAD, PAD], [X, EOS, PAD, PAD], [X, EOS, PAD, PAD]]
    # a 0.5 nat gap per token: exp(4 * 0.5) = 7.4 > 3 for the 4-token completion, exp(1) = 2.7 for 2 tokens
    f = _codes(*_case(rows, [1.0, 0.0, 0.0, 1.0], sampler_gap=0.5))["grpo_sequence_dropped"]
    assert f.samples == [0] and "7.39" in f.detail and "sequence_mask" in f.detail
    assert "grpo_sequence_dropped" not in _codes(*_case(rows, [1.0, 0.0, 0.0, 1.0], sampler_gap=0.0))
    token_level = GRPOConfig(num_generations=2, vllm_importance_sampling_mode="token_mask")
    # a token-level mode drops tokens, not whole completions (1.5 nats: exp(1.5) = 4.5 > 3 on every token)
    token_case = _case(rows, [1.0, 0.0, 0.0, 1.0], sampler_gap=1.5, config=token_level)
    assert bool(token_case[1].sampler.dropped.any())
    assert "grpo_sequence_dropped" not in _codes(*token_case)


def test_a_reward_function_that_returned_none():
    rewards = [[1.0, math.nan], [0.0, 1.0], [math.nan, math.nan], [1.0, 0.0]]
    f = _codes(*_case(ROWS, rewards))["grpo_reward_none"]
    assert f.samples == [0, 2] and "'reward_1' on sample(s) 0, 2" in f.detail
    assert "Sample(s) 2 got None from every function" in f.detail and "advantage 0" in f.detail
    assert "grpo_reward_none" not in _codes(*_case(ROWS, [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]))


def test_reward_functions_on_very_different_scales():
    rewards = [[0.0, 100.0], [1.0, 0.0], [1.0, 50.0], [0.0, 10.0]]
    f = _codes(*_case(ROWS, rewards))["grpo_reward_scales"]
    assert "'reward_1'" in f.detail and "normalize_then_sum" in f.fix
    assert "grpo_reward_scales" not in _codes(*_case(ROWS, rewards, config=GRPOConfig(num_generations=2,
                                                                                     reward_weights=(1.0, 0.01))))
    assert "grpo_reward_scales" not in _codes(*_case(ROWS, rewards, config=GRPOConfig(
        num_generations=2, multi_objective_aggregation="normalize_then_sum")))


def test_the_eos_token_inside_the_loss_mask():
    f = _codes(*_case(ROWS, [1.0, 0.0, 0.0, 1.0]))["grpo_eos_in_loss_mask"]
    assert f.positions == [(0, 2), (1, 1), (2, 3), (3, 1)]
    no_eos = [[X, X, X, X]] * 4
    assert "grpo_eos_in_loss_mask" not in _codes(*_case(no_eos, [1.0, 0.0, 0.0, 1.0]))


def test_pad_equals_eos_and_the_completion_mask():
    rows = [[X, X, EOS, EOS], [X, EOS, EOS, EOS], [X, X, X, EOS], [X, EOS, EOS, EOS]]
    f = _codes(*_case(rows, [1.0, 0.0, 0.0, 1.0], pad=EOS))["grpo_pad_equals_eos"]
    assert f.samples == [0, 1, 2, 3] and "drops the 5 after it" in f.detail
    # the EOS tokens after the first (padding) are outside the loss mask, and not reported as inside it
    inside = _codes(*_case(rows, [1.0, 0.0, 0.0, 1.0], pad=EOS))["grpo_eos_in_loss_mask"]
    assert inside.positions == [(0, 2), (1, 1), (2, 3), (3, 1)]
    assert "grpo_pad_equals_eos" not in _codes(*_case(ROWS, [1.0, 0.0, 0.0, 1.0], pad=PAD))
