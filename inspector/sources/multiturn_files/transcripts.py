"""OpenAI-style chat transcripts rendered with a chosen tokenizer's chat template, the assistant spans marked as
TRL's training templates mark them.

File: JSON lines (or one JSON list), each `{"messages": [...], "tools": [...]?}` or a bare message list, messages
in the OpenAI chat-completions shape: `role`, `content`, assistant `tool_calls` (`{"id", "type": "function",
"function": {"name", "arguments"}}`, arguments a JSON string or an object) and tool `tool_call_id`.

Rendering: `tokenizer.apply_chat_template(messages, tools=..., chat_template=T, return_dict=True,
return_assistant_tokens_mask=True)` (transformers 5), where T carries `{% generation %}` / `{% endgeneration %}`
markers, as TRL 1.16 trains with (trl/chat_template_utils.py get_training_chat_template, 1077-1253; templates in
trl/chat_templates/*_training.jinja). T is, in order: the template named by `template` (a file name of
trl/chat_templates without `.jinja`, or a Jinja text); the tokenizer's own when it has the markers; TRL's
training variant of it; for a ChatML template TRL has no variant of (SmolLM2's), TRL's `qwen2_5_training`
(ChatML, Hermes `<tool_call>`), said in the notes. A transcript records no sampling: `sampled` is the generation
span and there are no logprobs.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import InputError
from ._stream import chatml_roles, first_true, rollout_of, trajectory_from_stream

FORMAT = "transcript"
CHATML_FALLBACK = "qwen2_5_training"


def trl_template(name: str) -> str:
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*_training.jinja"))
        raise InputError(f"TRL has no chat template {name!r}; its training templates: {', '.join(names)}.")
    return path.read_text()


def training_template(tokenizer, template: str | None = None) -> tuple[str, str]:
    """(Jinja text, which one it is) of the template the transcript is rendered with (see the module docstring)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if template and template != "auto":
        if "{%" in template:
            return template, "the given Jinja template"
        return trl_template(template), f"TRL's {template}.jinja"
    own = tokenizer.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if own and has_generation_markers(own):
        try:
            if get_training_chat_template(tokenizer) is None:
                return own, "the tokenizer's own template (it has {% generation %} markers)"
        except ValueError:
            pass
    try:
        patched = get_training_chat_template(tokenizer)
        if patched:
            return patched, "TRL's training variant of the tokenizer's template"
    except ValueError:
        pass
    if own and "<|im_start|>" in own:
        return trl_template(CHATML_FALLBACK), (
            f"TRL's {CHATML_FALLBACK}.jinja: the tokenizer's ChatML template has no {{% generation %}} markers "
            "and no tool calls, and TRL ships no training variant of it")
    raise InputError("The tokenizer's chat template has no {% generation %} markers and TRL has no training "
                     "variant of it: name a template (a TRL *_training template, or Jinja text).")


def _normalise(messages: list[dict]) -> list[dict]:
    """Tool-call arguments as objects (OpenAI sends JSON strings; the templates `tojson` them)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function", c))
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except json.JSONDecodeError:
                        pass
                calls.append({**c, "function": fn})
            m["tool_calls"] = calls
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def _rows(path) -> list[dict]:
    text = Path(path).read_text().strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    rows = [{"messages": r} if isinstance(r, list) else r for r in rows]
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("messages"), list):
            raise InputError(f"{path}: transcript {n} has no `messages` list.")
    return rows


def message_roles(tokenizer, messages, tools, template, ids) -> list[str] | None:
    """Per token: the role of the message whose rendered text holds it (prefix renders + offsets), None when the
    template is not prefix-preserving here or the tokenizer gives no offsets."""
    render = lambda msgs: tokenizer.apply_chat_template(msgs, tools=tools, chat_template=template, tokenize=False)  # noqa: E731
    full = render(messages)
    ends = []
    for k in range(1, len(messages) + 1):
        prefix = render(messages[:k])
        if not full.startswith(prefix):
            return None
        ends.append(len(prefix))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != list(ids):
        return None
    roles = []
    for start, _ in enc["offset_mapping"]:
        k = next((i for i, e in enumerate(ends) if start < e), len(messages) - 1)
        roles.append(messages[k]["role"] if messages[k]["role"] in ("system", "user", "assistant", "tool") else "environment")
    return roles


def read_transcripts(path, tokenizer, template: str | None = None):
    """A `MultiTurnRollout` from OpenAI-style transcripts (see the module docstring). Needs a tokenizer."""
    if tokenizer is None:
        raise InputError("Transcripts are rendered with a tokenizer's chat template: give a tokenizer.")
    jinja, which = training_template(tokenizer, template)
    note = f"rendered with {which}; loss mask = the template's {{% generation %}} spans (assistant_masks)"
    trajectories = []
    for n, row in enumerate(_rows(path), 1):
        messages, tools = _normalise(row["messages"]), row.get("tools")
        out = tokenizer.apply_chat_template(messages, tools=tools, chat_template=jinja, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        ids, marked = list(out["input_ids"]), [bool(x) for x in out["assistant_masks"]]
        if not any(marked):
            raise InputError(f"{path}: transcript {n}: the template marks no assistant tokens.")
        roles = message_roles(tokenizer, messages, tools, jinja, ids) or chatml_roles(ids, tokenizer)
        events = [{"turn": k, "tool_calls": [c["function"].get("name") for c in m["tool_calls"]]}
                  for k, m in enumerate((m for m in messages if m["role"] == "assistant"), 1) if m.get("tool_calls")]
        trajectories.append(trajectory_from_stream(
            ids, sampled=marked, trained=marked, logprobs=None, prompt_length=first_true(marked, len(ids)),
            source=FORMAT, tokenizer=tokenizer, roles=roles, messages=row["messages"], events=events,
            notes=[note, "a transcript records no sampling: `sampled` is the generation span, no logprobs"]))
    return rollout_of(trajectories, source=FORMAT, path=path, tokenizer=tokenizer, notes=[note])
