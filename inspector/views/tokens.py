"""Token-level HTML views: the raw `output.sequences`, the manual split, and the value versus reward inputs.

Every function returns a self-contained HTML fragment styled by `TOKEN_CSS`, which a page injects once.
Stable hooks for browser tests: each token is a `<span class="tok ...">` chip whose `title` gives its
index, id and token string; role classes `tok-query`, `tok-response`, `tok-leftpad`, `tok-special`,
`tok-pad`, `tok-masked`, `tok-truncated`, `tok-replaced` (a prompt token TRL's generate masked and fed
as 0); `data-role` holds a space-separated list of `stop` and `reward` (select with
`[data-role~="reward"]`); a sample's row has `data-sample="i"`; the split at `context_length` is a
`<span class="ctx-boundary">`. Legend swatches use `tok-legend`, never `tok`, so counts of chips hold.
"""

from __future__ import annotations

import re

from ..record.rollout import Rollout
from ._common import (
    esc,
    fmt,
    plural,
    first_pad_positions,
    is_special_reward_token,
    shown,
    stop_positions,
)

TOKEN_CSS = """
.tok-view { font-family: ui-sans-serif, system-ui, sans-serif; font-size: 13px; line-height: 1.25; color: #111827;
  background: #ffffff; padding: 4px 6px; border-radius: 6px; }
.tok-view .tok-meta { color: #4b5563; margin: 2px 0 6px; }
.tok-view code { font-size: 12px; }
.tok-legend-row { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center; margin: 0 0 6px; color: #374151; }
.tok-legend-row > span { display: inline-flex; align-items: center; gap: 3px; }
.tok, .tok-legend, .tok-ellipsis {
  display: inline-block; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
  padding: 1px 3px; margin: 1px 1px; border-radius: 3px; border: 1px solid transparent; white-space: pre;
  color: #111827; background: #f3f4f6; max-width: 18em; overflow: hidden; text-overflow: ellipsis; vertical-align: middle;
}
.tok-query { background: #dbeafe; color: #1e3a8a; }
.tok-response { background: #dcfce7; color: #14532d; }
.tok-special { background: #fef3c7; color: #92400e; font-weight: 600; border-color: #f59e0b; }
.tok-leftpad { background: #f9fafb; color: #9ca3af; border: 1px dashed #d1d5db; font-style: italic; }
.tok-pad { background: #e5e7eb; color: #4b5563; border: 1px dashed #9ca3af; }
.tok-masked { opacity: 0.45; text-decoration: line-through; }
.tok-replaced { text-decoration: underline wavy #dc2626; }
.tok-truncated { background: #fee2e2; color: #991b1b; border: 1px solid #f87171; text-decoration: line-through; opacity: 1; }
.tok[data-role~="stop"], .tok-legend.legend-stop { outline: 2px solid #dc2626; outline-offset: 1px; opacity: 1; }
.tok[data-role~="reward"], .tok-legend.legend-reward { border: 2px solid #7c3aed; opacity: 1; }
.tok[data-role~="stop"]::after, .tok-legend.legend-stop::after {
  content: "■"; color: #dc2626; font-size: 9px; vertical-align: super; margin-left: 1px; }
.tok[data-role~="reward"]::before, .tok-legend.legend-reward::before {
  content: "★"; color: #7c3aed; font-size: 10px; vertical-align: super; margin-right: 1px; }
.tok-ellipsis { background: transparent; color: #6b7280; font-style: italic; border: 1px dotted #9ca3af; }
.ctx-boundary {
  display: inline-block; width: 0; height: 1.5em; border-left: 3px solid #111827; margin: 0 4px; vertical-align: middle; }
.tok-row { display: flex; align-items: flex-start; gap: 6px; padding: 3px 0; border-top: 1px solid #e5e7eb; }
.tok-row-label { flex: 0 0 2.2em; text-align: right; font-weight: 600; color: #374151; padding-top: 2px; }
.tok-seq { flex: 1 1 auto; display: flex; flex-wrap: wrap; align-items: center; min-width: 0; }
.split-cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 22em), 1fr)); gap: 10px; }
.split-col { border: 1px solid #e5e7eb; border-radius: 6px; padding: 6px 8px; background: #ffffff; min-width: 0; }
.split-col h4 { margin: 0 0 4px; font-size: 14px; color: #111827; }
.split-label { margin: 6px 0 2px; color: #4b5563; font-size: 12px; }
.split-text {
  margin: 0; padding: 4px 6px; background: #f9fafb; border-radius: 4px; white-space: pre-wrap; word-break: break-word;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; color: #111827;
  max-height: 16em; overflow: auto; }
.split-text .run { color: #92400e; font-style: italic; }
.vr-score { margin-top: 6px; font-size: 13px; color: #111827; }
.vr-score b { color: #7c3aed; }
"""

_QUERY_TAIL = 3  # query tokens shown before the response in value_reward_html
_ROLE_NOTES = {"stop": "first stop token", "reward": "score read here"}


def _chip(classes: str, text: str, title: str, roles: list[str] | None = None) -> str:
    role = f' data-role="{" ".join(roles)}"' if roles else ""
    return f'<span class="tok {classes}"{role} title="{title}">{text}</span>'


def _title(pos: int, token_id: int, token: str, *notes: str) -> str:
    parts = [f"{pos} · id {token_id} · {token}", *[n for n in notes if n]]
    return esc(" · ".join(parts))


class _Tokens:
    """Escaped chip text and escaped raw token strings, computed once per id."""

    def __init__(self, strings: dict[int, str]):
        self.strings = strings
        self._text: dict[int, str] = {}

    def raw(self, token_id: int) -> str:
        return self.strings.get(token_id, f"<{token_id}>")

    def text(self, token_id: int) -> str:
        out = self._text.get(token_id)
        if out is None:
            out = self._text[token_id] = esc(shown(self.raw(token_id)))
        return out


def _legend(items: list[tuple[str, str, str]]) -> str:
    """A row of (css classes, swatch text, label) swatches."""
    cells = "".join(f'<span><span class="tok-legend {cls}">{esc(sample)}</span>{esc(label)}</span>'
                    for cls, sample, label in items)
    return f'<div class="tok-legend-row">{cells}</div>'


_SEQ_LEGEND = [
    ("tok-query", "query", "query token"),
    ("tok-response", "response", "response token"),
    ("tok-special", "<|…|>", "special token"),
    ("tok-leftpad", "pad→0", "left padding (TRL's generate fed id 0)"),
    ("tok-query tok-special tok-replaced", "<eos>→0", "pad id inside the prompt: masked and fed as 0 (TRL)"),
    ("tok-pad", "pad", "pad token in the response"),
    ("tok-response tok-masked", "after", "after sequence_lengths: masked (TRL's padding_mask)"),
    ("tok-response legend-stop", "stop", "first stop token"),
    ("tok-response legend-reward", "score", "score read here"),
]


def _sequence_row(r: Rollout, i: int, toks: _Tokens, specials: set[int], stop: int | None, reward: int | None) -> str:
    """One row of `r.sequences`: absolute positions 0..Q+G-1, the boundary drawn before position Q."""
    Q, pad = r.context_length, r.pad_token_id
    ids = r.sequences[i].tolist()
    query = r.queries[i].tolist()
    qmask = r.query_attention_mask[i].tolist()
    seq_len = int(r.sequence_lengths[i])
    chips = []
    for t, tid in enumerate(ids):
        roles = []
        if t == Q:
            chips.append(f'<span class="ctx-boundary" title="context_length = {Q}"></span>')
        if t < Q and not qmask[t]:
            if tid != pad:
                text = f"pad→{tid}"
                note = f"left padding: queries hold the pad id {pad}, TRL's generate replaced it by {tid}"
            else:
                text, note = toks.text(tid), "left padding"
            classes = "tok-leftpad"
        else:
            text = toks.text(tid)
            g = t - Q
            classes = "tok-query" if g < 0 else "tok-response"
            note = ""
            if g < 0 and query[t] != tid:
                # TRL's mask is `ids != pad`: a pad id inside the prompt (pad == eos: the chat template's EOS)
                # was masked and replaced by 0 too, so the policy never saw it
                text = f"{toks.text(query[t])}→{tid}"
                note = (f"queries hold id {query[t]} ({toks.raw(query[t])}) here: the pad id, so TRL's generate "
                        f"masked it and fed {tid}; the policy never saw this prompt token")
                classes += " tok-replaced"
            if g >= 0 and tid == pad:
                classes += " tok-pad"
            elif tid in specials:
                classes += " tok-special"
            if g > seq_len:
                classes += " tok-masked"
                note = "masked"
            if stop is not None and g == stop:
                roles.append("stop")
        if reward is not None and t == reward:
            roles.append("reward")
        title = _title(t, tid, toks.raw(tid), note, *[_ROLE_NOTES[x] for x in roles])
        chips.append(_chip(classes, text, title, roles))
    label = esc(r.prompts[i])
    return (f'<div class="tok-row" data-sample="{i}"><span class="tok-row-label" title="{label}">{i}</span>'
            f'<div class="tok-seq">{"".join(chips)}</div></div>')


def sequences_html(r: Rollout, sample: int | None = None) -> str:
    """The raw `r.sequences` (B, Q + G) token by token: one row per sample, or only row `sample`.

    Chips are styled by role (query, response, left padding, special, pad, after sequence_lengths); the first
    stop token and the token the score was read at carry `data-role`; a `ctx-boundary` marks context_length.
    The score position is marked only when the reward model shares the policy's tokenizer (otherwise its
    positions index the reward model's own tokens: see `value_reward_html`).
    Raises IndexError for a sample out of range.
    """
    rows = range(r.batch_size) if sample is None else [_check_sample(r, sample)]
    toks = _Tokens(r.tokens)
    specials = set(r.special_ids)
    stops = stop_positions(r)
    rewards = r.score_positions.tolist() if r.reward_tokenizer_is_policy else [None] * r.batch_size
    pad_tok = shown(r.token(r.pad_token_id))
    meta = (f"<code>output.sequences</code>: {r.batch_size} × {r.context_length + r.response_width} · "
            f"context_length {r.context_length} · {r.response_width} generated · pad id {r.pad_token_id} "
            f"<code>{esc(pad_tok)}</code>" + (" = EOS" if r.pad_equals_eos else "")
            + (f" · stop id {r.stop_token_id} <code>{esc(shown(r.token(r.stop_token_id)))}</code>"
               if r.stop_token_id is not None else " · no stop token (no truncation)"))
    if not r.reward_tokenizer_is_policy:
        meta += " · the reward model has its own tokenizer: its read position is shown in the value/reward view"
    body = "".join(_sequence_row(r, i, toks, specials, stops[i], rewards[i]) for i in rows)
    return f'<div class="tok-view tok-sequences"><div class="tok-meta">{meta}</div>{_legend(_SEQ_LEGEND)}{body}</div>'


def _check_sample(r: Rollout, sample: int) -> int:
    sample = int(sample)
    if not 0 <= sample < r.batch_size:
        raise IndexError(f"sample {sample} is out of range: the rollout has {r.batch_size} samples (0..{r.batch_size - 1}).")
    return sample


def _collapse_runs(text: str, token: str) -> str:
    """Escaped `text` with a trailing run of 3+ `token` (the pad of a finished row) written once with a count."""
    if not token:
        return esc(text)
    match = re.search(f"(?:{re.escape(token)}){{3,}}$", text)
    if not match:
        return esc(text)
    count = len(match.group()) // len(token)
    return esc(text[: match.start()]) + f'<span class="run">{esc(token)} × {count}</span>'


def _text_block(label: str, text: str, pad_token: str = "") -> str:
    return f'<div class="split-label">{label}</div><pre class="split-text">{_collapse_runs(text, pad_token)}</pre>'


def split_html(r: Rollout, sample: int) -> str:
    """The manual split of one sample at `context_length`: the query and the response side by side, each
    decoded with and without special tokens, with their token counts. Raises IndexError for a bad sample."""
    i = _check_sample(r, sample)
    Q, G = r.context_length, r.response_width
    real_q = int(r.query_attention_mask[i].sum())
    seq_len = int(r.sequence_lengths[i])
    stop = stop_positions(r)[i]
    first_pad = first_pad_positions(r)[i]
    truncated = int((r.postprocessed_responses[i] != r.responses[i]).sum())
    pad_token = r.token(r.pad_token_id)
    replaced = int((r.sequences[i, :Q] != r.queries[i]).sum())
    stop_text = (f"first stop token at response index {stop}" if stop is not None
                 else "no stop token" if r.stop_token_id is not None else "no stop token set")
    query = (
        f'<div class="split-col split-query"><h4>query · <code>queries[{i}]</code></h4>'
        f'<div class="tok-meta">context_length {Q} = {real_q} prompt tokens + {Q - real_q} left pad'
        + (f" · <code>sequences[{i}, :{Q}]</code> holds {replaced} pad ids replaced by 0 (TRL's generate)" if replaced else "")
        + "</div>"
        + _text_block("with special tokens (the text that was tokenized)", r.query_texts[i])
        + _text_block("the plain prompt", r.prompts[i])
        + "</div>"
    )
    response = (
        f'<div class="split-col split-response"><h4>response · <code>sequences[{i}, {Q}:]</code></h4>'
        f'<div class="tok-meta">{G} columns · {stop_text} · '
        + (f"first pad in postprocessed at {first_pad}" if first_pad is not None else "no pad in postprocessed")
        + f' · sequence_lengths {seq_len} → {seq_len + 1} tokens trained on'
        f'{f" · {truncated} tokens truncated for the reward model" if truncated else ""}</div>'
        + _text_block("with special tokens", r.response_texts_raw[i], pad_token)
        + _text_block("without special tokens", r.response_texts[i])
        + _text_block("postprocessed (truncated after the stop token), without special tokens",
                      r.postprocessed_response_texts[i])
        + "</div>"
    )
    return f'<div class="tok-view tok-split" data-sample="{i}"><div class="split-cols">{query}{response}</div></div>'


def _ellipsis(hidden: int) -> str:
    if not hidden:
        return ""
    return f'<span class="tok-ellipsis" title="{hidden} earlier query tokens not shown">… {hidden} query tokens</span>'


def _truncation_note(r: Rollout, truncated: int) -> str:
    """What the reward model's input went through, as the stop setting says."""
    if r.stop_token_id is None:
        return "no truncation (stop token: none): the tokens as generated"
    return (f"truncated after the first stop token <code>{esc(shown(r.token(r.stop_token_id)))}</code> "
            f"({plural(truncated, 'token')} replaced by pad)")


def _policy_chips(r: Rollout, i: int, ids: list[int], reward_side: bool) -> str:
    """One sample's ids on the policy's tokens, from the last few query tokens on: `query_responses` (the
    value side, each value noted where it is read) or `postprocessed_query_responses` (the reward side)."""
    Q, G = r.context_length, r.response_width
    pad = r.pad_token_id
    specials = set(r.special_ids)
    seq_len = int(r.sequence_lengths[i])
    stop = stop_positions(r)[i]
    toks = _Tokens(r.tokens)
    start = max(0, Q - _QUERY_TAIL)
    qr = r.query_responses[i].tolist()
    post = r.postprocessed_query_responses[i].tolist()
    qmask = r.query_attention_mask[i].tolist()
    values = r.values[i].tolist()
    chips = [_ellipsis(start)]
    for t in range(start, Q + G):
        tid, g = ids[t], t - Q
        if t == Q:
            chips.append(f'<span class="ctx-boundary" title="context_length = {Q}"></span>')
        roles, notes = [], []
        if g < 0:
            classes = "tok-query" if qmask[t] else "tok-leftpad"
        else:
            classes = "tok-response"
            if tid == pad:
                classes += " tok-pad"
            elif tid in specials:
                classes += " tok-special"
            if g > seq_len:
                classes += " tok-masked"
            if qr[t] != post[t]:
                classes += " tok-truncated"
                notes.append("truncated: the reward model sees pad here" if reward_side else "cut for the reward model")
            if stop is not None and g == stop:
                roles.append("stop")
        if g < 0 and qmask[t] and tid in specials:
            classes += " tok-special"
        if reward_side and t == int(r.score_positions[i]) and r.reward_tokenizer_is_policy:
            roles.append("reward")
        if not reward_side and Q - 1 <= t <= Q + G - 2:
            notes.append(f"values[{t - Q + 1}] = {fmt(values[t - Q + 1], 4, signed=True)} (read here)")
        title = _title(t, tid, toks.raw(tid), *notes, *[_ROLE_NOTES[x] for x in roles])
        chips.append(_chip(classes, toks.text(tid), title, roles))
    return "".join(chips)


def _reward_own_chips(r: Rollout, i: int) -> str:
    """One sample's `reward_query_responses` on the reward model's own tokens (its tokenizer differs)."""
    ids = r.reward_query_responses[i].tolist()
    rcl, pos = r.reward_context_length, int(r.score_positions[i])
    rtoks = _Tokens(r.reward_tokens)
    first = max(0, rcl - _QUERY_TAIL)
    chips = [_ellipsis(first)]
    for t in range(first, len(ids)):
        if t == rcl:
            chips.append(f'<span class="ctx-boundary" title="reward context length = {rcl}"></span>')
        classes = "tok-query" if t < rcl else "tok-response"
        if is_special_reward_token(r, ids[t]):
            classes += " tok-special"
        if t > pos:
            classes += " tok-masked"
        roles = ["reward"] if t == pos else []
        title = _title(t, ids[t], rtoks.raw(ids[t]), *[_ROLE_NOTES[x] for x in roles])
        chips.append(_chip(classes, rtoks.text(ids[t]), title, roles))
    return "".join(chips)


def value_reward_html(r: Rollout, sample: int) -> str:
    """The two model inputs of one sample side by side: `query_responses` (the value model's) and
    `postprocessed_query_responses` (the reward model's; `reward_query_responses` on the reward model's own
    tokens when its tokenizer differs). Truncated positions are `tok-truncated`, the token the score was read
    at has `data-role="reward"`, and the score is printed with that token. Only the last few query tokens are
    shown. Raises IndexError for a bad sample."""
    i = _check_sample(r, sample)
    Q = r.context_length
    seq_len = int(r.sequence_lengths[i])
    qr = r.query_responses[i].tolist()
    post = r.postprocessed_query_responses[i].tolist()
    pos = int(r.score_positions[i])
    if r.reward_tokenizer_is_policy:
        read_id = post[pos]
        read_tok = r.token(read_id)
        right_head = f"reward model input · <code>postprocessed_query_responses[{i}]</code>"
        right_chips = _policy_chips(r, i, post, reward_side=True)
        cl = Q
    else:
        read_id = int(r.reward_query_responses[i, pos])
        read_tok = r.reward_tokens.get(read_id, f"<{read_id}>")
        right_head = f"reward model input · <code>reward_query_responses[{i}]</code> (the reward model's own tokens)"
        right_chips = _reward_own_chips(r, i)
        cl = r.reward_context_length
    truncated = sum(a != b for a, b in zip(qr[Q:], post[Q:]))
    where = f"response index {pos - cl}" if pos >= cl else "the last query token: an empty response"
    score = (f'<div class="vr-score">score <b>{fmt(r.scores[i], 4, signed=True)}</b> read at index {pos} ({where}) on token '
             f'<code>{esc(shown(read_tok))}</code> (id {read_id})</div>')
    left = (f'<div class="split-col vr-value"><h4>value model input · <code>query_responses[{i}]</code></h4>'
            f'<div class="tok-meta">query + response as generated, nothing cut: a value per response token, '
            f'kept by TRL up to sequence_lengths + 1 = {seq_len + 1}</div>'
            f'<div class="tok-seq">{_policy_chips(r, i, qr, reward_side=False)}</div></div>')
    right = (f'<div class="split-col vr-reward"><h4>{right_head}</h4>'
             f'<div class="tok-meta">{_truncation_note(r, truncated)}; one score, read at sequence_lengths</div>'
             f'<div class="tok-seq">{right_chips}</div>{score}</div>')
    legend = _legend([
        ("tok-response", "response", "response token"),
        ("tok-truncated", "cut", "truncated for the reward model"),
        ("tok-response tok-masked", "after", "after sequence_lengths"),
        ("tok-response legend-stop", "stop", "first stop token"),
        ("tok-response legend-reward", "score", "score read here"),
    ])
    return f'<div class="tok-view tok-value-reward" data-sample="{i}">{legend}<div class="split-cols">{left}{right}</div></div>'
