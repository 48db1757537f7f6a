"""From a trainer's flat token stream (ids, which tokens the model sampled, which the trainer trains on, sampler
logprobs) to a `Trajectory`; shared by the readers of multi-turn files.

A foreign trainer's loss mask is kept exactly: `completion_mask` is 1 on every real completion token and
`tool_mask` holds the file's own mask over the completion, so `Trajectory.loss_mask` is the file's mask.
"""

from __future__ import annotations

import math

from ...errors import InputError
from ...record.trajectory import MultiTurnRollout, Trajectory

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def turns_of(sampled: list[bool], prompt_length: int) -> list[int]:
    """Per token: 0 in the prompt, then k from the start of the k-th sampled run up to the next one (an assistant
    turn and the tool / environment reply that follows it)."""
    turn, out, prev = 0, [], False
    for i, s in enumerate(sampled):
        if i >= prompt_length and s and not prev:
            turn += 1
        out.append(turn if i >= prompt_length else 0)
        prev = s and i >= prompt_length
    return out


def chatml_roles(ids: list[int], tokenizer) -> list[str] | None:
    """Per token role from ChatML headers (`<|im_start|>role\\n ... <|im_end|>\\n`), or None when the stream has
    no header. A `user` message whose body opens with `<tool_response>` (Qwen2.5 / Hermes tool replies) is `tool`."""
    start = tokenizer.convert_tokens_to_ids(IM_START) if tokenizer is not None else None
    if start is None or start == getattr(tokenizer, "unk_token_id", None) or start not in ids:
        return None
    roles: list[str] = []
    current = "system"
    i = 0
    while i < len(ids):
        if ids[i] == start:
            j = ids.index(start, i + 1) if start in ids[i + 1:] else len(ids)
            text = tokenizer.decode(ids[i + 1:j])
            name = text.split("\n", 1)[0].strip()
            body = text.split("\n", 1)[1] if "\n" in text else ""
            current = name if name in ("system", "user", "assistant", "tool") else "environment"
            if current == "user" and body.lstrip().startswith("<tool_response>"):
                current = "tool"
            roles.extend([current] * (j - i))
            i = j
        else:
            roles.append(current)
            i += 1
    return roles


def stream_roles(ids, sampled, prompt_length, tokenizer=None, non_model="tool") -> tuple[list[str], str | None]:
    """Roles per token: from ChatML headers when the tokenizer's stream has them, else sampled -> assistant,
    prompt -> user, the rest -> `non_model`. Sampled tokens are always `assistant` (the model wrote them).
    Returns the roles and a note saying how they were found."""
    roles = chatml_roles(ids, tokenizer)
    note = None
    if roles is None:
        roles = ["user" if i < prompt_length else non_model for i in range(len(ids))]
        note = (f"roles from the masks only (no chat headers found): prompt = user, sampled = assistant, "
                f"other completion tokens = {non_model}")
    return ["assistant" if s else r for r, s in zip(roles, sampled)], note


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def trajectory_from_stream(ids, *, sampled, trained, logprobs, prompt_length, source, tokenizer=None, roles=None,
                           notes=(), messages=None, non_model="tool", **extra) -> Trajectory:
    """One Trajectory from per-token lists over the whole stream (prompt included). `trained` is the file's loss
    mask (0 in the prompt); `logprobs` per token, kept only where `sampled` (a trainer's 0.0 on a token the model
    did not sample is padding, not a probability)."""
    n = len(ids)
    for name, v in (("sampled", sampled), ("trained", trained), ("logprobs", logprobs)):
        if v is not None and len(v) != n:
            raise InputError(f"{source}: {name} has {len(v)} entries but the sample has {n} tokens.")
    if not 0 <= prompt_length <= n:
        raise InputError(f"{source}: the prompt length {prompt_length} is outside the {n} tokens.")
    ids = [int(t) for t in ids]
    sampled = [bool(s) for s in sampled]
    notes = list(notes)
    if roles is None:
        roles, note = stream_roles(ids, sampled, prompt_length, tokenizer, non_model)
        if note:
            notes.append(note)
    lp = [(_finite(x) if s else None) for x, s in zip(logprobs, sampled)] if logprobs is not None else [None] * n
    return Trajectory(
        token_ids=ids, role=list(roles), turn=turns_of(sampled, prompt_length), sampled=sampled, logprobs=lp,
        completion_mask=[1] * (n - prompt_length), tool_mask=[int(bool(t)) for t in trained[prompt_length:]],
        prompt_length=prompt_length, messages=list(messages or []), source=source, notes=notes, **extra,
    )


def first_true(values, default: int) -> int:
    return next((i for i, v in enumerate(values) if v), default)


def token_texts(trajectories: list[Trajectory], tokenizer) -> dict[int, str]:
    """id -> decoded piece for every id the trajectories hold (the views' labels); str(id) without a tokenizer."""
    ids = sorted({t for tr in trajectories for t in tr.token_ids})
    if tokenizer is None:
        return {i: f"[{i}]" for i in ids}
    return {i: tokenizer.decode([i]) for i in ids}


def rollout_of(trajectories: list[Trajectory], *, source: str, path: str, tokenizer=None, notes=(),
               rewards=None, advantages=None, num_generations: int = 1) -> MultiTurnRollout:
    if not trajectories:
        raise InputError(f"{path}: no trajectories in this {source} file.")
    for k, tr in enumerate(trajectories):
        tr.sample_index = k
    return MultiTurnRollout(
        trajectories=trajectories, settings={"file": str(path), "format": source},
        model_names={"tokenizer": getattr(tokenizer, "name_or_path", None)}, tokens=token_texts(trajectories, tokenizer),
        notes=list(notes), rewards=list(rewards or []), advantages=list(advantages or []), num_generations=num_generations,
    )
