"""Checks over a GRPO step (`inspector.trainers.grpo.GRPOStep`) and the rollout it was computed from.

They read the step's tensors only: no model pass. `r` needs `responses`, `pad_token_id`, `eos_token_id` and
`token()`.
"""

from __future__ import annotations

import math

import torch

from .finding import Finding

SCALE_RATIO = 10.0     # reward functions whose weighted spreads differ more than this: one drowns the others
LENGTH_BIAS = 1.10     # per-token weight (per unit advantage) of the short vs the long completion beyond this


def _samples(xs) -> str:
    xs = list(xs)
    return ", ".join(map(str, xs[:16])) + (" …" if len(xs) > 16 else "")


def _zero_std_groups(step) -> list[int]:
    """Groups whose summed weighted rewards (TRL's logged `reward`, verl's score) are all equal. Read per group,
    whatever std the advantages divide by: under scale_rewards="batch" TRL's `is_std_zero` reads the batch's std
    and misses them, though the group mean still takes every advantage to 0."""
    G = step.num_generations
    rpf = step.rewards_per_func
    w = torch.tensor(list(getattr(step.config, "reward_weights", None) or [1.0] * rpf.shape[1]), dtype=rpf.dtype)
    summed = (rpf * w).nansum(dim=1)
    summed[torch.isnan(rpf).all(dim=1)] = math.nan
    zero = []
    for g in range(step.num_groups):
        vals = summed[g * G:(g + 1) * G]
        vals = vals[~torch.isnan(vals)]
        if bool(step.is_std_zero[g * G]) or (vals.numel() > 1 and bool(torch.isclose(vals.std(), torch.zeros(())))):
            zero.append(g)
    return zero


def _grpo_zero_std(r, step) -> Finding | None:
    G = step.num_generations
    zero = _zero_std_groups(step)
    if not zero:
        return None
    samples = [i for g in zero for i in range(g * G, (g + 1) * G)]
    values = ", ".join(f"group {g}: {float(step.mean_grouped_rewards[g * G]):+.3f}" for g in zero[:8])
    adv = step.advantages[samples]
    if bool((adv.abs() < 1e-6).all()):
        effect = "every advantage there is 0, so"
    else:  # normalize_then_sum: the batch normalisation gives the whole group one shared advantage
        effect = "the completions of each such group share one advantage (no preference among them), so"
    scale = getattr(step.config, "scale_rewards", None)
    logged = (" TRL's frac_reward_zero_std does not count them: under scale_rewards='batch' it reads the batch's "
              "std, not the group's." if scale == "batch" and not bool(step.is_std_zero[samples].all())
              else " (TRL logs this as frac_reward_zero_std).")
    return Finding(
        code="grpo_zero_std", title="Groups whose rewards are all equal: no learning signal", severity="warning",
        detail=f"{len(zero)} of {step.num_groups} group(s) have zero reward std ({values}): {effect} "
               f"{len(samples)} of {step.advantages.shape[0]} completions ({len(samples) / step.advantages.shape[0]:.0%} "
               f"of the batch) add nothing to tell good completions from bad.{logged}",
        why="GRPO's advantage is the reward minus the group mean; when a prompt is always solved (or never), the group "
            "teaches nothing and the compute spent on it is wasted.",
        fix="Sample more completions per prompt (num_generations) or at a higher temperature, use a graded reward "
            "instead of a 0/1 one, or drop prompts that are always or never solved (DAPO's dynamic sampling).",
        samples=samples,
    )


def _grpo_group_truncated(r, step) -> Finding | None:
    G = step.num_generations
    masked = step.completion_mask.sum(1) == 0
    hit = [g for g in range(step.num_groups)
           if bool(step.is_truncated[g * G:(g + 1) * G].all()) or bool(masked[g * G:(g + 1) * G].all())]
    if not hit:
        return None
    on = bool(getattr(step.config, "mask_truncated_completions", False))
    samples = [i for g in hit for i in range(g * G, (g + 1) * G)]
    return Finding(
        code="grpo_group_truncated", title="Every completion of a group was truncated or masked", severity="warning",
        detail=f"In group(s) {_samples(hit)} every completion hit the length limit without an EOS"
               + (" and mask_truncated_completions removed all of them from the loss." if on else
                  "; their rewards rate unfinished text."),
        why="The group then says nothing about finished answers: with the mask on it contributes no token at all, "
            "without it the policy is rewarded or punished for text it never finished.",
        fix="Raise max_completion_length (max_new_tokens), or shorten what the prompt asks for.",
        samples=samples,
    )


def length_bias_pair(step) -> tuple[int, int] | None:
    """The shortest and the longest completion (in loss tokens) among those with a nonzero advantage, or None
    when no two such completions differ in length."""
    counts = step.completion_mask.sum(1)
    live = [i for i in range(len(counts)) if int(counts[i]) > 0 and abs(float(step.advantages[i])) > 1e-9]
    if len(live) < 2:
        return None
    short = min(live, key=lambda i: (int(counts[i]), i))
    long = max(live, key=lambda i: (int(counts[i]), -i))
    return (short, long) if int(counts[long]) > int(counts[short]) else None


def weight_per_advantage(step, i: int) -> float:
    """How much one token of completion `i` counts per unit of its advantage under the loss's aggregation alone
    (TRL's `loss_type`, verl's `loss_agg_mode`): the per-token weight d loss / d logprob divided by -advantage,
    with the sampler ratio, the entropy mask and the off-policy mask (which weigh tokens for other reasons)
    left out. Read from the step's mask and config: it is the token weight where those multipliers are 1."""
    mask = step.completion_mask.float()
    counts = mask.sum(1)
    n_i = float(counts[i])
    if n_i == 0:
        return 0.0
    B, N = float(mask.shape[0]), float(mask.sum())
    seqs = float((counts > 0).sum())
    c = step.config
    if step.trainer == "verl":
        mode = c.loss_agg_mode
        if mode == "token-mean":
            return 1.0 / N
        if mode == "token-sum":
            return 1.0
        if mode == "seq-mean-token-mean":
            return 1.0 / (n_i * seqs)
        if mode == "seq-mean-token-sum":
            return 1.0 / seqs
        horizon = c.response_length or mask.shape[1]
        return 1.0 / (seqs * (c.loss_scale_factor or horizon))
    if c.loss_type in ("grpo", "sapo"):
        return 1.0 / (n_i * B)
    if c.loss_type == "dr_grpo":
        return 1.0 / (B * c.max_completion_length)
    if c.loss_type == "luspo":
        return 1.0 / B
    if c.loss_type == "cispo":  # at the rollout point the ratio 1 is truncated at epsilon_high
        return min(1.0, c.epsilon_high_value) / N
    return 1.0 / N  # bnpo, dapo, vespo: one normaliser for every token


_EVEN_LOSSES = {"grpo": ("dapo", "dr_grpo"), "verl": ("token-mean", "seq-mean-token-sum-norm")}
_DEFAULT_LOSS = {"grpo": "dapo", "verl": "token-mean"}


def _length_bias_fix(step, name: str) -> str:
    """What to use instead: the loss types that weigh every token alike, never the one in use."""
    others = [x for x in _EVEN_LOSSES[step.trainer] if x != name]
    quoted = " or ".join(f"'{x}'" + (" (the default)" if x == _DEFAULT_LOSS[step.trainer] else "") for x in others)
    field_name = "loss_agg_mode" if step.trainer == "verl" else "loss_type"
    return f"Use {field_name} {quoted}, which weigh every token of the batch alike."


def _grpo_length_bias(r, step) -> Finding | None:
    pair = length_bias_pair(step)
    if pair is None:
        return None
    s, l = pair
    ws, wl = weight_per_advantage(step, s), weight_per_advantage(step, l)
    if wl == 0 or ws == 0:
        return None
    ratio = ws / wl
    if 1 / LENGTH_BIAS <= ratio <= LENGTH_BIAS:
        return None
    ns, nl = int(step.completion_mask[s].sum()), int(step.completion_mask[l].sum())
    name = getattr(step.config, "loss_type", None) or getattr(step.config, "loss_agg_mode", "?")
    field_name = "loss_agg_mode" if step.trainer == "verl" else "loss_type"
    return Finding(
        code="grpo_length_bias", title=f"Length bias of {field_name} {name!r}", severity="warning",
        detail=f"Per unit of advantage, a token of completion {s} ({ns} tokens) counts {ratio:.2f}x as much as a token "
               f"of completion {l} ({nl} tokens): the loss averages each completion over its own length first.",
        why="Short correct answers are pushed up harder per token than long ones, and long wrong answers are pushed "
            "down more gently per token, so the policy drifts towards longer wrong answers (the Dr. GRPO paper).",
        fix=_length_bias_fix(step, name),
        samples=[s, l],
    )


def _grpo_sequence_drop(r, step) -> Finding | None:
    s = step.sampler
    if s is None or s.level != "sequence":
        return None
    dropped = [i for i in range(s.dropped.shape[0]) if bool(s.dropped[i].any())
               and int(step.completion_mask[i].sum()) > 0]
    if not dropped:
        return None
    raw = s.raw_ratio.reshape(s.raw_ratio.shape[0], -1)[:, 0]
    detail = ", ".join(f"{i}: ratio {float(raw[i]):.3g}" for i in dropped[:8])
    return Finding(
        code="grpo_sequence_dropped", title="Completions dropped whole by the sequence-level sampler ratio",
        severity="warning",
        detail=f"{len(dropped)} completion(s) have a sequence importance ratio exp(sum of per-token logprob gaps) "
               f"outside [{s.clip_min}, {s.clip_max}] and get ratio 0 under {s.mode!r}: {detail}.",
        why="The ratio is a product over every token, so small per-token gaps between the sampler and the trainer "
            "add up over long completions; every token of a dropped completion leaves the loss.",
        fix="Remove the mismatch (the same temperature, processed logprobs, fp32 lm_head), or use a token-level mode "
            "('token_truncate'), or raise vllm_importance_sampling_clip_max.",
        samples=dropped,
    )


def _grpo_reward_none(r, step) -> Finding | None:
    nan = torch.isnan(step.rewards_per_func)
    if not nan.any():
        return None
    parts = []
    for j, name in enumerate(step.reward_func_names):
        rows = nan[:, j].nonzero().flatten().tolist()
        if rows:
            parts.append(f"{name!r} on sample(s) {_samples(rows)}")
    unscorable = nan.all(dim=1).nonzero().flatten().tolist()
    detail = "Reward function(s) returned None: " + "; ".join(parts) + "."
    if unscorable:
        detail += (f" Sample(s) {_samples(unscorable)} got None from every function: TRL leaves them out of the "
                   "group mean and gives them advantage 0.")
    return Finding(
        code="grpo_reward_none", title="A reward function returned None", severity="warning", detail=detail,
        why="None becomes NaN and is skipped by nansum / nanmean: the completion's reward then comes from the other "
            "functions only, which changes its weight in the group without any sign in the logs but the mean.",
        fix="Return a number for every completion (e.g. 0.0 when the function does not apply), or check why the "
            "function could not score these completions (a missing answer column, a parse failure).",
        samples=sorted(set(nan.any(dim=1).nonzero().flatten().tolist())),
    )


def _grpo_reward_scales(r, step) -> Finding | None:
    F = step.rewards_per_func.shape[1]
    if F < 2 or getattr(step.config, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
        return None
    weights = list(getattr(step.config, "reward_weights", None) or [1.0] * F)
    spreads = []
    for j in range(F):
        col = step.rewards_per_func[:, j]
        col = col[~torch.isnan(col)] * weights[j]
        spreads.append(float(col.std()) if col.numel() > 1 else 0.0)
    live = [x for x in spreads if x > 0]
    if len(live) < 2 or max(live) / min(live) <= SCALE_RATIO:
        return None
    big, small = spreads.index(max(live)), spreads.index(min(live))
    names = step.reward_func_names
    return Finding(
        code="grpo_reward_scales", title="Reward functions on very different scales", severity="warning",
        detail=f"Under sum_then_normalize the weighted rewards are summed before the group normalisation: "
               f"{names[big]!r} spreads {spreads[big]:.3g} (std over the batch, times its weight) and {names[small]!r} "
               f"only {spreads[small]:.3g}, {spreads[big] / spreads[small]:.0f}x less.",
        why="The advantage then follows the large-scale function almost alone; the small one barely moves the policy.",
        fix="Set reward_weights to bring them to one scale, or use multi_objective_aggregation='normalize_then_sum', "
            "which normalises each function inside its group first.",
    )


def _eos_in_mask(r, step) -> list[tuple[int, int]]:
    if r.eos_token_id is None:
        return []
    hits = (r.responses == r.eos_token_id) & step.completion_mask.bool()
    return [(int(b), int(t)) for b, t in hits.nonzero().tolist()]


def _grpo_eos_in_mask(r, step) -> Finding | None:
    hits = _eos_in_mask(r, step)
    if not hits:
        return None
    eos = r.token(r.eos_token_id)
    return Finding(
        code="grpo_eos_in_loss_mask", title="The EOS token is inside the loss mask", severity="info",
        detail=f"In {len(hits)} completion(s) the EOS token {eos!r} is the last token of completion_mask (TRL's "
               "`arange <= eos_idx`): its logprob is trained like any other token's.",
        why="The decision to stop is learned from the advantage: a rewarded completion is pushed to stop there. A mask "
            "built as ids != pad (PPO's) would leave the EOS out when pad == EOS, and the stop would not be learned.",
        fix="Nothing to fix if that is intended. Make sure length rewards count the EOS the way you mean, and that "
            "a custom mask keeps it.",
        samples=sorted({b for b, _ in hits}), positions=hits,
    )


def _grpo_pad_eos(r, step) -> Finding | None:
    if r.eos_token_id is None or r.pad_token_id != r.eos_token_id:
        return None
    hits = _eos_in_mask(r, step)
    trailing = (r.responses == r.pad_token_id) & ~step.completion_mask.bool()
    eos = r.token(r.eos_token_id)
    return Finding(
        code="grpo_pad_equals_eos", title="pad == EOS: what completion_mask counts", severity="info",
        detail=f"The pad token is the EOS token {eos!r}. completion_mask keeps the first of them in {len(hits)} "
               f"completion(s) and drops the {int(trailing.sum())} after it; mask_truncated_completions reads a last "
               "token equal to pad as a finished completion. A mask built from ids != pad would drop the EOS itself.",
        why="Any code that rebuilds the mask from the ids (a custom loss, a reward that counts tokens, PPO's "
            "padding mask) silently disagrees with TRL's by the EOS token, and a truncated completion whose last "
            "sampled token happens to be the pad id is not treated as truncated.",
        fix="Give the tokenizer a distinct pad token, or build masks from lengths, never from ids != pad.",
        samples=sorted({b for b, _ in hits}), positions=hits,
    )


GRPO_CHECKS = (_grpo_zero_std, _grpo_group_truncated, _grpo_length_bias, _grpo_sequence_drop, _grpo_reward_none,
               _grpo_reward_scales, _grpo_eos_in_mask, _grpo_pad_eos)


def diagnose_grpo(r, step) -> list[Finding]:
    """Every GRPO finding for a step computed from rollout `r`, warnings first."""
    found = [f for check in GRPO_CHECKS if (f := check(r, step)) is not None]
    return sorted(found, key=lambda f: f.severity != "warning")
