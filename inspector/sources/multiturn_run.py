"""`run_multiturn`: a multi-turn rollout on loaded models, its GRPO step, template drift and findings."""

from __future__ import annotations

from ..diagnostics.drift import template_drift
from ..diagnostics.multiturn import multiturn_findings
from ..errors import InputError
from ..trainers.grpo import model_eos_token_ids
from ..trainers.grpo_config import GRPOConfig
from ..trainers.grpo_multiturn import attach_step, multiturn_grpo_step, policy_logprobs, trajectory_batch
from .multiturn import rollout_multiturn
from .multiturn_template import TOOL_TEMPLATE_NAME, tool_chat_template
from .multiturn_tools import TOOL_SIZE_CAP, TOOL_TIME_LIMIT_S


def analyse(rollout, tokenizer, eos_token_ids: list[int], tools=None) -> None:
    """Drift per trajectory and the findings, kept on the record (plain dicts). The re-render uses the template
    the rollout was made with (the shipped one when the rollout's notes say it replaced the tokenizer's)."""
    template = tool_chat_template() if rollout.settings.get("chat_template") == TOOL_TEMPLATE_NAME else None
    drifts = {}
    for i, t in enumerate(rollout.trajectories):
        try:
            drifts[i] = template_drift(t, tokenizer, tools=tools, chat_template=template)
        except Exception as exc:  # a template that cannot render the final messages is itself a finding
            drifts[i] = {"error": f"{type(exc).__name__}: {exc}", "first_diff": None, "differing": 0}
    rollout.drift = [{k: v for k, v in drifts[i].items() if k != "rendered"} | {"sample": i} for i in drifts]
    found = multiturn_findings(rollout, eos_token_ids=eos_token_ids, decode=tokenizer.decode, drifts=drifts)
    rollout.findings = [f.to_dict() for f in found]


def run_multiturn(models, prompts, *, mode: str = "scripted", tools=None, env=None, scripted_replies=None,
                  max_turns: int = 2, max_completion_length: int = 64, num_generations: int = 2, seed: int = 0,
                  temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None, reward_funcs=None,
                  reward_weights=None, grpo: GRPOConfig | None = None, tool_time_limit: float = TOOL_TIME_LIMIT_S,
                  tool_size_cap: int = TOOL_SIZE_CAP):
    """Multi-turn rollouts on `models.policy` with TRL 1.16's loop (mode "tools", "env" or "scripted"), the GRPO
    step over them (loss under completion_mask x tool_mask), template drift and the findings.

    Returns a MultiTurnRollout. `tools`: callables or built-in names (calculator, failing_tool, looping_tool,
    huge_tool); `env`: a factory or "guess"; `scripted_replies`: the scripted environment's lines.
    """
    if num_generations < 2:
        raise InputError("num_generations must be at least 2: GRPO compares the completions of a prompt.")
    from .multiturn import model_generator

    tok, model = models.tokenizer, models.policy
    eos = model_eos_token_ids(models)
    gen = model_generator(model, tok, max_new_tokens=max_completion_length, temperature=temperature, top_p=top_p,
                          top_k=top_k, seed=seed, eos_token_ids=eos)
    max_model_len = getattr(model.config, "max_position_embeddings", None)
    ro = rollout_multiturn(gen, tok, prompts, mode=mode, tools=tools, env=env, scripted_replies=scripted_replies,
                           max_turns=max_turns, max_completion_length=max_completion_length,
                           num_generations=num_generations, reward_funcs=reward_funcs, reward_weights=reward_weights,
                           seed=seed, max_model_len=max_model_len, tool_time_limit=tool_time_limit,
                           tool_size_cap=tool_size_cap,
                           settings={"temperature": temperature, "top_p": top_p, "top_k": top_k})
    ro.model_names = dict(getattr(models, "names", {}) or {})
    config = grpo or GRPOConfig(num_generations=num_generations, max_completion_length=max_completion_length)
    batch = trajectory_batch(ro, tok.pad_token_id, eos)
    lp = policy_logprobs(model, batch, temperature)
    step, _ = multiturn_grpo_step(ro, config, lp, batch=batch)
    attach_step(ro, step)
    analyse(ro, tok, eos, tools=ro.settings.get("tool_schemas"))
    return ro
