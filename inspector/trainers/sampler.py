"""Sampler correction: the importance-sampling weight a trainer puts on a token (or a sequence) when the
logprobs it was sampled under (a serving engine's) differ from the trainer's recompute. TRL 1.16's
`vllm_importance_sampling_*` modes and verl's rollout correction (truncate, or IcePop's mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError, check_choice

SAMPLER_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
VERL_ROLLOUT_IS_LEVELS = ("token", "sequence")
VERL_SAFETY_BOUND = 20.0  # verl's rollout_corr_helper.SAFETY_BOUND on log ratios


@dataclass
class SamplerCorrection:
    """The importance-sampling correction of a sampler/trainer mismatch.

    `ratio` is what multiplies the per-token loss: (B, T) per token or (B, 1) per sequence (TRL), (B, T) for
    verl (which broadcasts and zeroes padding). `raw_ratio` is before the clamp or the drop. `clamped` marks
    ratios a truncate mode moved to a bound, `dropped` ratios a mask mode set to 0 (TRL's `invalid_mis_mask`,
    verl's IcePop); both have the shape of `ratio`. `logps_diff` is the per-token trainer - sampler gap.
    """

    trainer: str                # "trl" or "verl"
    mode: str                   # TRL's vllm_importance_sampling_mode, or verl's "token"/"sequence"
    level: str                  # "token" or "sequence"
    logps_diff: torch.Tensor    # (B, T)
    raw_ratio: torch.Tensor
    ratio: torch.Tensor
    clamped: torch.Tensor
    dropped: torch.Tensor
    clip_min: float | None
    clip_max: float | None


def sampler_correction(
    trainer_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> SamplerCorrection:
    """TRL 1.16's vLLM importance-sampling ratio (`_generate_and_score_completions`).

    `diff = nan_to_num((trainer - sampler) * mask, 0)`; token modes `exp(diff)` (B, T), sequence modes
    `exp(sum_t diff)` (B, 1). `*_truncate` clamps to [clip_min, clip_max]; `*_mask` sets ratios outside
    them to 0 (a None bound is open). Defaults are TRL's.
    """
    check_choice("vllm_importance_sampling_mode", mode, SAMPLER_MODES)
    if mode.endswith("_truncate") and clip_min is None and clip_max is None:
        raise InputError(f"vllm_importance_sampling_mode {mode!r} needs clip_min or clip_max.")
    mask = mask.to(trainer_logprobs.dtype)
    diff = torch.nan_to_num((trainer_logprobs - sampler_logprobs) * mask, nan=0.0)
    level = "sequence" if mode.startswith("sequence") else "token"
    raw = torch.exp(diff.sum(dim=-1, keepdim=True) if level == "sequence" else diff)
    lo = clip_min if clip_min is not None else -math.inf
    hi = clip_max if clip_max is not None else math.inf
    outside = (raw < lo) | (raw > hi)
    if mode.endswith("_truncate"):
        ratio = torch.clamp(raw, min=clip_min, max=clip_max)
        clamped, dropped = outside, torch.zeros_like(outside)
    else:
        ratio = raw.masked_fill(outside, 0.0)
        clamped, dropped = torch.zeros_like(outside), outside
    return SamplerCorrection("trl", mode, level, diff, raw, ratio, clamped, dropped, clip_min, clip_max)


def verl_is_bounds(threshold: float | str) -> tuple[float, float | None]:
    """verl's `_parse_rollout_is_threshold`: (upper, lower or None); a "lower_upper" string means IcePop."""
    if isinstance(threshold, bool):
        raise InputError("rollout_is_threshold must be a number or a 'lower_upper' string, not a boolean.")
    if isinstance(threshold, (int, float)):
        upper, lower = float(threshold), None
    elif isinstance(threshold, str) and threshold.strip():
        spec = threshold.strip()
        try:
            if "_" in spec:
                lo, up = spec.split("_", 1)
                lower, upper = float(lo), float(up)
            else:
                upper, lower = float(spec), None
        except ValueError:
            raise InputError(f"rollout_is_threshold {threshold!r} is not a number or a 'lower_upper' string.") from None
    else:
        raise InputError(f"rollout_is_threshold must be a number or a 'lower_upper' string (got {threshold!r}).")
    if upper <= 0 or (lower is not None and (lower <= 0 or lower > upper)):
        raise InputError(f"rollout_is_threshold needs 0 < lower <= upper (got {threshold!r}).")
    return upper, lower


def verl_sampler_correction(
    trainer_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rollout_is: str = "token",
    rollout_is_threshold: float | str = 2.0,
) -> SamplerCorrection:
    """verl's `compute_rollout_correction_weights` (rollout_corr_helper.py), without batch normalisation.

    `log_ratio = old_log_prob - rollout_log_prob`, clamped to +-20 (per token, or its masked sum per
    sequence), `exp`, broadcast to (B, T) and times the mask; then clamped from above at the threshold
    (TIS) or, for a "lower_upper" threshold, zeroed outside [lower, upper] (IcePop).
    """
    check_choice("rollout_is", rollout_is, VERL_ROLLOUT_IS_LEVELS)
    upper, lower = verl_is_bounds(rollout_is_threshold)
    mask = mask.to(trainer_logprobs.dtype)
    log_ratio = trainer_logprobs - sampler_logprobs
    if rollout_is == "token":
        raw = torch.exp(torch.clamp(log_ratio, -VERL_SAFETY_BOUND, VERL_SAFETY_BOUND))
    else:
        total = (log_ratio * mask).sum(dim=-1, keepdim=True)
        raw = torch.exp(torch.clamp(total, -VERL_SAFETY_BOUND, VERL_SAFETY_BOUND)).expand_as(log_ratio)
    raw = raw * mask
    if lower is None:
        ratio = raw.clamp(max=upper)
        clamped, dropped = (raw > upper) & mask.bool(), torch.zeros_like(mask, dtype=torch.bool)
    else:
        kept = (raw >= lower) & (raw <= upper)
        ratio = torch.where(kept, raw, torch.zeros_like(raw))
        clamped, dropped = torch.zeros_like(kept), ~kept & mask.bool()
    return SamplerCorrection("verl", rollout_is, rollout_is, log_ratio * mask, raw, ratio, clamped, dropped,
                             lower, upper)
