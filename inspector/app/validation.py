"""What the page refuses before running, field by field: the generation settings, PPO's, the trainer choice.
Each problem names the field, its allowed range and the way out; nothing a widget shows is changed silently."""

from __future__ import annotations

import math

import gradio as gr

from ..errors import InspectorError
from ..trainers.grpo_config import TRAINERS
from .common import parse_prompts
from .controls import RUN_INPUTS


def _number_problem(name: str, value, low: float | None = None, high: float | None = None, *, above: bool = False,
                    whole: bool = False, hint: str = "") -> str | None:
    """What is wrong with the number `value` typed into the field `name` (its allowed range in the message), or None."""
    if low is not None and high is not None:
        allowed = f"{'above' if above else 'from'} {low:g} {'and at most' if above else 'to'} {high:g}"
    elif low is not None:
        allowed = f"{'above' if above else 'at least'} {low:g}"
    else:
        allowed = "any number"
    kind = "a whole number" if whole else "a number"
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return f"{name} is empty: type {kind} {allowed}{hint}."
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"{name} must be {kind} {allowed}, not {str(value)[:40]!r}{hint}."
    bad = (whole and not v.is_integer()) or (low is not None and (v <= low if above else v < low)) \
        or (high is not None and v > high)
    return f"{name} must be {kind} {allowed} (got {v:g}){hint}." if bad else None


def ppo_problems(kl_coef, gamma, lam, penalty_on, penalty) -> dict[str, str]:
    """The PPO settings the page refuses, by field: {field: message}."""
    problems = {
        "kl_coef": _number_problem("kl_coef", kl_coef, 0, hint="; TRL's default is 0.05"),
        "gamma": _number_problem("gamma", gamma, 0, 1, hint="; TRL's default is 1.0"),
        "lam": _number_problem("lam", lam, 0, 1, hint="; TRL's default is 0.95"),
        "missing_eos_penalty": _number_problem("missing_eos_penalty", penalty, 0) if penalty_on else None,
    }
    return {k: v for k, v in problems.items() if v}


def run_problems(prompts_text, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop_choice,
                 stop_custom) -> dict[str, str]:
    """The generation settings the page refuses, by field: {field: message}. Nothing a widget shows is changed
    silently: temperature 0 with sampling is refused here, not rounded up."""
    problems = {
        "prompts": None if parse_prompts(prompts_text) else "There are no prompts: write at least one, one per line.",
        "max_new_tokens": _number_problem("max_new_tokens", max_new_tokens, 1, whole=True),
        "seed": _number_problem("seed", seed, 0, 2**63 - 1, whole=True),
    }
    if do_sample:
        problems["temperature"] = _number_problem(
            "temperature", temperature, 0, None, above=True,
            hint=" when sampling; untick do_sample for greedy decoding (temperature does not apply then)")
        problems["top_p"] = _number_problem("top_p", top_p, 0, 1, above=True, hint="; 1 turns it off")
        problems["top_k"] = _number_problem("top_k", top_k, 0, whole=True, hint="; 0 turns it off")
    if stop_choice == "Custom token" and not (stop_custom or "").strip() and stop_custom != " ":
        problems["stop_custom"] = "Type the custom stop token (one token of the policy's tokenizer), or pick EOS."
    return {k: v for k, v in problems.items() if v}


def run_validator(*values):
    """Each generation setting checked on its own field; `values` come in the order of `RUN_INPUTS`."""
    v = dict(zip(RUN_INPUTS, values))
    problems = run_problems(v.get("prompts"), v.get("max_new_tokens"), v.get("do_sample"), v.get("temperature"),
                            v.get("top_k"), v.get("top_p"), v.get("seed"), v.get("stop_choice"), v.get("stop_custom"))
    return [gr.validate(name not in problems, problems.get(name, "")) for name in RUN_INPUTS[:len(values)]]


def check_trainer(trainer: str, samples_per_prompt: int) -> None:
    """GRPO turns samples per prompt into num_generations, which must be at least 2."""
    if trainer not in TRAINERS:
        raise InspectorError(f"trainer must be one of {', '.join(TRAINERS)} (got {trainer!r}).")
    if trainer != "ppo" and int(samples_per_prompt) < 2:
        raise InspectorError(
            f"GRPO compares the completions of each prompt: num_generations (samples per prompt) must be at least 2, "
            f"not {samples_per_prompt}. Set samples per prompt to 2 or more, or choose PPO.")
