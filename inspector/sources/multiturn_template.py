"""Chat-template pieces of TRL 1.16's multi-turn loop: the shipped tool-capable template, the tool suffix ids,
and the response parser.

The shipped template is TRL 1.16's own `qwen2_5.jinja` (Qwen2.5's Hermes-style `<tool_call>` JSON format, tool
results inside `<tool_response>` in a user turn), byte-identical so that TRL's `add_response_schema` recognises
it and `supports_tool_calling` accepts it. The default policy (SmolLM2-135M-Instruct) uses the same ChatML tokens
(`<|im_start|>`, `<|im_end|>` = EOS = pad), so the template fits its vocabulary. `RESPONSE_TEMPLATE` is TRL's
`qwen3_template` (what `add_response_schema` sets for qwen2_5), read by transformers' `parse_response`.
"""

from __future__ import annotations

import copy
from pathlib import Path

TOOL_TEMPLATE_NAME = "qwen2_5"
_TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "assets" / "chat_templates" / "qwen2_5.jinja"

# TRL 1.16 chat_template_utils.qwen3_template (transformers >= 5.13 new-style response template)
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def tool_chat_template() -> str:
    return _TEMPLATE_PATH.read_text(encoding="utf-8")


def renders_tool_calls(tokenizer, chat_template: str | None = None) -> bool:
    """The template renders an assistant tool call's name, arguments and the tool's result (as TRL's
    `supports_tool_calling` checks)."""
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "name_a8f3", "arguments": {"key_b9d4": "val_d6e7"}}}]},
            {"role": "tool", "name": "name_a8f3", "content": "content_c4f9"}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, chat_template=chat_template)
    except Exception:
        return False
    return all(s in text for s in ("name_a8f3", "key_b9d4", "val_d6e7", "content_c4f9"))


def prepare_tool_tokenizer(tokenizer) -> list[str]:
    """Give the tokenizer a tool-capable chat template (the shipped qwen2_5 one when its own cannot render a
    tool call) and TRL's response template for it. Returns notes saying what was changed."""
    notes = []
    if not renders_tool_calls(tokenizer):
        tokenizer.chat_template = tool_chat_template()
        notes.append(f"The tokenizer's chat template cannot render tool calls: the shipped {TOOL_TEMPLATE_NAME} "
                     "template (TRL 1.16's, Hermes-style <tool_call> JSON) replaces it.")
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        if tokenizer.chat_template == tool_chat_template():
            tokenizer.response_template = copy.deepcopy(RESPONSE_TEMPLATE)
    return notes


def _dummy_assistant(name: str) -> list[dict]:
    return [{"role": "user", "content": "dummy"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {}}}]}]


def suffix_ids(tokenizer, dummy: list[dict], new_messages: list[dict], chat_template=None, **template_kwargs) -> list[int]:
    """TRL 1.16 `_get_tool_suffix_ids`: render `dummy` without and `dummy + new_messages` with the generation
    prompt, trim the first at its last EOS, return the tail of the second."""
    prefix = tokenizer.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True, chat_template=chat_template,
                                           return_dict=False, **template_kwargs)
    full = tokenizer.apply_chat_template(dummy + new_messages, add_generation_prompt=True, tokenize=True,
                                         chat_template=chat_template, return_dict=False, **template_kwargs)
    eos = [i for i, t in enumerate(prefix) if t == tokenizer.eos_token_id]
    if eos:
        prefix = prefix[: eos[-1] + 1]
    if full[: len(prefix)] != prefix:
        raise ValueError("Unexpected tokenization: the EOS-trimmed prefix IDs are not a prefix of the full IDs.")
    return list(full[len(prefix):])


def tool_suffix_ids(tokenizer, tool_messages: list[dict], chat_template=None, **template_kwargs) -> list[int]:
    """The tokens TRL appends after a tool-calling turn: the tool results and the next assistant header."""
    return suffix_ids(tokenizer, _dummy_assistant(tool_messages[0]["name"]), tool_messages, chat_template,
                      **template_kwargs)


def reply_suffix_ids(tokenizer, reply_messages: list[dict], chat_template=None, **template_kwargs) -> list[int]:
    """The same construction for an environment's reply as a user turn (what a `rollout_func` following TRL's
    pattern appends): a plain assistant turn as the dummy prefix."""
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "dummy"}]
    return suffix_ids(tokenizer, dummy, reply_messages, chat_template, **template_kwargs)


def _validate_tool_calls(tool_calls) -> None:
    """TRL 1.16 `_validate_tool_calls` (nested function form, which the response template produces)."""
    if tool_calls is None:
        return
    if not isinstance(tool_calls, list):
        raise ValueError("tool_calls must be a list or None.")
    for idx, call in enumerate(tool_calls):
        if not isinstance(call, dict):
            raise ValueError(f"tool_calls[{idx}] must be a dict.")
        func = call.get("function", call)
        if not isinstance(func, dict) or not isinstance(func.get("name"), str):
            raise ValueError(f"tool_calls[{idx}] has no function name.")
        if func.get("arguments") is None:
            func["arguments"] = {}


def parse_response(tokenizer, ids: list[int], prefix: list[int] | None = None, tools=None) -> tuple[dict, str | None]:
    """TRL 1.16 `parse_response` (transformers' parser with the response template, EOS hotfix, validation, plain
    decode as the fallback). Returns (message, error): error is why parsing fell back, else None.
    Without a response template or schema, TRL decodes with skip_special_tokens=True (`_generate`)."""
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        return {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}, None
    try:
        if prefix is not None and getattr(tokenizer, "response_template", None) is not None:
            parsed = tokenizer.parse_response(ids, prefix=prefix, tools=tools)
        else:
            parsed = tokenizer.parse_response(ids)
        if parsed is None:
            raise ValueError("parse_response returned None")
        if isinstance(parsed.get("content"), str):
            parsed["content"] = parsed["content"].removesuffix(tokenizer.eos_token)
        if not parsed.get("content"):
            parsed["content"] = ""
        if "tool_calls" in parsed:
            _validate_tool_calls(parsed["tool_calls"])
        return parsed, None
    except (ValueError, TypeError) as exc:
        return {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}, str(exc) or type(exc).__name__
