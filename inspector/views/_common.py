"""Helpers shared by the views: readable token strings and the per-sample positions every view marks.

Only cheap indexing of the Rollout's tensors happens here; nothing is recomputed.
"""

from __future__ import annotations

import html
import math
import re

import torch

from ..record.rollout import Rollout
from ..tensors import first_true_indices


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> character table of byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen ...)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_SHIFTED = frozenset(c for c in _BYTE_DECODER if ord(c) >= 256)  # Ġ (space), Ċ (newline), ... : byte-level only
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece byte tokens such as <0x0A>
_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def readable(token: str) -> str:
    """The text a token string stands for: byte-level BPE decoded ('Ġhi' -> ' hi'), sentencepiece's '▁' as a
    space, byte-fallback tokens ('<0x0A>') as their character. Anything else is returned as it is."""
    if not token.isascii() and all(c in _BYTE_DECODER for c in token):
        raw = bytes(_BYTE_DECODER[c] for c in token)
        if any(c in _SHIFTED for c in token):
            # surely byte-level: decode, and show a split multi-byte character as its escaped bytes
            return raw.decode("utf-8", errors="backslashreplace")
        try:  # 'Ã©' is byte-level for 'é'; a Latin-1 word ('café') is almost never valid UTF-8 this way
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    match = _BYTE_FALLBACK.fullmatch(token)
    if match and int(match.group(1), 16) < 0x80:
        return chr(int(match.group(1), 16))
    return token.replace("▁", " ")


def visible(text: str) -> str:
    """`text` with whitespace drawn: ␣ for a space, ↵ for a newline, ⇥ for a tab; control characters escaped."""
    text = text.translate(_VISIBLE)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def shown(token: str, limit: int | None = None) -> str:
    """A token string as a reader should see it, whitespace visible, shortened to `limit` characters."""
    text = visible(readable(token)) or "∅"
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def fmt(x, decimals: int = 3, *, signed: bool = False, sci: bool = False, none: str = "none") -> str:
    """A number as the page prints it: `decimals` digits after the point (`sci`: in scientific notation), a sign
    when `signed`, never a negative zero (a value that rounds to zero prints as 0.000, unsigned), `none` for None,
    and nan / inf / -inf as words. Every view prints its numbers through this function."""
    if x is None:
        return none
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    spec = f"{'+' if signed else ''}.{decimals}{'e' if sci else 'f'}"
    text = format(x, spec)
    if float(text) == 0:  # -0.0, or a tiny value rounded away: no sign
        text = format(0.0, spec.lstrip("+"))
    return text


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 sample', '2 samples', '0 samples' (`nouns` for an irregular plural)."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def sample_label(r: Rollout, i: int, limit: int = 26) -> str:
    """'3: first words of the prompt…' (plain text)."""
    return f"{i}: {shorten(r.prompts[i], limit)}"


def stop_positions(r: Rollout) -> list[int | None]:
    """Response index of the first `stop_token_id` in each response (None: no stop token, or no stop id)."""
    if r.stop_token_id is None:
        return [None] * r.batch_size
    first = first_true_indices(r.responses == r.stop_token_id).tolist()
    return [None if f >= r.response_width else f for f in first]


def first_pad_positions(r: Rollout) -> list[int | None]:
    """Response index of the first pad id in `postprocessed_responses`: `sequence_lengths` is this minus one."""
    first = first_true_indices(r.postprocessed_responses == r.pad_token_id).tolist()
    return [None if f >= r.response_width else f for f in first]


def reward_response_positions(r: Rollout) -> list[int] | None:
    """Where the score was read, as a response index of the policy's tokens (-1: the last query token, an empty
    response). None when the reward model has its own tokenizer: its positions do not index the policy's tokens."""
    if not r.reward_tokenizer_is_policy:
        return None
    return (r.score_positions - r.context_length).tolist()


def valid_mask(r: Rollout) -> torch.Tensor:
    """(B, G) True up to and including `sequence_lengths`: the tokens TRL trains on (not its padding_mask)."""
    return ~r.padding_mask


def special_token_strings(r: Rollout) -> set[str]:
    return {r.token(i) for i in r.special_ids}


_LOOKS_SPECIAL = re.compile(r"<[^<>\s]+>|\[[A-Z_]+\]")


def is_special_reward_token(r: Rollout, token_id: int) -> bool:
    """Whether a token of `reward_query_responses` is a special token. Exact when the reward model shares the
    policy's tokenizer; otherwise judged from the token string (a policy special token, or <...> / [CLS] style)."""
    if r.reward_tokenizer_is_policy:
        return int(token_id) in set(r.special_ids)
    text = r.reward_tokens.get(int(token_id), "")
    return text in special_token_strings(r) or bool(_LOOKS_SPECIAL.fullmatch(text))
