"""The Rollout record and `run_rollout`, which runs generation and then every scoring pass.

Names follow TRL's PPO trainer: queries, responses, query_responses, postprocessed_responses,
postprocessed_query_responses, context_length, sequence_lengths, logprobs, ref_logprobs, values, scores.
`logprobs` are TRL's rollout logprobs: the sampled token under the distribution it was sampled from (the
generate call's processed scores); `new_logprobs` is the training-time forward-pass recompute that TRL's
optimisation loop calls `new_logprobs` (logits / (temperature + 1e-7)).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from .errors import InputError, ModelLoadError
from .generation import Generation, SamplingSettings, encode_prompts, generate
from .limits import Limits
from .models import Models, same_tokenizer, value_vocabulary_message
from .scoring import (
    backbone_states,
    forward_logprobs,
    get_reward,
    head_logprobs_and_entropies,
    head_token_details,
    trl_attention_mask,
)
from .tensors import first_true_indices, truncate_response

EOS = "eos"
"""`stop_token_id=EOS` (the default) stops at the tokenizer's EOS token; None never stops early."""

GENERATION_STOPS = ("stop", "never")
"""Where generation stops. "stop" (default, TRL 0.14 and later): `PPOTrainer.__init__` makes the stop token
the policy's generation `eos_token_id`, so generation ends at it, and no stop token means no early stop.
"never" (TRL 0.11 to 0.13, whose trainer set the generation `eos_token_id` to None): every response runs to
`max_new_tokens` and only the truncation looks at the stop token."""

ATTENTION_MODES = ("trl", "tokenizer")

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

_run_lock = threading.Lock()  # one rollout at a time per process: the seed is global RNG state


@dataclass
class Rollout:
    """One rollout: detached CPU tensors named as in TRL, the decoded texts, and what produced them.

    Shapes: B samples, Q = context_length, G generated width, k top alternatives.
    `sequence_lengths` is TRL's, relative to the response: `first_true_indices(postprocessed_responses ==
    pad) - 1`. `score_positions` is the absolute index in `reward_query_responses` where the score was read.
    """

    prompts: list[str]                      # one per sample (a prompt repeats for several samples)
    prompt_index: list[int]                 # which input prompt each sample answers
    query_texts: list[str]                  # the strings tokenized, chat template included
    queries: torch.Tensor                   # (B, Q) left-padded with pad_token_id
    query_attention_mask: torch.Tensor      # (B, Q) the tokenizer's own mask
    sequences: torch.Tensor                 # (B, Q + G) the raw output.sequences
    responses: torch.Tensor                 # (B, G) sequences[:, Q:]
    query_responses: torch.Tensor           # (B, Q + G) cat(queries, responses): the value model's input
    postprocessed_responses: torch.Tensor   # (B, G) truncated after the stop token
    postprocessed_query_responses: torch.Tensor  # (B, Q + G) the reward model's input
    context_length: int
    sequence_lengths: torch.Tensor          # (B,)
    contain_eos_token: torch.Tensor         # (B,) bool
    logprobs: torch.Tensor                  # (B, G) TRL's rollout logprobs: sampled token under the processed (sampled-from) scores
    raw_logprobs: torch.Tensor              # (B, G) sampled token under the raw logits (output.logits)
    new_logprobs: torch.Tensor              # (B, G) training-time recompute, logits / (temperature + 1e-7)
    ref_logprobs: torch.Tensor              # (B, G) the same recompute with the reference model
    ranks: torch.Tensor                     # (B, G) 0 = the most likely token of the sampled-from distribution
    entropy: torch.Tensor                   # (B, G) nats, of the sampled-from distribution
    topk_ids: torch.Tensor                  # (B, G, k)
    topk_logprobs: torch.Tensor             # (B, G, k)
    values: torch.Tensor                    # (B, G) value model on query_responses, [:, Q - 1 : -1]
    scores: torch.Tensor                    # (B,) reward model on postprocessed_query_responses
    reward_query_responses: torch.Tensor    # (B, T') the ids the reward model saw
    reward_context_length: int
    score_positions: torch.Tensor           # (B,) absolute index in reward_query_responses
    pad_token_id: int
    eos_token_id: int | None
    stop_token_id: int | None
    attention: str
    chat_template_applied: bool
    settings: dict
    model_names: dict
    reward_tokenizer_is_policy: bool
    pad_equals_eos: bool
    tokens: dict[int, str]                  # id -> token string (policy tokenizer), for every id in the record
    reward_tokens: dict[int, str]           # the same for reward_query_responses (the reward tokenizer's)
    special_ids: list[int]
    response_texts: list[str]               # decoded without special tokens
    response_texts_raw: list[str]           # decoded with special tokens
    postprocessed_response_texts: list[str]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scores_true_mask: torch.Tensor | None = None  # (B,) the reward under the true mask, read where TRL reads
    scores_true_mask_at_end: torch.Tensor | None = None  # (B,) the same pass read at the true mask's last token
    generation_config: dict = field(default_factory=dict)  # the effective generation settings (see config_summary)
    inherited_processors: list[dict] = field(default_factory=list)  # processors from the model's config, measured
    engine: dict = field(default_factory=dict)  # which engine sampled: {"engine", "url", "served_model", ...}
    processed_logprobs: torch.Tensor | None = None  # (B, G) engine rollouts: the trainer's recompute of the
    # sampled-from distribution (temperature, top-k, top-p renormalised), to say which one the engine reports
    columns: dict[str, list] = field(default_factory=dict)  # per-sample data columns (an answer, verl's gts, a file's own)
    entropies: torch.Tensor | None = None   # (B, G) the trainer's entropy: full vocabulary at the recompute's
    # scaled logits, from the same pass as new_logprobs (TRL's `entropy_from_logits`; GRPO's entropy metric and
    # top_entropy_quantile mask, verl's actor/entropy). `entropy` is the sampled-from (top-k / top-p) distribution's.
    trainer: str = "ppo"                    # whose conventions the trainer-side fields follow (TRAINERS)
    conventions: dict[str, str] = field(default_factory=dict)  # field name -> its convention, e.g. new_logprobs
    eos_token_ids: list[int] = field(default_factory=list)  # TRL 1.16's eos_token_ids: tokenizer EOS, the model's
    # generation-config EOS ids, and (GRPO, a custom stop) the stop token: generation ends at them, the GRPO mask knows them

    @property
    def batch_size(self) -> int:
        return self.responses.shape[0]

    @property
    def response_width(self) -> int:
        return self.responses.shape[1]

    @property
    def padding_mask(self) -> torch.Tensor:
        """TRL's padding_mask (B, G): True after `sequence_lengths`, where logprobs become INVALID_LOGPROB."""
        return torch.arange(self.response_width).unsqueeze(0) > self.sequence_lengths.unsqueeze(1)

    def token(self, token_id: int) -> str:
        return self.tokens.get(int(token_id), f"<{int(token_id)}>")


def _response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """True for response tokens up to and including the first of `stop_ids` (the true, tokenizer-style mask)."""
    if not stop_ids:
        return torch.ones_like(responses, dtype=torch.bool)
    hits = torch.zeros_like(responses, dtype=torch.bool)
    for sid in stop_ids:
        hits |= responses == sid
    first = first_true_indices(hits)
    return torch.arange(responses.shape[1]).unsqueeze(0) <= first.unsqueeze(1)


def _resolve_stop(tokenizer, stop_token_id) -> int | None:
    """EOS -> the tokenizer's EOS id, None -> no truncation, text -> its single token's id, an id -> checked."""
    if stop_token_id == EOS:
        return tokenizer.eos_token_id
    if stop_token_id is None:
        return None
    if isinstance(stop_token_id, str):
        return stop_token_from_text(tokenizer, stop_token_id)
    if not isinstance(stop_token_id, int) or not 0 <= stop_token_id < len(tokenizer):
        raise InputError(f"stop_token_id {stop_token_id!r} is not a token id of the policy's tokenizer (0..{len(tokenizer) - 1}).")
    return stop_token_id


def stop_token_from_text(tokenizer, text: str) -> int:
    """The id of a stop token typed as text: it must be exactly one token of the tokenizer (a special token
    such as `<|im_end|>`, or text that encodes to a single token). Raises InputError otherwise."""
    if not isinstance(text, str) or text == "":
        raise InputError("The stop token is empty: type one token, e.g. '.' or the EOS token.")
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return vocab[text]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise InputError(f"The stop token {text!r} is {len(ids)} tokens for this tokenizer ({pieces}); a stop token must be one token.")
    return ids[0]


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


@torch.no_grad()
def run_rollout(
    models: Models,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int = 0,
    stop_token_id: int | str | None = EOS,
    use_chat_template: bool = True,
    attention: str = "trl",
    samples_per_prompt: int = 1,
    top_logprobs: int = 5,
    max_prompt_tokens: int | None = None,
    max_time: float | None = None,
    limits: Limits | None = None,
    compare_masks: bool = False,
    engine_url: str | None = None,
    ignore_generation_config: bool = False,
    generation_stop: str = "stop",
    trainer: str = "ppo",
    progress=None,
) -> Rollout:
    """Generate responses to `prompts` with the policy and compute every quantity TRL's PPO rollout computes.

    `stop_token_id`: EOS (the tokenizer's EOS, default), None (no early stop, no truncation), a token id, or the
    text of one token. As in TRL 0.14+, generation stops at it (`generation_stop="never"`: it never stops
    early, and only the truncation cuts at the stop token, as in TRL 0.11 to 0.13).
    `ignore_generation_config`: sample without the model's generation_config.json (its repetition penalty,
    n-gram bans, ...), which `generate` otherwise merges in; the processors it adds are measured either way.
    `attention`: "trl" (`ids != pad_token_id` everywhere, as TRL) or "tokenizer" (the true mask).
    `trainer`: "ppo" (TRL 0.x PPO's conventions, as above), "grpo" (TRL 1.16) or "verl": generation stops at
    every EOS id (`eos_token_ids`: the tokenizer's, the model's generation config's, a custom stop token) and
    the recompute sees GRPO's `cat(prompt_mask, completion_mask)`, whatever `attention` says.
    `limits` (default: `Limits.from_env()`) bounds the request; `max_prompt_tokens` and `max_time` default to
    its values. `engine_url` samples with an OpenAI-compatible server (e.g. vLLM) at that URL instead of
    in-process `generate` (see `inspector.engine`); the trainer-side passes stay in-process. `compare_masks` also scores the responses under the true attention mask where TRL's mask hides
    real tokens (one more reward pass), for the diagnostics. `progress(fraction, message)` is called between steps. The same seed gives the same rollout.
    Raises InputError (LimitError over a limit) for unusable prompts or settings.
    """
    limits = limits or Limits.from_env()
    if attention not in ATTENTION_MODES:
        raise InputError(f"attention must be one of {ATTENTION_MODES}, not {attention!r}.")
    if generation_stop not in GENERATION_STOPS:
        raise InputError(f"generation_stop must be one of {GENERATION_STOPS}, not {generation_stop!r}.")
    if trainer not in TRAINERS:
        raise InputError(f"trainer must be one of {TRAINERS}, not {trainer!r}.")
    if not isinstance(prompts, (list, tuple)):
        raise InputError("prompts must be a list of strings.")
    if not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise InputError(f"samples_per_prompt must be at least 1 (got {samples_per_prompt!r}).")
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens, do_sample=bool(do_sample), temperature=float(temperature),
        top_k=int(top_k), top_p=float(top_p), seed=int(seed),
    )
    settings.validate()
    limits.check_request(len(prompts), samples_per_prompt, settings.max_new_tokens)
    max_prompt_tokens = limits.max_prompt_tokens if max_prompt_tokens is None else max_prompt_tokens
    max_time = limits.max_time if max_time is None else max_time
    tok = models.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    stop = _resolve_stop(tok, stop_token_id)
    eos_ids = trainer_eos_token_ids(models, stop, trainer)
    if models.value is not None and not same_tokenizer(models.value_tokenizer, tok):
        raise ModelLoadError(value_vocabulary_message(models.names["policy"], models.names["value"]))

    def say(fraction, message):
        if progress:
            progress(fraction, message)

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    expanded = [p for p in prompts for _ in range(samples_per_prompt)]
    prompt_index = [i for i in range(len(prompts)) for _ in range(samples_per_prompt)]
    enc = encode_prompts(tok, expanded, use_chat_template, max_prompt_tokens)
    Q = enc.queries.shape[1]
    limits.check_batch(len(expanded), Q, settings.max_new_tokens)
    trl_mode = attention == "trl" and trainer == "ppo"

    with _run_lock:
        capture, engine = None, {"engine": "transformers.generate", "url": None, "served_model": None}
        ender = None if generation_stop != "stop" or stop is None else stop if trainer == "ppo" else eos_ids
        if engine_url:
            from .engine import sample_rollout

            say(0.05, f"Sampling {len(expanded)} x {max_new_tokens} tokens with the engine at {engine_url}")
            gen, capture, engine = sample_rollout(engine_url, models, enc, samples_per_prompt, settings,
                                                  top_logprobs=top_logprobs, timeout=max_time, stop_token_id=ender)
        else:
            say(0.05, f"Generating {len(expanded)} x {max_new_tokens} tokens")
            gen = generate(
                models.policy, enc.queries, pad, ender, settings,
                attention_mask=None if trl_mode else enc.attention_mask,
                top_logprobs=top_logprobs, max_time=max_time, use_model_config=not ignore_generation_config,
            )
        timings["generate"] = time.perf_counter() - clock
        rollout = _score_rollout(
            models, expanded, prompt_index, enc, gen, stop=stop, attention=attention if trainer == "ppo" else "tokenizer",
            temperature=settings.effective_temperature, say=say, timings=timings, compare_masks=compare_masks,
            trainer=trainer, eos_ids=eos_ids,
            settings=settings.to_dict() | {"samples_per_prompt": samples_per_prompt,
                                           "use_chat_template": use_chat_template, "top_logprobs": top_logprobs,
                                           "ignore_generation_config": bool(ignore_generation_config),
                                           "generation_stop": generation_stop},
            capture=capture,
        )
        rollout.engine = engine
    if trainer != "ppo":
        rollout.notes.append(
            f"Made for {trainer}: generation stopped at every EOS id ({rollout.eos_token_ids}) and the trainer-side "
            "passes saw TRL 1.16 GRPO's attention cat(prompt_mask, completion_mask) (`conventions` says so per "
            "field). The PPO views show these numbers as they are; for TRL 0.x PPO's, run again with Trainer = PPO."
        )
    unfinished = ~torch.isin(rollout.responses, torch.tensor(ender)).any(-1) if ender is not None else torch.ones(rollout.batch_size, dtype=torch.bool)
    if rollout.response_width < settings.max_new_tokens and unfinished.any():
        rollout.notes.append(
            f"Generation stopped at the time limit ({max_time:.0f} s) after {rollout.response_width} of "
            f"{settings.max_new_tokens} tokens; the responses are cut there."
        )
    if not enc.chat_template_applied and use_chat_template:
        rollout.notes.append("The policy tokenizer has no chat template: prompts were tokenized as plain text.")
    rollout.timings["total"] = time.perf_counter() - clock
    return rollout


@torch.no_grad()
def _score_rollout(models: Models, expanded: list[str], prompt_index: list[int], enc, gen, *, stop, attention: str,
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
    trl_mode = attention == "trl" and trainer == "ppo"
    sequences = gen.sequences
    responses = sequences[:, Q:]
    query_responses = torch.cat((enc.queries, responses), dim=1)
    postprocessed = truncate_response(stop, pad, responses) if stop is not None else responses.clone()
    postprocessed_qr = torch.cat((enc.queries, postprocessed), dim=1)
    sequence_lengths = first_true_indices(postprocessed == pad) - 1
    contain_eos = torch.any(postprocessed == eos, dim=-1) if eos is not None else torch.zeros(len(expanded), dtype=torch.bool)

    if trainer != "ppo":
        from .grpo import trl_completion_mask

        completion_mask = trl_completion_mask(responses, eos_ids, pad)[0].bool()
        qr_mask = pqr_mask = torch.cat((enc.attention_mask.bool(), completion_mask), dim=1)
    elif trl_mode:
        qr_mask = trl_attention_mask(query_responses, pad)
        pqr_mask = None
    else:
        generated = _response_mask(responses, [eos] if eos is not None else [])
        qr_mask = torch.cat((enc.attention_mask.bool(), generated), dim=1)
        kept = generated & _response_mask(responses, [stop] if stop is not None else [])
        pqr_mask = torch.cat((enc.attention_mask.bool(), kept), dim=1)

    device = next(models.policy.parameters()).device
    t0 = time.perf_counter()
    say(0.55, "Recomputing logprobs (training-time forward pass)")
    policy_backbone = getattr(models.policy, models.policy.base_model_prefix)
    hidden = backbone_states(policy_backbone, query_responses.to(device), qr_mask.to(device))
    # TRL 0.x PPO divides by temperature + 1e-7, TRL 1.16 GRPO's fused head by the temperature itself
    divisor = temperature + 1e-7 if trainer == "ppo" else temperature
    new_logprobs, entropies = head_logprobs_and_entropies(
        models.policy.get_output_embeddings(), hidden, responses.to(device), Q, divisor)
    new_logprobs, entropies = new_logprobs.cpu(), entropies.float().cpu()
    timings["recompute"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    captured = capture(hidden, responses) if capture else {}
    timings["engine_capture"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if models.reference_is_policy:
        ref_logprobs = new_logprobs.clone()
    else:
        say(0.65, "Reference model pass")
        ref_logprobs = forward_logprobs(
            models.reference, query_responses.to(device), pad, Q, temperature,
            attention_mask=qr_mask.to(device),
        ).cpu()
    timings["reference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(0.75, "Value model pass")
    value_backbone = getattr(models.value, models.value.base_model_prefix) if models.value is not None else None
    if models.value is None:  # no value model: every value is 0 (NO_VALUE_NOTE in the record)
        full_value = torch.zeros(query_responses.shape[0], query_responses.shape[1], 1)
    elif value_backbone is policy_backbone:
        full_value = models.value.score(hidden)  # the same backbone over the same ids and mask: reuse it
    else:
        full_value, _, _ = get_reward(models.value, query_responses.to(device), pad, Q, attention_mask=qr_mask.to(device))
    values = full_value[:, Q - 1 : -1].squeeze(-1).float().cpu()
    del hidden
    timings["value"] = time.perf_counter() - t0
    t0 = time.perf_counter()

    say(0.85, "Reward model pass")
    reward_same_tok = same_tokenizer(models.reward_tokenizer, tok)
    stopped = (postprocessed == stop).any(-1) if stop is not None else torch.zeros(len(expanded), dtype=torch.bool)
    response_texts = tok.batch_decode(postprocessed, skip_special_tokens=True)
    if reward_same_tok:
        reward_ids, reward_cl, reward_pad, reward_mask = postprocessed_qr, Q, pad, pqr_mask
    else:
        rtok = models.reward_tokenizer
        reward_ids, reward_cl, true_mask = _reencode_for(rtok, expanded, response_texts, stopped)
        reward_pad, reward_mask = rtok.pad_token_id, None if trl_mode else true_mask
    if reward_same_tok and models.value_is_reward:
        # Causal attention: the score logit at position p sees only positions <= p, and up to the score
        # position postprocessed_query_responses equals query_responses, ids and mask alike (the
        # truncation starts after the stop token). So the value pass already holds the score.
        if trl_mode:
            score_positions = first_true_indices(postprocessed_qr[:, Q:] == pad) - 1 + Q
        else:
            score_positions = first_true_indices(~pqr_mask[:, Q:]) - 1 + Q
        rows = torch.arange(len(expanded), device=full_value.device)
        scores = full_value[rows, score_positions.to(full_value.device)].squeeze(-1).float().cpu()
    else:
        _, scores, score_positions = get_reward(
            models.reward, reward_ids.to(device), reward_pad, reward_cl,
            attention_mask=None if reward_mask is None else reward_mask.to(device),
        )
        scores = scores.float().cpu()
    score_positions = score_positions.cpu()
    scores_true_mask = scores_true_mask_at_end = None
    hidden_by_trl = (enc.queries == pad) & enc.attention_mask.bool()
    if compare_masks and trl_mode and reward_same_tok and pad == eos and (hidden_by_trl.any() or contain_eos.any()):
        # TRL's mask hides real tokens here (EOS == pad): score the same ids once more under the true mask,
        # so that the diagnostics can say what the mask changes
        say(0.9, "Reward under the true attention mask")
        stops = [stop] if stop is not None else []
        kept = _response_mask(responses, [eos]) & _response_mask(responses, stops)
        true_mask = torch.cat((enc.attention_mask.bool(), kept), dim=1)
        # one pass, read twice: at TRL's position (the mask's effect alone) and at the last token the true mask
        # keeps, the EOS (the read position's effect on top)
        true_logits, true_scores, _ = get_reward(models.reward, postprocessed_qr.to(device), pad, Q,
                                                 attention_mask=true_mask.to(device))
        rows = torch.arange(len(expanded), device=true_logits.device)
        scores_true_mask = true_logits[rows, score_positions.to(true_logits.device)].squeeze(-1).float().cpu()
        scores_true_mask_at_end = true_scores.float().cpu()
    timings["reward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(0.95, "Decoding")
    ids_seen = torch.cat([sequences.flatten(), query_responses.flatten(), gen.topk_ids.flatten()]).unique().tolist()
    tokens = {i: tok.convert_ids_to_tokens(i) for i in ids_seen}
    if reward_same_tok:
        reward_tokens = {i: tokens[i] for i in reward_ids.unique().tolist()}
    else:
        rtok = models.reward_tokenizer
        reward_tokens = {i: rtok.convert_ids_to_tokens(i) for i in reward_ids.unique().tolist()}
    notes = list(models.notes)
    rollout = Rollout(
        prompts=expanded,
        prompt_index=prompt_index,
        query_texts=enc.texts,
        queries=enc.queries,
        query_attention_mask=enc.attention_mask,
        sequences=sequences,
        responses=responses,
        query_responses=query_responses,
        postprocessed_responses=postprocessed,
        postprocessed_query_responses=postprocessed_qr,
        context_length=Q,
        sequence_lengths=sequence_lengths,
        contain_eos_token=contain_eos,
        logprobs=gen.logprobs,
        raw_logprobs=gen.raw_logprobs,
        new_logprobs=new_logprobs,
        ref_logprobs=ref_logprobs,
        ranks=gen.ranks,
        entropy=gen.entropy,
        topk_ids=gen.topk_ids,
        topk_logprobs=gen.topk_logprobs,
        values=values,
        scores=scores,
        scores_true_mask=scores_true_mask,
        scores_true_mask_at_end=scores_true_mask_at_end,
        reward_query_responses=reward_ids,
        reward_context_length=reward_cl,
        score_positions=score_positions,
        pad_token_id=pad,
        eos_token_id=eos,
        stop_token_id=stop,
        attention=attention,
        chat_template_applied=enc.chat_template_applied,
        settings=settings,
        model_names=dict(models.names),
        reward_tokenizer_is_policy=reward_same_tok,
        pad_equals_eos=pad == eos,
        tokens=tokens,
        reward_tokens=reward_tokens,
        special_ids=sorted(set(tok.all_special_ids)),
        response_texts=tok.batch_decode(responses, skip_special_tokens=True),
        response_texts_raw=tok.batch_decode(responses, skip_special_tokens=False),
        postprocessed_response_texts=response_texts,
        notes=notes,
        timings=timings,
        generation_config=gen.generation_config,
        inherited_processors=processor_effects(gen.inherited, gen.logprobs, new_logprobs, ~_padding(sequence_lengths, responses.shape[1])),
        entropies=entropies,
        trainer=trainer,
        conventions=trainer_conventions(trainer),
        eos_token_ids=eos_ids,
    )
    for name, value in captured.items():
        setattr(rollout, name, value)
    timings["decoding"] = time.perf_counter() - t0
    return rollout


def trainer_eos_token_ids(models: Models, stop: int | None, trainer: str = "grpo") -> list[int]:
    """TRL 1.16's `eos_token_ids` for the loaded models: the tokenizer's EOS, then every id of the policy's
    generation_config.eos_token_id. Under a GRPO-family trainer a custom stop token joins them, as it does in
    TRL when it is set as the model's generation-config EOS (TRL's way to stop elsewhere): generation ends at
    it and the completion mask ends there, so the pad after it (the EOS when pad == EOS) is never taken for a
    sampled token."""
    from .grpo import model_eos_token_ids

    ids = model_eos_token_ids(models)
    if trainer != "ppo" and stop is not None and stop not in ids:
        ids.append(stop)
    return ids


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


@torch.no_grad()
def score_completions(
    models: Models,
    prompts: list[str],
    completions: list[str],
    *,
    ended: list[bool] | None = None,
    stop_token_id: int | str | None = EOS,
    use_chat_template: bool = True,
    attention: str = "trl",
    top_logprobs: int = 5,
    limits: Limits | None = None,
    source: str = "imported",
    samples_per_prompt: int = 1,
    columns: dict[str, list] | None = None,
    temperature: float = 1.0,
    trainer: str = "ppo",
    progress=None,
) -> Rollout:
    """A Rollout for completions produced elsewhere (a TRL completions table, a verl dump): the prompts are
    encoded as `run_rollout` encodes them, each completion is tokenized and followed by the EOS token where
    `ended` says it finished (default: all), and every pass runs on the loaded models. There was no sampling
    here: `logprobs` are the policy's logprobs under logits / `temperature` (give the temperature the
    completions were sampled at in training; the default 1.0 is TRL's GRPO and verl's default), `raw_logprobs`
    under the raw logits, and `new_logprobs` the recompute with logits / (temperature + 1e-7) as TRL's.
    `use_chat_template=False` tokenizes each prompt as the text it is (a verl dump's prompt, already rendered
    by the trainer's chat template). `samples_per_prompt`: consecutive rows that answer one prompt (a GRPO
    group). `columns` (one list per name, one value per completion) are kept on the record. `trainer`: whose
    conventions the recompute follows (see `run_rollout`).
    Raises InputError for mismatched or empty inputs and LimitError over a limit.
    """
    limits = limits or Limits.from_env()
    if attention not in ATTENTION_MODES:
        raise InputError(f"attention must be one of {ATTENTION_MODES}, not {attention!r}.")
    if len(prompts) != len(completions):
        raise InputError(f"{len(prompts)} prompts but {len(completions)} completions: they must pair up.")
    if not all(isinstance(c, str) for c in completions):
        raise InputError("Every completion must be text.")
    ended = [True] * len(prompts) if ended is None else list(ended)
    if len(ended) != len(prompts):
        raise InputError("`ended` must give one flag per completion.")
    limits.check_request(len(prompts), 1, 1)
    if not isinstance(samples_per_prompt, int) or samples_per_prompt < 1 or len(prompts) % samples_per_prompt:
        raise InputError(f"samples_per_prompt={samples_per_prompt!r} does not divide the {len(prompts)} completions into groups.")
    columns = dict(columns or {})
    for name, values in columns.items():
        if len(values) != len(prompts):
            raise InputError(f"Column {name!r} has {len(values)} values for {len(prompts)} completions.")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise InputError(f"temperature must be above 0 (got {temperature!r}): give the training temperature.")
    temperature = float(temperature)
    if trainer not in TRAINERS:
        raise InputError(f"trainer must be one of {TRAINERS}, not {trainer!r}.")
    tok = models.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    stop = _resolve_stop(tok, stop_token_id)
    eos_ids = trainer_eos_token_ids(models, stop, trainer)
    enc = encode_prompts(tok, list(prompts), use_chat_template, limits.max_prompt_tokens)
    ids = [tok(c, add_special_tokens=False)["input_ids"] + ([eos] if e and eos is not None else [])
           for c, e in zip(completions, ended)]
    width = max(1, max(map(len, ids)))
    if width > limits.max_new_tokens:
        raise limits._over("max_new_tokens", width, "The longest completion, in tokens,")
    limits.check_batch(len(prompts), enc.queries.shape[1], width)
    responses = torch.full((len(ids), width), pad, dtype=torch.long)
    for i, row in enumerate(ids):
        responses[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    sequences = torch.cat((enc.queries, responses), dim=1)
    Q = enc.queries.shape[1]
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    say = (lambda f, m: progress(f, m)) if progress else (lambda f, m: None)
    with _run_lock:
        device = next(models.policy.parameters()).device
        if trainer != "ppo":
            from .grpo import trl_completion_mask

            mask = torch.cat((enc.attention_mask.bool(), trl_completion_mask(responses, eos_ids, pad)[0].bool()), 1)
        elif attention == "trl":
            mask = trl_attention_mask(sequences, pad)
        else:
            mask = torch.cat((enc.attention_mask.bool(), _response_mask(responses, [eos] if eos is not None else [])), 1)
        say(0.1, "Policy pass over the imported completions")
        backbone = getattr(models.policy, models.policy.base_model_prefix)
        hidden = backbone_states(backbone, sequences.to(device), mask.to(device))
        details = head_token_details(models.policy.get_output_embeddings(), hidden, responses.to(device), Q,
                                     top_k=top_logprobs, temperature=temperature)
        del hidden
        gen = Generation(sequences=sequences, logprobs=details["logprobs"], raw_logprobs=details["raw_logprobs"],
                         ranks=details["ranks"], entropy=details["entropy"], topk_ids=details["topk_ids"],
                         topk_logprobs=details["topk_logprobs"])
        rollout = _score_rollout(
            models, list(prompts), [i // samples_per_prompt for i in range(len(prompts))], enc, gen, stop=stop,
            attention=attention if trainer == "ppo" else "tokenizer", temperature=temperature, say=say, timings=timings,
            trainer=trainer, eos_ids=eos_ids,
            settings={"source": source, "do_sample": False, "temperature": temperature,
                      "effective_temperature": temperature,
                      "top_k": 0, "top_p": 1.0, "max_new_tokens": width, "samples_per_prompt": samples_per_prompt,
                      "use_chat_template": use_chat_template, "top_logprobs": top_logprobs, "ended": ended},
        )
    rollout.notes.append(
        f"Imported completions ({source}): nothing was sampled here, so the sampling-time logprobs are the "
        f"policy's logprobs at the training temperature given ({temperature:g}), and the scores come from the "
        "loaded reward model."
    )
    rollout.columns = columns
    rollout.timings["total"] = time.perf_counter() - clock
    return rollout
