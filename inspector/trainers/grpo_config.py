"""The settings of a GRPO step, with each trainer's names and defaults: TRL 1.16's `GRPOConfig` and verl's.

`make_config` builds either from keyword settings and validates it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import InputError, check_choice
from .sampler import SAMPLER_MODES, VERL_ROLLOUT_IS_LEVELS, verl_is_bounds

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
CLIP_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
SCALE_REWARDS = ("group", "batch", "none")
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
TRAINERS = ("ppo", "grpo", "verl")

VERL_LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
VERL_KL_LOSS_TYPES = ("low_var_kl", "k3", "kl", "k1", "abs", "mse", "k2")


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
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS + (True, False))
        check_choice("multi_objective_aggregation", self.multi_objective_aggregation, MULTI_OBJECTIVE_AGGREGATIONS)
        check_choice("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        check_choice("vllm_importance_sampling_mode", self.vllm_importance_sampling_mode, SAMPLER_MODES)
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
        check_choice("loss_agg_mode", self.loss_agg_mode, VERL_LOSS_AGG_MODES)
        check_choice("rollout_is", self.rollout_is, VERL_ROLLOUT_IS_LEVELS + (None,))
        check_choice("kl_loss_type", self.kl_loss_type, VERL_KL_LOSS_TYPES)
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
    check_choice("trainer", trainer, ("grpo", "verl"))
    cls = GRPOConfig if trainer == "grpo" else VerlGRPOConfig
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"Unknown {trainer} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    config = cls(**settings)
    config.validate()
    return config
