"""The PPO step's quantities from a rollout, with TRL's PPO semantics and defaults (TRL 0.14 to 0.25; the k3 estimator from 0.17).

From per-token logprobs, reference logprobs, values and the scalar scores, this computes what TRL's
`PPOTrainer.train` computes before its first optimisation step: the padding masks, the per-token KL,
the non-score reward, the score after `missing_eos_penalty`, the per-token rewards (the score added at
`sequence_lengths + 1` when that fits), GAE advantages (then whitened) and returns, and the batch
numbers TRL logs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import InputError
from ..tensors import INVALID_LOGPROB, masked_whiten


@dataclass(frozen=True)
class PPOConfig:
    """TRL's PPOConfig defaults for the rollout part of a step."""

    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None

    def validate(self) -> None:
        if self.kl_estimator not in ("k1", "k3"):
            raise InputError(f"kl_estimator must be 'k1' or 'k3', not {self.kl_estimator!r}.")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise InputError(f"gamma and lam must lie in [0, 1] (got gamma={self.gamma}, lam={self.lam}).")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PPOStep:
    """Per-token (B, G) tensors aligned with the response tokens, per-sample scores (B,), and TRL's metrics."""

    padding_mask: torch.Tensor       # True after sequence_lengths: logprobs there are INVALID_LOGPROB
    padding_mask_p1: torch.Tensor    # True after sequence_lengths + 1: values there are 0
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    kl: torch.Tensor
    non_score_reward: torch.Tensor
    scores: torch.Tensor             # after missing_eos_penalty
    rewards: torch.Tensor
    advantages: torch.Tensor         # whitened over ~padding_mask, 0 at padding
    returns: torch.Tensor
    reward_positions: torch.Tensor   # (B,) response index where the score was added
    metrics: dict[str, float]
    config: PPOConfig


def ppo_step(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    scores: torch.Tensor,
    sequence_lengths: torch.Tensor,
    contain_eos_token: torch.Tensor,
    num_eos_tokens: int | None = None,
    config: PPOConfig = PPOConfig(),
) -> PPOStep:
    """TRL's rollout-side PPO computations.

    logprobs, ref_logprobs, values: (B, G) before masking; scores, sequence_lengths, contain_eos_token: (B,).
    Raises InputError for an invalid config, or when no response token is left to whiten over.
    """
    config.validate()
    B, G = logprobs.shape
    scores = scores.clone().float()
    if config.missing_eos_penalty is not None:
        scores[~contain_eos_token] -= config.missing_eos_penalty
    response_idxs = torch.arange(G).repeat(B, 1)
    padding_mask = response_idxs > sequence_lengths.unsqueeze(1)
    logprobs = torch.masked_fill(logprobs.float(), padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs.float(), padding_mask, INVALID_LOGPROB)
    sequence_lengths_p1 = sequence_lengths + 1
    padding_mask_p1 = response_idxs > sequence_lengths_p1.unsqueeze(1)
    values = torch.masked_fill(values.float(), padding_mask_p1, 0)

    logr = ref_logprobs - logprobs
    kl = -logr if config.kl_estimator == "k1" else (logr.exp() - 1) - logr
    non_score_reward = -config.kl_coef * kl
    rewards = non_score_reward.clone()
    actual_start = torch.arange(B)
    actual_end = torch.where(sequence_lengths_p1 < G, sequence_lengths_p1, sequence_lengths)
    rewards[actual_start, actual_end] += scores

    if config.whiten_rewards:
        rewards = masked_whiten(rewards, mask=~padding_mask_p1, shift_mean=False)
        rewards = torch.masked_fill(rewards, padding_mask_p1, 0)

    lastgaelam = torch.zeros(B)
    advantages_reversed = []
    for t in reversed(range(G)):  # GAE runs backwards in time; the loop is over positions, not samples
        nextvalues = values[:, t + 1] if t < G - 1 else torch.zeros(B)
        delta = rewards[:, t] + config.gamma * nextvalues - values[:, t]
        lastgaelam = delta + config.gamma * config.lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values
    if (~padding_mask).sum() < 2:
        raise InputError("Fewer than two response tokens are left after padding: the advantages cannot be whitened.")
    advantages = masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)

    mean_non_score_reward = non_score_reward.sum(1).mean()
    metrics = {
        "objective/kl": float(kl.sum(1).mean()),
        "objective/entropy": float((-logprobs).sum(1).mean()),
        "objective/non_score_reward": float(mean_non_score_reward),
        "objective/rlhf_reward": float(mean_non_score_reward + scores.mean()),
        "objective/scores": float(scores.mean()),
    }
    if num_eos_tokens is not None:
        metrics["val/num_eos_tokens"] = float(num_eos_tokens)
    return PPOStep(
        padding_mask=padding_mask, padding_mask_p1=padding_mask_p1, logprobs=logprobs, ref_logprobs=ref_logprobs,
        values=values, kl=kl, non_score_reward=non_score_reward, scores=scores, rewards=rewards,
        advantages=advantages, returns=returns, reward_positions=actual_end, metrics=metrics, config=config,
    )


def rollout_ppo_step(rollout, config: PPOConfig = PPOConfig()) -> PPOStep:
    """`ppo_step` over a Rollout's recorded tensors, fed as TRL's rollout feeds it: `rollout.logprobs`, the
    generation-time logprobs of the sampled-from distribution (TRL's `selective_log_softmax` of the stacked
    `output.scores`), not the recompute `new_logprobs`, which TRL uses only in its optimisation loop."""
    num_eos = int((rollout.responses == rollout.eos_token_id).sum()) if rollout.eos_token_id is not None else 0
    return ppo_step(
        rollout.logprobs, rollout.ref_logprobs, rollout.values, rollout.scores, rollout.sequence_lengths,
        rollout.contain_eos_token, num_eos, config,
    )
