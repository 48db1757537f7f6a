"""Template drift (token-in, token-out): the stream as generated turn by turn against a fresh
`apply_chat_template` of the final messages; re-tokenization of decoded text at turn boundaries; `<think>`
blocks a template drops from past turns.

A trainer that re-renders the conversation instead of keeping the generated ids trains on tokens the model
never saw (different tool-call spacing, a dropped reasoning block, a different split of the same text).
"""

from __future__ import annotations

import difflib
import re

_THINK = re.compile(r"<think>(.*?)</think>", re.S)


def align(stream: list[int], rendered: list[int]) -> dict:
    """First differing index and the count of tokens in non-matching blocks (difflib alignment)."""
    first = next((k for k, (a, b) in enumerate(zip(stream, rendered)) if a != b), None)
    if first is None and len(stream) != len(rendered):
        first = min(len(stream), len(rendered))
    ops = difflib.SequenceMatcher(a=stream, b=rendered, autojunk=False).get_opcodes()
    blocks = [(tag, i1, i2, j1, j2) for tag, i1, i2, j1, j2 in ops if tag != "equal"]
    differing = sum(max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in blocks)
    return {"first_diff": first, "differing": differing, "blocks": blocks,
            "stream_length": len(stream), "rendered_length": len(rendered)}


def _assistant_spans(traj) -> list[tuple[int, int, int]]:
    """(turn, start, end) absolute spans of sampled tokens, one per assistant turn."""
    spans: dict[int, list[int]] = {}
    for k, (s, t) in enumerate(zip(traj.sampled, traj.turn)):
        if s:
            spans.setdefault(t, []).append(k)
    return [(t, ks[0], ks[-1] + 1) for t, ks in sorted(spans.items())]


def retokenization(traj, tokenizer) -> list[dict]:
    """Per assistant turn: decode its tokens and encode the text again; the turns where the ids change."""
    out = []
    for turn, a, b in _assistant_spans(traj):
        ids = traj.token_ids[a:b]
        again = tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"]
        if list(again) != list(ids):
            d = align(list(ids), list(again))
            out.append({"turn": turn, "start": a, "first_diff": a + d["first_diff"], "differing": d["differing"],
                        "generated": len(ids), "retokenized": len(again)})
    return out


def dropped_think(traj, tokenizer, rendered_text: str) -> list[dict]:
    """Assistant turns whose generated `<think>` block is absent from the re-rendered conversation."""
    out = []
    for turn, a, b in _assistant_spans(traj):
        text = tokenizer.decode(traj.token_ids[a:b])
        for m in _THINK.finditer(text):
            if m.group(0) not in rendered_text:
                out.append({"turn": turn, "start": a, "end": b, "think": m.group(1)[:200]})
    return out


def template_drift(traj, tokenizer, *, tools=None, chat_template=None) -> dict:
    """The generated stream against `apply_chat_template(final messages)`, aligned.

    Tokens the re-render adds after the stream's end (the closing newline of the last turn) are reported as
    `trailing` and not counted as drift.
    """
    rendered = list(tokenizer.apply_chat_template(traj.messages, tools=tools or None, tokenize=True,
                                                  return_dict=False, chat_template=chat_template,
                                                  add_generation_prompt=False))
    stream = list(traj.token_ids)
    trailing = 0
    if rendered[:len(stream)] == stream:
        trailing, rendered_cmp = len(rendered) - len(stream), stream
    else:
        rendered_cmp = rendered
    d = align(stream, rendered_cmp)
    first = d["first_diff"]
    d.update(
        trailing=trailing, rendered=rendered,
        stream_token=stream[first] if first is not None and first < len(stream) else None,
        rendered_token=rendered_cmp[first] if first is not None and first < len(rendered_cmp) else None,
        first_turn=traj.turn[first] if first is not None and first < len(traj.turn) else None,
        retokenized=retokenization(traj, tokenizer),
        think_dropped=dropped_think(traj, tokenizer, tokenizer.decode(rendered)),
    )
    return d
