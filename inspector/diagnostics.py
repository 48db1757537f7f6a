"""Checks over a Rollout that name, in plain words, the traps a PPO setup falls into.

Each finding says which trap, which samples and positions it touches, why it matters for training, and
the fix. They read the record only: no model pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from .rollout import Rollout

LOGPROB_GAP = 1e-3


@dataclass
class Finding:
    code: str
    title: str
    severity: str                      # "warning" (changes what is trained on) or "info"
    detail: str
    why: str
    fix: str
    samples: list[int] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)  # (sample, absolute index in sequences)

    def to_dict(self) -> dict:
        return asdict(self)


def _valid(r: Rollout) -> torch.Tensor:
    return ~r.padding_mask


def _pad_equals_eos(r: Rollout) -> Finding | None:
    if not r.pad_equals_eos:
        return None
    Q = r.context_length
    hidden = (r.queries == r.pad_token_id) & r.query_attention_mask.bool()
    prompt_positions = [(int(b), int(t)) for b, t in hidden.nonzero().tolist()]
    read_before = [i for i in range(r.batch_size) if bool(r.contain_eos_token[i]) and r.sequence_lengths[i] >= 0]
    eos = r.token(r.pad_token_id)
    detail = (f"The pad token is the EOS token {eos!r} (id {r.pad_token_id}). TRL's mask `ids != pad_token_id` "
              f"hides every one of them: {len(prompt_positions)} EOS token(s) inside the prompts (the chat "
              f"template's turn ends) are invisible to the policy, the value and the reward model, and in "
              f"{len(read_before)} sample(s) the score is read on the token before the EOS, not on the EOS.")
    if r.attention == "tokenizer":
        detail += " This rollout used the tokenizer's true mask, so the prompts' EOS tokens were visible here."
    elif r.scores_true_mask is None:
        detail += " Turn on 'compare with the true mask' to see what this does to each reward."
    return Finding(
        code="pad_equals_eos", title="The pad token equals the EOS token", severity="warning", detail=detail,
        why="The reward model never sees the end of turn it may have been trained with, and the prompt's "
            "structure is partly hidden from every model (TRL issues 1893, 3750).",
        fix="Give the tokenizer a distinct pad token (e.g. add '<pad>' and resize the embeddings), or compare the "
            "two masks with attention='tokenizer'.",
        samples=sorted({b for b, _ in prompt_positions} | set(read_before)),
        positions=prompt_positions + [(i, Q + int(r.sequence_lengths[i])) for i in read_before],
    )


def _mask_changes_reward(r: Rollout) -> Finding | None:
    if r.scores_true_mask is None:
        return None
    diff = r.scores - r.scores_true_mask
    at_end = r.scores_true_mask_at_end
    per_sample = ", ".join(
        f"{i}: {float(r.scores[i]):+.3f} vs {float(r.scores_true_mask[i]):+.3f}"
        + (f" ({float(at_end[i]):+.3f} on the EOS)" if at_end is not None else "")
        for i in range(min(r.batch_size, 12)))
    worst = float(diff.abs().max())
    read = float((at_end - r.scores_true_mask).abs().max()) if at_end is not None else None
    total = float((at_end - r.scores).abs().max()) if at_end is not None else worst
    detail = (f"Read where TRL reads (the token before the EOS when pad == EOS), the same responses scored under "
              f"TRL's mask (ids != pad) and under the true attention mask get different rewards: the mask alone "
              f"changes them by up to {worst:.3f}.")
    if read is not None:
        detail += (f" Read on the EOS itself under the true mask (where a reward model trained with that mask "
                   f"reads), they move by up to {read:.3f} more: the read position's effect (both together: up to "
                   f"{total:.3f}).")
    detail += (f" Per sample, TRL's mask vs the true mask at TRL's position: {per_sample}"
               f"{' …' if r.batch_size > 12 else ''}.")
    return Finding(
        code="mask_changes_reward", title="TRL's mask changes the reward",
        severity="warning" if max(worst, total) > 0.05 else "info", detail=detail,
        why="The reward model was trained with some mask; if that was the tokenizer's, PPO optimises a reward the "
            "model never gave during its training.",
        fix="Use a pad token distinct from EOS so that both masks agree, or score with the mask the reward model "
            "was trained with.",
        samples=[i for i in range(r.batch_size) if abs(float(diff[i])) > 1e-4
                 or (at_end is not None and abs(float(at_end[i] - r.scores[i])) > 1e-4)],
    )


def _right_padding(r: Rollout) -> Finding | None:
    mask = r.query_attention_mask.bool()
    # a row is right-padded when a real token is followed by padding
    right = [i for i in range(r.batch_size) if bool((mask[i, :-1] & ~mask[i, 1:]).any())]
    if not right:
        return None
    return Finding(
        code="right_padding", title="Right-padded prompts", severity="warning",
        detail=f"{len(right)} prompt(s) are padded on the right: generation continues after the pad tokens.",
        why="A decoder-only model generates from the last column; with right padding that column is a pad "
            "token, so the response is conditioned on padding (TRL issue 2778).",
        fix="Set tokenizer.padding_side = 'left' for generation.", samples=right,
    )


def _no_stop(r: Rollout) -> Finding | None:
    if r.stop_token_id is None:
        return None
    missing = [i for i in range(r.batch_size) if not bool((r.postprocessed_responses[i] == r.stop_token_id).any())]
    if not missing:
        return None
    penalty = r.settings.get("missing_eos_penalty")
    return Finding(
        code="no_stop_token", title="Responses without a stop token", severity="warning",
        detail=f"{len(missing)} response(s) hit max_new_tokens ({r.settings.get('max_new_tokens')}) without the "
               f"stop token {r.token(r.stop_token_id)!r}: the score is read at the last column, mid-sentence.",
        why="The reward model scores an unfinished response as if it were complete"
            + ("" if penalty else ", and no missing_eos_penalty is applied") + ".",
        fix="Raise max_new_tokens, or set TRL's missing_eos_penalty so that unfinished responses cost reward.",
        samples=missing,
        positions=[(i, r.context_length + r.response_width - 1) for i in missing],
    )


def _empty(r: Rollout) -> Finding | None:
    empty = [i for i in range(r.batch_size) if int(r.sequence_lengths[i]) < 0]
    if not empty:
        return None
    return Finding(
        code="empty_response", title="Empty responses: the score is read inside the prompt", severity="warning",
        detail=f"{len(empty)} response(s) start with the stop token, so sequence_lengths is -1 and the reward is "
               "read on the last prompt token.",
        why="The score then rates the prompt, not a response; PPO still credits it to the policy.",
        fix="Penalise empty responses, or check why the policy stops at once (chat template, stop token).",
        samples=empty, positions=[(i, r.context_length - 1) for i in empty],
    )


def _reward_on_special(r: Rollout) -> Finding | None:
    specials = set(r.special_ids)
    hits = []
    for i in range(r.batch_size):
        pos = int(r.score_positions[i])
        if int(r.reward_query_responses[i, pos]) in specials:
            hits.append(i)
    if not hits:
        return None
    return Finding(
        code="reward_on_special", title="The score is read on a special token", severity="info",
        detail=f"In {len(hits)} sample(s) the reward model's score comes from a special token "
               f"({', '.join(sorted({repr(r.reward_tokens.get(int(r.reward_query_responses[i, int(r.score_positions[i])]), '?')) for i in hits}))}).",
        why="A reward model trained to score the last content token may give an uncalibrated score here.",
        fix="Check where the reward model was trained to read its score and align the stop token with it.",
        samples=hits, positions=[(i, int(r.score_positions[i])) for i in hits],
    )


def _chat_template(r: Rollout) -> Finding | None:
    if r.chat_template_applied:
        return None
    asked = r.settings.get("use_chat_template", True)
    return Finding(
        code="no_chat_template", title="No chat template applied", severity="info",
        detail="The prompts were tokenized as plain text "
               + ("because the tokenizer has no chat template." if asked else "because the template was turned off."),
        why="An instruct model trained on chat turns behaves differently on raw text; the rollout then differs "
            "from what a chat-formatted PPO dataset would give.",
        fix="Apply the tokenizer's chat template to the prompts (as TRL's PPO examples do), or use a base model.",
    )


def _logprob_gap(r: Rollout) -> Finding | None:
    valid = _valid(r)
    if not valid.any():
        return None
    gap = (r.logprobs - r.new_logprobs).abs()
    gap = torch.where(valid & torch.isfinite(gap), gap, torch.zeros_like(gap))
    worst = float(gap.max())
    if worst <= LOGPROB_GAP:
        return None
    s = r.settings
    causes = []
    if s.get("do_sample") and s.get("top_k"):
        causes.append(f"top_k={s['top_k']} renormalises the sampling distribution over the top tokens")
    if s.get("do_sample") and s.get("top_p", 1.0) < 1.0:
        causes.append(f"top_p={s['top_p']} renormalises it over the nucleus")
    for e in (e for e in _acting(r) if e["max_effect"] > LOGPROB_GAP):
        causes.append(f"{_setting(e)} from the model's generation_config.json moves the sampled token's logprob by up "
                      f"to {e['max_effect']:.3g} nats")
    if not causes:
        causes.append("numerical differences between the cached generation pass and the full forward pass "
                      "(or lower precision)")
    rows = sorted({int(b) for b in (gap > LOGPROB_GAP).nonzero()[:, 0].tolist()})
    return Finding(
        code="logprob_gap", title="Sampling logprobs differ from the training-time recompute", severity="warning",
        detail=f"The largest gap between logprobs (sampling time) and new_logprobs (the recompute) is {worst:.3g} nats: "
               + "; ".join(causes) + ", which a forward pass with only the temperature applied does not reproduce.",
        why="PPO's first-epoch ratio exp(new_logprobs - logprobs) is then off before the first update (TRL issues "
            "2358, 3169, 4159).",
        fix="Sample with top_k=0 and top_p=1.0 during PPO rollouts (TRL's defaults), or apply the same "
            "truncation in the training forward pass.",
        samples=rows,
    )


def _setting(e: dict) -> str:
    return f"{e['setting']}={e['value']!r}"


def _acting(r: Rollout) -> list[dict]:
    """The processors inherited from the model's generation config, one entry each (not their sum)."""
    return [e for e in r.inherited_processors if e.get("processor")]


def _inherited_settings(r: Rollout) -> Finding | None:
    acting = _acting(r)
    if not acting:
        return None
    both = next((e for e in r.inherited_processors if not e.get("processor")), None)
    parts = [f"{_setting(e)} ({e['processor']}): changes the sampled token's logprob by up to {e['max_effect']:.3g} "
             f"nats (mean {e['mean_effect']:.3g}, {e['tokens_changed']} of {e['tokens']} tokens changed)"
             for e in acting]
    rest = (both or acting[0])["max_gap_to_new_logprobs_without_it"]
    detail = ("The policy's generation_config.json adds logits processors that `generate` merges into every call: "
              + "; ".join(parts) + (f"; all of them together: up to {both['max_effect']:.3g} nats" if both else "")
              + f". Without {'them' if both else 'it'}, logprobs and new_logprobs would agree to {rest:.3g} nats.")
    worst = max(e["max_effect"] for e in acting)
    return Finding(
        code="inherited_generation_config", title="The model's own generation settings change what is sampled",
        severity="warning" if worst > LOGPROB_GAP else "info", detail=detail,
        why="TRL's rollout logprobs (and so its KL, rewards and advantages) come from the processed distribution, "
            "which includes these processors; its training forward pass (new_logprobs) applies only the "
            "temperature, so PPO's ratio starts away from 1 where they act.",
        fix="Set these fields to neutral values in the policy's generation_config.json for PPO rollouts, or tick "
            "'ignore the model's generation config' to see the rollout without them.",
        samples=sorted({i for e in acting for i, v in enumerate(e["sample_max_effect"]) if v > LOGPROB_GAP}),
    )


def _tokenizer_differs(r: Rollout) -> Finding | None:
    if r.reward_tokenizer_is_policy:
        return None
    return Finding(
        code="reward_tokenizer_differs", title="The reward model uses another tokenizer", severity="info",
        detail="Each response was decoded and re-encoded for the reward model; `reward_query_responses` holds the "
               "ids it really saw.",
        why="Decoding and re-encoding can change whitespace and special tokens; TRL's PPO trainer assumes one "
            "shared tokenizer and would feed the policy's ids to the reward model unchanged.",
        fix="Use a reward model trained on the policy's tokenizer, or check the re-encoded inputs below.",
    )


CHECKS = (_pad_equals_eos, _mask_changes_reward, _right_padding, _no_stop, _empty, _reward_on_special, _chat_template, _logprob_gap,
          _inherited_settings, _tokenizer_differs)


def diagnose(r: Rollout) -> list[Finding]:
    """Every finding for a rollout, warnings first."""
    found = [f for check in CHECKS if (f := check(r)) is not None]
    return sorted(found, key=lambda f: f.severity != "warning")


# ---------------------------------------------------------------------------------------------- GRPO traps
# Checks over a GRPO step (`inspector.grpo.GRPOStep`) and the rollout it was computed from. They read the
# step's tensors only: no model pass. `r` needs `responses`, `pad_token_id`, `eos_token_id` and `token()`.

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
