"""After sampling, every pass that fills the record: the split at `context_length`, TRL's truncation and masks,
the training-time recompute and the reference's logprobs, the value and reward passes, and the `Rollout` they
make. `score_rollout` runs them over a `Generation` (sampled in process, by an engine, or read from a file)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..models import Models, same_tokenizer
from ..record.rollout import Rollout
from ..tensors import first_true_indices, truncate_response
from ..trainers.grpo import model_eos_token_ids, trl_completion_mask
from ..trainers.scoring import backbone_states, forward_logprobs, get_reward, head_logprobs_and_entropies, trl_attention_mask


TRAINERS = ("ppo", "grpo", "verl")
"""Whose conventions the trainer-side fields follow. "ppo": TRL 0.x PPO (`ids != pad` attention, the stop
token alone ends generation). "grpo" (TRL 1.16) and "verl": generation ends at every EOS id (the tokenizer's,
the model's generation config's, and a custom stop token), and the policy recompute sees
`cat(prompt_mask, completion_mask)`: the tokenizer's prompt mask and the completion up to its first EOS id."""

PPO_CONVENTIONS = {
    "new_logprobs": "TRL 0.x PPO: attention ids != pad, logits / (temperature + 1e-7)",
    "entropies": "TRL 0.x PPO: full vocabulary at logits / (temperature + 1e-7), same pass as new_logprobs",
    "ref_logprobs": "TRL 0.x PPO: attention ids != pad",
    "values": "TRL 0.x PPO: value model over query_responses, attention ids != pad",
    "scores": "TRL 0.x PPO: get_reward on postprocessed_query_responses, attention ids != pad",
    "responses": "TRL 0.x PPO: generation stops at the stop token alone",
}
GRPO_CONVENTIONS = {
    "new_logprobs": "TRL 1.16 GRPO: attention cat(prompt_mask, completion_mask), logits / temperature",
    "entropies": "TRL 1.16 GRPO: entropy_from_logits over the full vocabulary at logits / temperature, "
                 "same pass as new_logprobs",
    "ref_logprobs": "TRL 1.16 GRPO: attention cat(prompt_mask, completion_mask)",
    "values": "attention cat(prompt_mask, completion_mask) (GRPO has no value model)",
    "scores": "reward model under cat(prompt_mask, completion_mask), read at the last completion token",
    "responses": "TRL 1.16 GRPO: generation stops at every id of eos_token_ids",
}


def trainer_conventions(trainer: str) -> dict[str, str]:
    """The record's `conventions` for a trainer: field name -> whose convention it follows."""
    return dict(PPO_CONVENTIONS if trainer == "ppo" else GRPO_CONVENTIONS)


def trainer_eos_token_ids(models: Models, stop: int | None, trainer: str = "grpo") -> list[int]:
    """TRL 1.16's `eos_token_ids` for the loaded models: the tokenizer's EOS, then every id of the policy's
    generation_config.eos_token_id. Under a GRPO-family trainer a custom stop token joins them, as it does in
    TRL when it is set as the model's generation-config EOS (TRL's way to stop elsewhere): generation ends at
    it and the completion mask ends there, so the pad after it (the EOS when pad == EOS) is never taken for a
    sampled token."""
    ids = model_eos_token_ids(models)
    if trainer != "ppo" and stop is not None and stop not in ids:
        ids.append(stop)
    return ids


def response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """True for response tokens up to and including the first of `stop_ids` (the true, tokenizer-style mask)."""
    if not stop_ids:
        return torch.ones_like(responses, dtype=torch.bool)
    hits = torch.zeros_like(responses, dtype=torch.bool)
    for sid in stop_ids:
        hits |= responses == sid
    first = first_true_indices(hits)
    return torch.arange(responses.shape[1]).unsqueeze(0) <= first.unsqueeze(1)


def _reencode_for(tokenizer, prompts: list[str], response_texts: list[str], stopped: torch.Tensor):
    """The reward model's own ids when its tokenizer differs from the policy's: the prompt as its chat
    template writes it (if it has one), then the decoded response, then its EOS where the response stopped.
    Returns (ids (B, T'), context_length, true mask (B, T')): left-padded queries, right-padded responses."""
    if getattr(tokenizer, "chat_template", None):
        query_ids = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True)
            for p in prompts
        ]
        query_ids = [list(q["input_ids"]) if isinstance(q, dict) or hasattr(q, "keys") else list(q) for q in query_ids]
    else:
        query_ids = [tokenizer(p)["input_ids"] for p in prompts]
    resp_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in response_texts]
    resp_ids = [r + ([tokenizer.eos_token_id] if s and tokenizer.eos_token_id is not None else []) for r, s in zip(resp_ids, stopped.tolist())]
    q_width, r_width = max(map(len, query_ids)), max(1, max(map(len, resp_ids)))
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), q_width + r_width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (q, r) in enumerate(zip(query_ids, resp_ids)):
        ids[i, q_width - len(q) : q_width] = torch.tensor(q, dtype=torch.long)
        ids[i, q_width : q_width + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, q_width - len(q) : q_width + len(r)] = True
    return ids, q_width, mask


@dataclass
class _Split:
    """The ids and masks of a batch after generation, as TRL's rollout builds them (B, Q + G unless noted)."""

    responses: torch.Tensor             # (B, G) sequences[:, Q:]
    query_responses: torch.Tensor
    postprocessed: torch.Tensor         # (B, G) truncated after the stop token
    postprocessed_qr: torch.Tensor
    sequence_lengths: torch.Tensor      # (B,)
    contain_eos: torch.Tensor           # (B,) bool
    qr_mask: torch.Tensor               # the attention mask of every pass over query_responses
    pqr_mask: torch.Tensor | None       # the reward pass's true mask ("tokenizer" attention); None: TRL's


def _split(enc, sequences: torch.Tensor, *, stop, pad, eos, attention: str, trainer: str, eos_ids: list[int]) -> _Split:
    """The split at `context_length`, TRL's truncation after the stop token, and the masks: `attention`'s for
    PPO; for a GRPO-family trainer TRL 1.16's `cat(prompt_mask, completion_mask)`, the completion mask ending at
    the first of `eos_ids`."""
    Q = enc.queries.shape[1]
    responses = sequences[:, Q:]
    query_responses = torch.cat((enc.queries, responses), dim=1)
    postprocessed = truncate_response(stop, pad, responses) if stop is not None else responses.clone()
    postprocessed_qr = torch.cat((enc.queries, postprocessed), dim=1)
    sequence_lengths = first_true_indices(postprocessed == pad) - 1
    contain_eos = torch.any(postprocessed == eos, dim=-1) if eos is not None else torch.zeros(len(sequences), dtype=torch.bool)
    if trainer != "ppo":
        completion_mask = trl_completion_mask(responses, eos_ids, pad)[0].bool()
        qr_mask = pqr_mask = torch.cat((enc.attention_mask.bool(), completion_mask), dim=1)
    elif attention == "trl":
        qr_mask = trl_attention_mask(query_responses, pad)
        pqr_mask = None
    else:
        generated = response_mask(responses, [eos] if eos is not None else [])
        qr_mask = torch.cat((enc.attention_mask.bool(), generated), dim=1)
        kept = generated & response_mask(responses, [stop] if stop is not None else [])
        pqr_mask = torch.cat((enc.attention_mask.bool(), kept), dim=1)
    return _Split(responses, query_responses, postprocessed, postprocessed_qr, sequence_lengths, contain_eos,
                  qr_mask, pqr_mask)


def _logprob_passes(models: Models, s: _Split, Q: int, temperature: float, say, capture, device, *, trainer: str,
                    timings: dict):
    """The training-time recompute (`new_logprobs`, with the full-vocabulary `entropies` of the same pass for a
    GRPO-family trainer, None for PPO) and the reference's. Returns (the policy's hidden states, new_logprobs, entropies, ref_logprobs, the fields
    `capture` computed from the hidden states); adds the recompute's, the capture's and the reference's times."""
    pad = models.tokenizer.pad_token_id
    t0 = time.perf_counter()
    say(0.55, "Recomputing logprobs (training-time forward pass)")
    policy_backbone = getattr(models.policy, models.policy.base_model_prefix)
    hidden = backbone_states(policy_backbone, s.query_responses.to(device), s.qr_mask.to(device))
    # TRL 0.x PPO divides by temperature + 1e-7, TRL 1.16 GRPO's fused head by the temperature itself
    divisor = temperature + 1e-7 if trainer == "ppo" else temperature
    # the full-vocabulary entropies are the GRPO family's (TRL 1.16 logs them and its top_entropy_quantile masks
    # by them); TRL's PPO rollout computes none, so a PPO rollout is spared their pass over the logits
    new_logprobs, entropies = head_logprobs_and_entropies(
        models.policy.get_output_embeddings(), hidden, s.responses.to(device), Q, divisor, entropies=trainer != "ppo")
    new_logprobs = new_logprobs.cpu()
    entropies = entropies.float().cpu() if entropies is not None else None
    timings["recompute"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    captured = capture(hidden, s.responses) if capture else {}
    timings["engine_capture"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if models.reference_is_policy:
        ref_logprobs = new_logprobs.clone()
    else:
        say(0.65, "Reference model pass")
        ref_logprobs = forward_logprobs(
            models.reference, s.query_responses.to(device), pad, Q, temperature,
            attention_mask=s.qr_mask.to(device),
        ).cpu()
    timings["reference"] = time.perf_counter() - t0
    return hidden, new_logprobs, entropies, ref_logprobs, captured


def _value_pass(models: Models, s: _Split, Q: int, hidden, device) -> torch.Tensor:
    """The value head over every position of `query_responses` (B, Q + G, 1); zeros without a value model."""
    pad = models.tokenizer.pad_token_id
    policy_backbone = getattr(models.policy, models.policy.base_model_prefix)
    value_backbone = getattr(models.value, models.value.base_model_prefix) if models.value is not None else None
    if models.value is None:  # no value model: every value is 0 (NO_VALUE_NOTE in the record)
        return torch.zeros(s.query_responses.shape[0], s.query_responses.shape[1], 1)
    if value_backbone is policy_backbone:
        return models.value.score(hidden)  # the same backbone over the same ids and mask: reuse it
    full_value, _, _ = get_reward(models.value, s.query_responses.to(device), pad, Q,
                                  attention_mask=s.qr_mask.to(device))
    return full_value


@dataclass
class _Reward:
    """The reward pass: what the reward model read (its own ids when its tokenizer differs) and its scores."""

    same_tokenizer: bool
    response_texts: list[str]           # the postprocessed responses, decoded without special tokens
    ids: torch.Tensor                   # (B, T') reward_query_responses
    context_length: int
    scores: torch.Tensor                # (B,)
    score_positions: torch.Tensor       # (B,) absolute index in `ids`


def _reward_pass(models: Models, s: _Split, prompts: list[str], Q: int, full_value, *, stop, attention: str,
                 device) -> _Reward:
    """The scores, read from the value pass when the value model is the reward model (same ids, same mask),
    else from a reward pass over the policy's ids or the reward tokenizer's own."""
    tok = models.tokenizer
    pad = tok.pad_token_id
    trl_mode = attention == "trl"
    reward_same_tok = same_tokenizer(models.reward_tokenizer, tok)
    stopped = (s.postprocessed == stop).any(-1) if stop is not None else torch.zeros(len(prompts), dtype=torch.bool)
    response_texts = tok.batch_decode(s.postprocessed, skip_special_tokens=True)
    if reward_same_tok:
        reward_ids, reward_cl, reward_pad, reward_mask = s.postprocessed_qr, Q, pad, s.pqr_mask
    else:
        rtok = models.reward_tokenizer
        reward_ids, reward_cl, true_mask = _reencode_for(rtok, prompts, response_texts, stopped)
        reward_pad, reward_mask = rtok.pad_token_id, None if trl_mode else true_mask
    if reward_same_tok and models.value_is_reward:
        # Causal attention: the score logit at position p sees only positions <= p, and up to the score
        # position postprocessed_query_responses equals query_responses, ids and mask alike (the
        # truncation starts after the stop token). So the value pass already holds the score.
        if trl_mode:
            score_positions = first_true_indices(s.postprocessed_qr[:, Q:] == pad) - 1 + Q
        else:
            score_positions = first_true_indices(~s.pqr_mask[:, Q:]) - 1 + Q
        rows = torch.arange(len(prompts), device=full_value.device)
        scores = full_value[rows, score_positions.to(full_value.device)].squeeze(-1).float().cpu()
    else:
        _, scores, score_positions = get_reward(
            models.reward, reward_ids.to(device), reward_pad, reward_cl,
            attention_mask=None if reward_mask is None else reward_mask.to(device),
        )
        scores = scores.float().cpu()
    return _Reward(reward_same_tok, response_texts, reward_ids, reward_cl, scores, score_positions.cpu())


def _true_mask_scores(models: Models, enc, s: _Split, reward: _Reward, Q: int, *, stop, attention: str, say,
                      device):
    """Where TRL's mask hides real tokens (EOS == pad), the reward under the true mask, read at TRL's position
    (the mask's effect alone) and at the last token the true mask keeps (the read position's on top): one
    more reward pass, for the diagnostics. (None, None) where the masks agree or the tokenizers differ."""
    pad, eos = models.tokenizer.pad_token_id, models.tokenizer.eos_token_id
    hidden_by_trl = (enc.queries == pad) & enc.attention_mask.bool()
    if not (attention == "trl" and reward.same_tokenizer and pad == eos
            and (hidden_by_trl.any() or s.contain_eos.any())):
        return None, None
    say(0.9, "Reward under the true attention mask")
    stops = [stop] if stop is not None else []
    kept = response_mask(s.responses, [eos]) & response_mask(s.responses, stops)
    true_mask = torch.cat((enc.attention_mask.bool(), kept), dim=1)
    true_logits, true_scores, _ = get_reward(models.reward, s.postprocessed_qr.to(device), pad, Q,
                                             attention_mask=true_mask.to(device))
    rows = torch.arange(len(s.responses), device=true_logits.device)
    at_trl = true_logits[rows, reward.score_positions.to(true_logits.device)].squeeze(-1).float().cpu()
    return at_trl, true_scores.float().cpu()


def _token_tables(models: Models, gen, s: _Split, reward: _Reward) -> tuple[dict, dict]:
    """id -> token string for every id the record holds (the policy's), and for the reward model's ids."""
    tok = models.tokenizer
    ids_seen = torch.cat([gen.sequences.flatten(), s.query_responses.flatten(), gen.topk_ids.flatten()]).unique().tolist()
    tokens = {i: tok.convert_ids_to_tokens(i) for i in ids_seen}
    if reward.same_tokenizer:
        reward_tokens = {i: tokens[i] for i in reward.ids.unique().tolist()}
    else:
        rtok = models.reward_tokenizer
        reward_tokens = {i: rtok.convert_ids_to_tokens(i) for i in reward.ids.unique().tolist()}
    return tokens, reward_tokens


@torch.no_grad()
def score_rollout(models: Models, expanded: list[str], prompt_index: list[int], enc, gen, *, stop, attention: str,
                  temperature: float, say, timings: dict, settings: dict, compare_masks: bool = False,
                  capture=None, trainer: str = "ppo", eos_ids: list[int] | None = None) -> Rollout:
    """Everything after generation: the split, truncation, masks, the recompute, value and reward passes,
    and the record. `gen` holds the sequences and the per-token capture (a `Generation`); `capture(hidden,
    responses)`, if given, returns record fields computed from the policy's hidden states (what a serving
    engine did not report). `trainer` != "ppo": every pass sees TRL 1.16 GRPO's `cat(prompt_mask,
    completion_mask)`, the completion mask ending at the first of `eos_ids`."""
    tok = models.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    eos_ids = list(eos_ids) if eos_ids is not None else trainer_eos_token_ids(models, stop, trainer)
    Q = enc.queries.shape[1]
    mode = attention if trainer == "ppo" else "tokenizer"  # TRL's `ids != pad` masks are PPO's alone
    s = _split(enc, gen.sequences, stop=stop, pad=pad, eos=eos, attention=mode, trainer=trainer, eos_ids=eos_ids)
    device = next(models.policy.parameters()).device
    hidden, new_logprobs, entropies, ref_logprobs, captured = _logprob_passes(
        models, s, Q, temperature, say, capture, device, trainer=trainer, timings=timings)

    t0 = time.perf_counter()
    say(0.75, "Value model pass")
    full_value = _value_pass(models, s, Q, hidden, device)
    values = full_value[:, Q - 1 : -1].squeeze(-1).float().cpu()
    del hidden
    timings["value"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    say(0.85, "Reward model pass")
    reward = _reward_pass(models, s, expanded, Q, full_value, stop=stop, attention=mode, device=device)
    scores_true_mask = scores_true_mask_at_end = None
    if compare_masks:
        scores_true_mask, scores_true_mask_at_end = _true_mask_scores(models, enc, s, reward, Q, stop=stop,
                                                                      attention=mode, say=say, device=device)
    timings["reward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(0.95, "Decoding")
    tokens, reward_tokens = _token_tables(models, gen, s, reward)
    rollout = Rollout(
        prompts=expanded, prompt_index=prompt_index, query_texts=enc.texts, queries=enc.queries,
        query_attention_mask=enc.attention_mask, sequences=gen.sequences, responses=s.responses,
        query_responses=s.query_responses, postprocessed_responses=s.postprocessed,
        postprocessed_query_responses=s.postprocessed_qr, context_length=Q, sequence_lengths=s.sequence_lengths,
        contain_eos_token=s.contain_eos, logprobs=gen.logprobs, raw_logprobs=gen.raw_logprobs,
        new_logprobs=new_logprobs, ref_logprobs=ref_logprobs, ranks=gen.ranks, entropy=gen.entropy,
        topk_ids=gen.topk_ids, topk_logprobs=gen.topk_logprobs, values=values, scores=reward.scores,
        scores_true_mask=scores_true_mask, scores_true_mask_at_end=scores_true_mask_at_end,
        reward_query_responses=reward.ids, reward_context_length=reward.context_length,
        score_positions=reward.score_positions, pad_token_id=pad, eos_token_id=eos, stop_token_id=stop,
        attention=attention, chat_template_applied=enc.chat_template_applied, settings=settings,
        model_names=dict(models.names), reward_tokenizer_is_policy=reward.same_tokenizer, pad_equals_eos=pad == eos,
        tokens=tokens, reward_tokens=reward_tokens, special_ids=sorted(set(tok.all_special_ids)),
        response_texts=tok.batch_decode(s.responses, skip_special_tokens=True),
        response_texts_raw=tok.batch_decode(s.responses, skip_special_tokens=False),
        postprocessed_response_texts=reward.response_texts, notes=list(models.notes), timings=timings,
        generation_config=gen.generation_config,
        inherited_processors=processor_effects(gen.inherited, gen.logprobs, new_logprobs,
                                               ~_padding(s.sequence_lengths, s.responses.shape[1])),
        entropies=entropies, trainer=trainer, conventions=trainer_conventions(trainer), eos_token_ids=eos_ids,
    )
    for name, value in captured.items():
        setattr(rollout, name, value)
    timings["decoding"] = time.perf_counter() - t0
    return rollout


def _padding(sequence_lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) > sequence_lengths.unsqueeze(1)


def processor_effects(inherited: list[dict], logprobs: torch.Tensor, new_logprobs: torch.Tensor,
                      valid: torch.Tensor) -> list[dict]:
    """What each processor inherited from the model's generation config does to the sampled token's logprob,
    over the tokens TRL trains on: |logprobs - logprobs without it| (max, mean, tokens changed, per sample),
    and the largest |(logprobs without it) - new_logprobs|, the agreement with the recompute once it is gone."""
    out = []
    for entry in inherited:
        without = entry["without"]
        diff = (logprobs - without).abs()
        diff = torch.where(valid, torch.nan_to_num(diff, nan=0.0, posinf=1e9), torch.zeros_like(diff))
        rest = (without - new_logprobs).abs()
        rest = torch.where(valid & torch.isfinite(rest), rest, torch.zeros_like(rest))
        n = int(valid.sum())
        out.append({k: v for k, v in entry.items() if k != "without"} | {
            "max_effect": float(diff.max()) if n else 0.0,
            "mean_effect": float(diff.sum() / n) if n else 0.0,
            "tokens_changed": int((diff > 1e-4).sum()),
            "tokens": n,
            "sample_max_effect": [float(x) for x in diff.max(1).values] if n else [],
            "max_gap_to_new_logprobs_without_it": float(rest.max()) if n else 0.0,
        })
    return out
