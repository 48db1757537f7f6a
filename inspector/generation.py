"""Prompts to left-padded queries, and one `generate` call that records the per-token logprobs as it samples.

The capture keeps, per generated token, the sampled token's logprob, its rank, the entropy and the top-k
alternatives of the distribution it was drawn from: (B, G, k) numbers instead of the (B, G, V) score
tensor that `output_scores=True` keeps (about 400 MB for 8 x 256 tokens with a 49k vocabulary).

In transformers 5, logits processors passed to `generate` run *before* the temperature / top-k / top-p
warpers it builds itself. To record the distribution that is really sampled from, `generate` here is given
neutral warper settings and the warpers are passed explicitly, between two capture points:
  raw logits -> [capture raw] -> temperature -> top-k -> top-p -> [capture processed] -> sampling.
The processed capture equals `output.scores`; the raw capture equals `output.logits`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import InputError
from .scoring import trl_attention_mask
from .tensors import entropy_from_logprobs


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
            # only the sampled token's logprob is wanted: keep the scores (the warpers after this point return
            # new tensors, they never write into it) and their logsumexp, not a whole log-softmax
            self._prev = scores.float()
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
    raw logits, and the rank, entropy and top-k alternatives of the processed distribution."""

    sequences: torch.Tensor
    logprobs: torch.Tensor
    raw_logprobs: torch.Tensor
    ranks: torch.Tensor
    entropy: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor


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
) -> Generation:
    """One `model.generate` over `queries` (B, Q) with the per-token capture.

    Without `attention_mask` the model sees TRL's mask (`queries != pad`, pad ids replaced by 0) exactly as
    TRL's `generate` utility builds it, so the query side of `sequences` holds 0 where the pad ids were.
    With one, the queries go in unchanged under that mask.
    """
    from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    settings.validate()
    device = next(model.parameters()).device
    if attention_mask is None:
        attention_mask = trl_attention_mask(queries, pad_token_id)
        input_ids = torch.masked_fill(queries, ~attention_mask, 0)
    else:
        input_ids = queries
    raw, processed = _Capture(), _Capture(top_k=top_logprobs, detail=True)
    processors = [raw]
    if settings.do_sample:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            processors.append(TopKLogitsWarper(top_k=settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=settings.top_p))
    processors.append(processed)
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=None,
        do_sample=settings.do_sample,
        num_beams=1,
        repetition_penalty=1.0,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        max_time=max_time,
        return_dict_in_generate=True,
        # neutral: the warpers above are the only ones, so nothing is applied silently
        **({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": None, "typical_p": 1.0} if settings.do_sample else {}),
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.long().to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
        )
    sequences = output.sequences.cpu()
    responses = sequences[:, queries.shape[1]:]
    if responses.shape[1] == 0:
        raise InputError("Generation produced no token: raise max_new_tokens or max_time.")
    raw.finish(responses)
    processed.finish(responses)
    return Generation(
        sequences=sequences,
        logprobs=processed.stacked("logprobs"),
        raw_logprobs=raw.stacked("logprobs"),
        ranks=processed.stacked("ranks"),
        entropy=processed.stacked("entropy"),
        topk_ids=processed.stacked("topk_ids") if top_logprobs else torch.zeros(responses.shape + (0,), dtype=torch.long),
        topk_logprobs=processed.stacked("topk_logprobs") if top_logprobs else torch.zeros(responses.shape + (0,)),
    )
