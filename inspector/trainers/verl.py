"""verl's GRPO (verl 0.9): `compute_grpo_outcome_advantage` (its epsilon, `torch.std`, groups of one),
`agg_loss`'s `loss_agg_mode`, the vanilla (dual-clip) policy loss, its rollout correction and KL loss.

Pure torch; verl itself is never imported here (the tests lift its functions from its wheel).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .grpo_common import GRPOStep, check_inputs, completion_metrics, func_names, reward_metrics
from .grpo_config import VERL_LOSS_AGG_MODES, VerlGRPOConfig
from .sampler import verl_debug_metrics, verl_is_metrics, verl_offpolicy_metrics, verl_sampler_correction


def verl_grpo_advantages(scores: torch.Tensor, index: list, epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True):
    """verl's `compute_grpo_outcome_advantage` per sample: (advantages, means, stds), each (B,).

    Grouped by `index` (verl's uid); a group of one gets mean 0 and std 1; `torch.std` is unbiased.
    """
    groups: dict = {}
    for i, key in enumerate(index):
        groups.setdefault(key, []).append(i)
    means, stds = torch.zeros_like(scores), torch.ones_like(scores)
    for members in groups.values():
        if len(members) > 1:
            vals = scores[members]
            means[members], stds[members] = torch.mean(vals), torch.std(vals)
    advantages = (scores - means) / (stds + epsilon) if norm_adv_by_std_in_grpo else scores - means
    return advantages, means, stds


def verl_agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str, loss_scale_factor=None,
                  response_length: int | None = None):
    """verl's `agg_loss` on one data-parallel rank (`masked_sum` drops NaN outside the mask where verl uses it).

    `response_length`: the width verl pads the batch to (the generation cap); `seq-mean-token-sum-norm`
    without a `loss_scale_factor` divides by it. None: the width of `loss_mask`."""
    loss_mask = loss_mask.to(loss_mat.dtype)

    def masked_sum(values, mask):
        return (torch.where(mask.bool(), values, 0.0) * mask).sum()

    if loss_agg_mode == "token-mean":
        return masked_sum(loss_mat, loss_mask) / loss_mask.sum()
    if loss_agg_mode == "token-sum":
        return masked_sum(loss_mat, loss_mask)
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
        loss = masked_sum(seq_losses, seq_mask) / seq_mask.sum()
        if loss_agg_mode == "seq-mean-token-sum-norm":
            horizon = loss_mask.shape[-1] if response_length is None else response_length
            loss = loss / (horizon if loss_scale_factor is None else loss_scale_factor)
        return loss
    if loss_agg_mode == "seq-mean-token-mean":
        counts = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (counts + 1e-8)
        seq_mask = (counts > 0).float()
        return masked_sum(seq_losses, seq_mask) / seq_mask.sum()
    raise InputError(f"loss_agg_mode must be one of {', '.join(VERL_LOSS_AGG_MODES)}; got {loss_agg_mode!r}.")


def verl_kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """verl's `kl_penalty_forward` for the per-token KL loss."""
    if kl_penalty in ("kl", "k1"):
        return logprob - ref_logprob
    if kl_penalty == "abs":
        return (logprob - ref_logprob).abs()
    if kl_penalty in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def verl_step(rewards_per_func, completion_mask, is_truncated, per_token_logps, sampling_per_token_logps,
               ref_per_token_logps, entropies, config: VerlGRPOConfig, old_per_token_logps, reward_func_names):
    G = config.num_generations
    rpf, w = check_inputs(rewards_per_func, completion_mask, is_truncated, per_token_logps, G, config.reward_weights,
                           {"sampling_per_token_logps": sampling_per_token_logps, "ref_per_token_logps": ref_per_token_logps,
                            "entropies": entropies, "old_per_token_logps": old_per_token_logps})
    names = func_names(reward_func_names, rpf.shape[1])
    bad = torch.isnan(rpf).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise InputError(
            f"verl needs a number from every reward function for every sample; samples {bad[:10]} have None. "
            "Return a float (e.g. 0.0) instead of None, or choose TRL's GRPO, which skips None rewards."
        )
    if config.use_kl_loss and ref_per_token_logps is None:
        raise InputError("use_kl_loss needs the reference model's logprobs (ref_per_token_logps).")
    width = config.response_length
    if width is not None and width < completion_mask.shape[1]:
        raise InputError(f"response_length={width} is shorter than the completions' width {completion_mask.shape[1]}: "
                         "set it to the generation cap (max_new_tokens) the rollout was made with.")
    is_truncated = is_truncated.bool()
    lengths = completion_mask.long().sum(1)
    mask = completion_mask.long()
    maskf = mask.float()
    scores = (rpf * w.unsqueeze(0)).sum(dim=1)
    index = [i // G for i in range(rpf.shape[0])]
    advantages, means, stds = verl_grpo_advantages(scores, index, config.epsilon, config.norm_adv_by_std_in_grpo)
    is_std_zero = torch.isclose(stds, torch.zeros_like(stds))
    metrics = completion_metrics(lengths, is_truncated)
    metrics.update(reward_metrics(rpf, w, names, is_std_zero))

    trainer_lp = per_token_logps.detach().float()
    old_given = old_per_token_logps is not None
    old = old_per_token_logps.detach().float() if old_given else trainer_lp
    correction = _verl_sampler(config, old, sampling_per_token_logps, mask, metrics)
    lp = trainer_lp.clone().requires_grad_(True)
    old_lp = old if old_given else lp.detach()
    adv = advantages.unsqueeze(1) * maskf  # verl's token-level advantages
    with torch.enable_grad():
        neg_kl = torch.clamp(lp - old_lp, min=-20.0, max=20.0)
        ratio = torch.exp(neg_kl)
        pg1 = -adv * ratio
        pg2 = -adv * torch.clamp(ratio, 1 - config.clip_low, 1 + config.clip_high)
        clip1 = torch.maximum(pg1, pg2)
        pg3 = -adv * config.clip_ratio_c
        clip2 = torch.min(pg3, clip1)
        per_token_loss = torch.where(adv < 0, clip2, clip1)
        if correction is not None:
            per_token_loss = per_token_loss * correction.ratio
        loss = verl_agg_loss(per_token_loss, maskf, config.loss_agg_mode, config.loss_scale_factor, width)
        per_token_kl = None
        if ref_per_token_logps is not None:
            per_token_kl = verl_kl_penalty(lp, ref_per_token_logps.detach().float(), config.kl_loss_type)
            if config.use_kl_loss:
                loss = loss + verl_agg_loss(per_token_kl, maskf, config.loss_agg_mode, config.loss_scale_factor, width) * config.kl_loss_coef
        (token_weights,) = torch.autograd.grad(loss, lp, allow_unused=True)
    if token_weights is None:
        token_weights = torch.zeros_like(trainer_lp)
    denom = maskf.sum().clamp(min=1.0)
    metrics["actor/pg_clipfrac"] = float((torch.gt(pg2, pg1).float() * maskf).sum() / denom)
    metrics["actor/ppo_kl"] = float((-neg_kl.detach() * maskf).sum() / denom)
    metrics["actor/pg_clipfrac_lower"] = float((torch.gt(clip1, pg3).float() * (adv < 0).float() * maskf).sum() / denom)
    if per_token_kl is not None and config.use_kl_loss:
        metrics["actor/kl_loss"] = float(verl_agg_loss(per_token_kl.detach(), maskf, config.loss_agg_mode, config.loss_scale_factor, width))
    if entropies is not None:
        metrics["actor/entropy"] = float(verl_agg_loss(entropies.float(), maskf, config.loss_agg_mode, config.loss_scale_factor, width))
    return GRPOStep(
        trainer="verl", num_generations=G, reward_func_names=names, rewards_per_func=rpf, completion_mask=mask,
        is_truncated=is_truncated, lengths=lengths, rewards=scores, mean_grouped_rewards=means, std_rewards=stds,
        advantages=advantages, is_std_zero=is_std_zero,
        importance_sampling_ratio=correction.ratio if correction is not None else None, sampler=correction,
        per_token_kl=per_token_kl.detach() if per_token_kl is not None else None, entropy_mask=None,
        coef_1=ratio.detach(), per_token_loss=per_token_loss.detach(), loss=loss.detach(),
        token_weights=token_weights, metrics=metrics, config=config,
    )


def _verl_sampler(config: VerlGRPOConfig, old, sampling_per_token_logps, mask, metrics: dict):
    """verl's rollout correction of the batch (None when `rollout_is` is off or without a sampler's logprobs), and
    the `rollout_corr/...` and `training/rollout_probs_diff_...` metrics verl logs whenever it has the sampler's
    logprobs; added to `metrics`."""
    if sampling_per_token_logps is None or not mask.any():
        return None
    sampling = sampling_per_token_logps.detach().float()
    correction = None
    if config.rollout_is is not None:
        correction = verl_sampler_correction(old, sampling, mask, config.rollout_is, config.rollout_is_threshold)
        metrics.update(verl_is_metrics(correction, mask))
    metrics.update(verl_offpolicy_metrics(old, sampling, mask))
    metrics.update(verl_debug_metrics(old, sampling, mask))
    return correction
