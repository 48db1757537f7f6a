"""Findings in words: the traps a rollout, a GRPO step or a sampler sets, each with what to do about it."""

from .grpo import diagnose_grpo, length_bias_pair, weight_per_advantage
from .finding import Finding
from .rollout import diagnose

__all__ = ["Finding", "diagnose", "diagnose_grpo", "length_bias_pair", "weight_per_advantage"]
