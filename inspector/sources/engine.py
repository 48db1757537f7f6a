"""Sampling with a serving engine: any OpenAI-compatible completions server (vLLM, SGLang, ...) spoken to over HTTP.

The inspector sends the policy tokenizer's own token ids (the chat template applied here, so both sides see
the same tokens), `n` samples per prompt, the sampling settings and a seed, and asks for each sampled
token's logprob, the top alternatives and the token ids. It lays the answer out as TRL's vLLM path does:
left-padded queries, completions right-padded with the pad id, sampling logprobs padded with 0.0. The
rollout's `logprobs` are then the engine's (the distribution it sampled from, as the server reports it),
and the trainer recomputes `new_logprobs` in-process as usual; where they disagree is the sampler mismatch.

Only the Python standard library speaks to the server: the engine is a separate process, never imported.
"""

from __future__ import annotations

import json
import math
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import torch

from ..errors import EngineError
from .generation import Generation, SamplingSettings
from ..limits import hosted
from ..tensors import entropy_from_logprobs, token_logprobs

ENGINE_URLS_ENV = "INSPECTOR_ENGINE_URLS"
"""On a hosted deployment, the only engine URLs accepted (comma-separated); none are accepted without it."""

PROBE_TEXT = "<|im_start|>user\nHéllo, wörld! 12345 ✓ 漢字 \t  tabs\n<|im_end|>\n"
"""Tokenized by both sides to check that they share a vocabulary: special tokens, accents, digits, CJK, spaces."""

VLLM_NEG_INF = -9999.0
"""vLLM writes a logprob of -inf as this number in JSON."""


@dataclass(frozen=True)
class EngineInfo:
    """The server a rollout was sampled by: its base URL, the model it serves, and how the vocabulary was checked."""

    url: str
    served_model: str
    vocabulary_check: str
    max_model_len: int | None = None

    def to_dict(self) -> dict:
        return {"engine": "openai-completions", "url": self.url, "served_model": self.served_model,
                "vocabulary_check": self.vocabulary_check, "max_model_len": self.max_model_len}


def normalize_url(url: str) -> str:
    """The server's base URL (scheme, host, port, optional path prefix) without a trailing `/` or `/v1`.
    Raises EngineError for anything that is not an http(s) URL, and on a hosted deployment for a URL
    that is not on the INSPECTOR_ENGINE_URLS allow-list."""
    if not isinstance(url, str) or not url.strip():
        raise EngineError("The engine URL is empty: give the server's address, e.g. http://127.0.0.1:8000.")
    raw = url.strip()
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(
            f"Engine URL {raw!r} is not an http(s) address: give one like http://127.0.0.1:8000 "
            "(the OpenAI-compatible server's base URL)."
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise EngineError(f"Engine URL {raw!r} carries credentials, a query or a fragment: give the bare base URL.")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))
    if hosted():
        allowed = [normalize_url_unchecked(u) for u in os.environ.get(ENGINE_URLS_ENV, "").split(",") if u.strip()]
        if base not in allowed:
            listed = ", ".join(allowed) if allowed else "none"
            raise EngineError(
                f"Engine URL {base} is refused: a hosted deployment samples only from the servers its operator lists "
                f"in {ENGINE_URLS_ENV} (listed: {listed}). Run the inspector locally to use another server."
            )
    return base


def normalize_url_unchecked(url: str) -> str:
    """`normalize_url` without the hosted allow-list (used to read the allow-list itself)."""
    parts = urllib.parse.urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))


def _call(base: str, path: str, payload: dict | None = None, timeout: float = 30.0) -> dict:
    """One JSON request to the server; every way it can fail becomes an EngineError naming the URL."""
    url = base + path
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if payload is None else "POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    # the engine is addressed directly, never through a proxy from the environment
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace").strip()
        hint = ("check the model name and the request settings the server accepts"
                if 400 <= exc.code < 500 else "look at the server's log; it failed on this request")
        raise EngineError(f"The engine at {url} answered HTTP {exc.code}: {detail or exc.reason}. {hint[0].upper()}{hint[1:]}.") from None
    except (TimeoutError, socket.timeout):
        raise EngineError(
            f"The engine at {url} did not answer within {timeout:.0f} s: check that it is not overloaded, or "
            "ask for fewer or shorter samples."
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise EngineError(f"The engine at {url} did not answer within {timeout:.0f} s: check that it is running and reachable.") from None
        raise EngineError(
            f"The engine at {url} is unreachable ({reason}): start the server (e.g. `python -m "
            "vllm.entrypoints.openai.api_server --model ...`) or correct the URL."
        ) from None
    except (ConnectionError, OSError) as exc:
        raise EngineError(f"The engine at {url} closed the connection ({exc}): check that the server is healthy.") from None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EngineError(
            f"The engine at {url} answered something that is not JSON ({body[:80]!r}): is this an "
            "OpenAI-compatible server?"
        ) from None


def probe(url: str, tokenizer, timeout: float = 10.0) -> EngineInfo:
    """Check a server before sampling from it: which model it serves (GET /v1/models) and that its vocabulary
    is the policy's (POST /tokenize of a probe text must give the policy tokenizer's ids). A server without
    /tokenize is checked later, on its answer (`check_choices_text`). Raises EngineError otherwise."""
    base = normalize_url(url)
    models = _call(base, "/v1/models", timeout=timeout)
    listed = models.get("data") if isinstance(models, dict) else None
    if not listed or not isinstance(listed, list) or not isinstance(listed[0], dict) or "id" not in listed[0]:
        raise EngineError(f"The engine at {base}/v1/models lists no model: is this an OpenAI-compatible server?")
    served = str(listed[0]["id"])
    max_len = listed[0].get("max_model_len")
    expected = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    try:
        answer = _call(base, "/tokenize", {"model": served, "prompt": PROBE_TEXT, "add_special_tokens": False},
                       timeout=timeout)
    except EngineError as exc:
        if "HTTP 404" in str(exc) or "HTTP 405" in str(exc):
            return EngineInfo(base, served, "no /tokenize: checked on the returned text", max_len)
        raise
    got = answer.get("tokens") if isinstance(answer, dict) else None
    if got != expected:
        raise EngineError(
            f"The engine at {base} serves {served!r}, whose tokenizer is not the policy's: a probe text gives "
            f"{len(got) if isinstance(got, list) else 'no'} tokens there and {len(expected)} here "
            f"(first ids {got[:8] if isinstance(got, list) else got} vs {expected[:8]}). Serve the policy's own "
            "model folder, or load the policy the server serves."
        )
    return EngineInfo(base, served, "/tokenize of a probe text gives the policy tokenizer's ids",
                      answer.get("max_model_len", max_len))


def completion_request(served_model: str, prompt_ids: list[list[int]], settings: SamplingSettings, n: int,
                       top_logprobs: int, stop_token_ids: list[int]) -> dict:
    """The /v1/completions request body: token-id prompts, n samples each, the sampling settings written out
    in full (nothing left to the server's defaults or the model's generation_config, no repetition penalty, as
    TRL's vLLM client sends them), the logprobs and the token ids. Generation stops at `stop_token_ids` only
    (the model's own EOS is ignored unless listed), as `generate` stops at the stop token alone."""
    body = {
        "model": served_model,
        "prompt": prompt_ids,
        "n": n,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature if settings.do_sample else 0.0,
        "top_p": settings.top_p if settings.do_sample else 1.0,
        "top_k": settings.top_k if settings.do_sample and settings.top_k else -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": settings.seed,
        "logprobs": top_logprobs,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "skip_special_tokens": False,
        "stop_token_ids": stop_token_ids,
        "ignore_eos": True,
    }
    return body


@dataclass
class EngineSample:
    """What the engine returned, laid out as TRL's vLLM path lays it out. `generation` holds the sequences,
    the engine's logprobs of the sampled tokens and its top alternatives; `finish_reasons` one per sample."""

    generation: Generation
    finish_reasons: list[str]
    completion_lengths: list[int]
    request: dict = None  # the request's settings, without the prompts
    unreported_logprobs: list = field(default_factory=list)  # tokens whose logprob the engine did not report


def _token_id(key: str, base: str) -> int:
    if isinstance(key, str) and key.startswith("token_id:"):
        return int(key.split(":", 1)[1])
    raise EngineError(
        f"The engine at {base} names tokens by text ({key!r}), not by id: it must honour "
        "`return_tokens_as_token_ids` (vLLM's OpenAI server does)."
    )


def _number(value, base: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise EngineError(f"The engine at {base} returned a logprob that is not a number ({value!r}).") from None


def _finite_logprob(value, base: str = "the engine") -> float:
    """A top alternative's logprob: -inf for vLLM's -9999.0, a JSON null or NaN (as TRL's vLLM client lays out
    the top logprobs it could not read)."""
    if value is None:
        return float("-inf")
    value = _number(value, base)
    return float("-inf") if value <= VLLM_NEG_INF or math.isnan(value) else value


def _sampled_logprob(value, base: str = "the engine") -> float:
    """The sampled token's logprob: NaN where the engine did not report one (a JSON null or NaN), as TRL 1.16
    maps vLLM's None back to NaN (`_generate_and_score_completions`) so that its sampler correction gives the
    token a zero gap (ratio 1, no correction) and its `sampling/...` metrics skip it; -inf for vLLM's -9999.0."""
    if value is None:
        return float("nan")
    value = _number(value, base)
    if math.isnan(value):
        return value
    return float("-inf") if value <= VLLM_NEG_INF else value


def parse_completions(answer: dict, base: str, n_prompts: int, n: int, top_logprobs: int) -> list[dict]:
    """The choices of a /v1/completions answer, checked and ordered by prompt then sample: each a dict with
    `token_ids`, `logprobs` (the sampled tokens'), `top` (a list of [(id, logprob), ...] per token, best
    first) and `finish_reason`. Raises EngineError for an answer that lacks any of them."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        raise EngineError(f"The engine at {base}/v1/completions answered without `choices`: is it an OpenAI-compatible completions server?")
    if len(choices) != n_prompts * n:
        raise EngineError(
            f"The engine at {base} returned {len(choices)} completions for {n_prompts} prompt(s) x {n} sample(s) "
            f"= {n_prompts * n} asked: it must honour `n` (vLLM does); lower the samples per prompt or fix the server."
        )
    out = []
    for position, choice in enumerate(choices):
        ids = choice.get("token_ids")
        if not isinstance(ids, list):
            raise EngineError(
                f"The engine at {base} returned no token ids: it must support `return_token_ids` "
                "(vLLM 0.10.2 or later does)."
            )
        lp = choice.get("logprobs")
        if not isinstance(lp, dict) or not isinstance(lp.get("token_logprobs"), list) or len(lp["token_logprobs"]) != len(ids):
            raise EngineError(
                f"The engine at {base} returned no logprobs for the sampled tokens: it must support `logprobs` "
                "on /v1/completions (vLLM's OpenAI server does)."
            )
        tokens = lp.get("tokens") or []
        if len(tokens) != len(ids) or any(_token_id(t, base) != i for t, i in zip(tokens, ids)):
            raise EngineError(f"The engine at {base} returned logprobs for other tokens than its token ids.")
        top = []
        for entry in lp.get("top_logprobs") or [{}] * len(ids):
            pairs = sorted(((_token_id(k, base), _finite_logprob(v, base)) for k, v in (entry or {}).items()),
                           key=lambda p: -p[1])
            top.append(pairs[:top_logprobs])
        if top_logprobs and any(len(t) < min(top_logprobs, 1) for t in top):
            raise EngineError(f"The engine at {base} returned no top alternatives although {top_logprobs} were asked.")
        index = choice.get("index", position)
        out.append({"index": index, "token_ids": [int(i) for i in ids],
                    "logprobs": [_sampled_logprob(v, base) for v in lp["token_logprobs"]],
                    "top": top, "finish_reason": choice.get("finish_reason"), "text": choice.get("text")})
    # vLLM numbers choices prompt by prompt (index = prompt * n + sample); keep that order whatever the wire order
    out.sort(key=lambda c: c["index"])
    return out


def layout(choices: list[dict], queries: torch.Tensor, pad_token_id: int, top_logprobs: int) -> EngineSample:
    """TRL's vLLM layout: the queries (B, Q) as they are (left-padded with the pad id), the completions
    right-padded with the pad id, the sampling logprobs right-padded with 0.0 (as TRL pads
    `sampling_per_token_logps`). The top alternatives pad with the pad id and -inf. `raw_logprobs`,
    `entropy` and the ranks of tokens outside the top alternatives are not reported by the engine: they are
    filled by the trainer-side pass (`trainer_side_capture`)."""
    B = len(choices)
    G = max(1, max(len(c["token_ids"]) for c in choices))
    k = top_logprobs
    completions = torch.full((B, G), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((B, G))
    topk_ids = torch.full((B, G, k), pad_token_id, dtype=torch.long)
    topk_logprobs = torch.full((B, G, k), float("-inf"))
    ranks = torch.full((B, G), -1, dtype=torch.long)  # -1: not known from the engine's answer
    for b, c in enumerate(choices):
        L = len(c["token_ids"])
        if L:
            completions[b, :L] = torch.tensor(c["token_ids"], dtype=torch.long)
            logprobs[b, :L] = torch.tensor(c["logprobs"])
        for t, pairs in enumerate(c["top"][:L]):
            for j, (tid, value) in enumerate(pairs[:k]):
                topk_ids[b, t, j] = tid
                topk_logprobs[b, t, j] = value
            chosen = c["logprobs"][t]
            listed = [tid for tid, _ in pairs]
            if c["token_ids"][t] in listed and not math.isnan(chosen):
                ranks[b, t] = sum(1 for _, v in pairs if v > chosen)
    sequences = torch.cat((queries, completions), dim=1)
    generation = Generation(sequences=sequences, logprobs=logprobs, raw_logprobs=torch.full((B, G), float("nan")),
                            ranks=ranks, entropy=torch.full((B, G), float("nan")), topk_ids=topk_ids,
                            topk_logprobs=topk_logprobs)
    return EngineSample(generation, [c["finish_reason"] for c in choices], [len(c["token_ids"]) for c in choices],
                        unreported_logprobs=unreported_logprobs(choices))


def unreported_logprobs(choices: list[dict]) -> list[dict]:
    """The sampled tokens whose logprob the engine did not report (null or NaN): sample, position, token id."""
    return [{"sample": b, "position": t, "token_id": c["token_ids"][t]}
            for b, c in enumerate(choices) for t, v in enumerate(c["logprobs"]) if math.isnan(v)]


def unreported_note(unreported: list[dict]) -> str | None:
    """The record's note naming the tokens without an engine logprob, and what the trainers do with them."""
    if not unreported:
        return None
    named = ", ".join(f"sample {u['sample']} position {u['position']} (token {u['token_id']})" for u in unreported[:12])
    more = f" and {len(unreported) - 12} more" if len(unreported) > 12 else ""
    return (f"The engine reported no logprob for {len(unreported)} sampled token(s): {named}{more}. They are NaN in "
            "the sampler logprobs; as TRL 1.16 does, the sampler correction gives them a zero trainer - sampler gap "
            "(ratio 1, no correction) and the sampling/... metrics leave them out.")


def check_choices_text(choices: list[dict], tokenizer, base: str) -> None:
    """For a server without /tokenize: the text it returned must be what the policy tokenizer decodes from the
    ids it returned; otherwise its vocabulary is another. Raises EngineError."""
    for i, c in enumerate(choices):
        if c.get("text") is None:
            continue
        ours = tokenizer.decode(c["token_ids"], skip_special_tokens=False)
        if ours != c["text"] and tokenizer.decode(c["token_ids"], skip_special_tokens=True) != c["text"]:
            raise EngineError(
                f"The engine at {base} returned text that the policy tokenizer does not decode from the same ids "
                f"(sample {i}): it serves a model with another vocabulary. Serve the policy's own model folder."
            )


def sample(url: str, tokenizer, queries: torch.Tensor, prompt_ids: list[list[int]], settings: SamplingSettings,
           n: int, *, top_logprobs: int = 5, stop_token_ids: list[int] | None = None,
           timeout: float = 180.0, info: EngineInfo | None = None) -> tuple[EngineSample, EngineInfo]:
    """Sample `n` completions of each of `prompt_ids` (the distinct prompts' unpadded ids) from the engine.

    `queries` (B, Q) are the left-padded queries of the B = len(prompt_ids) * n samples, prompt by prompt,
    as `encode_prompts` built them. Returns the laid-out sample and the server's EngineInfo.
    Raises EngineError (an InspectorError) naming the URL and what to do.
    """
    info = info or probe(url, tokenizer, timeout=min(timeout, 15.0))
    if info.max_model_len:
        longest = max(len(p) for p in prompt_ids) + settings.max_new_tokens
        if longest > info.max_model_len:
            raise EngineError(
                f"The engine at {info.url} serves at most {info.max_model_len} tokens per sequence; this request needs "
                f"{longest} (prompt + max_new_tokens). Lower max_new_tokens or serve with a longer --max-model-len."
            )
    body = completion_request(info.served_model, prompt_ids, settings, n, top_logprobs,
                              stop_token_ids if stop_token_ids is not None else [tokenizer.eos_token_id])
    answer = _call(info.url, "/v1/completions", body, timeout=timeout)
    choices = parse_completions(answer, info.url, len(prompt_ids), n, top_logprobs)
    vocab = len(tokenizer)
    for c in choices:
        if any(not 0 <= i < vocab for i in c["token_ids"]):
            raise EngineError(f"The engine at {info.url} returned token ids outside the policy's vocabulary (0..{vocab - 1}): "
                              "it serves another model. Serve the policy's own model folder.")
    if info.vocabulary_check.startswith("no /tokenize"):
        check_choices_text(choices, tokenizer, info.url)
    result = layout(choices, queries, tokenizer.pad_token_id, top_logprobs)
    result.request = {k: v for k, v in body.items() if k != "prompt"}
    # what sampled, as the record's generation settings: everything was sent, nothing taken from the model
    result.generation.generation_config = {"values": dict(result.request), "from_model": [], "model_config_used": False}
    return result, info


def sampling_warpers(settings: SamplingSettings) -> list:
    """The processors between the raw logits and the distribution vLLM samples from (and reports as
    processed logprobs) for the settings the inspector sends it: temperature, then top-k, then top-p, as
    vLLM applies them (none for greedy decoding). transformers' warpers implement the same three."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = []
    if settings.do_sample:
        if settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            warpers.append(TopKLogitsWarper(top_k=settings.top_k))
        if settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=settings.top_p))
    return warpers


@torch.no_grad()
def trainer_side_capture(lm_head: torch.nn.Module, hidden: torch.Tensor, responses: torch.Tensor, context_length: int,
                         settings: SamplingSettings, engine_ranks: torch.Tensor, chunk: int = 2) -> dict[str, torch.Tensor]:
    """What the engine does not report, from the trainer's own forward pass (hidden states (B, T, H)):
    `raw_logprobs` (the sampled token under the raw logits, temperature 1), `processed_logprobs` (under the
    distribution the engine samples from: temperature, then top-k and top-p renormalised, as vLLM's
    processed logprobs are), the `entropy` of that distribution and the sampled token's rank in it, where
    the engine's top alternatives did not give the rank. Each (B, G) on CPU."""
    warpers = sampling_warpers(settings)
    out: dict[str, list] = {"raw_logprobs": [], "processed_logprobs": [], "entropy": [], "ranks": []}
    for start in range(0, hidden.shape[0], chunk):
        logits = lm_head(hidden[start : start + chunk, context_length - 1 : -1]).float()  # (b, G, V)
        ids = responses[start : start + chunk].to(logits.device)
        out["raw_logprobs"].append(token_logprobs(logits, ids).cpu())
        b, G, V = logits.shape
        flat = logits.reshape(b * G, V)
        for warper in warpers:
            flat = warper(None, flat)
        processed = torch.log_softmax(flat, dim=-1).reshape(b, G, V)
        chosen = processed.gather(-1, ids.unsqueeze(-1))
        out["processed_logprobs"].append(chosen.squeeze(-1).cpu())
        out["entropy"].append(entropy_from_logprobs(processed).cpu())
        out["ranks"].append((processed > chosen).sum(-1).cpu())
    result = {k: torch.cat(v, dim=0) for k, v in out.items()}
    known = engine_ranks >= 0
    result["ranks"] = torch.where(known, engine_ranks, result["ranks"])
    return result


def sample_rollout(url: str, models, enc, samples_per_prompt: int, settings: SamplingSettings, *,
                   top_logprobs: int = 5, timeout: float = 180.0, stop_token_id: int | list[int] | None = None):
    """The engine side of `run_rollout`: sample every prompt of `enc` (its rows repeat each prompt
    `samples_per_prompt` times) with the server at `url`, stopping at `stop_token_id` (one id, or every id of a
    list: a GRPO trainer's EOS ids, each sent in `stop_token_ids`; None: at no token, as `generate` with no stop). Returns the `Generation`, the capture function `_score_rollout` calls on the
    policy's hidden states, and the record's `engine` entry."""
    tokenizer = models.tokenizer
    n = samples_per_prompt
    rows = range(0, enc.queries.shape[0], n)
    prompt_ids = [enc.queries[i][enc.attention_mask[i].bool()].tolist() for i in rows]
    result, info = sample(url, tokenizer, enc.queries, prompt_ids, settings, n, top_logprobs=top_logprobs,
                          timeout=timeout, stop_token_ids=[] if stop_token_id is None else
                          [int(i) for i in stop_token_id] if isinstance(stop_token_id, (list, tuple)) else [stop_token_id])
    gen = result.generation
    lm_head = models.policy.get_output_embeddings()

    def capture(hidden, responses):
        extra = trainer_side_capture(lm_head, hidden, responses, enc.queries.shape[1], settings, gen.ranks)
        return {"raw_logprobs": extra["raw_logprobs"], "entropy": extra["entropy"], "ranks": extra["ranks"],
                "processed_logprobs": extra["processed_logprobs"]}

    record = info.to_dict() | {"finish_reasons": result.finish_reasons, "request": result.request,
                               "trainer_dtype": models.precision,
                               "unreported_logprobs": result.unreported_logprobs}
    if result.unreported_logprobs:
        record["note"] = unreported_note(result.unreported_logprobs)
    return gen, capture, record
