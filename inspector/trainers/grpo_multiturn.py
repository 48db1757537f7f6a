"""The GRPO step over multi-turn trajectories, as TRL 1.16 runs it: the batch tensors of
`_generate_and_score_completions` (prompt left-padded, completion right-padded with the pad id, `completion_mask`
1 on every real completion token, `tool_mask` right-padded with 1), then `grpo_step` under the loss mask
`completion_mask * tool_mask` (TRL multiplies the two wherever a mask is read: loss, sampler correction,
entropy mask, lengths). Advantages are per sample and reach the model's tokens only.
"""

from __future__ import annotations

import torch

from .grpo import grpo_step
from .grpo_config import GRPOConfig, VerlGRPOConfig


def trajectory_batch(rollout, pad_token_id: int, eos_token_ids: list[int]) -> dict:
    """TRL's padded tensors from a MultiTurnRollout (or a list of Trajectory)."""
    trajs = getattr(rollout, "trajectories", rollout)
    P = max(t.prompt_length for t in trajs)
    C = max(1, max(len(t.completion_ids) for t in trajs))
    B = len(trajs)
    prompt_ids = torch.full((B, P), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    completion_ids = torch.full((B, C), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((B, C), dtype=torch.long)
    tool_mask = torch.ones((B, C), dtype=torch.long)
    for i, t in enumerate(trajs):
        p, c = t.prompt_ids, t.completion_ids
        if p:
            prompt_ids[i, P - len(p):] = torch.tensor(p)
            prompt_mask[i, P - len(p):] = 1
        if c:
            completion_ids[i, :len(c)] = torch.tensor(c)
            completion_mask[i, :len(c)] = torch.tensor(t.completion_mask)
            tool_mask[i, :len(c)] = torch.tensor(t.tool_mask)
    ends = set(eos_token_ids) | {pad_token_id}
    is_truncated = torch.tensor([bool(t.completion_ids) and t.completion_ids[-1] not in ends for t in trajs])
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "tool_mask": tool_mask, "is_truncated": is_truncated}


def policy_logprobs(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """TRL's `_get_per_token_logps`: a forward pass over prompt + completion under prompt_mask + completion_mask
    (tool tokens attended), logits / temperature, logprob of each completion token. (B, C) float32."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    C = batch["completion_ids"].shape[1]
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
    logits = logits[:, -C - 1:-1] / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, batch["completion_ids"].to(device).unsqueeze(-1)).squeeze(-1)
    return lp.cpu()


def multiturn_grpo_step(rollout, config: GRPOConfig | VerlGRPOConfig, per_token_logps: torch.Tensor, *,
                        batch: dict | None = None, pad_token_id: int = 0, eos_token_ids: list[int] | None = None,
                        ref_per_token_logps=None, entropies=None):
    """`grpo_step` over the trajectories with the loss mask completion_mask * tool_mask.

    Returns (GRPOStep, batch). The step's `completion_mask` is that product; `token_weights` are zero on every
    tool / environment / pad token.
    """
    batch = batch or trajectory_batch(rollout, pad_token_id, eos_token_ids or [pad_token_id])
    rpf = torch.tensor(rollout.rewards_per_func, dtype=torch.float32)
    loss_mask = batch["completion_mask"] * batch["tool_mask"]
    step = grpo_step(rpf, loss_mask, batch["is_truncated"], per_token_logps, None, ref_per_token_logps, entropies,
                     config, reward_func_names=list(rollout.reward_func_names))
    return step, batch


def attach_step(rollout, step) -> None:
    """Keep the step's per-sample and per-token results on the record (plain lists, for the views)."""
    rollout.advantages = [float(a) for a in step.advantages]
    rollout.rewards = [float(r) for r in step.rewards]
    weights = step.token_weights
    rollout.grpo = {
        "loss": float(step.loss), "config": step.config.to_dict(),
        "token_weights": [w[:len(t.completion_ids)].tolist() for w, t in zip(weights, rollout.trajectories)]
        if weights is not None else None,
        "loss_mask": [m[:len(t.completion_ids)].tolist() for m, t in zip(step.completion_mask, rollout.trajectories)],
    }
