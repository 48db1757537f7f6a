"""Views of multi-turn rollouts (`MultiTurnRollout` / `Trajectory`): pure functions, no model.

- `turns_html`: one trajectory as turns; tokens in blocks by role, each token coloured by its mask class:
  trained, not trained, sampled but masked (the model wrote it, the loss skips it), not sampled but trained
  (the loss trains on a token the model never produced: tool output, template text).
- `logprob_heatmap`, `token_weight_heatmap`: a row per trajectory, a column per completion position; cells the loss
  ignores (loss_mask 0 or past the end) are grey.
- `grpo_table`: the GRPO step per sample (rewards, advantage over model tokens only, token counts).
- `drift_html`: the stream as generated against the re-rendered one, the first differing token shown.
- `reward_input_html`: what the reward functions receive for a sample, beside the turns.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..diagnostics.finding import Finding
from ..record.trajectory import MultiTurnRollout, Trajectory
from ._common import esc, fmt, plural, readable, visible
from .figures import LOGPROB_FLOOR, MASK_GREY, MODEBAR
from .ppo import diagnostics_html

MASK_CLASSES = {
    "trained": "trained (in the loss)",
    "not-trained": "not trained",
    "sampled-masked": "sampled but masked",
    "unsampled-trained": "not sampled but trained",
}
ROLE_COLORS = {"system": "#6366f1", "user": "#0891b2", "assistant": "#16a34a", "tool": "#d97706",
               "environment": "#b45309"}

TURNS_CSS = """
.mt-legend{display:flex;flex-wrap:wrap;gap:6px 14px;font-size:13px;margin:4px 0 8px}
.mt-legend span{white-space:nowrap}
.mt-turn{border:1px solid #e5e7eb;border-radius:8px;margin:0 0 10px;padding:6px 8px;background:#fff}
.mt-turn h4{margin:0 0 6px;font-size:14px}
.mt-seg{border-left:4px solid var(--role);padding:2px 0 2px 8px;margin:4px 0;background:color-mix(in srgb,var(--role) 6%,#fff)}
.mt-role{display:inline-block;font:600 11px/1.6 ui-sans-serif,system-ui;color:#fff;background:var(--role);
  border-radius:4px;padding:0 6px;margin-right:6px}
.mt-toks{font:13px/1.9 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}
.tk{border-radius:3px;padding:1px 0}
.tk.m-trained{background:#bbf7d0}
.tk.m-not-trained{color:#6b7280}
.tk.m-sampled-masked{background:#fed7aa;outline:1.5px dashed #ea580c}
.tk.m-unsampled-trained{background:#fecaca;outline:1.5px solid #dc2626}
.sw{display:inline-block;width:14px;height:12px;border-radius:3px;vertical-align:-1px;margin-right:4px}
.mt-drift{font:13px/1.9 ui-monospace,Menlo,Consolas,monospace;overflow-x:auto}
.mt-drift table{border-collapse:collapse}.mt-drift td{padding:2px 6px;border-bottom:1px solid #eee;vertical-align:top}
.tk.diff{background:#fecaca;outline:1.5px solid #dc2626}
.mt-reward pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;max-height:420px;overflow:auto;
  background:#f9fafb;border:1px solid #e5e7eb;border-radius:6px;padding:6px}
"""


def mask_class(t: Trajectory, i: int) -> str:
    """The mask class of absolute position i: trained / not-trained / sampled-masked / unsampled-trained."""
    trained = i >= t.prompt_length and bool(t.loss_mask[i - t.prompt_length])
    if t.sampled[i]:
        return "trained" if trained else "sampled-masked"
    return "unsampled-trained" if trained else "not-trained"


def mask_counts(t: Trajectory) -> dict[str, int]:
    counts = dict.fromkeys(MASK_CLASSES, 0)
    for i in range(len(t.token_ids)):
        counts[mask_class(t, i)] += 1
    return counts


def _piece(tokens: dict, tid: int) -> str:
    return readable(tokens.get(tid, f"[{tid}]"))


def _token_span(t: Trajectory, i: int, tokens: dict) -> str:
    text = _piece(tokens, t.token_ids[i])
    lp = t.logprobs[i]
    cls = mask_class(t, i)
    tip = (f"#{i} id {t.token_ids[i]} · {t.role[i]} · turn {t.turn[i]} · {MASK_CLASSES[cls]}"
           + (f" · logprob {fmt(lp, signed=True)}" if lp is not None else ""))
    shown = esc(visible(text).replace("↵", "↵\n")) if text.strip() == "" or "\n" in text else esc(text)
    return f"<span class='tk m-{cls}' data-i='{i}' title='{esc(tip)}'>{shown or '∅'}</span>"


def _segments(t: Trajectory, start: int, end: int) -> list[tuple[str, int, int]]:
    segs: list[tuple[str, int, int]] = []
    for i in range(start, end):
        if segs and segs[-1][0] == t.role[i]:
            segs[-1] = (t.role[i], segs[-1][1], i + 1)
        else:
            segs.append((t.role[i], i, i + 1))
    return segs


def legend_html(t: Trajectory | None = None) -> str:
    counts = mask_counts(t) if t is not None else {}
    swatch = {"trained": "#bbf7d0", "not-trained": "#f3f4f6", "sampled-masked": "#fed7aa", "unsampled-trained": "#fecaca"}
    items = [f"<span data-mask='{k}'><i class='sw' style='background:{swatch[k]}'></i>{v}"
             f"{f' <b>{counts[k]}</b>' if t is not None else ''}</span>" for k, v in MASK_CLASSES.items()]
    items += [f"<span data-role='{r}'><i class='sw' style='background:{c}'></i>{r}</span>" for r, c in ROLE_COLORS.items()]
    return f"<div class='mt-legend'>{''.join(items)}</div>"


def turn_summary(t: Trajectory, turn: int) -> str:
    idx = [i for i, k in enumerate(t.turn) if k == turn]
    by_role: dict[str, int] = {}
    for i in idx:
        by_role[t.role[i]] = by_role.get(t.role[i], 0) + 1
    trained = sum(1 for i in idx if mask_class(t, i) in ("trained", "unsampled-trained"))
    roles = ", ".join(f"{r} {n}" for r, n in by_role.items())
    return f"{'Prompt' if turn == 0 else f'Turn {turn}'} · {plural(len(idx), 'token')} ({roles}) · {trained} trained"


def turns_html(r: MultiTurnRollout, sample: int = 0, turn: int | None = None) -> str:
    """One trajectory as turns (all, or only `turn`): role blocks of tokens coloured by mask class, with a legend
    that counts each class. Hover a token for its id, role, turn, class and logprob."""
    if not r or not r.trajectories:
        return "<div class='mt-empty'>No multi-turn rollout yet: press Run or open a file.</div>"
    sample = min(max(int(sample or 0), 0), len(r) - 1)
    t = r.trajectories[sample]
    turns = sorted(set(t.turn))
    shown = turns if turn is None or turn not in turns else [turn]
    sections = []
    for k in shown:
        idx = [i for i, x in enumerate(t.turn) if x == k]
        blocks = []
        for role, a, b in _segments(t, idx[0], idx[-1] + 1):
            toks = "".join(_token_span(t, i, r.tokens) for i in range(a, b))
            blocks.append(f"<div class='mt-seg' data-role='{esc(role)}' style='--role:{ROLE_COLORS.get(role, '#6b7280')}'>"
                          f"<span class='mt-role'>{esc(role)}</span><span class='mt-toks'>{toks}</span></div>")
        sections.append(f"<section class='mt-turn' data-turn='{k}'><h4>{esc(turn_summary(t, k))}</h4>{''.join(blocks)}</section>")
    head = (f"<p class='mt-head' data-sample='{sample}'>Sample {sample} · {t.source} · "
            f"{plural(len(turns) - 1, 'turn')} · prompt {t.prompt_length} + completion {len(t.completion_ids)} tokens"
            f"{f' · showing turn {turn} of {len(turns) - 1}' if len(shown) == 1 and turn is not None else ''}</p>")
    return f"<div class='mt-turns'>{head}{legend_html(t)}{''.join(sections)}</div>"


def _grid(r: MultiTurnRollout, values) -> tuple[np.ndarray, np.ndarray]:
    """(B, C) z (NaN where the loss ignores the cell) and hover customdata for per-completion-token values."""
    B = len(r)
    C = max((len(t.completion_ids) for t in r.trajectories), default=0)
    z = np.full((B, C), np.nan)
    cd = np.full((B, C, 5), "", dtype=object)
    for b, t in enumerate(r.trajectories):
        P = t.prompt_length
        for c, tid in enumerate(t.completion_ids):
            v = values(b, t, c)
            trained = bool(t.loss_mask[c])
            if trained and v is not None:
                z[b, c] = v
            cd[b, c] = [esc(visible(_piece(r.tokens, tid))), t.role[P + c], t.turn[P + c],
                        fmt(v, signed=True) if v is not None else "none",
                        "in the loss" if trained else "<i>ignored by the loss</i>"]
    return z, cd


def _figure(z, cd, title, hover_name, **heat) -> go.Figure:
    B, C = z.shape
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(C), y=np.arange(B), customdata=cd, hoverongaps=True, xgap=1 if C <= 64 else 0, ygap=1,
        hovertemplate=("<b>%{customdata[0]}</b> · %{customdata[1]} · turn %{customdata[2]}<br>sample %{y} · "
                       f"completion index %{{x}}<br>{hover_name} %{{customdata[3]}} · %{{customdata[4]}}<extra></extra>"),
        colorbar=dict(thickness=12, len=1.0, y=0.5), **heat))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="ignored by the loss (grey)", hoverinfo="skip",
                             marker=dict(symbol="square", size=11, color=MASK_GREY, line=dict(width=1, color="#9ca3af"))))
    fig.update_layout(
        template="plotly_white", title=dict(text=title, x=0, xanchor="left", y=0.98, yanchor="top", font=dict(size=14)),
        modebar=MODEBAR, height=max(240, 150 + 26 * B), margin=dict(l=8, r=8, t=70, b=44), plot_bgcolor=MASK_GREY,
        legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom", font=dict(size=11)),
        hoverlabel=dict(font=dict(family="ui-monospace, Menlo, Consolas, monospace", size=12), align="left"))
    fig.update_xaxes(title=dict(text="completion index", standoff=6), showgrid=False, zeroline=False, tickformat="d")
    fig.update_yaxes(tickvals=list(range(B)), ticktext=[f"sample {b}" for b in range(B)], autorange="reversed",
                     showgrid=False, zeroline=False, automargin=True, tickfont=dict(size=11))
    return fig


def logprob_heatmap(r: MultiTurnRollout) -> go.Figure:
    """The sampler's logprob of every completion token the loss trains on; the rest grey (hover still says what)."""
    z, cd = _grid(r, lambda b, t, c: t.logprobs[t.prompt_length + c])
    return _figure(np.clip(z, LOGPROB_FLOOR, 0.0), cd, "sampler logprob of each completion token (grey: the loss ignores it)",
                   "logprob", colorscale="Viridis", zmin=LOGPROB_FLOOR, zmax=0.0)


def token_weights(r: MultiTurnRollout) -> tuple[list[list[float]] | None, str]:
    """Per completion token weights: the GRPO step's own (`r.grpo["token_weights"]`) when recorded, else the sample's
    advantage on every token the loss trains on. Returns (weights or None, what they are)."""
    grpo = r.grpo or {}
    for key in ("token_weights", "weights"):
        if grpo.get(key) is not None:
            return grpo[key], f"the GRPO step's per-token weight ({key})"
    if r.advantages and any(a is not None for a in r.advantages):
        return [[(r.advantages[b] or 0.0) * m for m in t.loss_mask] for b, t in enumerate(r.trajectories)], \
            "the sample's advantage on each trained token"
    return None, "no advantages in this record"


def token_weight_heatmap(r: MultiTurnRollout) -> go.Figure:
    """How much each completion token pushes the update (advantage over model tokens only); grey where the loss
    ignores the token."""
    weights, what = token_weights(r)
    z, cd = _grid(r, lambda b, t, c: None if weights is None or c >= len(weights[b]) else float(weights[b][c]))
    top = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    return _figure(z, cd, f"token weight: {what} (grey: the loss ignores it)", "weight",
                   colorscale="RdBu", zmid=0.0, zmin=-max(top, 1e-6), zmax=max(top, 1e-6))


GRPO_COLUMNS = ["sample", "group", "turns", "reward", "advantage", "completion tokens", "trained", "tool / env tokens",
                "sampled but masked", "not sampled but trained"]


def grpo_table(r: MultiTurnRollout) -> pd.DataFrame:
    """One row per trajectory: its group, reward per function and total, advantage, and what the loss takes."""
    rows = []
    names = list(r.reward_func_names or [])
    for b, t in enumerate(r.trajectories):
        counts = mask_counts(t)
        row = {"sample": b, "group": t.group, "turns": t.num_turns,
               "reward": fmt(r.rewards[b], 3) if b < len(r.rewards) and r.rewards[b] is not None else "—",
               "advantage": fmt(r.advantages[b], 4, signed=True) if b < len(r.advantages) and r.advantages[b] is not None else "—",
               "completion tokens": len(t.completion_ids), "trained": sum(t.loss_mask),
               "tool / env tokens": sum(1 for m in t.tool_mask if not m),
               "sampled but masked": counts["sampled-masked"], "not sampled but trained": counts["unsampled-trained"]}
        for f, name in enumerate(names):
            if b < len(r.rewards_per_func) and f < len(r.rewards_per_func[b]):
                row[name] = fmt(r.rewards_per_func[b][f], 3)
        rows.append(row)
    return pd.DataFrame(rows, columns=GRPO_COLUMNS[:4] + names + GRPO_COLUMNS[4:])


def drift_html(r: MultiTurnRollout, sample: int = 0, *, context: int = 6) -> str:
    """Template drift of one trajectory (`r.drift[sample]`, diagnostics/drift.py): the stream as generated against a
    fresh render of its final messages, the first differing token outlined with `context` tokens around it, the
    count of differing tokens, and the turns whose decoded text re-tokenizes differently or whose <think> the
    template dropped."""
    d = next((x for x in (r.drift or []) if x.get("sample") == sample), None)
    if d is None:
        return ("<div class='mt-drift' data-drift='absent'><p>Drift is not computed for this record: a trainer's "
                "file is shown as written (its final messages are not re-rendered here).</p></div>")
    if d.get("error"):
        return f"<div class='mt-drift' data-drift='error'><p><b>The final messages did not render</b>: {esc(d['error'])}</p></div>"
    t = r.trajectories[sample]
    first = d.get("first_diff")
    extra = []
    for x in d.get("retokenized") or []:
        extra.append(f"turn {x['turn']}: decoding its {x['generated']} tokens and encoding the text again gives "
                     f"{x['retokenized']} tokens ({plural(x['differing'], 'token')} differ)")
    for x in d.get("think_dropped") or []:
        extra.append(f"turn {x['turn']}: its &lt;think&gt; block is gone from the re-rendered conversation")
    more = "".join(f"<li>{e}</li>" for e in extra)
    more = f"<ul>{more}</ul>" if more else ""
    trailing = (f" (the re-render adds {plural(d['trailing'], 'token')} after the stream's end, not counted)"
                if d.get("trailing") else "")
    if first is None:
        return (f"<div class='mt-drift' data-drift='none'><p><b>No drift</b>: the {d.get('stream_length')} generated "
                f"tokens equal the re-rendered stream token for token{trailing}.</p>{more}</div>")
    lo, hi = max(first - context, 0), min(first + context + 1, len(t.token_ids))
    cells = "".join(f"<span class='tk{' diff' if i == first else ''}' title='#{i} id {t.token_ids[i]}'>"
                    f"{esc(visible(_piece(r.tokens, t.token_ids[i])))}</span>" for i in range(lo, hi))
    got, want = d.get("stream_token"), d.get("rendered_token")
    show = lambda tid: ("(end)" if tid is None else f"id {tid}" if tid not in r.tokens  # noqa: E731
                        else f"{esc(visible(_piece(r.tokens, tid)))} (id {tid})")
    n = d.get("differing", 0)
    return (f"<div class='mt-drift' data-drift='{first}'><p><b>Drift at token {first}</b> (turn {d.get('first_turn')}): "
            f"{plural(n, 'token')} {'differs' if n == 1 else 'differ'} after alignment; generated "
            f"{d.get('stream_length')}, re-rendered {d.get('rendered_length')}{trailing}.</p>"
            f"<table><tr><td>generated</td><td>{cells}</td></tr><tr><td>first difference</td><td>generated "
            f"<code>{show(got)}</code> · re-rendered <code>{show(want)}</code></td></tr></table>{more}</div>")


def findings_html(r: MultiTurnRollout) -> str:
    """The multi-turn findings (`r.findings`, Finding dicts) as the page's finding cards."""
    if r is None:
        return ""
    return diagnostics_html([Finding(**{**f, "positions": [tuple(p) for p in f.get("positions", [])]})
                             for f in (r.findings or [])])


def reward_input_html(t: Trajectory | None) -> str:
    """What TRL's reward functions receive for this sample (prompts=, completions=, completion_ids=, extra columns)."""
    if t is None or not t.reward_input:
        return ("<div class='mt-reward'><p>The reward functions' inputs are not recorded for this sample "
                "(a trainer's file does not carry them).</p></div>")
    parts = []
    for key, value in t.reward_input.items():
        flat = isinstance(value, list) and all(isinstance(x, (int, float, str)) for x in value)
        text = json.dumps(value, indent=None if flat else 1, ensure_ascii=False, default=str)
        parts.append(f"<details open data-key='{esc(key)}'><summary><code>{esc(key)}=</code></summary><pre>{esc(text)}</pre></details>")
    return f"<div class='mt-reward'><p>What the reward functions receive for this sample:</p>{''.join(parts)}</div>"


def notes_markdown(r: MultiTurnRollout, sample: int = 0) -> str:
    notes = list(dict.fromkeys([*r.notes, *(r.trajectories[sample].notes if r.trajectories else [])]))
    return "\n".join(f"- {n}" for n in notes)
