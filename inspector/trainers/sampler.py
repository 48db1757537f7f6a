"""Sampler correction: the importance-sampling weight a trainer puts on a token (or a sequence) when the
logprobs it was sampled under (a serving engine's) differ from the trainer's recompute. TRL 1.16's
`vllm_importance_sampling_*` modes and verl's rollout correction (truncate, or IcePop's mask), with the
metrics verl logs about it (`rollout_corr/...`, `training/rollout_probs_diff_...`).
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
        total = (torch.where(mask.bool(), log_ratio, 0.0) * mask).sum(dim=-1, keepdim=True)
        raw = torch.exp(torch.clamp(total, -VERL_SAFETY_BOUND, VERL_SAFETY_BOUND)).expand_as(log_ratio)
    raw = raw * mask
    if lower is None:
        ratio = raw.clamp(max=upper)
        clamped, dropped = (raw > upper) & mask.bool(), torch.zeros_like(mask, dtype=torch.bool)
    else:
        kept = (raw >= lower) & (raw <= upper)
        ratio = torch.where(kept, raw, torch.zeros_like(raw))
        clamped, dropped = torch.zeros_like(kept), ~kept & mask.bool()
    return SamplerCorrection("verl", rollout_is, rollout_is, torch.where(mask.bool(), log_ratio, 0.0), raw, ratio, clamped, dropped,
                             lower, upper)


def _verl_masked_mean(values, mask, axis=None):
    """verl's `verl_F.masked_mean`: NaN outside the mask ignored, `+ 1e-8` in the denominator."""
    return (torch.where(mask.bool(), values, 0.0) * mask).sum(axis) / (mask.sum(axis) + 1e-8)


def verl_is_metrics(c: SamplerCorrection, mask: torch.Tensor) -> dict[str, float]:
    """verl's `compute_is_metrics` (and IcePop's `rollout_is_oob_ratio`) for a verl correction, with verl's
    names under its `rollout_corr/` prefix. Sequence-level extremes come from each completion's summed log
    ratio, so padding never counts; the fractions, std and effective sample size are verl's."""
    mask = mask.to(c.ratio.dtype)
    w, raw = c.ratio, c.raw_ratio
    upper = c.clip_max
    lower = 1.0 / upper if c.clip_min is None else c.clip_min
    log_up, log_lo = math.log(upper), math.log(lower)
    m: dict[str, float] = {}
    if c.level == "sequence":
        log_seq = c.logps_diff.sum(-1, keepdim=True)  # the unclamped per-sequence log ratio
        m["rollout_is_max"] = float(torch.exp(torch.clamp(log_seq.max(), max=VERL_SAFETY_BOUND)))
        m["rollout_is_min"] = float(torch.exp(log_seq.min()))
        m["rollout_is_mean"] = float(_verl_masked_mean(w, mask))
        m["rollout_is_ratio_fraction_high"] = float((log_seq > log_up).float().mean())
        m["rollout_is_ratio_fraction_low"] = float((log_seq < log_lo).float().mean())
    else:
        keep = mask.bool()
        m["rollout_is_mean"] = float(_verl_masked_mean(w, mask))
        m["rollout_is_ratio_fraction_high"] = float(_verl_masked_mean((raw > upper).float(), mask))
        m["rollout_is_ratio_fraction_low"] = float(_verl_masked_mean((raw < lower).float(), mask))
        m["rollout_is_max"] = float(w.masked_fill(~keep, -math.inf).max())
        m["rollout_is_min"] = float(w.masked_fill(~keep, math.inf).min())
    clamped = w.clamp(min=0.0, max=upper)
    mean_c = _verl_masked_mean(clamped, mask)
    var = _verl_masked_mean(clamped.square(), mask) - mean_c.square()
    m["rollout_is_std"] = float(torch.sqrt(torch.clamp(var, min=0.0))) if mask.sum() > 1 else 0.0
    m["rollout_is_eff_sample_size"] = 1.0 / float(_verl_masked_mean((clamped / (mean_c + 1e-8)).square(), mask))
    seq_mean = _verl_masked_mean(w, mask, -1)
    m["rollout_is_seq_mean"] = float(seq_mean.mean())
    m["rollout_is_seq_std"] = float(seq_mean.std()) if seq_mean.numel() > 1 else 0.0
    m["rollout_is_seq_max"] = float(seq_mean.max())
    m["rollout_is_seq_min"] = float(seq_mean.min())
    m["rollout_is_seq_max_deviation"] = float((seq_mean - 1.0).abs().max())
    raw_seq = _verl_masked_mean(raw, mask, -1)
    m["rollout_is_seq_fraction_high"] = float((raw_seq > upper).float().mean())
    m["rollout_is_seq_fraction_low"] = float((raw_seq < lower).float().mean())
    if c.clip_min is not None:  # IcePop: the share of tokens outside [lower, upper], read from `dropped`
        m["rollout_is_oob_ratio"] = float(_verl_masked_mean(c.dropped.float(), mask))
    return {f"rollout_corr/{k}": v for k, v in m.items()}


def verl_offpolicy_metrics(old: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """verl's `compute_offpolicy_metrics` (KL, perplexities, chi-squared), named `rollout_corr/...` as verl
    logs them whenever the batch holds the rollout's logprobs."""
    mask = mask.to(old.dtype)
    m: dict[str, float] = {}
    mean_train = _verl_masked_mean(old, mask, -1)
    m["training_ppl"] = float(torch.exp(-mean_train).mean())
    m["training_log_ppl"] = float((-mean_train).mean())
    m["kl"] = float(_verl_masked_mean(rollout - old, mask))
    log_ratio = old - rollout
    m["k3_kl"] = float(_verl_masked_mean(torch.exp(log_ratio) - log_ratio - 1, mask))
    mean_rollout = _verl_masked_mean(rollout, mask, -1)
    m["rollout_ppl"] = float(torch.exp(-mean_rollout).mean())
    m["rollout_log_ppl"] = float((-mean_rollout).mean())
    diff = mean_rollout - mean_train
    m["log_ppl_diff"] = float(diff.mean())
    m["log_ppl_abs_diff"] = float(diff.abs().mean())
    m["log_ppl_diff_max"] = float(diff.max())
    m["log_ppl_diff_min"] = float(diff.min())
    m["ppl_ratio"] = float(torch.exp(diff).mean())
    rho = torch.exp(torch.clamp(log_ratio, -VERL_SAFETY_BOUND, VERL_SAFETY_BOUND))
    m["chi2_token"] = float(_verl_masked_mean(rho.square(), mask) - 1.0)
    seq = (torch.where(mask.bool(), log_ratio, 0.0) * mask).sum(-1)
    m["chi2_seq"] = float(torch.exp(2.0 * torch.clamp(seq, -VERL_SAFETY_BOUND, VERL_SAFETY_BOUND)).mean() - 1.0)
    return {f"rollout_corr/{k}": v for k, v in m.items()}


def verl_debug_metrics(trainer: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """verl's `calculate_debug_metrics` (verl/utils/debug/metrics.py): |exp(trainer) - exp(sampler)| over the
    response mask (differences of probabilities, not of logprobs), its max, mean and unbiased std, and the
    Pearson correlation of the two probabilities."""
    mask = mask.bool()
    if not mask.any():
        nan = float("nan")
        return {"training/rollout_probs_diff_valid": 0, "training/rollout_probs_diff_max": nan,
                "training/rollout_probs_diff_mean": nan, "training/rollout_probs_diff_std": nan,
                "training/rollout_actor_probs_pearson_corr": nan}
    actor, rollout = torch.exp(trainer.double()), torch.exp(sampler.double())
    diff = torch.masked_select(torch.abs(actor - rollout), mask)
    pair = torch.stack([torch.masked_select(actor, mask), torch.masked_select(rollout, mask)])
    return {
        "training/rollout_probs_diff_valid": 1,
        "training/rollout_probs_diff_max": float(diff.max()),
        "training/rollout_probs_diff_mean": float(diff.mean()),
        "training/rollout_probs_diff_std": float(diff.std()),
        "training/rollout_actor_probs_pearson_corr": float(torch.corrcoef(pair)[0, 1]),
    }
