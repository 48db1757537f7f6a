"""Multi-turn rollouts made by the inspector with TRL 1.16's semantics: python tools, an environment
(`environment_factory`: methods are tools, `reset`, optional `get_reward`) or a scripted environment.

`rollout_multiturn` runs the loop of `multiturn_loop` on a generator (the policy's `generate`, or any function,
which is how the parity tests feed TRL and this module the same completions), scores the trajectories with
reward functions called exactly as TRL calls them, and returns a `MultiTurnRollout`.
"""

from __future__ import annotations

import copy
import inspect
import math

import torch

from ..errors import InputError
from ..record.trajectory import MultiTurnRollout, Trajectory
from .multiturn_loop import LoopState, first_turn, run_loop
from .multiturn_template import TOOL_TEMPLATE_NAME, parse_response, prepare_tool_tokenizer
from .multiturn_tools import BUILTIN_ENVS, BUILTIN_TOOLS, TOOL_SIZE_CAP, TOOL_TIME_LIMIT_S, ScriptedReplies

MODES = ("tools", "env", "scripted")


def model_generator(model, tokenizer, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int | None = None, seed: int = 0, eos_token_ids: list[int] | None = None):
    """A `generate(batch_ids, samples)` on a causal LM: one row at a time (no padding), sampling with the
    given settings, cut after the first EOS (kept), with the sampled token's logprob under the processed
    (sampled-from) distribution."""
    eos = eos_token_ids or [tokenizer.eos_token_id]
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device

    def generate(batch_ids, samples):
        outs, lps = [], []
        for ids in batch_ids:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            x = torch.tensor([ids], device=device)
            with torch.no_grad():
                out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=temperature,
                                     top_p=top_p, top_k=top_k or 0, max_new_tokens=max_new_tokens,
                                     eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                     output_scores=True, return_dict_in_generate=True)
            new = out.sequences[0, len(ids):].tolist()
            lp = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new)]
            cut = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))
            outs.append(new[:cut])
            lps.append(lp[:cut])
        return outs, lps

    return generate


def _prompt_roles(tokenizer, messages: list[dict], prompt_ids: list[int], tools, chat_template) -> list[str]:
    """Role per prompt token. ChatML templates (`<|im_start|>role`) are read by their headers, so a system block
    the template adds itself is "system"; otherwise from the rendered prefix lengths of the messages."""
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    if isinstance(start_id, int) and start_id != tokenizer.unk_token_id and start_id in prompt_ids:
        roles, current = [], messages[0]["role"] if messages else "user"
        for k, t in enumerate(prompt_ids):
            if t == start_id and k + 1 < len(prompt_ids):
                word = tokenizer.decode([prompt_ids[k + 1]]).strip()
                current = word if word in ("system", "user", "assistant", "tool") else current
            roles.append(current)
        return roles
    roles, start = [], 0
    for k in range(1, len(messages) + 1):
        ids = tokenizer.apply_chat_template(messages[:k], tools=tools or None, tokenize=True, return_dict=False,
                                            chat_template=chat_template, add_generation_prompt=k == len(messages))
        if list(prompt_ids[:len(ids)]) != list(ids):
            break
        roles += [messages[k - 1]["role"]] * (len(ids) - start)
        start = len(ids)
    last = messages[-1]["role"] if messages else "user"
    return (roles + [last] * (len(prompt_ids) - len(roles)))[:len(prompt_ids)]


def _resolve_tools(tools) -> list:
    out = []
    for t in tools or []:
        if isinstance(t, str):
            if t not in BUILTIN_TOOLS:
                raise InputError(f"Unknown built-in tool {t!r}: choose from {sorted(BUILTIN_TOOLS)}.")
            t = BUILTIN_TOOLS[t]
        out.append(t)
    return out


def _resolve_env(env):
    if env is None or callable(env) and not isinstance(env, str):
        return env
    if env not in BUILTIN_ENVS:
        raise InputError(f"Unknown built-in environment {env!r}: choose from {sorted(BUILTIN_ENVS)}.")
    return BUILTIN_ENVS[env]


def _env_methods(instance) -> tuple[list, bool]:
    """TRL's probe: public methods except `reset` / `get_reward` are tools; whether `get_reward` exists."""
    names = [n for n, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)]
    if "reset" not in names:
        raise InputError("Each environment instance must define a callable `reset`.")
    methods = [getattr(instance, n) for n in names if n not in ("reset", "get_reward") and not n.startswith("_")]
    return methods, "get_reward" in names


def _setup(mode, prompts, tools, env, scripted_replies, G, seed):
    """Per sample: prompt messages (after `reset` observations), tool lists and dicts, env instances."""
    rows = [copy.deepcopy(p) for p in prompts for _ in range(G)]
    envs, scripted, tool_lists = None, None, [list(tools)] * len(rows)
    if mode == "env":
        factory = _resolve_env(env)
        if factory is None:
            raise InputError("mode 'env' needs an environment (a factory or a built-in name: "
                             f"{sorted(BUILTIN_ENVS)}).")
        envs = [factory() for _ in rows]
        tool_lists = []
        for i, (row, e) in enumerate(zip(rows, envs)):
            methods, _ = _env_methods(e)
            tool_lists.append(list(tools) + methods)
            obs = e.reset(seed=seed + i)
            if obs is not None:
                rows[i] = row[:-1] + [{**row[-1], "content": row[-1]["content"] + obs}]
    elif mode == "scripted":
        scripted = [ScriptedReplies(scripted_replies) for _ in rows]
        for s in scripted:
            s.reset()
        tool_lists = [[] for _ in rows]
    return rows, envs, scripted, tool_lists


def _schemas(tools) -> list[dict]:
    from transformers.utils import get_json_schema

    return [get_json_schema(t) for t in tools]


def _as_messages(prompts) -> list[list[dict]]:
    return [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]


def rollout_multiturn(generate, tokenizer, prompts, *, mode: str = "scripted", tools=None, env=None,
                      scripted_replies: list[str] | None = None, max_turns: int = 2, max_completion_length: int = 64,
                      num_generations: int = 2, reward_funcs=None, reward_weights=None, seed: int = 0,
                      max_model_len: int | None = None, tool_time_limit: float = TOOL_TIME_LIMIT_S,
                      tool_size_cap: int = TOOL_SIZE_CAP, chat_template: str | None = None,
                      settings: dict | None = None) -> MultiTurnRollout:
    """Multi-turn rollouts of each prompt (`num_generations` samples each) with TRL 1.16's loop semantics."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES} (got {mode!r}).")
    if max_turns < 0 or max_completion_length < 1 or num_generations < 1:
        raise InputError("max_turns >= 0, max_completion_length >= 1 and num_generations >= 1 are needed.")
    notes = []
    if mode in ("tools", "env"):  # a copy: the caller's (possibly shared, cached) tokenizer is left as it is
        tokenizer = copy.deepcopy(tokenizer)
        notes = prepare_tool_tokenizer(tokenizer)
    tools = _resolve_tools(tools if tools is not None else (["calculator"] if mode == "tools" else []))
    if mode == "tools" and not tools:
        raise InputError("mode 'tools' needs at least one tool.")
    prompts = _as_messages(prompts)
    rows, envs, scripted, tool_lists = _setup(mode, prompts, tools, env, scripted_replies, num_generations, seed)
    states = []
    for row, tl in zip(rows, tool_lists):
        ids = tokenizer.apply_chat_template(row, tools=tl or None, add_generation_prompt=True, tokenize=True,
                                            return_dict=False, chat_template=chat_template)
        states.append(LoopState(list(ids), [], [], [], [], row))
    tools_for = lambda i: tool_lists[i] or None  # noqa: E731
    first_turn(states, generate, tokenizer, tools_for)
    tool_dicts = [{t.__name__: t for t in tl} for tl in tool_lists]
    run_loop(states, generate, tokenizer, mode=mode, max_iterations=max_turns,
             max_completion_length=max_completion_length, max_model_len=max_model_len, tools_for=tools_for,
             tool_dicts=tool_dicts, scripted=scripted, chat_template=chat_template,
             bounds={"time_limit": tool_time_limit, "size_cap": tool_size_cap})
    funcs, names, weights = _reward_setup(reward_funcs, reward_weights, envs)
    completions = [s.completions for s in states]
    if mode == "scripted":  # TRL's rollout_func path decodes the whole completion as one assistant message
        completions = [[parse_response(tokenizer, s.completion_ids, prefix=s.prompt_ids)[0]] for s in states]
    rpf, kw_names = score_multiturn(funcs, rows, completions,
                                    [s.completion_ids for s in states], envs)
    trajs = [_trajectory(i, s, tokenizer, tool_lists[i], chat_template, num_generations, mode)
             for i, s in enumerate(states)]
    for t, s, c in zip(trajs, states, completions):
        t.reward_input = {"prompt": s.prompt_messages, "completion": c,
                          "completion_ids": list(s.completion_ids), "kwargs": kw_names}
    rewards = [sum(w * v for w, v in zip(weights, r) if not math.isnan(v)) for r in rpf]
    vocab = sorted({t for tr in trajs for t in tr.token_ids})
    all_settings = {"mode": mode, "max_turns": max_turns, "max_completion_length": max_completion_length,
                    "num_generations": num_generations, "seed": seed, "tools": [t.__name__ for t in tools],
                    "env": getattr(_resolve_env(env), "__name__", None), "tool_time_limit": tool_time_limit,
                    "tool_size_cap": tool_size_cap, "max_model_len": max_model_len,
                    "chat_template": TOOL_TEMPLATE_NAME if notes else "the tokenizer's own",
                    "tool_schemas": _schemas(tool_lists[0]) if tool_lists and tool_lists[0] else None, **(settings or {})}
    return MultiTurnRollout(trajectories=trajs, settings=all_settings, rewards_per_func=rpf, reward_func_names=names,
                            reward_weights=weights, num_generations=num_generations, rewards=rewards,
                            tokens={t: tokenizer.decode([t]) for t in vocab}, notes=notes)


def _trajectory(i: int, s: LoopState, tokenizer, tools, chat_template, G: int, mode: str) -> Trajectory:
    P, C = len(s.prompt_ids), len(s.completion_ids)
    role = _prompt_roles(tokenizer, s.prompt_messages, s.prompt_ids, tools, chat_template) + s.roles
    return Trajectory(
        token_ids=s.prompt_ids + s.completion_ids, role=role, turn=[0] * P + s.turns,
        sampled=[False] * P + [r == "assistant" for r in s.roles], logprobs=[None] * P + s.logprobs,
        completion_mask=[1] * C, tool_mask=list(s.tool_mask), prompt_length=P,
        messages=s.prompt_messages + s.completions, events=s.events, source="inspector",
        group=i // G, sample_index=i, notes=[f"mode {mode}"])


# ------------------------------------------------------------------------------------------- rewards

def answered_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
    """1 when the last assistant message has text with a digit in it, else 0 (a built-in, model-free reward)."""
    out = []
    for c in completions:
        last = next((m for m in reversed(c) if m.get("role") == "assistant"), {}) if isinstance(c, list) else {"content": c}
        text = str(last.get("content") or "")
        out.append(1.0 if any(ch.isdigit() for ch in text) else 0.0)
    return out


def _reward_setup(reward_funcs, reward_weights, envs):
    funcs = list(reward_funcs) if reward_funcs else [answered_reward]
    names = [getattr(f, "__name__", type(f).__name__) for f in funcs]
    weights = list(reward_weights) if reward_weights else [1.0] * len(funcs)
    if envs:
        env_type = type(envs[0])
        if _env_methods(envs[0])[1]:
            def get_reward(environments, _t=env_type, **kwargs):
                return [e.get_reward() if type(e) is _t else None for e in environments]
            funcs.append(get_reward)
            names.append(env_type.__name__)
            weights.append(1.0)
    return funcs, names, weights


def score_multiturn(funcs, prompts, completions, completion_ids, envs) -> tuple[list[list[float]], list[str]]:
    """Call each reward function as TRL 1.16's `_calculate_rewards` does for conversational data: prompts,
    completions (the message lists), completion_ids (tool tokens included), the extra keyword arguments."""
    kwargs = {"trainer_state": None, "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}
    if envs is not None:
        kwargs["environments"] = envs
    cols = []
    for f in funcs:
        out = f(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        if len(out) != len(prompts):
            raise InputError(f"The reward function {getattr(f, '__name__', f)!r} returned {len(out)} rewards for "
                             f"{len(prompts)} completions.")
        cols.append([float("nan") if v is None else float(v) for v in out])
    return [list(r) for r in zip(*cols)], sorted(kwargs)
