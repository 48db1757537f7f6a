"""Plotly figures of a rollout: per-token logprob and entropy heatmaps over the batch, and one sample's values.

Each heatmap is ONE trace (rows = samples, columns = response positions) whose hover reads a per-cell
`customdata` array; the stop token and the score-read position of every row are two scatter traces on top.
Positions after `sequence_lengths` are NaN (TRL's padding_mask) and show the grey plot background.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import torch

from ..errors import InputError
from ..record.rollout import Rollout
from ..tensors import first_true_indices
from ._common import esc, fmt, reward_response_positions, sample_label, shown, stop_positions

LOGPROB_FLOOR = -10.0
"""Logprobs below this share the colour of the floor (a -inf must not stretch the scale); hover shows the value."""

MASK_GREY = "#c4c4c4"
STOP_COLOR = "#e11d48"
REWARD_COLOR = "#ffffff"

LOGPROB_KINDS = {
    "logprobs": "TRL's rollout logprobs: the sampled-from distribution (the processed scores, as output.scores)",
    "raw_logprobs": "raw logits, before temperature / top-k / top-p (as output.logits)",
    "new_logprobs": "training-time recompute, logits / (temperature + 1e-7)",
    "ref_logprobs": "reference model, the same recompute",
}

MODEBAR = dict(orientation="v", bgcolor="rgba(255,255,255,0.8)")
"""Plot toolbars stand upright at the right edge, clear of the titles at the left (on a phone too)."""

_MASKED_NOTE = "  <i>masked</i>"  # after sequence_lengths (TRL's padding_mask); short: it repeats per cell




def _hover_tokens(r: Rollout, limit: int = 24) -> dict[int, str]:
    """id -> token text for hover labels, escaped (plotly reads '<...>' as markup)."""
    return {i: esc(shown(t, limit)) for i, t in r.tokens.items()}


_ENDED = "(none: the row had ended, generate wrote pad)"


def _generation_ended(r: Rollout) -> np.ndarray:
    """(B, G) True after a row's first EOS: `generate` wrote pad there without sampling, so the recorded
    distribution says nothing about the token (its top-k is left out to keep the page small)."""
    if r.eos_token_id is None:
        return np.zeros((r.batch_size, r.response_width), dtype=bool)
    first = first_true_indices(r.responses == r.eos_token_id)
    return (torch.arange(r.response_width).unsqueeze(0) > first.unsqueeze(1)).numpy()


def _cells(r: Rollout, *columns: list) -> np.ndarray:
    """A (B, G, n) object array for `customdata` from n flat per-cell lists (row-major)."""
    B, G = r.batch_size, r.response_width
    out = np.empty((B * G, len(columns)), dtype=object)
    for j, col in enumerate(columns):
        out[:, j] = col
    return out.reshape(B, G, len(columns))


def _masked(r: Rollout, values) -> np.ndarray:
    """(B, G) float array with NaN after sequence_lengths."""
    z = values.detach().float().numpy().astype(np.float64, copy=True)
    z[r.padding_mask.numpy()] = np.nan
    return z


def _markers(r: Rollout) -> list[go.Scatter]:
    """The 'stop token' and 'score read' markers of every row, and a legend swatch for masked cells."""
    traces = []
    stops = stop_positions(r)
    rows = [i for i, s in enumerate(stops) if s is not None]
    if rows:
        traces.append(go.Scatter(
            x=[stops[i] for i in rows], y=rows, mode="markers", name="stop token",
            marker=dict(symbol="square-open", size=11, color=STOP_COLOR, line=dict(width=2.5, color=STOP_COLOR)),
            cliponaxis=False,
            hovertemplate="sample %{y}: first stop token at response index %{x}<extra></extra>",
        ))
    reads = reward_response_positions(r)
    if reads is not None:
        traces.append(go.Scatter(
            x=reads, y=list(range(r.batch_size)), mode="markers", name="reward read",
            marker=dict(symbol="star", size=12, color=REWARD_COLOR, line=dict(width=1.5, color="#111827")), cliponaxis=False,
            hovertemplate="sample %{y}: score read at response index %{x} (-1: inside the query)<extra></extra>",
        ))
    traces.append(go.Scatter(
        x=[None], y=[None], mode="markers", name="after sequence_lengths (masked)", hoverinfo="skip",
        marker=dict(symbol="square", size=11, color=MASK_GREY, line=dict(width=1, color="#9ca3af")),
    ))
    return traces


def _heatmap_figure(r: Rollout, z: np.ndarray, customdata: np.ndarray, hovertemplate: str, title: str,
                    colorbar: dict, **heat) -> go.Figure:
    B, G = z.shape
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(G), y=np.arange(B), customdata=customdata, hovertemplate=hovertemplate,
        hoverongaps=True, xgap=1 if G <= 64 else 0, ygap=1, colorbar=dict(thickness=12, len=1.0, y=0.5, **colorbar), **heat,
    ))
    for trace in _markers(r):
        fig.add_trace(trace)
    fig.update_layout(
        template="plotly_white",
        title=dict(text=title, x=0, xanchor="left", y=0.98, yanchor="top", font=dict(size=14)),
        modebar=MODEBAR,
        height=max(260, 150 + 24 * B),
        margin=dict(l=8, r=8, t=70, b=44),
        plot_bgcolor=MASK_GREY,
        legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom", font=dict(size=11), bgcolor="rgba(0,0,0,0)"),
        hoverlabel=dict(font=dict(family="ui-monospace, Menlo, Consolas, monospace", size=12), align="left"),
    )
    fig.update_xaxes(title=dict(text=f"response index (0 … {G - 1})", standoff=6), showgrid=False, zeroline=False,
                     tickformat="d", **({"dtick": 1} if G <= 30 else {}),
                     range=[min(-0.5, min(reward_response_positions(r) or [0]) - 0.5), G - 0.5])
    fig.update_yaxes(tickvals=list(range(B)), ticktext=[esc(sample_label(r, i, 16)) for i in range(B)], autorange="reversed",
                     showgrid=False, zeroline=False, automargin=True, tickfont=dict(size=11))
    return fig


def logprob_heatmap(r: Rollout, which: str = "logprobs") -> go.Figure:
    """One heatmap of a per-token logprob tensor (B, G): a row per sample, a column per response position.

    `which`: logprobs, raw_logprobs, new_logprobs or ref_logprobs. Colour is clipped at LOGPROB_FLOOR;
    positions after sequence_lengths are NaN. Hover: token, id, logprob, probability, rank and the top-k
    alternatives of the sampled-from distribution. Raises InputError for an unknown `which`.
    """
    if which not in LOGPROB_KINDS:
        raise InputError(f"which must be one of {', '.join(LOGPROB_KINDS)}, not {which!r}.")
    values = getattr(r, which).float()
    z = _masked(r, values.clamp(min=LOGPROB_FLOOR))
    toks, alts = _hover_tokens(r), _hover_tokens(r, 14)
    ids = r.responses.flatten().tolist()
    lps = values.flatten().tolist()
    k = r.topk_ids.shape[-1]
    top_ids = r.topk_ids.reshape(-1, k).tolist() if k else [[]] * len(ids)  # k = 0: a run's step records none
    top_lps = r.topk_logprobs.reshape(-1, k).tolist() if k else [[]] * len(ids)
    masked = r.padding_mask.flatten().tolist()
    ended = _generation_ended(r).flatten().tolist()
    top = [
        _ENDED if end else "<br>".join(f"{alts.get(a, a)} {fmt(b, 2)}" for a, b in zip(ti, tl)) if k else "(none recorded)"
        for ti, tl, end in zip(top_ids, top_lps, ended)
    ]
    customdata = _cells(
        r,
        [toks.get(t, str(t)) for t in ids],
        ids,
        [fmt(x, signed=True) for x in lps],
        [fmt(math.exp(x)) if x <= 0 else "-" for x in lps],
        r.ranks.flatten().tolist(),
        top,
        [_MASKED_NOTE if m else "" for m in masked],
    )
    hover = (
        "<b>%{customdata[0]}</b>  id %{customdata[1]}%{customdata[6]}<br>sample %{y} · response index %{x}<br>"
        f"{which} %{{customdata[2]}} · p %{{customdata[3]}}<br>"
        "rank %{customdata[4]} · top-k of the sampled-from distribution:<br>%{customdata[5]}<extra></extra>"
    )
    ticks = list(range(int(LOGPROB_FLOOR), 1, 2))
    return _heatmap_figure(
        r, z, customdata, hover, f"{which} of each response token",
        colorbar=dict(title=dict(text="logprob", side="right"), tickvals=ticks,
                      ticktext=[f"≤ {t}" if t == LOGPROB_FLOOR else str(t) for t in ticks]),
        colorscale="Viridis", zmin=LOGPROB_FLOOR, zmax=0.0,
    )


def entropy_heatmap(r: Rollout) -> go.Figure:
    """One heatmap of `r.entropy` (B, G) in nats, laid out as `logprob_heatmap` and masked the same way."""
    toks = _hover_tokens(r)
    ids = r.responses.flatten().tolist()
    masked = r.padding_mask.flatten().tolist()
    customdata = _cells(
        r,
        [toks.get(t, str(t)) for t in ids],
        ids,
        [fmt(x) for x in r.entropy.flatten().tolist()],
        [fmt(x, signed=True) for x in r.logprobs.flatten().tolist()],
        r.ranks.flatten().tolist(),
        [_MASKED_NOTE if m else "" for m in masked],
    )
    hover = (
        "<b>%{customdata[0]}</b>  id %{customdata[1]}%{customdata[5]}<br>sample %{y} · response index %{x}<br>"
        "entropy %{customdata[2]} nats<br>logprob %{customdata[3]} · rank %{customdata[4]}<extra></extra>"
    )
    z = _masked(r, r.entropy)
    top = float(np.nanmax(z)) if np.isfinite(z).any() else 1.0
    return _heatmap_figure(
        r, z, customdata, hover, "entropy of the sampled-from distribution",
        colorbar=dict(title=dict(text="nats", side="right")), colorscale="Viridis", zmin=0.0, zmax=max(top, 1e-3),
    )


def _ticks(r: Rollout, i: int, start: int) -> tuple[list[int], list[str], int]:
    """Tick positions and labels for one response: every token when short, every n-th with its index when long."""
    G = r.response_width
    ids = r.responses[i].tolist()
    if G <= 48:
        vals = list(range(G))
        text = [esc(shown(r.token(t), 10)) for t in ids]
        angle = -55 if G > 12 else 0
    else:
        step = math.ceil(G / 32)
        vals = list(range(0, G, step))
        text = [f"{g}:{esc(shown(r.token(ids[g]), 8))}" for g in vals]
        angle = -55
    if start < 0:
        vals, text = [-1, *vals], ["(query)", *text]
    return vals, text, angle


def values_figure(r: Rollout, sample: int) -> go.Figure:
    """The per-token values `r.values[sample]` (G,) against the response tokens, with the scalar score.

    `values[g]` is the value head read at the token before response token g (V of the state that emits g).
    TRL keeps values up to `sequence_lengths + 1` (its padding_mask_p1): later raw values are drawn dashed grey,
    and the zeros TRL puts there instead as a line at 0.
    The score is a horizontal line and, when the reward model shares the policy's tokenizer, a star at the
    response index it was read at. Raises IndexError for a bad sample.
    """
    if not 0 <= int(sample) < r.batch_size:
        raise IndexError(f"sample {sample} is out of range: the rollout has {r.batch_size} samples (0..{r.batch_size - 1}).")
    i = int(sample)
    G = r.response_width
    seq_len = int(r.sequence_lengths[i])
    keep = min(G - 1, seq_len + 1)  # last value TRL keeps
    x = np.arange(G)
    y = r.values[i].float().numpy()
    ids = r.responses[i].tolist()
    tok = [esc(shown(r.token(t), 24)) for t in ids]
    custom = np.array(list(zip(tok, ids, [fmt(v, 4, signed=True) for v in y.tolist()])), dtype=object)
    hover = ("response index %{x} · <b>%{customdata[0]}</b> (id %{customdata[1]})<br>"
             "values[%{x}] = %{customdata[2]}: read at the token before it<extra>%{fullData.name}</extra>")
    score = float(r.scores[i])
    reads = reward_response_positions(r)
    read = reads[i] if reads is not None else None
    fig = go.Figure()
    if keep >= 0:
        fig.add_trace(go.Scatter(
            x=x[: keep + 1], y=y[: keep + 1], customdata=custom[: keep + 1], mode="lines+markers", name="values (kept by TRL)",
            line=dict(color="#2563eb", width=2), marker=dict(size=5 if G <= 128 else 3), hovertemplate=hover,
        ))
    if keep < G - 1:
        tail = slice(keep + 1, G)
        fig.add_trace(go.Scatter(
            x=x[tail], y=y[tail], customdata=custom[tail], mode="lines+markers",
            name="raw values after sequence_lengths + 1 (unused)",
            line=dict(color="#9ca3af", width=1.5, dash="dash"), marker=dict(size=3, color="#9ca3af"), hovertemplate=hover,
        ))
        fig.add_trace(go.Scatter(
            x=x[tail], y=np.zeros(G - keep - 1), mode="lines", name="what TRL uses there: 0 (padding_mask_p1)",
            line=dict(color="#f59e0b", width=2.5), hovertemplate="response index %{x}: TRL sets values to 0 here"
                                                                  "<extra></extra>",
        ))
    fig.add_hline(y=score, line=dict(color="#7c3aed", width=1.5, dash="dot"),
                  annotation=dict(text=f"score {score:+.3f}", font=dict(color="#7c3aed", size=12),
                                  bgcolor="rgba(255,255,255,0.85)"),
                  annotation_position="top right")
    if read is not None:
        where = f"response index {read}" if read >= 0 else "the last query token (empty response)"
        read_tok = esc(shown(r.token(int(r.postprocessed_query_responses[i, int(r.score_positions[i])])), 24))
        fig.add_trace(go.Scatter(
            x=[read], y=[score], mode="markers", name="score (reward read here)",
            marker=dict(symbol="star", size=15, color="#7c3aed", line=dict(width=1, color="#ffffff")), cliponaxis=False,
            hovertemplate=f"score {fmt(score, 4, signed=True)}<br>read at {where}, token <b>{read_tok}</b><extra></extra>",
        ))
    tickvals, ticktext, angle = _ticks(r, i, read if read is not None else 0)
    fig.update_layout(
        template="plotly_white",
        title=dict(text=f"sample {i}: values · score {fmt(score, signed=True)}",
                   x=0, xanchor="left", y=0.98, yanchor="top", font=dict(size=14)),
        modebar=MODEBAR,
        height=380,
        margin=dict(l=8, r=8, t=64, b=8),
        legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom", font=dict(size=11), bgcolor="rgba(0,0,0,0)"),
        hovermode="closest",
    )
    fig.update_xaxes(tickvals=tickvals, ticktext=ticktext, tickangle=angle,
                     tickfont=dict(size=10, family="ui-monospace, Menlo, monospace"),
                     automargin=True, zeroline=False, range=[min(-0.5, (read if read is not None else 0) - 0.5), G - 0.5])
    fig.update_yaxes(title=dict(text="value", standoff=4), automargin=True, zeroline=True, zerolinecolor="#d1d5db")
    return fig
