"""TRL 1.16's multi-turn loop (`GRPOTrainer._tool_call_loop`), one step at a time, recording what happened.

Token ids are built by concatenation exactly as TRL builds them: `prompt_ids + completion_ids + suffix_ids`
with the suffix from `_get_tool_suffix_ids` (no re-tokenization of past turns). Before each regeneration the
overlong check rolls the iteration's tool messages back when `len(pct) - len(prompt) > max_completion_length`
or `len(pct) >= max_model_len`; after it the new turn is cut so the whole completion stays within
`max_completion_length`. `tool_mask` gets 0 on every suffix token and 1 on every generated one.

`generate(batch_ids, samples)` is any function returning (completion ids, sampler logprobs or None) per row,
each cut after its first EOS (TRL's transformers path); `samples` names the rows (sample indices).
The scripted mode answers each finished assistant turn with a user message (role "environment"), built with
the same suffix construction: what a `rollout_func` returning `env_mask` produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .multiturn_template import parse_response, reply_suffix_ids, tool_suffix_ids
from .multiturn_tools import TOOL_SIZE_CAP, TOOL_TIME_LIMIT_S, call_tool


@dataclass
class LoopState:
    """Per-sample state of the loop, TRL's lists plus what the record needs."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float | None]
    tool_mask: list[int]
    completions: list[dict]            # TRL's `completions[i]`: assistant / tool messages
    prompt_messages: list[dict]
    roles: list[str] = field(default_factory=list)      # per completion token
    turns: list[int] = field(default_factory=list)      # per completion token
    events: list[dict] = field(default_factory=list)
    pending_calls: list | None = None


def _turn_event(turn: int, ids: list[int], message: dict, parse_error: str | None, tokenizer) -> dict:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    ev = {"turn": turn, "kind": "assistant", "tokens": len(ids), "tool_calls": message.get("tool_calls") or [],
          "ends_with_eos": bool(ids) and ids[-1] == tokenizer.eos_token_id}
    if "<tool_call>" in text and not message.get("tool_calls"):
        ev["parse_failed"] = parse_error or "the text holds <tool_call> but no tool call was parsed"
    return ev


def first_turn(states: list[LoopState], generate, tokenizer, tools_for) -> None:
    """TRL's `_generate_single_turn` on the prompts, then `parse_response` of each completion."""
    outs, lps = generate([s.prompt_ids for s in states], list(range(len(states))))
    for i, s in enumerate(states):
        ids = list(outs[i])
        s.completion_ids = ids
        s.logprobs = list(lps[i]) if lps is not None else [None] * len(ids)
        s.tool_mask = [1] * len(ids)
        s.roles, s.turns = ["assistant"] * len(ids), [1] * len(ids)
        msg, err = parse_response(tokenizer, ids, prefix=s.prompt_ids, tools=tools_for(i))
        s.completions = [msg]
        s.events.append(_turn_event(1, ids, msg, err, tokenizer))
        s.pending_calls = msg.get("tool_calls")


def _run_calls(s: LoopState, tools: dict, bounds: dict, in_process: bool) -> list[dict]:
    """Call the tools of the last assistant message; TRL's tool messages, and the outcomes on the event."""
    messages, outcomes = [], []
    for call in s.pending_calls:
        if call.get("type") != "function":
            name = call.get("name", "unknown")
            result, ev = {"error": f"Unsupported tool call type: {call.get('type')}"}, {"name": name, "outcome": "error"}
        else:
            fn = call["function"]
            name = fn["name"]
            result, ev = call_tool(tools, name, fn.get("arguments") or {}, in_process=in_process, **bounds)
        messages.append({"role": "tool", "name": name, "content": result if isinstance(result, list) else str(result)})
        outcomes.append(ev)
    s.events[-1]["tool_outcomes"] = outcomes
    return messages


def _overlong(pct_len: int, prompt_len: int, max_completion_length: int, max_model_len: int | None) -> bool:
    return pct_len - prompt_len > max_completion_length or (max_model_len is not None and pct_len >= max_model_len)


def _append_turn(s: LoopState, pct: list[int], post: list[int], post_lp, suffix_role: str, turn: int) -> None:
    """TRL's tool_mask / logprobs / completion_ids update after a regeneration."""
    tool_length = len(pct) - len(s.prompt_ids) - len(s.completion_ids)
    s.tool_mask += [0] * tool_length + [1] * len(post)
    s.logprobs += [None] * tool_length + (list(post_lp) if post_lp is not None else [None] * len(post))
    s.roles += [suffix_role] * tool_length + ["assistant"] * len(post)
    s.turns += [turn - 1] * tool_length + [turn] * len(post)
    s.completion_ids = pct[len(s.prompt_ids):] + list(post)


def run_loop(states: list[LoopState], generate, tokenizer, *, mode: str, max_iterations: int,
             max_completion_length: int, max_model_len: int | None, tools_for=None, tool_dicts=None,
             scripted=None, bounds: dict | None = None, chat_template=None) -> None:
    """The loop of `_tool_call_loop` (tools / env) or of a scripted environment (`scripted[i].reply(text)`)."""
    bounds = bounds or {"time_limit": TOOL_TIME_LIMIT_S, "size_cap": TOOL_SIZE_CAP}
    tools_for = tools_for or (lambda i: None)
    if mode == "scripted":
        active = [i for i, s in enumerate(states) if s.completion_ids and s.completion_ids[-1] == tokenizer.eos_token_id]
    else:
        active = [i for i, s in enumerate(states) if s.pending_calls]
    iteration = 0
    while active and iteration < max_iterations:
        turn = iteration + 2
        pcts, keep = [], []
        for i in active:
            s = states[i]
            before = len(s.completions)
            if mode == "scripted":
                text = s.completions[-1].get("content", "")
                new = [{"role": "user", "content": scripted[i].reply(text)}]
                suffix = reply_suffix_ids(tokenizer, new, chat_template)
            else:
                new = _run_calls(s, tool_dicts[i], bounds, in_process=(mode == "env"))
                suffix = tool_suffix_ids(tokenizer, new, chat_template)
            s.completions += new
            pct = s.prompt_ids + s.completion_ids + suffix
            if _overlong(len(pct), len(s.prompt_ids), max_completion_length, max_model_len):
                del s.completions[before:]
                s.events[-1]["rolled_back"] = {"messages": new, "suffix_tokens": len(suffix),
                                               "completion_tokens": len(s.completion_ids)}
                continue
            s.events[-1]["reply_tokens"] = len(suffix)
            pcts.append(pct)
            keep.append(i)
        if not keep:
            active = []
            break
        outs, lps = generate(pcts, keep)
        nxt = []
        for k, i in enumerate(keep):
            s, pct, post = states[i], pcts[k], list(outs[k])
            post_lp = list(lps[k]) if lps is not None else None
            excess = len(pct) - len(s.prompt_ids) + len(post) - max_completion_length
            cut = 0
            if excess > 0:
                cut = min(excess, len(post))
                post = post[: len(post) - cut]
                post_lp = post_lp[: len(post)] if post_lp is not None else None
            _append_turn(s, pct, post, post_lp, "environment" if mode == "scripted" else "tool", turn)
            if post:
                msg, err = parse_response(tokenizer, post, prefix=pct, tools=tools_for(i))
                s.completions.append(msg)
            else:
                msg, err = {}, None
            ev = _turn_event(turn, post, msg, err, tokenizer)
            if cut:
                ev["cut_tokens"] = cut
            s.events.append(ev)
            s.pending_calls = msg.get("tool_calls")
            done_eos = bool(post) and post[-1] == tokenizer.eos_token_id
            if (mode == "scripted" and done_eos) or (mode != "scripted" and s.pending_calls):
                nxt.append(i)
        active = nxt
        iteration += 1
    for i in active:
        states[i].events[-1]["stopped"] = "max_turns"
