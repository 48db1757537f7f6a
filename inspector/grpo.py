"""The GRPO step's quantities from a rollout, with TRL 1.16's GRPOTrainer semantics, and verl's GRPO variant.

TRL: from the per-function rewards of a group of completions per prompt (NaN where a function returned
None), the completion mask, which completions were truncated, the trainer's per-token logprobs, the
sampler's (a serving engine's) and the reference's, this computes what `GRPOTrainer` computes in
`_generate_and_score_completions` (masks, rewards, group-relative advantages, the sampler correction) and
in `_compute_loss` at the rollout point (old logprobs = policy logprobs, ratio 1, as in TRL's first step),
and the gradient of that loss with respect to each token's logprob: how much each token counts.

verl: `compute_grpo_outcome_advantage` (its epsilon, `torch.std`, groups of one) and `agg_loss`'s
`loss_agg_mode`, with verl's vanilla (dual-clip) policy loss, its rollout correction and KL loss.

Pure torch; the trainers themselves are never imported here (the tests compare against them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from .errors import InputError

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
SCALE_REWARDS = ("group", "batch", "none")
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
SAMPLER_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
TRAINERS = ("ppo", "grpo", "verl")

VERL_LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
VERL_ROLLOUT_IS_LEVELS = ("token", "sequence")
VERL_KL_LOSS_TYPES = ("low_var_kl", "k3", "kl", "k1", "abs", "mse", "k2")
VERL_SAFETY_BOUND = 20.0  # verl's rollout_corr_helper.SAFETY_BOUND on log ratios

_ADV_EPS = 1e-4  # TRL's `(std_rewards + 1e-4)`


def _allowed(name: str, value, allowed) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


@dataclass(frozen=True)
class GRPOConfig:
    """TRL 1.16 `GRPOConfig`'s rollout- and loss-side fields, with its names and defaults.

    `scale_rewards` accepts TRL's booleans: True -> "group", False -> "none" (as `GRPOConfig.__post_init__`).
    `max_completion_length` is dr_grpo's constant normaliser (and the generation cap in TRL).
    """

    num_generations: int = 8
    reward_weights: tuple[float, ...] | None = None
    multi_objective_aggregation: str = "sum_then_normalize"
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    loss_type: str = "dapo"
    importance_sampling_level: str = "token"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    beta: float = 0.0
    use_bias_correction_kl: bool = True
    top_entropy_quantile: float = 1.0
    max_completion_length: int | None = 512
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_mode: str = "sequence_mask"
    vllm_importance_sampling_clip_min: float | None = None
    vllm_importance_sampling_clip_max: float | None = 3.0
    off_policy_mask_threshold: float | None = None
    sapo_temperature_neg: float = 1.05
    sapo_temperature_pos: float = 1.0
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self):
        if isinstance(self.scale_rewards, bool):
            object.__setattr__(self, "scale_rewards", "group" if self.scale_rewards else "none")
        if self.reward_weights is not None and not isinstance(self.reward_weights, tuple):
            object.__setattr__(self, "reward_weights", tuple(float(w) for w in self.reward_weights))

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def epsilon_high_value(self) -> float:
        """TRL's `self.epsilon_high`: `epsilon_high` or, when None, `epsilon`."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def validate(self) -> None:
        """Raise InputError naming the field and its allowed values."""
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise InputError(
                f"num_generations must be an integer of at least 2: GRPO compares the completions of a prompt "
                f"with each other (got {self.num_generations!r}). Sample 2 or more completions per prompt."
            )
        _allowed("loss_type", self.loss_type, LOSS_TYPES)
        _allowed("scale_rewards", self.scale_rewards, SCALE_REWARDS + (True, False))
        _allowed("multi_objective_aggregation", self.multi_objective_aggregation, MULTI_OBJECTIVE_AGGREGATIONS)
        _allowed("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        _allowed("vllm_importance_sampling_mode", self.vllm_importance_sampling_mode, SAMPLER_MODES)
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise InputError(f"top_entropy_quantile must lie in [0, 1] (got {self.top_entropy_quantile}).")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise InputError(f"epsilon and epsilon_high must be >= 0 (got {self.epsilon}, {self.epsilon_high}).")
        if self.beta < 0:
            raise InputError(f"beta must be >= 0 (got {self.beta}).")
        if self.loss_type == "dr_grpo" and (self.max_completion_length is None or self.max_completion_length < 1):
            raise InputError(
                f"max_completion_length must be a positive integer for loss_type 'dr_grpo' (got {self.max_completion_length!r})."
            )
        lo, hi = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if lo is not None and hi is not None and lo >= hi:
            raise InputError(
                f"vllm_importance_sampling_clip_min ({lo}) must be less than vllm_importance_sampling_clip_max ({hi})."
            )
        if (self.vllm_importance_sampling_correction and self.vllm_importance_sampling_mode.endswith("_truncate")
                and lo is None and hi is None):
            raise InputError(
                "At least one of vllm_importance_sampling_clip_min or vllm_importance_sampling_clip_max must be set "
                f"when vllm_importance_sampling_mode is {self.vllm_importance_sampling_mode!r}."
            )
        if self.off_policy_mask_threshold is not None and self.off_policy_mask_threshold < 0:
            raise InputError(f"off_policy_mask_threshold must be >= 0 or None (got {self.off_policy_mask_threshold}).")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trainer"] = "grpo"
        return d


@dataclass(frozen=True)
class VerlGRPOConfig:
    """verl's GRPO settings, with verl's names and defaults (verl 0.9: `algorithm.*` and `actor_rollout_ref.actor.*`).

    `num_generations` is `actor_rollout_ref.rollout.n`. `epsilon` is `compute_grpo_outcome_advantage`'s.
    `rollout_is` None turns the rollout correction off; `rollout_is_threshold` is a float (truncate: clamp
    from above) or a "lower_upper" string (IcePop: weights outside the bounds become 0), as in verl.
    `loss_scale_factor` (`actor.loss_scale_factor`) None divides `seq-mean-token-sum-norm` by the response
    width, as `agg_loss` does: verl pads every batch to `response_length` (`data.max_response_length`, the
    generation cap), so that width is the cap, not the longest completion. `response_length` None takes the
    width of the tensors given; `rollout_grpo_step` sets it to the rollout's max_new_tokens.
    """

    num_generations: int = 8
    reward_weights: tuple[float, ...] | None = None
    norm_adv_by_std_in_grpo: bool = True
    epsilon: float = 1e-6
    loss_agg_mode: str = "token-mean"
    clip_ratio: float = 0.2
    clip_ratio_low: float | None = 0.2
    clip_ratio_high: float | None = 0.2
    clip_ratio_c: float = 3.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    rollout_is: str | None = None
    rollout_is_threshold: float | str = 2.0
    loss_scale_factor: float | None = None
    response_length: int | None = None

    def __post_init__(self):
        if self.reward_weights is not None and not isinstance(self.reward_weights, tuple):
            object.__setattr__(self, "reward_weights", tuple(float(w) for w in self.reward_weights))

    def validate(self) -> None:
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise InputError(
                f"num_generations (verl's rollout.n) must be an integer of at least 2 for GRPO (got "
                f"{self.num_generations!r}). Sample 2 or more completions per prompt."
            )
        _allowed("loss_agg_mode", self.loss_agg_mode, VERL_LOSS_AGG_MODES)
        _allowed("rollout_is", self.rollout_is, VERL_ROLLOUT_IS_LEVELS + (None,))
        _allowed("kl_loss_type", self.kl_loss_type, VERL_KL_LOSS_TYPES)
        if self.clip_ratio_c <= 1.0:
            raise InputError(f"clip_ratio_c must be greater than 1.0 (got {self.clip_ratio_c}).")
        if self.epsilon < 0:
            raise InputError(f"epsilon must be >= 0 (got {self.epsilon}).")
        verl_is_bounds(self.rollout_is_threshold)
        f = self.loss_scale_factor
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0):
            raise InputError(
                f"loss_scale_factor must be a positive number or None (None: divide by the response length, as "
                f"verl's agg_loss does); got {f!r}."
            )
        n = self.response_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InputError(f"response_length must be a positive whole number of tokens or None (got {n!r}).")

    @property
    def clip_low(self) -> float:
        return self.clip_ratio if self.clip_ratio_low is None else self.clip_ratio_low

    @property
    def clip_high(self) -> float:
        return self.clip_ratio if self.clip_ratio_high is None else self.clip_ratio_high

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trainer"] = "verl"
        return d


def make_config(trainer: str = "grpo", **settings) -> GRPOConfig | VerlGRPOConfig:
    """A validated config for `trainer` ("grpo" or "verl") from keyword settings; unknown names are an InputError."""
    _allowed("trainer", trainer, ("grpo", "verl"))
    cls = GRPOConfig if trainer == "grpo" else VerlGRPOConfig
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"Unknown {trainer} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    config = cls(**settings)
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------- helpers

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


def trl_eos_token_ids(tokenizer_eos_token_id: int | None, generation_eos_token_id=None) -> list[int]:
    """TRL 1.16's `self.eos_token_ids`: `generation_config.eos_token_id` (an int or a list) with the tokenizer's
    EOS put first when it is not among them."""
    ids = generation_eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer_eos_token_id not in ids:
        ids = [tokenizer_eos_token_id, *ids]
    return [i for i in ids if i is not None]


def model_eos_token_ids(models) -> list[int]:
    """TRL's `eos_token_ids` for loaded `Models`: the policy tokenizer's EOS and its generation config's."""
    return trl_eos_token_ids(models.tokenizer.eos_token_id, getattr(models.policy.generation_config, "eos_token_id", None))


def trl_completion_mask(completion_ids: torch.Tensor, eos_token_ids: list[int], pad_token_id: int | None):
    """TRL 1.16's plain-generate path (`_generate_single_turn`) then its `mask_truncated_completions` test.

    completion_ids (B, T): the generated ids. Returns (completion_mask (B, T) long, with the first EOS inside
    the mask; is_truncated (B,) bool: the last kept id is neither an EOS id nor the pad id).
    """
    B, T = completion_ids.shape
    if eos_token_ids:
        is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, dtype=completion_ids.dtype))
    else:
        is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    eos_idx = torch.full((B,), T, dtype=torch.long)
    any_eos = is_eos.any(dim=1)
    eos_idx[any_eos] = is_eos.int().argmax(dim=1)[any_eos]
    completion_mask = (torch.arange(T).expand(B, -1) <= eos_idx.unsqueeze(1)).long()
    last = torch.clamp(completion_mask.sum(1) - 1, min=0)
    last_ids = completion_ids[torch.arange(B), last]
    ends = set(eos_token_ids) | ({pad_token_id} if pad_token_id is not None else set())
    is_truncated = torch.tensor([int(i) not in ends for i in last_ids.tolist()], dtype=torch.bool)
    return completion_mask, is_truncated


# ---------------------------------------------------------------------------------------------- sampler correction

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
    _allowed("vllm_importance_sampling_mode", mode, SAMPLER_MODES)
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
    _allowed("rollout_is", rollout_is, VERL_ROLLOUT_IS_LEVELS)
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


# ---------------------------------------------------------------------------------------------- the step

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


def _check_inputs(rewards_per_func, completion_mask, is_truncated, per_token_logps, num_generations, weights, others):
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


def _names(reward_func_names, F):
    names = list(reward_func_names) if reward_func_names is not None else [f"reward_{i}" for i in range(F)]
    if len(names) != F:
        raise InputError(f"{len(names)} reward function names for {F} reward columns.")
    return names


def _trl_advantages(rewards_per_func, w, G, config: GRPOConfig):
    """`_generate_and_score_completions`' reward and advantage block."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    if config.multi_objective_aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * w.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
        if config.scale_rewards in ("group", "none"):
            std_rewards = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
        else:
            std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = rewards - mean_grouped
        if config.scale_rewards != "none":
            advantages = advantages / (std_rewards + _ADV_EPS)
    else:
        F = rewards_per_func.shape[1]
        grouped = rewards_per_func.view(-1, G, F)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True)
        reward_k = ((grouped - mean_k) / (std_k + _ADV_EPS)).view(-1, F)
        rewards = (reward_k * w.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        mean_grouped = torch.nanmean(rewards).expand_as(rewards)
        advantages = (rewards - mean_grouped) / (std_rewards + _ADV_EPS)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return rewards, mean_grouped.clone(), std_rewards.clone(), advantages, is_std_zero


def high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """TRL's `get_high_entropy_mask` on one process: tokens whose entropy is at least the `threshold`
    quantile of the entropies under `mask` (TRL passes `1 - top_entropy_quantile`)."""
    local = entropies[mask.bool()].float()
    if local.numel() == 0:
        return torch.zeros_like(entropies, dtype=torch.bool)
    entropy_threshold = torch.quantile(local, threshold)
    return ((entropies * mask.float()) >= entropy_threshold) & mask.bool()


def off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask, threshold):
    """TRL's `GRPOTrainer.get_off_policy_mask` (DeepSeek-V3.2): (B, 1), 1 keeps, 0 drops the sequence."""
    kl_div = torch.nan_to_num(sampling_per_token_logps - per_token_logps.detach(), nan=0.0)
    avg_seq_kl = (kl_div * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return ((advantages >= 0) | (avg_seq_kl <= threshold)).to(dtype=mask.dtype)


@torch.no_grad()
def gamma_weights(advantages, log_ratio_per_token, mask, importance_sampling_ratio, k_pos, lambda_pos, k_neg, lambda_neg):
    """TRL's `GRPOTrainer.get_gamma_weights` (VESPO's phi(w) per sequence, (B, 1))."""
    lower_clamp = math.log(1e-8)
    seq_log_ratio = torch.sum(torch.clamp(log_ratio_per_token, -20.0, 20.0) * mask, dim=-1, keepdim=True)
    if importance_sampling_ratio is not None:
        log_is_ratio = torch.clamp(torch.log(importance_sampling_ratio), lower_clamp, 20.0)
        seq_log_ratio += torch.sum(log_is_ratio, dim=-1, keepdim=True)
    log_w_seq = torch.clamp(seq_log_ratio, lower_clamp, 20.0)
    w_seq = torch.exp(log_w_seq)
    nonneg = advantages >= 0
    k_seq = torch.where(nonneg, k_pos, k_neg)
    lambda_seq = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
    log_phi = lambda_seq + k_seq * log_w_seq - lambda_seq * w_seq
    return torch.exp(log_phi).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def _masked_global_mean(x, mask):
    if x.shape[1] == 1:
        return float(x.sum() / max(float(x.shape[0]), 1.0))
    return float((x * mask).sum() / mask.sum().float().clamp(min=1.0))


def _masked_seq_mean(x, mask):
    return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)


def _nanmin(t: torch.Tensor) -> float:
    """TRL's `nanmin`: the minimum ignoring NaN, NaN when there is none."""
    t = t[~torch.isnan(t)]
    return float(t.min()) if t.numel() else float("nan")


def _nanmax(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return float(t.max()) if t.numel() else float("nan")


def _completion_metrics(lengths, is_truncated):
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


def _reward_metrics(rewards_per_func, w, names, is_std_zero):
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


def _sampling_metrics(old, sampling, mask, correction: SamplerCorrection):
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


def grpo_step(
    rewards_per_func: torch.Tensor,
    completion_mask: torch.Tensor,
    is_truncated: torch.Tensor,
    per_token_logps: torch.Tensor,
    sampling_per_token_logps: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    config: GRPOConfig | VerlGRPOConfig = GRPOConfig(),
    *,
    old_per_token_logps: torch.Tensor | None = None,
    reward_func_names: list[str] | None = None,
) -> GRPOStep:
    """TRL 1.16's GRPO step (or verl's, for a `VerlGRPOConfig`) from one generation batch.

    rewards_per_func (B, F): one column per reward function, NaN where it returned None; completions of a
    prompt are consecutive, `config.num_generations` per group. completion_mask (B, T): 1 on every token
    of each completion, EOS included (before `mask_truncated_completions`, which this applies).
    is_truncated (B,): TRL's test, the last token is neither EOS nor pad. per_token_logps (B, T): the
    trainer's logprob of each completion token (TRL's `old_per_token_logps` recompute; also the policy's
    at the rollout point). sampling_per_token_logps (B, T): the sampler's (a serving engine's) logprobs, or
    None when the trainer generated itself (no sampler correction, as TRL without vLLM).
    ref_per_token_logps: the reference model's (needed when beta != 0). entropies (B, T): the policy's
    per-token entropy (the metric `entropy` and `top_entropy_quantile`'s mask).
    old_per_token_logps: the logprobs the rollout was sampled under when they differ from the policy's
    (a later iteration on the same batch): then the ratio moves from 1 and clipping shows. Without it the
    policy ratio is 1 (`old = per_token_logps.detach()`, TRL's first step).

    The loss is TRL's with `gradient_accumulation_steps = steps_per_generation = 1` and one process: the
    whole batch is one optimisation step. Raises InputError for an invalid config or inconsistent shapes.
    """
    config.validate()
    if isinstance(config, VerlGRPOConfig):
        return _verl_step(rewards_per_func, completion_mask, is_truncated, per_token_logps, sampling_per_token_logps,
                          ref_per_token_logps, entropies, config, old_per_token_logps, reward_func_names)
    G = config.num_generations
    rpf, w = _check_inputs(rewards_per_func, completion_mask, is_truncated, per_token_logps, G, config.reward_weights,
                           {"sampling_per_token_logps": sampling_per_token_logps, "ref_per_token_logps": ref_per_token_logps,
                            "entropies": entropies, "old_per_token_logps": old_per_token_logps})
    names = _names(reward_func_names, rpf.shape[1])
    if config.beta != 0.0 and ref_per_token_logps is None:
        raise InputError(f"beta={config.beta} needs the reference model's logprobs (ref_per_token_logps).")
    if config.top_entropy_quantile < 1.0 and entropies is None:
        raise InputError(f"top_entropy_quantile={config.top_entropy_quantile} needs the per-token entropies.")
    is_truncated = is_truncated.bool()
    lengths = completion_mask.long().sum(1)
    mask = completion_mask.long()
    if config.mask_truncated_completions:
        mask = mask * (~is_truncated).unsqueeze(1).long()
    maskf = mask.float()

    rewards, mean_grouped, std_rewards, advantages, is_std_zero = _trl_advantages(rpf, w, G, config)
    metrics = _completion_metrics(lengths, is_truncated)
    metrics.update(_reward_metrics(rpf, w, names, is_std_zero))

    trainer_lp = per_token_logps.detach().float()
    old_given = old_per_token_logps is not None
    old = old_per_token_logps.detach().float() if old_given else trainer_lp
    use_is = sampling_per_token_logps is not None and config.vllm_importance_sampling_correction
    correction = None
    if use_is:
        if config.loss_type == "vespo" and not config.vllm_importance_sampling_mode.startswith("token"):
            raise InputError(
                "loss_type 'vespo' needs vllm_importance_sampling_mode 'token_truncate' or 'token_mask' "
                f"(got {config.vllm_importance_sampling_mode!r})."
            )
        sampling = sampling_per_token_logps.detach().float()
        correction = sampler_correction(old, sampling, mask, config.vllm_importance_sampling_mode,
                                        config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max)
        metrics.update(_sampling_metrics(old, sampling, mask, correction))
    is_ratio = correction.ratio if correction is not None else None

    entropy_mask = None
    if config.top_entropy_quantile < 1.0:
        entropy_mask = high_entropy_mask(entropies.float(), mask, 1 - config.top_entropy_quantile)

    # _compute_loss, with autograd through the policy's logprobs
    lp = trainer_lp.clone().requires_grad_(True)
    old_lp = old if old_given else lp.detach()
    adv = advantages.unsqueeze(1)
    with torch.enable_grad():
        if config.off_policy_mask_threshold is not None:
            sampling_for_opm = sampling_per_token_logps.float() if sampling_per_token_logps is not None else old_lp
            opm = off_policy_mask(adv, lp, sampling_for_opm, maskf, config.off_policy_mask_threshold)
        log_ratio = lp - old_lp
        if config.importance_sampling_level == "token":
            log_iw = log_ratio
        else:
            log_iw = ((log_ratio * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).unsqueeze(-1)
        coef_1 = torch.exp(log_iw)
        per_token_kl = None
        if ref_per_token_logps is not None:
            ref = ref_per_token_logps.detach().float()
            per_token_kl = torch.exp(ref - lp) - (ref - lp) - 1
            if config.use_bias_correction_kl:
                per_token_kl = per_token_kl * coef_1
        eps_lo, eps_hi = config.epsilon_low, config.epsilon_high_value
        if config.loss_type == "cispo":
            per_token_loss = -torch.clamp(coef_1, max=eps_hi).detach() * adv * lp
        elif config.loss_type in CLIP_LOSS_TYPES:
            coef_2 = torch.clamp(coef_1, 1 - eps_lo, 1 + eps_hi)
            if config.delta is not None:
                coef_1 = torch.clamp(coef_1, max=config.delta)
            per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
        elif config.loss_type == "sapo":
            temps = torch.where(adv > 0, config.sapo_temperature_pos, config.sapo_temperature_neg)
            per_token_loss = -(torch.sigmoid(temps * (coef_1 - 1)) * 4 / temps) * adv
        else:  # vespo
            phi_seq = gamma_weights(adv, log_ratio, maskf, is_ratio, config.vespo_k_pos, config.vespo_lambda_pos,
                                    config.vespo_k_neg, config.vespo_lambda_neg)
            per_token_loss = -phi_seq * adv * lp
        if config.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * opm
        if entropy_mask is not None:
            per_token_loss = per_token_loss * entropy_mask
        if is_ratio is not None and config.loss_type != "vespo":
            per_token_loss = per_token_loss * is_ratio
        if config.beta != 0.0:
            per_token_loss = per_token_loss + config.beta * per_token_kl
        if config.loss_type in ("grpo", "sapo"):
            loss = ((per_token_loss * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
        elif config.loss_type == "bnpo":
            loss = (per_token_loss * maskf).sum() / maskf.sum().clamp(min=1.0)
        elif config.loss_type == "dr_grpo":
            loss = (per_token_loss * maskf).sum() / (per_token_loss.size(0) * config.max_completion_length)
        elif config.loss_type in ("cispo", "dapo", "vespo"):
            loss = (per_token_loss * maskf).sum() / maskf.sum().clamp(min=1.0)  # num_items_in_batch
        else:  # luspo
            loss = (per_token_loss * maskf).sum(-1).mean()
        (token_weights,) = torch.autograd.grad(loss, lp, allow_unused=True)
    if token_weights is None:  # a loss that does not depend on the logprobs (no token in the mask)
        token_weights = torch.zeros_like(trainer_lp)

    if config.beta != 0.0:
        metrics["kl"] = _masked_global_mean(per_token_kl.detach(), maskf)
    if entropies is not None:
        metrics["entropy"] = _masked_global_mean(entropies.float(), maskf)
    c1 = coef_1.detach()
    if config.loss_type in CLIP_LOSS_TYPES:
        low = ((c1 < 1 - eps_lo) & (adv < 0)).float()
        high = ((c1 > 1 + eps_hi) & (adv > 0)).float()
        region = ((low + high) > 0).float()
        metrics["clip_ratio/low_mean"] = _masked_global_mean(low, maskf)
        metrics["clip_ratio/high_mean"] = _masked_global_mean(high, maskf)
        metrics["clip_ratio/region_mean"] = _masked_global_mean(region, maskf)
        metrics["clip_ratio/low_min"] = _nanmin(_masked_seq_mean(low, maskf))
        metrics["clip_ratio/high_max"] = _nanmax(_masked_seq_mean(high, maskf))
    elif config.loss_type == "cispo":
        metrics["cispo_clip_ratio"] = _masked_global_mean(((c1 > eps_hi) & (adv > 0)).float(), maskf)
    elif config.loss_type == "vespo":
        metrics["vespo/phi_seq_mean"] = _masked_global_mean(phi_seq, maskf)
    T = maskf.shape[1]
    return GRPOStep(
        trainer="grpo", num_generations=G, reward_func_names=names, rewards_per_func=rpf, completion_mask=mask,
        is_truncated=is_truncated, lengths=lengths, rewards=rewards, mean_grouped_rewards=mean_grouped,
        std_rewards=std_rewards, advantages=advantages, is_std_zero=is_std_zero, importance_sampling_ratio=is_ratio,
        sampler=correction, per_token_kl=per_token_kl.detach() if per_token_kl is not None else None,
        entropy_mask=entropy_mask, coef_1=c1, per_token_loss=per_token_loss.detach().expand(-1, T).clone(),
        loss=loss.detach(), token_weights=token_weights, metrics=metrics, config=config,
    )


# ---------------------------------------------------------------------------------------------- verl

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


def _verl_step(rewards_per_func, completion_mask, is_truncated, per_token_logps, sampling_per_token_logps,
               ref_per_token_logps, entropies, config: VerlGRPOConfig, old_per_token_logps, reward_func_names):
    G = config.num_generations
    rpf, w = _check_inputs(rewards_per_func, completion_mask, is_truncated, per_token_logps, G, config.reward_weights,
                           {"sampling_per_token_logps": sampling_per_token_logps, "ref_per_token_logps": ref_per_token_logps,
                            "entropies": entropies, "old_per_token_logps": old_per_token_logps})
    names = _names(reward_func_names, rpf.shape[1])
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
    metrics = _completion_metrics(lengths, is_truncated)
    metrics.update(_reward_metrics(rpf, w, names, is_std_zero))

    trainer_lp = per_token_logps.detach().float()
    old_given = old_per_token_logps is not None
    old = old_per_token_logps.detach().float() if old_given else trainer_lp
    correction = None
    if sampling_per_token_logps is not None and mask.any():
        from .mismatch import verl_debug_metrics  # mismatch imports this module

        sampling = sampling_per_token_logps.detach().float()
        if config.rollout_is is not None:
            correction = verl_sampler_correction(old, sampling, mask, config.rollout_is, config.rollout_is_threshold)
            metrics.update(verl_is_metrics(correction, mask))
        metrics.update(verl_offpolicy_metrics(old, sampling, mask))
        metrics.update(verl_debug_metrics(old, sampling, mask))
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


# ---------------------------------------------------------------------------------------------- over a Rollout

def rollout_grpo_inputs(rollout, eos_token_ids: list[int] | None = None) -> dict:
    """The tensors `grpo_step` takes, read from a Rollout without any model pass.

    completion_mask and is_truncated follow TRL 1.16's plain-generate path on `rollout.responses`, with
    `eos_token_ids` (default: the record's `eos_token_ids`, TRL's for the model it was made with; records
    without them: the tokenizer's EOS, plus `rollout.settings["generation_eos_token_ids"]` when recorded). A
    custom stop token always counts as one (TRL stops elsewhere through the generation config's EOS), so a pad
    after it, never sampled, stays out of the mask even when pad == EOS. Trainer logprobs are the forward
    recompute (`new_logprobs`), sampler logprobs the generation-time ones (`logprobs`), the reference's
    `ref_logprobs`, entropies the trainer's full-vocabulary `entropies` (None for records without them; never
    `entropy`, the sampled-from distribution's). Rollouts from before the rename (`gen_logprobs` + `logprobs`)
    are read with their old names. See `trainer_mismatch` for rollouts made under PPO's conventions.
    """
    if eos_token_ids is None:
        eos_token_ids = list(getattr(rollout, "eos_token_ids", None) or [])
        if not eos_token_ids:
            extra = (rollout.settings or {}).get("generation_eos_token_ids")
            eos_token_ids = trl_eos_token_ids(rollout.eos_token_id, extra)
        stop = getattr(rollout, "stop_token_id", None)
        if stop is not None and stop not in eos_token_ids:
            eos_token_ids = [*eos_token_ids, stop]
    completion_mask, is_truncated = trl_completion_mask(rollout.responses, eos_token_ids, rollout.pad_token_id)
    if hasattr(rollout, "new_logprobs"):
        trainer, sampler = rollout.new_logprobs, rollout.logprobs
    else:
        trainer, sampler = rollout.logprobs, rollout.gen_logprobs
    return {
        "completion_mask": completion_mask, "is_truncated": is_truncated, "per_token_logps": trainer,
        "sampling_per_token_logps": sampler, "ref_per_token_logps": rollout.ref_logprobs,
        "entropies": getattr(rollout, "entropies", None),
    }


def trainer_mismatch(rollout, trainer: str) -> str | None:
    """None when the rollout's trainer-side fields follow `trainer`'s conventions (GRPO and verl share them),
    else what differs and what to re-run, in plain words."""
    made = getattr(rollout, "trainer", None) or "ppo"
    if (made == "ppo") == (trainer == "ppo"):
        return None
    if trainer == "ppo":
        return (f"This rollout was made for {made}: its trainer logprobs (`new_logprobs`), values and scores follow "
                "TRL 1.16 GRPO's attention `cat(prompt_mask, completion_mask)`, not TRL 0.x PPO's `ids != pad`. "
                "Run it again with Trainer = PPO (CLI `--trainer ppo`, API `trainer=\"ppo\"`) for PPO's numbers.")
    return ("This rollout was made for PPO (TRL 0.x): its trainer logprobs (`new_logprobs`) were recomputed under "
            "PPO's `ids != pad` attention (which hides every EOS equal to the pad, the chat template's included), "
            "its generation stopped at one stop token, and it holds no trainer entropies. That is not what "
            f"{'TRL 1.16 GRPO' if trainer == 'grpo' else 'verl'} computes: run it again with Trainer = "
            f"{'GRPO (TRL 1.16)' if trainer == 'grpo' else 'verl GRPO'} (CLI `--trainer {trainer}`, API "
            f"`trainer=\"{trainer}\"`).")


def rollout_grpo_step(rollout, rewards_per_func: torch.Tensor, config: GRPOConfig | VerlGRPOConfig = GRPOConfig(), *,
                      reward_func_names: list[str] | None = None, eos_token_ids: list[int] | None = None,
                      use_sampler_logprobs: bool = True, inputs: dict | None = None) -> GRPOStep:
    """`grpo_step` over a Rollout's recorded tensors (no model pass: cheap to redo after a settings change).

    The rollout's samples per prompt must equal `config.num_generations` (the groups are its prompts).
    `use_sampler_logprobs=False` treats the rollout as generated by the trainer itself (TRL without vLLM:
    no sampler correction). `inputs` reuses `rollout_grpo_inputs(rollout)` across calls.
    With a `GRPOConfig`, `max_completion_length` (dr_grpo's constant) becomes the rollout's max_new_tokens;
    with a `VerlGRPOConfig`, `response_length` (the width verl pads to) does, unless it is set.
    """
    spp = (rollout.settings or {}).get("samples_per_prompt")
    if spp is not None and spp != config.num_generations:
        raise InputError(
            f"num_generations={config.num_generations} but the rollout has {spp} samples per prompt: "
            "set num_generations to the samples per prompt the rollout was made with."
        )
    inputs = inputs if inputs is not None else rollout_grpo_inputs(rollout, eos_token_ids)
    mnt = (rollout.settings or {}).get("max_new_tokens")
    if isinstance(config, GRPOConfig) and mnt:
        config = replace(config, max_completion_length=int(mnt))
    elif isinstance(config, VerlGRPOConfig) and mnt and config.response_length is None:
        # verl pads the batch to the generation cap: seq-mean-token-sum-norm divides by it
        config = replace(config, response_length=max(int(mnt), int(inputs["completion_mask"].shape[1])))
    kw = dict(inputs)
    if not use_sampler_logprobs:
        kw["sampling_per_token_logps"] = None
    return grpo_step(rewards_per_func=rewards_per_func, config=config, reward_func_names=reward_func_names, **kw)
