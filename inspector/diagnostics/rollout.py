"""Checks over a Rollout (the PPO view of it) that name, in plain words, the traps a PPO setup falls into.

Each finding says which trap, which samples and positions it touches, why it matters for training, and
the fix. They read the record only: no model pass.
"""

from __future__ import annotations

import torch

from ..record.rollout import Rollout
from .finding import Finding

LOGPROB_GAP = 1e-3


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
