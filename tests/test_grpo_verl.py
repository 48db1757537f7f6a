"""verl's GRPO numbers against verl 0.9.1's own functions, lifted from its wheel: `agg_loss` over a batch
padded to `response_length` (the generation cap), `loss_scale_factor`, the policy loss's metrics (its
`actor/ppo_kl` sign), the rollout correction's `rollout_corr/...` metrics and IcePop's dropped tokens."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_grpo import verl  # noqa: F401 (the fixture: verl's own functions from its wheel)

from inspector.errors import InputError
from inspector.trainers.grpo_config import VerlGRPOConfig, make_config
from inspector.trainers.grpo import grpo_step, rollout_grpo_step
from inspector.trainers.verl import verl_agg_loss
from inspector.trainers.sampler import verl_sampler_correction


def _pad(t: torch.Tensor, width: int, value: float = 0.0) -> torch.Tensor:
    """What verl's batch holds: every per-token tensor right-padded to `response_length`."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def _batch(seed: int, B: int = 8, T: int = 4):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, 1, generator=g)
    mask = (torch.rand(B, T, generator=g) < 0.8).long()
    mask[:, 0] = 1
    mask[2, 2:] = 0                                       # a short completion: padding inside the batch
    lp = -torch.rand(B, T, generator=g)
    old = lp + torch.randn(B, T, generator=g) * 0.5
    sampler = old + torch.randn(B, T, generator=g) * 0.3
    ref = lp + torch.randn(B, T, generator=g) * 0.2
    ent = torch.rand(B, T, generator=g) * 3
    return rewards, mask, lp, old, sampler, ref, ent


def _actor(**global_batch_info):
    return SimpleNamespace(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, global_batch_info=global_batch_info,
                           get=lambda k, d=None: 3.0 if k == "clip_ratio_c" else d)


# --------------------------------------------------------------------------------------- agg_loss and response_length

def test_seq_mean_token_sum_norm_divides_by_the_generation_cap_by_hand():
    """Completions of 4 tokens in a batch verl pads to a cap of 16: the loss is 4x smaller than dividing by 4."""
    loss_mat, mask = torch.ones(2, 4), torch.ones(2, 4)
    assert verl_agg_loss(loss_mat, mask, "seq-mean-token-sum-norm").item() == pytest.approx(1.0)
    assert verl_agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", response_length=16).item() == pytest.approx(0.25)
    assert verl_agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", 8, response_length=16).item() == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("factor", [None, 5])
def test_agg_loss_on_the_unpadded_batch_equals_verls_on_the_padded_one(verl, mode, factor):
    g = torch.Generator().manual_seed(20)
    loss_mat = torch.randn(6, 4, generator=g)
    mask = (torch.rand(6, 4, generator=g) < 0.7).float()
    mask[0] = 1
    theirs = verl.agg_loss(_pad(loss_mat, 16), _pad(mask, 16), mode, loss_scale_factor=factor)
    ours = verl_agg_loss(loss_mat, mask, mode, factor, response_length=16)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


@pytest.mark.parametrize("mode", ["seq-mean-token-sum-norm", "token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("factor", [None, 3])
def test_verl_step_loss_metrics_and_ppo_kl_equal_verls_on_the_padded_batch(verl, mode, factor):
    """The whole verl step at response_length 16 on 4-token completions: the policy loss with the KL loss,
    and `actor/pg_clipfrac`, `actor/pg_clipfrac_lower`, `actor/ppo_kl` (its sign: old - new), `actor/kl_loss`
    and `actor/entropy` as verl's own functions compute them from the padded tensors."""
    rewards, mask, lp, old, sampler, ref, ent = _batch(21)
    B, W = mask.shape[0], 16
    cfg = VerlGRPOConfig(num_generations=4, loss_agg_mode=mode, use_kl_loss=True, loss_scale_factor=factor,
                         response_length=W, rollout_is="token")
    s = grpo_step(rewards, mask, torch.zeros(B, dtype=torch.bool), lp, sampler, ref, ent, config=cfg,
                  old_per_token_logps=old)
    P = {name: _pad(t, W) for name, t in dict(mask=mask.float(), lp=lp, old=old, sampler=sampler, ref=ref, ent=ent).items()}
    token_rewards = torch.zeros(B, W)
    token_rewards[:, 0] = rewards[:, 0]
    adv, _ = verl.compute_grpo_outcome_advantage(token_rewards, P["mask"], np.arange(B) // 4)
    is_w, _ = verl.compute_rollout_correction_weights(P["old"] - P["sampler"], P["mask"], "token", 2.0)
    info = {} if factor is None else {"loss_scale_factor": factor}
    pg, pg_metrics = verl.compute_policy_loss_vanilla(P["old"], P["lp"], adv, P["mask"], mode, _actor(**info), is_w)
    kl = verl.agg_loss(verl.kl_penalty_forward(P["lp"], P["ref"], "low_var_kl"), P["mask"], mode, **info)
    entropy = verl.agg_loss(P["ent"], P["mask"], mode, loss_scale_factor=factor)
    assert s.loss.item() == pytest.approx((pg + kl * 0.001).item(), rel=1e-5, abs=1e-7)
    for key, value in pg_metrics.items():
        assert s.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert abs(pg_metrics["actor/ppo_kl"]) > 1e-3               # the sign is tested: old and new logprobs differ
    assert s.metrics["actor/kl_loss"] == pytest.approx(kl.item(), rel=1e-5)
    assert s.metrics["actor/entropy"] == pytest.approx(entropy.item(), rel=1e-5)


def test_rollout_grpo_step_pads_to_the_rollouts_max_new_tokens():
    """verl's response_length is the rollout's generation cap (max_new_tokens), not its longest completion."""
    rewards, mask, lp, *_ = _batch(22, B=4)
    inputs = {"completion_mask": mask, "is_truncated": torch.zeros(4, dtype=torch.bool), "per_token_logps": lp,
              "sampling_per_token_logps": None, "ref_per_token_logps": None, "entropies": None}
    r = SimpleNamespace(settings={"samples_per_prompt": 2, "max_new_tokens": 16})
    cfg = VerlGRPOConfig(num_generations=2, loss_agg_mode="seq-mean-token-sum-norm")
    s = rollout_grpo_step(r, rewards, cfg, inputs=inputs)
    assert s.config.response_length == 16
    width = grpo_step(rewards, mask, inputs["is_truncated"], lp, config=cfg)        # divided by the width, 4
    assert s.loss.item() == pytest.approx(width.loss.item() / 4, rel=1e-6)
    fixed = rollout_grpo_step(r, rewards, VerlGRPOConfig(num_generations=2, loss_agg_mode="seq-mean-token-sum-norm",
                                                        loss_scale_factor=4), inputs=inputs)
    assert fixed.loss.item() == pytest.approx(width.loss.item(), rel=1e-6)


@pytest.mark.parametrize("value", [0, -1.0, "4", True, float("nan")])
def test_loss_scale_factor_is_validated(value):
    with pytest.raises(InputError, match="loss_scale_factor must be a positive number"):
        make_config("verl", loss_scale_factor=value)
    assert make_config("verl", loss_scale_factor=512).loss_scale_factor == 512


def test_response_length_is_validated_and_must_cover_the_completions():
    with pytest.raises(InputError, match="response_length must be a positive whole number"):
        make_config("verl", response_length=0)
    rewards, mask, lp, *_ = _batch(23, B=4)
    with pytest.raises(InputError, match="shorter than the completions' width 4"):
        grpo_step(rewards, mask, torch.zeros(4, dtype=torch.bool), lp,
                  config=VerlGRPOConfig(num_generations=2, response_length=3))


# --------------------------------------------------------------------------------------- the rollout correction's metrics

@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("threshold", [2.0, "0.5_1.5"])
def test_rollout_corr_metrics_equal_verls_without_counting_padding(verl, level, threshold):
    """Every `rollout_corr/...` metric verl logs (compute_rollout_correction_weights' IS metrics and
    compute_offpolicy_metrics) and `training/rollout_probs_diff_...` (calculate_debug_metrics), from the batch
    padded to response_length: no padding among the extremes."""
    rewards, mask, lp, old, sampler, *_ = _batch(24)
    B, W = mask.shape[0], 16
    cfg = VerlGRPOConfig(num_generations=4, rollout_is=level, rollout_is_threshold=threshold, response_length=W)
    s = grpo_step(rewards, mask, torch.zeros(B, dtype=torch.bool), lp, sampler, config=cfg, old_per_token_logps=old)
    pm, po, ps = _pad(mask.float(), W), _pad(old, W), _pad(sampler, W)
    _, is_metrics = verl.compute_rollout_correction_weights(po - ps, pm, level, threshold)
    theirs = {f"rollout_corr/{k}": v for k, v in {**is_metrics, **verl.compute_offpolicy_metrics(po, ps, pm)}.items()}
    ours = {k: v for k, v in s.metrics.items() if k.startswith("rollout_corr/")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if level == "sequence":
        assert ours["rollout_corr/rollout_is_min"] > 0.05       # padding (ratio 0) never counts
    batch = {"rollout_log_probs": ps, "old_log_probs": po, "response_mask": pm.long(),
             "responses": torch.zeros(B, W, dtype=torch.long)}
    for key, value in verl.calculate_debug_metrics(SimpleNamespace(batch=batch)).items():
        assert s.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_sequence_rollout_is_min_ignores_padding_by_hand():
    """Two completions of 1 and 3 tokens, per-token gap 0.25 nats: sequence ratios e^0.25 and e^0.75; the
    minimum is e^0.25 = 1.28, not the 0 of the padded positions."""
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    old = torch.full((2, 3), -1.0)
    s = grpo_step(torch.tensor([[1.0], [0.0]]), mask, torch.zeros(2, dtype=torch.bool), old, old - 0.25,
                  config=VerlGRPOConfig(num_generations=2, rollout_is="sequence", rollout_is_threshold=5.0))
    assert s.metrics["rollout_corr/rollout_is_min"] == pytest.approx(np.exp(0.25), rel=1e-6)
    assert s.metrics["rollout_corr/rollout_is_max"] == pytest.approx(np.exp(0.75), rel=1e-6)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_icepop_drops_only_tokens_inside_the_mask(verl, level):
    """IcePop's `dropped`: the tokens of the loss whose weight verl zeroes, never the padding."""
    _, mask, _, old, sampler, *_ = _batch(25)
    sampler = old + (sampler - old) * 3                     # wide gaps: some ratios leave [0.5, 1.5]
    c = verl_sampler_correction(old, sampler, mask, level, "0.5_1.5")
    weights, metrics = verl.compute_rollout_correction_weights(old - sampler, mask.float(), level, "0.5_1.5")
    assert torch.equal(c.dropped, (weights == 0) & mask.bool())
    assert not (c.dropped & ~mask.bool()).any() and c.dropped.any()
    assert c.dropped.sum().item() == round(metrics["rollout_is_oob_ratio"] * mask.sum().item())
