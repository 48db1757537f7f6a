"""Reward functions as GRPO users write them, and the table of their values over a rollout.

A reward function has TRL's signature: `f(prompts, completions, completion_ids, **kwargs) -> list[float | None]`,
one value per completion, None where the function does not apply (TRL turns it into NaN). `prompts` and
`completions` are strings, or lists of chat messages when the rollout used a chat template (TRL's
conversational format). Extra columns of the data (an `answer`, verl's `gts`) arrive as keyword arguments.

Built in: the default sentiment reward model, called as TRL's GRPOTrainer calls a reward *model* (decoded
prompt + completion re-tokenized, right padded, `logits[:, 0]`), a length reward, a format reward (a regular
expression) and an exact-answer reward over the shipped arithmetic prompt set. Any other callable works in the
library and the CLI (`module:function`); a hosted deployment refuses to import code by name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError

ARITHMETIC_FILE = Path(__file__).resolve().parent.parent / "assets" / "arithmetic.jsonl"
"""The arithmetic prompt set with its answers, written by `scripts/build_arithmetic_prompts.py`."""

DEFAULT_LENGTH_TARGET = 16
DEFAULT_FORMAT_PATTERN = r"\s*-?\d+(\.\d+)?\s*\.?\s*"
"""The default format: the whole completion is one number (what the arithmetic prompts ask for)."""

BUILTIN_REWARDS = ("sentiment", "length", "format", "exact_answer")
"""The names of the built-in reward functions, the only ones a hosted page offers."""

RewardFunc = Callable[..., list]


def completion_text(completion) -> str:
    """The text of a completion: a string, or the content of the last message of a chat-format completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise InputError(f"A completion is text or a list of chat messages, not {type(completion).__name__}.")


class RewardModelFunc:
    """A sequence-classification reward model called as TRL 1.16's GRPOTrainer calls one
    (`_calculate_rewards`): conversational inputs are rendered as one chat (`prompt + completion` messages)
    with the reward tokenizer's chat template, plain ones are concatenated `prompt + completion`; the texts are
    tokenized right padded without special tokens, and the reward is `logits[:, 0]`.

    Unlike PPO's `get_reward`, this reads the score where the model's own classification head reads it (for
    transformers' `*ForSequenceClassification`, the last token that is not the config's pad token)."""

    def __init__(self, model, tokenizer, name: str = "reward_model", batch_size: int = 16):
        self.model, self.tokenizer, self.__name__, self.batch_size = model, tokenizer, name, batch_size

    def texts(self, prompts: list, completions: list) -> list[str]:
        if prompts and isinstance(prompts[0], list):
            return [self.tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
        return [p + c for p, c in zip(prompts, completions)]

    @torch.no_grad()
    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        texts = self.texts(list(prompts), list(completions))
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(text=texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                    padding_side="right", add_special_tokens=False)
            logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out


def make_length_reward(target_tokens: int = DEFAULT_LENGTH_TARGET) -> RewardFunc:
    """-|len - target| / target per completion, counted in completion tokens (0 at the target length)."""
    if not isinstance(target_tokens, int) or isinstance(target_tokens, bool) or target_tokens < 1:
        raise InputError(f"length_target must be a whole number of tokens, at least 1 (got {target_tokens!r}).")

    def length_reward(prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [-abs(len(ids) - target_tokens) / target_tokens for ids in completion_ids]

    length_reward.target_tokens = target_tokens
    return length_reward


def make_format_reward(pattern: str = DEFAULT_FORMAT_PATTERN) -> RewardFunc:
    """1.0 when the whole completion text matches the regular expression `pattern`, else 0.0."""
    if not isinstance(pattern, str) or not pattern:
        raise InputError("format_pattern is empty: give a regular expression the whole completion must match.")
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise InputError(f"format_pattern {pattern!r} is not a valid regular expression: {exc}.") from None

    def format_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        return [1.0 if compiled.fullmatch(completion_text(c)) else 0.0 for c in completions]

    format_reward.pattern = pattern
    return format_reward


@lru_cache(maxsize=1)
def arithmetic_answers() -> dict[str, str]:
    """The shipped arithmetic prompt set: prompt text -> its answer."""
    rows = [json.loads(line) for line in ARITHMETIC_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["prompt"]: row["answer"] for row in rows}


def arithmetic_prompts(n: int | None = None) -> list[str]:
    """The first `n` prompts of the shipped arithmetic set (all of them by default)."""
    return list(arithmetic_answers())[:n]


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def exact_answer_reward(prompts, completions, completion_ids=None, answer=None, gts=None, **kwargs) -> list[float | None]:
    """1.0 when the last number in the completion equals the answer, 0.0 when it does not (or there is none),
    None where the prompt has no known answer. The answer is the `answer` column (or verl's `gts`) when the
    data has one, else the shipped arithmetic set's answer to the prompt."""
    known = arithmetic_answers()
    answer = answer if answer is not None else gts
    out: list[float | None] = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        truth = answer[i] if answer is not None else known.get(completion_text(p).strip())
        if truth is None:
            out.append(None)
            continue
        numbers = _NUMBER.findall(completion_text(c).replace(",", ""))
        out.append(1.0 if numbers and float(numbers[-1]) == float(truth) else 0.0)
    return out


length_reward = make_length_reward()
format_reward = make_format_reward()


def reward_name(func) -> str:
    """The name TRL logs a reward function under (`get_callable_name`: the function's `__name__`)."""
    return getattr(func, "__name__", None) or type(func).__name__


def builtin_reward(name: str, models=None, *, length_target: int = DEFAULT_LENGTH_TARGET,
                   format_pattern: str = DEFAULT_FORMAT_PATTERN) -> RewardFunc:
    """One built-in reward function by name (see BUILTIN_REWARDS). `sentiment` needs the loaded `models`
    (their reward model and its tokenizer). Raises InputError for an unknown name."""
    if name == "sentiment":
        if models is None:
            raise InputError("The sentiment reward needs the loaded models (its reward model).")
        short = str(models.names.get("reward", "reward_model")).split("/")[-1].split(":")[-1]
        return RewardModelFunc(models.reward, models.reward_tokenizer, name=short)
    if name == "length":
        return make_length_reward(length_target)
    if name == "format":
        return make_format_reward(format_pattern)
    if name == "exact_answer":
        return exact_answer_reward
    raise InputError(f"Unknown reward function {name!r}; the built-in ones are {', '.join(BUILTIN_REWARDS)}.")


def load_reward_func(spec: str) -> RewardFunc:
    """A reward function named `module:function` (or a built-in name). Imports user code, so a hosted
    deployment (SPACE_ID or INSPECTOR_HOSTED=1) refuses it. Raises InputError with what to fix."""
    from ..limits import hosted

    if spec in BUILTIN_REWARDS and spec != "sentiment":
        return builtin_reward(spec)
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"--reward-func {spec!r}: write module:function (e.g. my_rewards:accuracy) or one of "
                         f"{', '.join(BUILTIN_REWARDS)}.")
    if hosted():
        raise InputError("This deployment offers only the built-in reward functions: it never imports code by name.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"--reward-func {spec!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise InputError(f"--reward-func {spec!r}: {module_name} has no callable {attr!r}.")
    return func


@dataclass
class RewardTable:
    """Every reward function's value per completion: TRL's `rewards_per_func` (B, F), NaN where one returned
    None, with the functions' names (TRL's `reward_func_names`) and weights.

    `extra` holds what the functions passed to `log_extra(column, values)` (TRL's extra columns of the
    completions table, one value per completion), `metrics` what they passed to `log_metric(name, value)`,
    averaged as TRL averages them over a step. `attach_reward_logs` puts both on a GRPO step: the metrics
    among `step.metrics` (the GRPO tab's metrics table, the JSON export), the columns as `step.reward_extra`."""

    rewards_per_func: torch.Tensor          # (B, F) float32
    names: list[str]
    weights: list[float]
    extra: dict[str, list] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def is_async_callable(func) -> bool:
    """TRL's `is_async_callable`: a coroutine function, through `functools.partial` and a class's `__call__`."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None))


def _rewards_column(out, name: str, B: int) -> torch.Tensor:
    out = list(out)
    if len(out) != B:
        raise InputError(f"The reward function {name!r} returned {len(out)} rewards for {B} completions; it must "
                         "return exactly one per completion.")
    try:
        return torch.tensor([math.nan if v is None else float(v) for v in out], dtype=torch.float32)
    except (TypeError, ValueError):
        raise InputError(f"The reward function {name!r} returned something that is not a number or None.") from None


def _run_async(funcs: list, call_kwargs: dict) -> list:
    """Await the async reward functions concurrently (`asyncio.gather`, as TRL does on its own event loop, in a
    thread of its own so that a caller's running loop is never re-entered)."""
    async def gather():
        return await asyncio.gather(*(f(**call_kwargs) for f in funcs))

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, gather()).result()


def attach_reward_logs(step, table: RewardTable):
    """What the reward functions logged, on the GRPO step: `log_metric`'s values among `step.metrics` (as TRL
    logs them beside its own), `log_extra`'s columns as `step.reward_extra`. Returns the step."""
    step.metrics.update(table.metrics)
    step.reward_extra = {k: list(v) for k, v in table.extra.items()}
    return step


def score_rewards(rollout, reward_funcs: list, weights: list[float] | None = None, *, tokenizer=None,
                  columns: dict[str, list] | None = None, trainer_state=None) -> RewardTable:
    """Call each reward function over the rollout's completions as TRL 1.16's `_calculate_rewards` does and
    stack the results into `rewards_per_func` (B, F). `tokenizer` (the policy's) decodes the completions; the
    rollout's `columns` (e.g. `answer`, `gts`) and `columns` pass as keyword arguments, with TRL's
    `trainer_state` (a fresh `transformers.TrainerState`, step 0, unless given), `log_extra(column, values)`
    and `log_metric(name, value)`, kept on the table. Synchronous functions run in order; `async` ones are
    then awaited together, as TRL gathers them. Raises InputError for a function that returns the wrong
    number of values or a non-number, or weights that do not match."""
    if not reward_funcs:
        raise InputError("Choose at least one reward function.")
    weights = [1.0] * len(reward_funcs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(reward_funcs):
        raise InputError(f"reward_weights has {len(weights)} values for {len(reward_funcs)} reward functions; "
                         "give one weight per function.")
    if any(not math.isfinite(w) for w in weights):
        raise InputError("reward_weights must be finite numbers.")
    prompts, completions, ids = completion_inputs(rollout, tokenizer)
    extra: dict[str, list] = defaultdict(list)
    logged: dict[str, list] = defaultdict(list)
    if trainer_state is None:
        from transformers import TrainerState

        trainer_state = TrainerState()
    kwargs = {**getattr(rollout, "columns", {}), **(columns or {}), "trainer_state": trainer_state,
              "log_extra": lambda column, values: extra[column].extend(values),
              "log_metric": lambda name, value: logged[name].append(value)}
    call = dict(prompts=prompts, completions=completions, completion_ids=ids, **kwargs)
    B = len(prompts)
    table = torch.zeros(B, len(reward_funcs), dtype=torch.float32)
    names = [reward_name(f) for f in reward_funcs]
    waiting = [j for j, f in enumerate(reward_funcs) if is_async_callable(f)]
    for j, func in enumerate(reward_funcs):
        if j not in waiting:
            table[:, j] = _rewards_column(func(**call), names[j], B)
    if waiting:
        for j, out in zip(waiting, _run_async([reward_funcs[j] for j in waiting], call)):
            table[:, j] = _rewards_column(out, names[j], B)
    metrics = {name: sum(values) / len(values) for name, values in logged.items() if values}
    return RewardTable(table, names, weights, dict(extra), metrics)


def completion_inputs(rollout, tokenizer=None) -> tuple[list, list, list[list[int]]]:
    """prompts, completions and completion_ids as TRL's GRPOTrainer hands them to reward functions for this
    rollout: chat messages when the chat template was applied, else strings. `completion_ids` are the response
    ids up to and including the first EOS (where TRL cuts a completion; an imported completion recorded as not
    ended stops before its padding); the completion text is those ids
    decoded without special tokens by `tokenizer` (without one, the rollout's own decoded texts, when its
    stop token is the EOS)."""
    eos = rollout.eos_token_id
    ended = (rollout.settings or {}).get("ended") or [True] * rollout.batch_size
    ids = []
    for row, end in zip(rollout.responses.tolist(), ended):
        if end:
            cut = row.index(eos) + 1 if eos is not None and eos in row else len(row)
        else:  # an imported completion without its EOS: the row is only padded to the batch's width
            cut = next((t for t, x in enumerate(row) if x == rollout.pad_token_id), len(row))
        ids.append(row[:cut])
    if tokenizer is not None:
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    elif rollout.stop_token_id == eos:
        texts = list(rollout.postprocessed_response_texts)  # the same cut, decoded when the rollout was made
    else:
        raise InputError("Decoding the completions at the EOS token needs the policy's tokenizer: load the models.")
    if rollout.chat_template_applied:
        prompts = [[{"role": "user", "content": p}] for p in rollout.prompts]
        completions = [[{"role": "assistant", "content": t}] for t in texts]
    else:
        prompts, completions = list(rollout.prompts), texts
    return prompts, completions, ids


def builtin_for_logged_name(name: str, models=None) -> RewardFunc | None:
    """The built-in reward function a logged column name stands for (TRL names a column after the function's
    `__name__`, or the reward model's name), with its default settings; None when there is none."""
    if models is not None and name == builtin_reward("sentiment", models).__name__:
        return builtin_reward("sentiment", models)
    return {"length_reward": length_reward, "format_reward": format_reward,
            "exact_answer_reward": exact_answer_reward}.get(name)
