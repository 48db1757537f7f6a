"""`run_rollout` samples completions (in-process `generate` or a serving engine) and then runs every scoring
pass to fill one `Rollout`; `score_completions` runs the same passes over completions read from a file."""

from __future__ import annotations

import threading
import time

import torch

from ..errors import InputError, ModelLoadError
from ..limits import Limits
from ..models import Models, same_tokenizer, value_vocabulary_message
from ..record.rollout import EOS, Rollout
from ..trainers.scoring import backbone_states, head_token_details, trl_attention_mask
from .generation import Generation, SamplingSettings, encode_prompts, generate
from ..trainers.grpo import trl_completion_mask
from .passes import TRAINERS, response_mask, score_rollout, trainer_eos_token_ids

GENERATION_STOPS = ("stop", "never")
"""Where generation stops. "stop" (default, TRL 0.14 and later): `PPOTrainer.__init__` makes the stop token
the policy's generation `eos_token_id`, so generation ends at it, and no stop token means no early stop.
"never" (TRL 0.11 to 0.13, whose trainer set the generation `eos_token_id` to None): every response runs to
`max_new_tokens` and only the truncation looks at the stop token."""

ATTENTION_MODES = ("trl", "tokenizer")

_run_lock = threading.Lock()  # one rollout at a time per process: the seed is global RNG state


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
    in-process `generate` (see `inspector.sources.engine`); the trainer-side passes stay in-process. `compare_masks` also scores the responses under the true attention mask where TRL's mask hides
    real tokens (one more reward pass), for the diagnostics. `progress(fraction, message)` is called between steps. The same seed gives the same rollout.
    Raises InputError (LimitError over a limit) for unusable prompts or settings.
    """
    limits = limits or Limits.from_env()
    _check_run(prompts, attention, generation_stop, samples_per_prompt, trainer)
    settings = _sampling_settings(max_new_tokens, do_sample, temperature, top_k, top_p, seed)
    limits.check_request(len(prompts), samples_per_prompt, settings.max_new_tokens)
    max_prompt_tokens = limits.max_prompt_tokens if max_prompt_tokens is None else max_prompt_tokens
    max_time = limits.max_time if max_time is None else max_time
    tok = models.tokenizer
    stop = _resolve_stop(tok, stop_token_id)
    eos_ids = trainer_eos_token_ids(models, stop, trainer)
    if models.value is not None and not same_tokenizer(models.value_tokenizer, tok):
        raise ModelLoadError(value_vocabulary_message(models.names["policy"], models.names["value"]))
    say = (lambda f, m: progress(f, m)) if progress else (lambda f, m: None)
    timings, clock = {}, time.perf_counter()
    prompt_index = [i for i in range(len(prompts)) for _ in range(samples_per_prompt)]
    expanded = [prompts[i] for i in prompt_index]
    enc = encode_prompts(tok, expanded, use_chat_template, max_prompt_tokens)
    limits.check_batch(len(expanded), enc.queries.shape[1], settings.max_new_tokens)
    with _run_lock:
        ender = None if generation_stop != "stop" or stop is None else stop if trainer == "ppo" else eos_ids
        gen, capture, engine = _sample(models, enc, settings, engine_url, say, samples_per_prompt=samples_per_prompt,
                                       stop=ender, trl_mode=attention == "trl" and trainer == "ppo",
                                       top_logprobs=top_logprobs, max_time=max_time,
                                       ignore_generation_config=ignore_generation_config)
        timings["generate"] = time.perf_counter() - clock
        rollout = score_rollout(
            models, expanded, prompt_index, enc, gen, stop=stop, attention=attention if trainer == "ppo" else "tokenizer",
            temperature=settings.effective_temperature, say=say, timings=timings, compare_masks=compare_masks,
            trainer=trainer, eos_ids=eos_ids,
            settings=settings.to_dict() | {"samples_per_prompt": samples_per_prompt, "use_chat_template": use_chat_template,
                                           "top_logprobs": top_logprobs,
                                           "ignore_generation_config": bool(ignore_generation_config),
                                           "generation_stop": generation_stop},
            capture=capture,
        )
        rollout.engine = engine
    rollout.notes.extend(_run_notes(rollout, enc, settings, ender, max_time, use_chat_template, trainer))
    rollout.timings["total"] = time.perf_counter() - clock
    return rollout


def _check_run(prompts, attention: str, generation_stop: str, samples_per_prompt, trainer: str) -> None:
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


def _sampling_settings(max_new_tokens, do_sample, temperature, top_k, top_p, seed) -> SamplingSettings:
    settings = SamplingSettings(max_new_tokens=max_new_tokens, do_sample=bool(do_sample), temperature=float(temperature),
                                top_k=int(top_k), top_p=float(top_p), seed=int(seed))
    settings.validate()
    return settings


def _sample(models: Models, enc, settings: SamplingSettings, engine_url: str | None, say, *, samples_per_prompt: int,
            stop: int | list[int] | None, trl_mode: bool, top_logprobs: int, max_time: float, ignore_generation_config: bool):
    """The completions and their per-token capture, from the engine at `engine_url` or from in-process
    `generate`. Returns (Generation, the engine's capture of hidden-state fields or None, which engine)."""
    n = enc.queries.shape[0]
    if engine_url:
        from .engine import sample_rollout

        say(0.05, f"Sampling {n} x {settings.max_new_tokens} tokens with the engine at {engine_url}")
        return sample_rollout(engine_url, models, enc, samples_per_prompt, settings, top_logprobs=top_logprobs,
                              timeout=max_time, stop_token_id=stop)
    say(0.05, f"Generating {n} x {settings.max_new_tokens} tokens")
    gen = generate(
        models.policy, enc.queries, models.tokenizer.pad_token_id, stop, settings,
        attention_mask=None if trl_mode else enc.attention_mask,
        top_logprobs=top_logprobs, max_time=max_time, use_model_config=not ignore_generation_config,
    )
    return gen, None, {"engine": "transformers.generate", "url": None, "served_model": None}


def _run_notes(rollout: Rollout, enc, settings: SamplingSettings, stop: int | list[int] | None, max_time: float,
               use_chat_template: bool, trainer: str) -> list[str]:
    """What the record should say about the run itself: whose conventions it follows, a time limit that cut the
    responses, a missing template."""
    notes = []
    if trainer != "ppo":
        notes.append(
            f"Made for {trainer}: generation stopped at every EOS id ({rollout.eos_token_ids}) and the trainer-side "
            "passes saw TRL 1.16 GRPO's attention cat(prompt_mask, completion_mask) (`conventions` says so per "
            "field). The PPO views show these numbers as they are; for TRL 0.x PPO's, run again with Trainer = PPO."
        )
    unfinished = ~torch.isin(rollout.responses, torch.tensor(stop)).any(-1) if stop is not None else torch.ones(rollout.batch_size, dtype=torch.bool)
    if rollout.response_width < settings.max_new_tokens and unfinished.any():
        notes.append(
            f"Generation stopped at the time limit ({max_time:.0f} s) after {rollout.response_width} of "
            f"{settings.max_new_tokens} tokens; the responses are cut there."
        )
    if not enc.chat_template_applied and use_chat_template:
        notes.append("The policy tokenizer has no chat template: prompts were tokenized as plain text.")
    return notes


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
    ended, columns = _check_completions(prompts, completions, ended, attention, samples_per_prompt, columns,
                                        temperature, limits, trainer)
    temperature = float(temperature)
    tok = models.tokenizer
    stop = _resolve_stop(tok, stop_token_id)
    eos_ids = trainer_eos_token_ids(models, stop, trainer)
    enc = encode_prompts(tok, list(prompts), use_chat_template, limits.max_prompt_tokens)
    responses = _completion_ids(tok, completions, ended, limits)
    width = responses.shape[1]
    limits.check_batch(len(prompts), enc.queries.shape[1], width)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    say = (lambda f, m: progress(f, m)) if progress else (lambda f, m: None)
    with _run_lock:
        gen = _imported_generation(models, enc, responses, eos_ids, attention=attention, trainer=trainer,
                                   temperature=temperature, top_logprobs=top_logprobs, say=say)
        rollout = score_rollout(
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


def _check_completions(prompts, completions, ended, attention: str, samples_per_prompt, columns, temperature,
                       limits: Limits, trainer: str) -> tuple[list[bool], dict]:
    """`score_completions`' arguments checked; returns `ended` (default: all) and `columns` as lists."""
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
    if trainer not in TRAINERS:
        raise InputError(f"trainer must be one of {TRAINERS}, not {trainer!r}.")
    return ended, columns


def _completion_ids(tok, completions: list[str], ended: list[bool], limits: Limits) -> torch.Tensor:
    """The completions as response ids (B, G), right-padded, each followed by the EOS where it ended."""
    pad, eos = tok.pad_token_id, tok.eos_token_id
    ids = [tok(c, add_special_tokens=False)["input_ids"] + ([eos] if e and eos is not None else [])
           for c, e in zip(completions, ended)]
    width = max(1, max(map(len, ids)))
    if width > limits.max_new_tokens:
        raise limits._over("max_new_tokens", width, "The longest completion, in tokens,")
    responses = torch.full((len(ids), width), pad, dtype=torch.long)
    for i, row in enumerate(ids):
        responses[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return responses


def _imported_generation(models: Models, enc, responses: torch.Tensor, eos_ids: list[int], *, attention: str,
                         trainer: str, temperature: float, top_logprobs: int, say) -> Generation:
    """What sampling would have recorded for completions made elsewhere, from one policy pass over them: each
    token's logprob under logits / `temperature` (and the raw logits), its rank, the entropy and the top-k."""
    tok = models.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    Q = enc.queries.shape[1]
    sequences = torch.cat((enc.queries, responses), dim=1)
    device = next(models.policy.parameters()).device
    if trainer != "ppo":
        mask = torch.cat((enc.attention_mask.bool(), trl_completion_mask(responses, eos_ids, pad)[0].bool()), 1)
    elif attention == "trl":
        mask = trl_attention_mask(sequences, pad)
    else:
        mask = torch.cat((enc.attention_mask.bool(), response_mask(responses, [eos] if eos is not None else [])), 1)
    say(0.1, "Policy pass over the imported completions")
    backbone = getattr(models.policy, models.policy.base_model_prefix)
    hidden = backbone_states(backbone, sequences.to(device), mask.to(device))
    details = head_token_details(models.policy.get_output_embeddings(), hidden, responses.to(device), Q,
                                 top_k=top_logprobs, temperature=temperature)
    del hidden
    return Generation(sequences=sequences, logprobs=details["logprobs"], raw_logprobs=details["raw_logprobs"],
                      ranks=details["ranks"], entropy=details["entropy"], topk_ids=details["topk_ids"],
                      topk_logprobs=details["topk_logprobs"])
