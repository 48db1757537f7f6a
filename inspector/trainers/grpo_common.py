"""What TRL's and verl's GRPO steps share: the `GRPOStep` they return, the input checks, and the metrics both
log about completions, rewards and the sampler (under TRL's names).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from ..errors import InputError
from .grpo_config import GRPOConfig, VerlGRPOConfig
from .sampler import SamplerCorrection


def nanstd(tensor: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """TRL's `nanstd` (trl/trainer/utils.py): Bessel-corrected std ignoring NaNs; NaN where fewer than 2 values."""
    mean = torch.nanmean(tensor, dim=dim, keepdim=True)
    variance = torch.nanmean((tensor - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(tensor), dim=dim, keepdim=True)
    correction = count / (count - 1)
    correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
    std = torch.sqrt(variance * correction)
    if keepdim:
        return std
    return std.squeeze() if dim is None else std.squeeze(dim)


@dataclass
class GRPOStep:
    """One GRPO step at the rollout point, named as TRL's (or verl's) variables.

    Per-token tensors are (B, T) aligned with the completion tokens. `completion_mask` is after
    `mask_truncated_completions`; `lengths` are the completion lengths before it (TRL's logged lengths).
    `importance_sampling_ratio` is the sampler correction as it multiplies the loss ((B, T) or (B, 1)),
    None when no sampler logprobs were given or the correction is off. `entropy_mask` is None when
    `top_entropy_quantile` is 1.0 (TRL computes none). `per_token_kl` is present whenever reference
    logprobs are given (it enters the loss only when beta != 0). `per_token_loss` is broadcast to (B, T)
    (before the mask: read it where the mask is 1). `token_weights` is d loss / d per_token_logps at the
    rollout point: 0 outside the loss, negative where the update raises the token's probability.
    """

    trainer: str                            # "grpo" (TRL 1.16) or "verl"
    num_generations: int
    reward_func_names: list[str]
    rewards_per_func: torch.Tensor          # (B, F), NaN where a function returned None
    completion_mask: torch.Tensor           # (B, T) long
    is_truncated: torch.Tensor              # (B,) bool
    lengths: torch.Tensor                   # (B,) tokens before mask_truncated_completions
    rewards: torch.Tensor                   # (B,) the aggregated reward the advantages come from
    mean_grouped_rewards: torch.Tensor      # (B,) the baseline subtracted
    std_rewards: torch.Tensor               # (B,) the std divided by (or only logged, scale_rewards "none")
    advantages: torch.Tensor                # (B,)
    is_std_zero: torch.Tensor               # (B,) bool
    importance_sampling_ratio: torch.Tensor | None
    sampler: SamplerCorrection | None
    per_token_kl: torch.Tensor | None
    entropy_mask: torch.Tensor | None
    coef_1: torch.Tensor                    # the policy ratio (B, T) or (B, 1): 1 at the rollout point
    per_token_loss: torch.Tensor            # (B, T)
    loss: torch.Tensor                      # scalar
    token_weights: torch.Tensor             # (B, T)
    metrics: dict[str, float]
    config: GRPOConfig | VerlGRPOConfig
    notes: list[str] = field(default_factory=list)
    reward_extra: dict[str, list] = field(default_factory=dict)  # the reward functions' `log_extra` columns

    @property
    def num_groups(self) -> int:
        return self.advantages.shape[0] // self.num_generations

    def group_of(self, i: int) -> int:
        return i // self.num_generations

    def to_dict(self) -> dict:
        """Plain lists and numbers, for JSON; NaN and infinities (a None reward, an unscorable row) become null."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, SamplerCorrection):
                v = asdict(v)
            elif f.name == "config":
                v = v.to_dict()
            out[f.name] = _plain(v)
        return out


def _plain(v):
    if isinstance(v, torch.Tensor):
        return _plain(v.tolist())
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def check_inputs(rewards_per_func, completion_mask, is_truncated, per_token_logps, num_generations, weights, others):
    if rewards_per_func.dim() == 1:
        rewards_per_func = rewards_per_func.unsqueeze(1)
    if rewards_per_func.dim() != 2:
        raise InputError(f"rewards_per_func must be (B, F); got shape {tuple(rewards_per_func.shape)}.")
    B, F = rewards_per_func.shape
    if F == 0:
        raise InputError("At least one reward function is needed: rewards_per_func has no columns.")
    if B == 0 or B % num_generations:
        raise InputError(
            f"The batch of {B} completions is not whole groups of num_generations={num_generations}: "
            "give each prompt exactly num_generations completions, one group after another."
        )
    if completion_mask.shape != per_token_logps.shape or completion_mask.shape[0] != B:
        raise InputError(
            f"completion_mask {tuple(completion_mask.shape)} and per_token_logps {tuple(per_token_logps.shape)} "
            f"must both be (B={B}, T)."
        )
    if is_truncated.shape != (B,):
        raise InputError(f"is_truncated must be (B,) = ({B},); got {tuple(is_truncated.shape)}.")
    for name, t in others.items():
        if t is not None and t.shape != per_token_logps.shape:
            raise InputError(f"{name} must have the shape of per_token_logps {tuple(per_token_logps.shape)}; got {tuple(t.shape)}.")
    if weights is not None and len(weights) != F:
        raise InputError(f"reward_weights has {len(weights)} weights for {F} reward functions: give one weight per function.")
    w = torch.ones(F) if weights is None else torch.tensor(weights, dtype=torch.float32)
    return rewards_per_func.float(), w


def func_names(reward_func_names, F):
    names = list(reward_func_names) if reward_func_names is not None else [f"reward_{i}" for i in range(F)]
    if len(names) != F:
        raise InputError(f"{len(names)} reward function names for {F} reward columns.")
    return names


def completion_metrics(lengths, is_truncated):
    m = {
        "completions/mean_length": float(lengths.float().mean()),
        "completions/min_length": float(lengths.float().min()),
        "completions/max_length": float(lengths.float().max()),
        "completions/clipped_ratio": float(is_truncated.float().mean()),
    }
    term = lengths[~is_truncated]
    if term.numel() == 0:
        term = torch.zeros(1)
    m["completions/mean_terminated_length"] = float(term.float().mean())
    m["completions/min_terminated_length"] = float(term.float().min())
    m["completions/max_terminated_length"] = float(term.float().max())
    return m


def reward_metrics(rewards_per_func, w, names, is_std_zero):
    m = {}
    for i, name in enumerate(names):
        m[f"rewards/{name}/mean"] = float(torch.nanmean(rewards_per_func[:, i]))
        m[f"rewards/{name}/std"] = float(nanstd(rewards_per_func[:, i]))
    logged = (rewards_per_func * w.unsqueeze(0)).nansum(dim=1)
    logged[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    m["reward"] = float(torch.nanmean(logged))
    m["reward_std"] = float(nanstd(logged))
    m["frac_reward_zero_std"] = float(is_std_zero.float().mean())
    return m


def sampling_metrics(old, sampling, mask, correction: SamplerCorrection):
    delta = torch.abs(old - sampling)
    keep = mask.bool()
    delta = delta[keep & ~torch.isnan(delta)]
    flat = correction.ratio.flatten() if correction.level == "sequence" else correction.ratio[keep]
    zero = torch.tensor(0.0)
    return {
        "sampling/sampling_logp_difference/mean": float(delta.mean() if delta.numel() else zero),
        "sampling/sampling_logp_difference/max": float(delta.max() if delta.numel() else zero),
        "sampling/importance_sampling_ratio/min": float(flat.min() if flat.numel() else zero),
        "sampling/importance_sampling_ratio/mean": float(flat.mean() if flat.numel() else zero),
        "sampling/importance_sampling_ratio/max": float(flat.max() if flat.numel() else zero),
    }
