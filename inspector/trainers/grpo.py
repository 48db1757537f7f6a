"""The GRPO step's quantities from a rollout, with TRL 1.16's GRPOTrainer semantics (verl's in `verl`).

From the per-function rewards of a group of completions per prompt (NaN where a function returned
None), the completion mask, which completions were truncated, the trainer's per-token logprobs, the
sampler's (a serving engine's) and the reference's, this computes what `GRPOTrainer` computes in
`_generate_and_score_completions` (masks, rewards, group-relative advantages, the sampler correction) and
in `_compute_loss` at the rollout point (old logprobs = policy logprobs, ratio 1, as in TRL's first step),
and the gradient of that loss with respect to each token's logprob: how much each token counts.

`grpo_step` hands a `VerlGRPOConfig` to verl's step; `rollout_grpo_step` runs either over a Rollout.

Pure torch; the trainers themselves are never imported here (the tests compare against them).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..errors import InputError
from .grpo_common import (
    GRPOStep,
    check_inputs,
    completion_metrics,
    func_names,
    nanstd,
    reward_metrics,
    sampling_metrics,
)
from .grpo_config import CLIP_LOSS_TYPES, GRPOConfig, VerlGRPOConfig
from .sampler import sampler_correction
from .verl import verl_step

_ADV_EPS = 1e-4  # TRL's `(std_rewards + 1e-4)`


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
        return verl_step(rewards_per_func, completion_mask, is_truncated, per_token_logps, sampling_per_token_logps,
                         ref_per_token_logps, entropies, config, old_per_token_logps, reward_func_names)
    G = config.num_generations
    rpf, w = check_inputs(rewards_per_func, completion_mask, is_truncated, per_token_logps, G, config.reward_weights,
                          {"sampling_per_token_logps": sampling_per_token_logps, "ref_per_token_logps": ref_per_token_logps,
                           "entropies": entropies, "old_per_token_logps": old_per_token_logps})
    names = func_names(reward_func_names, rpf.shape[1])
    if config.beta != 0.0 and ref_per_token_logps is None:
        raise InputError(f"beta={config.beta} needs the reference model's logprobs (ref_per_token_logps).")
    if config.top_entropy_quantile < 1.0 and entropies is None:
        raise InputError(f"top_entropy_quantile={config.top_entropy_quantile} needs the per-token entropies.")
    is_truncated = is_truncated.bool()
    lengths = completion_mask.long().sum(1)
    mask = completion_mask.long() * (~is_truncated).unsqueeze(1).long() if config.mask_truncated_completions \
        else completion_mask.long()
    maskf = mask.float()

    rewards, mean_grouped, std_rewards, advantages, is_std_zero = _trl_advantages(rpf, w, G, config)
    metrics = completion_metrics(lengths, is_truncated)
    metrics.update(reward_metrics(rpf, w, names, is_std_zero))

    trainer_lp = per_token_logps.detach().float()
    old = old_per_token_logps.detach().float() if old_per_token_logps is not None else trainer_lp
    correction = _trl_sampler_correction(config, old, sampling_per_token_logps, mask, metrics)
    is_ratio = correction.ratio if correction is not None else None

    entropy_mask = None
    if config.top_entropy_quantile < 1.0:
        entropy_mask = high_entropy_mask(entropies.float(), mask, 1 - config.top_entropy_quantile)

    loss = _trl_loss(config, trainer_lp, old if old_per_token_logps is not None else None, advantages, maskf,
                     sampling_per_token_logps, ref_per_token_logps, is_ratio, entropy_mask)
    if config.beta != 0.0:
        metrics["kl"] = _masked_global_mean(loss["per_token_kl"].detach(), maskf)
    if entropies is not None:
        metrics["entropy"] = _masked_global_mean(entropies.float(), maskf)
    c1, per_token_kl, T = loss["coef_1"].detach(), loss["per_token_kl"], maskf.shape[1]
    metrics.update(_clip_metrics(config, c1, advantages.unsqueeze(1), maskf, loss["phi_seq"]))
    return GRPOStep(
        trainer="grpo", num_generations=G, reward_func_names=names, rewards_per_func=rpf, completion_mask=mask,
        is_truncated=is_truncated, lengths=lengths, rewards=rewards, mean_grouped_rewards=mean_grouped,
        std_rewards=std_rewards, advantages=advantages, is_std_zero=is_std_zero, importance_sampling_ratio=is_ratio,
        sampler=correction, per_token_kl=per_token_kl.detach() if per_token_kl is not None else None,
        entropy_mask=entropy_mask, coef_1=c1, per_token_loss=loss["per_token_loss"].detach().expand(-1, T).clone(),
        loss=loss["loss"].detach(), token_weights=loss["token_weights"], metrics=metrics, config=config,
    )


def _trl_sampler_correction(config: GRPOConfig, old, sampling_per_token_logps, mask, metrics: dict):
    """TRL's vLLM importance-sampling correction of the batch (None when off or without a sampler's logprobs);
    adds its `sampling/*` metrics to `metrics`."""
    if sampling_per_token_logps is None or not config.vllm_importance_sampling_correction:
        return None
    if config.loss_type == "vespo" and not config.vllm_importance_sampling_mode.startswith("token"):
        raise InputError(
            "loss_type 'vespo' needs vllm_importance_sampling_mode 'token_truncate' or 'token_mask' "
            f"(got {config.vllm_importance_sampling_mode!r})."
        )
    sampling = sampling_per_token_logps.detach().float()
    correction = sampler_correction(old, sampling, mask, config.vllm_importance_sampling_mode,
                                    config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max)
    metrics.update(sampling_metrics(old, sampling, mask, correction))
    return correction


def _trl_loss(config: GRPOConfig, trainer_lp, old, advantages, maskf, sampling_per_token_logps, ref_per_token_logps,
              is_ratio, entropy_mask) -> dict:
    """`_compute_loss`, with autograd through the policy's logprobs: the loss, each token's weight (d loss /
    d logprob), and the intermediate tensors the step reports. `old` None: the policy ratio is 1."""
    lp = trainer_lp.clone().requires_grad_(True)
    old_lp = old if old is not None else lp.detach()
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
        per_token_loss, coef_1, phi_seq = _per_token_loss(config, coef_1, adv, lp, log_ratio, maskf, is_ratio)
        if config.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * opm
        if entropy_mask is not None:
            per_token_loss = per_token_loss * entropy_mask
        if is_ratio is not None and config.loss_type != "vespo":
            per_token_loss = per_token_loss * is_ratio
        if config.beta != 0.0:
            per_token_loss = per_token_loss + config.beta * per_token_kl
        loss = _aggregate(config, per_token_loss, maskf)
        (token_weights,) = torch.autograd.grad(loss, lp, allow_unused=True)
    if token_weights is None:  # a loss that does not depend on the logprobs (no token in the mask)
        token_weights = torch.zeros_like(trainer_lp)
    return {"loss": loss, "token_weights": token_weights, "per_token_loss": per_token_loss, "coef_1": coef_1,
            "per_token_kl": per_token_kl, "phi_seq": phi_seq}


def _per_token_loss(config: GRPOConfig, coef_1, adv, lp, log_ratio, maskf, is_ratio):
    """Each `loss_type`'s per-token policy loss. Returns (per_token_loss, coef_1 as the metrics read it (after
    `delta`'s clamp), VESPO's phi per sequence or None)."""
    eps_lo, eps_hi = config.epsilon_low, config.epsilon_high_value
    phi_seq = None
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
    return per_token_loss, coef_1, phi_seq


def _aggregate(config: GRPOConfig, per_token_loss, maskf):
    """Each `loss_type`'s reduction of the per-token loss to the batch's loss (one process, one step)."""
    if config.loss_type in ("grpo", "sapo"):
        return ((per_token_loss * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
    if config.loss_type == "bnpo":
        return (per_token_loss * maskf).sum() / maskf.sum().clamp(min=1.0)
    if config.loss_type == "dr_grpo":
        return (per_token_loss * maskf).sum() / (per_token_loss.size(0) * config.max_completion_length)
    if config.loss_type in ("cispo", "dapo", "vespo"):
        return (per_token_loss * maskf).sum() / maskf.sum().clamp(min=1.0)  # num_items_in_batch
    return (per_token_loss * maskf).sum(-1).mean()  # luspo


def _clip_metrics(config: GRPOConfig, c1, adv, maskf, phi_seq) -> dict:
    """What each `loss_type` logs about clipping (or VESPO's phi)."""
    eps_lo, eps_hi = config.epsilon_low, config.epsilon_high_value
    metrics = {}
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
    return metrics


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
