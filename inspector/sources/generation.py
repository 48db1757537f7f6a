"""Prompts to left-padded queries, and one `generate` call that records the per-token logprobs as it samples.

The capture keeps, per generated token, the sampled token's logprob, its rank, the entropy and the top-k
alternatives of the distribution it was drawn from: (B, G, k) numbers instead of the (B, G, V) score
tensor that `output_scores=True` keeps (about 400 MB for 8 x 256 tokens with a 49k vocabulary).

In transformers 5, logits processors passed to `generate` run *before* the temperature / top-k / top-p
warpers it builds itself. To record the distribution that is really sampled from, the whole chain that
`generate` would build from the effective settings (the page's merged with the model's
generation_config.json: repetition penalty, n-gram bans, ... then the warpers) is built here with
transformers' own `_get_logits_processor`, and `generate` gets a neutral config plus that chain between two
capture points:
  raw logits -> [capture raw] -> the chain, in transformers' order -> [capture processed] -> sampling.
The processed capture equals `output.scores`; the raw capture equals `output.logits`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..errors import InputError
from ..trainers.scoring import trl_attention_mask
from ..tensors import entropy_from_logprobs


@dataclass(frozen=True)
class SamplingSettings:
    """The settings generation really ran with. Nothing is left to `generate`'s own defaults."""

    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    @property
    def effective_temperature(self) -> float:
        """The temperature the sampling distribution was divided by: 1.0 for greedy decoding."""
        return self.temperature if self.do_sample else 1.0

    def to_dict(self) -> dict:
        return asdict(self) | {"effective_temperature": self.effective_temperature}

    def validate(self) -> None:
        """Raise InputError for settings that cannot sample."""
        if not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be a whole number from 0 to 2**63 - 1 (got {self.seed}).")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a whole number of at least 1, not {self.max_new_tokens!r}.")
        if self.do_sample:
            if not self.temperature > 0:
                raise InputError(
                    f"temperature must be above 0 when sampling (got {self.temperature}); "
                    "turn sampling off for greedy decoding."
                )
            if not 0 < self.top_p <= 1:
                raise InputError(f"top_p must be in (0, 1] (got {self.top_p}); 1.0 turns it off.")
            if self.top_k < 0:
                raise InputError(f"top_k must be 0 (off) or a positive number of tokens (got {self.top_k}).")


@dataclass
class EncodedPrompts:
    """Queries ready for generation. queries: (B, Q) left-padded with the pad id; attention_mask: the
    tokenizer's own (B, Q) mask; texts: the exact strings that were tokenized (after the chat template)."""

    queries: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str]
    chat_template_applied: bool


def encode_prompts(tokenizer, prompts: list[str], use_chat_template: bool = True, max_prompt_tokens: int | None = None) -> EncodedPrompts:
    """Turn plain-string prompts into LEFT-padded query ids.

    With `use_chat_template` (and a tokenizer that has one) each prompt becomes a user turn with the
    generation prompt added. Raises InputError on an empty list, an empty prompt or a prompt over
    `max_prompt_tokens`.
    """
    if not prompts:
        raise InputError("There are no prompts: give at least one non-empty prompt (one per line in the app).")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"Prompt {i + 1} is not text ({type(prompt).__name__}): prompts are strings.")
        if not prompt.strip():
            raise InputError(f"Prompt {i + 1} is empty: remove it or write something.")
        if max_prompt_tokens is not None and len(prompt) > 8 * max_prompt_tokens:
            # no tokenizer packs more than a few characters per token: refuse before tokenizing megabytes
            raise InputError(
                f"Prompt {i + 1} is {len(prompt):,} characters long, far over the limit of {max_prompt_tokens} prompt "
                "tokens. Shorten it."
            )
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"Prompt {i + 1} is not valid Unicode text (it holds a lone surrogate).") from None
    has_template = bool(getattr(tokenizer, "chat_template", None))
    applied = use_chat_template and has_template
    if applied:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    else:
        texts = list(prompts)
    # the chat template already wrote the special tokens; a plain prompt gets the tokenizer's own (e.g. BOS)
    ids = [tokenizer(t, add_special_tokens=not applied)["input_ids"] for t in texts]
    for i, row in enumerate(ids):
        if not row:
            raise InputError(f"Prompt {i + 1} encodes to no tokens.")
        if max_prompt_tokens is not None and len(row) > max_prompt_tokens:
            raise InputError(
                f"Prompt {i + 1} is {len(row)} tokens long (after the chat template); the limit is "
                f"{max_prompt_tokens} prompt tokens. Shorten it."
            )
    width = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id
    queries = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        queries[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return EncodedPrompts(queries=queries, attention_mask=mask, texts=texts, chat_template_applied=applied)


class _Capture:
    """A logits processor that records, at each step, what the distribution it sees gave the sampled token.

    The sampled token is only known at the next step (it is the last column of `input_ids` then), so the
    log-softmax of one step is kept until the next call, or until `finish` with the final sequences.
    """

    def __init__(self, top_k: int = 0, detail: bool = False):
        self.top_k = top_k
        self.detail = detail
        self._prev: torch.Tensor | None = None  # (B, V) log-softmax of the last step (detail) or its scores
        self._lse: torch.Tensor | None = None  # (B, 1) logsumexp of those scores, without detail
        self.logprobs: list[torch.Tensor] = []
        self.ranks: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []
        self.topk_logprobs: list[torch.Tensor] = []
        self.topk_ids: list[torch.Tensor] = []

    def _take(self, tokens: torch.Tensor) -> None:
        chosen = self._prev.gather(1, tokens.unsqueeze(1))  # (B, 1)
        if not self.detail:
            chosen = chosen - self._lse
        self.logprobs.append(chosen.squeeze(1).cpu())
        if self.detail:
            self.ranks.append((self._prev > chosen).sum(1).cpu())

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._prev is not None:
            self._take(input_ids[:, -1])
        if not self.detail:
            # only the sampled token's logprob is wanted: keep a copy of the scores (a processor after this
            # point may write into its input) and their logsumexp, not a whole log-softmax
            self._prev = scores.float().clone()
            self._lse = torch.logsumexp(self._prev, dim=-1, keepdim=True)
            return scores
        logp = torch.log_softmax(scores.float(), dim=-1)
        self._prev = logp
        self.entropy.append(entropy_from_logprobs(logp).cpu())
        if self.top_k:
            values, ids = logp.topk(self.top_k, dim=-1)
            self.topk_logprobs.append(values.cpu())
            self.topk_ids.append(ids.cpu())
        return scores

    def finish(self, responses: torch.Tensor) -> None:
        if self._prev is not None and len(self.logprobs) < responses.shape[1]:
            self._take(responses[:, len(self.logprobs)].to(self._prev.device))
        self._prev = None

    def stacked(self, name: str) -> torch.Tensor:
        return torch.stack(getattr(self, name), dim=1)


@dataclass
class Generation:
    """What one `generate` call produced. sequences: the raw (B, Q + G) `output.sequences`; the rest (B, G)
    or (B, G, k): `logprobs` under the processed (sampled-from) distribution, `raw_logprobs` under the
    raw logits, and the rank, entropy and top-k alternatives of the processed distribution.
    `generation_config`: the effective settings (plain data); `inherited`: one entry per logits processor the
    model's generation_config.json added, with `without` (B, G), the sampled token's logprob had that processor
    been left out (and an entry "all inherited" when there are several)."""

    sequences: torch.Tensor
    logprobs: torch.Tensor
    raw_logprobs: torch.Tensor
    ranks: torch.Tensor
    entropy: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    generation_config: dict = field(default_factory=dict)
    inherited: list[dict] = field(default_factory=list)


# generation_config fields that add a logits processor, and the processor each adds (transformers 5)
PROCESSOR_FIELDS = {
    "repetition_penalty": "RepetitionPenaltyLogitsProcessor", "no_repeat_ngram_size": "NoRepeatNGramLogitsProcessor",
    "bad_words_ids": "NoBadWordsLogitsProcessor", "min_length": "MinLengthLogitsProcessor",
    "min_new_tokens": "MinNewTokensLengthLogitsProcessor", "forced_bos_token_id": "ForcedBOSTokenLogitsProcessor",
    "forced_eos_token_id": "ForcedEOSTokenLogitsProcessor", "remove_invalid_values": "InfNanRemoveLogitsProcessor",
    "exponential_decay_length_penalty": "ExponentialDecayLengthPenalty",
    "suppress_tokens": "SuppressTokensLogitsProcessor", "begin_suppress_tokens": "SuppressTokensAtBeginLogitsProcessor",
    "sequence_bias": "SequenceBiasLogitsProcessor", "guidance_scale": "UnbatchedClassifierFreeGuidanceLogitsProcessor",
    "temperature": "TemperatureLogitsWarper", "top_h": "TopHLogitsWarper", "top_k": "TopKLogitsWarper",
    "top_p": "TopPLogitsWarper", "min_p": "MinPLogitsWarper", "typical_p": "TypicalLogitsWarper",
    "epsilon_cutoff": "EpsilonLogitsWarper", "eta_cutoff": "EtaLogitsWarper",
    "watermarking_config": "WatermarkLogitsProcessor", "renormalize_logits": "LogitNormalization",
}
SHOWN_FIELDS = ("max_new_tokens", "do_sample", "num_beams", "eos_token_id", "pad_token_id", *PROCESSOR_FIELDS)
PAGE_FIELDS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "num_beams")
ALL_INHERITED = "all inherited"


def effective_generation_config(model, settings: SamplingSettings, pad_token_id: int, stop_token_id: int | None,
                                use_model_config: bool = True):
    """The settings `generate` samples with: the page's (`settings`) merged with the model's
    generation_config.json as transformers merges them (unset fields from the model, then the library
    defaults), and, as TRL 0.12+ does, the stop token as the generation `eos_token_id` (None: no early stop).
    With `use_model_config=False` the model's file is left out (library defaults only).
    Returns (GenerationConfig, names of the fields taken from the model that add a logits processor)."""
    import copy

    from transformers import GenerationConfig

    page = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample, "num_beams": 1}
    if settings.do_sample:
        page |= {"temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p}
    config = GenerationConfig(**page)
    if use_model_config:
        config, _ = model._prepare_generation_config(config)
    else:
        config = copy.deepcopy(config)
        config.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    config.eos_token_id = stop_token_id
    config.pad_token_id = pad_token_id
    defaults = GenerationConfig._get_default_generation_params()
    inherited = []
    if use_model_config:
        own = model.generation_config
        for name in PROCESSOR_FIELDS:
            value = getattr(own, name, None)
            if name not in page and value is not None and value != defaults.get(name):
                inherited.append(name)
    return config, inherited


def config_summary(config, inherited: list[str], use_model_config: bool) -> dict:
    """The effective settings as plain data: every field that shapes sampling, and where it came from."""
    values = {}
    for name in SHOWN_FIELDS:
        value = getattr(config, name, None)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        values[name] = value
    return {"values": values, "from_model": list(inherited), "model_config_used": bool(use_model_config)}


class _Without:
    """A logits processor placed before the real chain that runs the chain again on the raw scores once per
    inherited processor, leaving that one out, and records the sampled token's logprob each time (no model
    pass: the processors work on the scores of the step)."""

    def __init__(self, chain: list, leave_out: dict[str, list[int]]):
        self.chain = chain
        self.leave_out = leave_out
        self.captures = {name: _Capture() for name in leave_out}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for name, skipped in self.leave_out.items():
            out = scores.clone()
            for i, processor in enumerate(self.chain):
                if i not in skipped:
                    out = processor(input_ids, out)
            self.captures[name](input_ids, out)
        return scores


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    queries: torch.Tensor,
    pad_token_id: int,
    eos_token_id: int | list[int] | None,
    settings: SamplingSettings,
    attention_mask: torch.Tensor | None = None,
    top_logprobs: int = 5,
    max_time: float | None = None,
    use_model_config: bool = True,
) -> Generation:
    """One `model.generate` over `queries` (B, Q) with the per-token capture.

    `eos_token_id` is where generation stops (TRL 0.12+: the stop token; None: never early). The logits
    processors are those `generate` itself would build from `effective_generation_config` (the model's
    generation_config.json included unless `use_model_config=False`), built here once and passed in order
    between the raw and the processed capture; `generate` is given a neutral config so that it adds none.
    Without `attention_mask` the model sees TRL's mask (`queries != pad`, pad ids replaced by 0) exactly as
    TRL's `generate` utility builds it, so the query side of `sequences` holds 0 where the pad ids were.
    With one, the queries go in unchanged under that mask.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    settings.validate()
    device = next(model.parameters()).device
    if attention_mask is None:
        attention_mask = trl_attention_mask(queries, pad_token_id)
        input_ids = torch.masked_fill(queries, ~attention_mask, 0)
    else:
        input_ids = queries
    input_ids, attention_mask = input_ids.to(device), attention_mask.long().to(device)
    config, inherited = effective_generation_config(model, settings, pad_token_id, eos_token_id, use_model_config)
    chain, entries, leave_out = _processor_chain(model, config, inherited, input_ids, attention_mask, device)
    raw, processed = _Capture(), _Capture(top_k=top_logprobs, detail=True)
    without = _Without(chain, leave_out) if leave_out else None
    processors = [raw] + ([without] if without else []) + chain + [processed]
    neutral = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, num_beams=1,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, max_time=max_time, return_dict_in_generate=True,
        **({"temperature": 1.0, "top_k": 0, "top_p": 1.0} if settings.do_sample else {}),
    )
    own = model.generation_config
    model.generation_config = GenerationConfig()  # nothing more merged in: the chain above is complete
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(settings.seed)
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=neutral,
                logits_processor=LogitsProcessorList(processors),
            )
    finally:
        model.generation_config = own
    sequences = output.sequences.cpu()
    responses = sequences[:, queries.shape[1]:]
    if responses.shape[1] == 0:
        raise InputError("Generation produced no token: raise max_new_tokens or max_time.")
    raw.finish(responses)
    processed.finish(responses)
    for name, capture in (without.captures.items() if without else ()):
        capture.finish(responses)
    named = {e["setting"]: e for e in entries}
    results = [{k: v for k, v in named.get(name, {"setting": name, "value": None, "processor": None}).items()
                if k != "positions"} | {"without": capture.stacked("logprobs")}
               for name, capture in (without.captures.items() if without else ())]
    return Generation(
        sequences=sequences,
        logprobs=processed.stacked("logprobs"),
        raw_logprobs=raw.stacked("logprobs"),
        ranks=processed.stacked("ranks"),
        entropy=processed.stacked("entropy"),
        topk_ids=processed.stacked("topk_ids") if top_logprobs else torch.zeros(responses.shape + (0,), dtype=torch.long),
        topk_logprobs=processed.stacked("topk_logprobs") if top_logprobs else torch.zeros(responses.shape + (0,)),
        generation_config=config_summary(config, inherited, use_model_config),
        inherited=results,
    )


def _processor_chain(model, config, inherited: list[str], input_ids, attention_mask, device):
    """The logits processors `generate` would build from `config`, in its order; the inherited settings found in
    the chain ({"setting", "value", "processor", "positions"} each); and which positions to leave out to
    measure each one (and all of them together, when there are several)."""
    from transformers import LogitsProcessorList

    prepared = __import__("copy").deepcopy(config)
    model._prepare_special_tokens(prepared, True, device=device)
    chain = list(model._get_logits_processor(
        generation_config=prepared, input_ids_seq_length=input_ids.shape[1], encoder_input_ids=input_ids,
        logits_processor=LogitsProcessorList(), device=device, model_kwargs={"attention_mask": attention_mask},
    ))
    entries = []
    for name in inherited:
        positions = [i for i, p in enumerate(chain) if type(p).__name__ == PROCESSOR_FIELDS[name]]
        if positions:
            entries.append({"setting": name, "value": _plain_value(getattr(config, name)),
                            "processor": PROCESSOR_FIELDS[name], "positions": positions})
    leave_out = {e["setting"]: e["positions"] for e in entries}
    if len(entries) > 1:
        leave_out[ALL_INHERITED] = [i for e in entries for i in e["positions"]]
    return chain, entries, leave_out


def _plain_value(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value
