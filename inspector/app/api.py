"""The gradio_client endpoints: `/rollout` (a rollout, and with GRPO its step, as JSON) and `/open_file` (a
record validated, or a table of completions re-scored). Built-in reward functions only: never code by name."""

from __future__ import annotations

import gradio as gr

from ..diagnostics import diagnose_grpo
from ..errors import InspectorError
from ..models import load_models
from ..record.format import rollout_from_dict, rollout_to_dict
from ..record.rollout import EOS, Rollout
from ..sources.files import read_upload_file, rescore
from ..trainers.grpo import rollout_grpo_step
from ..trainers.grpo_config import make_config
from ..trainers.rewards import (
    BUILTIN_REWARDS,
    DEFAULT_FORMAT_PATTERN,
    DEFAULT_LENGTH_TARGET,
    attach_reward_logs,
    builtin_reward,
    score_rewards,
)
from .common import friendly, model_names, parse_prompts, training_temperature
from .hosting import gpu, model_event
from .rollouts import new_rollout
from .validation import check_trainer


@gpu
def open_file_api(file, temperature: float = 1.0, reward_columns: str = "", reward_weights: str = "") -> dict:
    """Open a file through the API: a rollout record comes back validated; a table of completions (TRL's or
    verl's) comes back re-scored by the default models, as a rollout record, its logprobs taken at the
    training `temperature` the completions were sampled at (default 1.0). For a TRL GRPO log,
    `reward_columns` (comma-separated names) tells its reward columns from its log_extra columns and
    `reward_weights` (comma-separated) gives TRL's `reward_weights`; the record's settings say how it decided."""
    try:
        if file is None:
            raise InspectorError("No file was sent.")
        parsed = read_upload_file(file if isinstance(file, str) else getattr(file, "name", None) or file["path"],
                                  reward_columns=reward_columns, reward_weights=reward_weights)
        if isinstance(parsed, dict):
            return rollout_to_dict(rollout_from_dict(parsed))
        return rollout_to_dict(rescore(load_models(), parsed, temperature=training_temperature(temperature)))
    except Exception as exc:
        raise friendly(exc) from exc


@gpu
def rollout_api(
    prompts: list[str],
    max_new_tokens: int = 48,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    samples_per_prompt: int = 1,
    stop_token: str = "eos",
    use_chat_template: bool = True,
    attention: str = "trl",
    compare_masks: bool = False,
    ignore_generation_config: bool = False,
    policy: str = "",
    reward: str = "",
    value: str = "",
    reference: str = "",
    trainer: str = "ppo",
    reward_funcs: list[str] | None = None,
    reward_weights: list[float] | None = None,
    grpo_settings: dict | None = None,
    engine_url: str = "",
) -> dict:
    """Run a rollout and return the whole record as JSON: every tensor as nested lists, with texts and settings.

    stop_token: "eos", "none", or one token of the policy's tokenizer. engine_url: sample with that
    OpenAI-compatible server (on a hosted deployment only one of INSPECTOR_ENGINE_URLS); blank: in-process.
    trainer: "ppo" (default), "grpo" (TRL 1.16) or "verl"; with GRPO, samples_per_prompt is num_generations (>= 2)
    and the answer also holds `grpo` (the step under TRL's names) and `grpo_diagnostics`. reward_funcs: built-in
    reward functions by name (sentiment, length, format, exact_answer; default sentiment), reward_weights one
    weight each; grpo_settings: GRPOConfig fields (or verl's: loss_agg_mode, norm_adv_by_std_in_grpo, rollout_is,
    rollout_is_threshold), plus use_sampler_logprobs, length_target and format_pattern.
    """
    if isinstance(prompts, str):
        prompts = parse_prompts(prompts)
    stop = {"eos": EOS, "none": None}.get(str(stop_token).lower(), stop_token)
    try:
        check_trainer(str(trainer), int(samples_per_prompt))
        m, r = new_rollout(
            model_names(policy, reward, value, reference), list(prompts),
            dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                 top_p=top_p, seed=seed, samples_per_prompt=samples_per_prompt,
                 use_chat_template=use_chat_template, attention=attention, compare_masks=bool(compare_masks),
                 ignore_generation_config=bool(ignore_generation_config), stop=stop,
                 engine_url=(engine_url or "").strip() or None, trainer=str(trainer)),
        )
        record = rollout_to_dict(r)
        if trainer != "ppo":
            record.update(_grpo_api(m, r, str(trainer), reward_funcs, reward_weights, dict(grpo_settings or {})))
    except Exception as exc:
        raise friendly(exc) from exc
    return record


def _grpo_api(m, r: Rollout, trainer: str, reward_funcs, reward_weights, settings: dict) -> dict:
    """The GRPO step of a rollout for the API: built-in reward functions only (never code by name)."""
    names = list(reward_funcs or ["sentiment"])
    unknown = [n for n in names if n not in BUILTIN_REWARDS]
    if unknown:
        raise InspectorError(f"reward_funcs {unknown} are not built in; choose from {', '.join(BUILTIN_REWARDS)}.")
    weights = [1.0] * len(names) if reward_weights is None else [float(w) for w in reward_weights]
    if len(weights) != len(names):
        raise InspectorError(f"reward_weights has {len(weights)} values for {len(names)} reward functions.")
    funcs = [builtin_reward(n, m, length_target=int(settings.pop("length_target", DEFAULT_LENGTH_TARGET)),
                            format_pattern=settings.pop("format_pattern", DEFAULT_FORMAT_PATTERN)) for n in names]
    table = score_rewards(r, funcs, weights, tokenizer=m.tokenizer)
    use_sampler = bool(settings.pop("use_sampler_logprobs", True))
    config = make_config(trainer, num_generations=int(r.settings["samples_per_prompt"]), reward_weights=tuple(weights),
                         **settings)
    step = attach_reward_logs(rollout_grpo_step(r, table.rewards_per_func, config, reward_func_names=table.names,
                                                use_sampler_logprobs=use_sampler), table)
    return {"trainer": trainer, "grpo": step.to_dict(), "grpo_diagnostics": [f.to_dict() for f in diagnose_grpo(r, step)]}


def add_endpoints() -> None:
    """The endpoints, inside the page's Blocks: `/rollout` as a plain API function, `/open_file` behind hidden
    components so that clients upload the file as they should."""
    gr.api(rollout_api, api_name="rollout", **model_event())
    with gr.Row(visible=False):
        api_file = gr.File()
        api_temperature = gr.Number(1.0)
        api_columns, api_weights = gr.Textbox(""), gr.Textbox("")
        api_record = gr.JSON()
        api_button = gr.Button()
    api_button.click(open_file_api, [api_file, api_temperature, api_columns, api_weights], api_record,
                     api_name="open_file", **model_event())
