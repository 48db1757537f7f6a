"""GRPO traps on hand-built steps: each finding appears where its trap is, names the samples, and stays away
from the clean case."""

from __future__ import annotations

import math
import types

import pytest
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


def test_zero_std_groups_are_flagged_under_batch_scaling_too():
    """scale_rewards='batch' divides by the batch's std, so TRL's is_std_zero misses a group whose rewards are
    all equal; its advantages are still 0 and the finding names it."""
    batch = GRPOConfig(num_generations=2, scale_rewards="batch")
    r, step = _case(ROWS, [1.0, 1.0, 0.0, 1.0], config=batch)
    assert not step.is_std_zero.any() and step.advantages[:2].abs().max() < 1e-6
    f = _codes(r, step)["grpo_zero_std"]
    assert f.samples == [0, 1] and "scale_rewards='batch'" in f.detail
    assert "grpo_zero_std" not in _codes(*_case(ROWS, [1.0, 0.0, 0.0, 1.0], config=batch))
    weighted = GRPOConfig(num_generations=2, scale_rewards="batch", reward_weights=(1.0, 0.0))
    # equal in the weighted sum though the second function differs: no signal either
    f = _codes(*_case(ROWS, [[1.0, 0.0], [1.0, 5.0], [0.0, 1.0], [1.0, 1.0]], config=weighted))["grpo_zero_std"]
    assert f.samples == [0, 1]


LENGTH_ROWS = [[X, EOS, PAD, PAD], [X, X, X, EOS], [X, X, X, EOS], [X, EOS, PAD, PAD]]


def _weighted_case(config, gap_per_row):
    """The length-bias rows with a per-row sampler gap (the ratio then weighs rows differently) and
    per-token entropies that keep the short rows whole and half of the long ones under a 0.5 quantile."""
    responses = torch.tensor(LENGTH_ROWS)
    mask, is_truncated = trl_completion_mask(responses, [EOS], PAD)
    lp = torch.full(responses.shape, -1.0)
    sampling = lp - torch.tensor(gap_per_row).unsqueeze(1)
    entropies = torch.tensor([[9.0, 9.0, 0.0, 0.0], [9.0, 9.0, 1.0, 1.0], [9.0, 9.0, 1.0, 1.0], [9.0, 9.0, 0.0, 0.0]])
    step = grpo_step(torch.tensor([[1.0], [0.0], [1.0], [0.0]]), mask, is_truncated, lp, sampling_per_token_logps=sampling,
                     entropies=entropies, config=config)
    r = types.SimpleNamespace(responses=responses, pad_token_id=PAD, eos_token_id=EOS, token=lambda i: f"<{i}>")
    return r, step


def test_length_bias_ignores_the_sampler_ratio_and_the_entropy_mask():
    """Under dapo every token of the batch weighs alike: token weights that differ only through the sampler
    ratio (0.5 nats on the short rows: 1.65x) or the entropy mask are no length bias."""
    for extra in (dict(vllm_importance_sampling_mode="token_truncate"), dict(top_entropy_quantile=0.5)):
        cfg = GRPOConfig(num_generations=2, loss_type="dapo", **extra)
        r, step = _weighted_case(cfg, [0.5, 0.0, 0.0, 0.5] if "vllm_importance_sampling_mode" in extra else [0.0] * 4)
        w = -step.token_weights / step.advantages.unsqueeze(1)
        assert not torch.allclose(w[0][step.completion_mask[0].bool()].mean(), w[1][step.completion_mask[1].bool()].mean())
        assert "grpo_length_bias" not in _codes(r, step), extra
        grpo = _codes(*_weighted_case(GRPOConfig(num_generations=2, loss_type="grpo", **extra), [0.0] * 4))
        assert "counts 2.00x" in grpo["grpo_length_bias"].detail          # grpo's own bias is still found


def test_the_length_bias_fix_never_names_the_loss_in_use():
    from inspector.trainers.grpo_config import VerlGRPOConfig

    for cfg in (GRPOConfig(num_generations=2, loss_type="grpo"), GRPOConfig(num_generations=2, loss_type="sapo"),
                VerlGRPOConfig(num_generations=2, loss_agg_mode="seq-mean-token-mean")):
        name = getattr(cfg, "loss_type", None) or cfg.loss_agg_mode
        f = _codes(*_case(LENGTH_ROWS, [1.0, 0.0, 1.0, 0.0], config=cfg))["grpo_length_bias"]
        assert f"'{name}'" not in f.fix and "weigh every token" in f.fix, f.fix
    verl = _codes(*_case(LENGTH_ROWS, [1.0, 0.0, 1.0, 0.0], config=VerlGRPOConfig(num_generations=2,
                                                                                  loss_agg_mode="seq-mean-token-mean")))
    assert "'token-mean' (the default)" in verl["grpo_length_bias"].fix
    for mode in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        assert "grpo_length_bias" not in _codes(*_case(LENGTH_ROWS, [1.0, 0.0, 1.0, 0.0],
                                                       config=VerlGRPOConfig(num_generations=2, loss_agg_mode=mode)))


def test_weight_per_advantage_is_the_token_weight_without_other_multipliers():
    """Where no sampler ratio or mask weighs the tokens, the weight read from the loss's aggregation equals the
    step's own d loss / d logprob divided by -advantage, for every TRL loss type and verl mode."""
    from inspector.diagnostics import weight_per_advantage
    from inspector.trainers.grpo_config import LOSS_TYPES, VERL_LOSS_AGG_MODES, VerlGRPOConfig

    configs = [GRPOConfig(num_generations=2, loss_type=t, max_completion_length=6) for t in LOSS_TYPES]
    configs += [VerlGRPOConfig(num_generations=2, loss_agg_mode=m, response_length=6) for m in VERL_LOSS_AGG_MODES]
    configs += [VerlGRPOConfig(num_generations=2, loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=3)]
    for cfg in configs:
        _, step = _case(LENGTH_ROWS, [1.0, 0.0, 0.3, 0.0], config=cfg)
        for i in range(4):
            m = step.completion_mask[i].bool()
            expected = float(-step.token_weights[i][m].mean()) / float(step.advantages[i])
            assert weight_per_advantage(step, i) == pytest.approx(expected, rel=1e-5), (cfg, i)
