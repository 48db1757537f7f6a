"""Views of a GRPO step over a rollout: the groups, the token-weight heatmap, the loss types side by side,
the per-token KL and entropy mask, the sampler correction and TRL's logged numbers.

Pure functions of a Rollout and a `GRPOStep` (plus, for the loss-type comparison, the GRPO math over the
recorded tensors): plotly figures, HTML and DataFrames. No model pass, no gradio.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..diagnostics import length_bias_pair, weight_per_advantage
from ..errors import InputError
from ..trainers.grpo_config import GRPOConfig, LOSS_TYPES
from ..trainers.grpo_common import GRPOStep
from ..trainers.grpo import rollout_grpo_step
from ..record.rollout import Rollout
from ._common import esc, sample_label, shorten, shown
from .figures import MASK_GREY

GRPO_CSS = """
.grpo-groups { display: flex; flex-direction: column; gap: 10px; }
.grpo-group { border: 1px solid #e5e7eb; border-radius: 6px; padding: 6px 10px; background: #fff; color: #111827; }
.grpo-group.zero-std { border-color: #f59e0b; background: #fffbeb; }
.grpo-group h4 { margin: 0 0 4px; font-size: 14px; }
.grpo-group .flag { display: inline-block; margin-left: 8px; padding: 0 6px; border-radius: 4px; background: #f59e0b;
  color: #111827; font-size: 12px; font-weight: 600; }
.grpo-group table { border-collapse: collapse; font-size: 12.5px; width: 100%; }
.grpo-group th, .grpo-group td { padding: 2px 6px; border-bottom: 1px solid #f3f4f6; text-align: right; white-space: nowrap; }
.grpo-group td.text { text-align: left; white-space: normal; font-family: ui-monospace, Menlo, Consolas, monospace; }
.grpo-group td.none { color: #9ca3af; font-style: italic; }
.grpo-group td.pos { color: #047857; font-weight: 600; } .grpo-group td.neg { color: #b91c1c; font-weight: 600; }
.grpo-group tr.masked td { color: #9ca3af; }
.grpo-group .stats { color: #4b5563; font-size: 12.5px; margin-top: 3px; }
"""


def _num(x: float, spec: str = "+.4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "None"
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    return format(x, spec)


def _sig(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def _check(r: Rollout, step: GRPOStep) -> None:
    if step.advantages.shape[0] != r.batch_size or step.token_weights.shape[1] != r.response_width:
        raise InputError("This GRPO step was computed for another rollout: recompute it.")


def _token_texts(r: Rollout) -> list[list[str]]:
    """(B, T) the readable text of every response token, escaped for plotly's hover labels (nested lists:
    plotly validates those far faster than an object array)."""
    ids = r.responses.tolist()
    table = {i: esc(shown(r.token(i), 24)) for i in {t for row in ids for t in row}}
    return [[table[t] for t in row] for row in ids]


def _sequence_ratio(step: GRPOStep) -> np.ndarray | None:
    """(B, T) the sampler correction as it multiplies each token's loss, or None when there is none."""
    ratio = step.importance_sampling_ratio
    if ratio is None:
        return None
    return ratio.expand_as(step.token_weights).float().numpy()


def grpo_groups_html(r: Rollout, step: GRPOStep, max_chars: int = 160) -> str:
    """For each prompt, its completions with each reward function's value (None where the function gave
    none), the aggregated reward, the advantage, the length and whether it was truncated; the group's mean
    and std under it; groups whose rewards all agree (zero std: no learning signal) are flagged."""
    _check(r, step)
    G = step.num_generations
    names = step.reward_func_names
    weights = list(getattr(step.config, "reward_weights", None) or [1.0] * len(names))
    head = "".join(f"<th title='weight {w:g}'>{esc(n)}<br><small>×{w:g}</small></th>" for n, w in zip(names, weights))
    mask_len = step.completion_mask.sum(1).tolist()
    groups = []
    for g in range(step.num_groups):
        rows = []
        members = range(g * G, (g + 1) * G)
        zero = bool(step.is_std_zero[g * G])
        for i in members:
            cells = []
            for j in range(len(names)):
                v = float(step.rewards_per_func[i, j])
                cells.append(f"<td class='none'>None</td>" if math.isnan(v) else f"<td>{_num(v, '+.3f')}</td>")
            adv = float(step.advantages[i])
            klass = "pos" if adv > 1e-9 else "neg" if adv < -1e-9 else ""
            truncated = bool(step.is_truncated[i])
            masked = int(mask_len[i]) == 0
            rows.append(
                f"<tr class='{'masked' if masked else ''}' data-sample='{i}'><td>{i}</td>"
                f"<td class='text'>{esc(shorten(r.response_texts[i], max_chars)) or '<i>(empty)</i>'}</td>{''.join(cells)}"
                f"<td>{_num(float(step.rewards[i]), '+.3f')}</td><td class='adv {klass}'>{_num(adv)}</td>"
                f"<td>{int(step.lengths[i])}</td><td>{'yes' if truncated else ''}{' (masked)' if masked and truncated else ''}</td></tr>"
            )
        mean, std = float(step.mean_grouped_rewards[g * G]), float(step.std_rewards[g * G])
        flag = "<span class='flag'>zero std: every advantage is 0, this group teaches nothing</span>" if zero else ""
        groups.append(
            f"<div class='grpo-group{' zero-std' if zero else ''}' data-group='{g}'>"
            f"<h4>Group {g} · {esc(shorten(r.prompts[g * G], 100))}{flag}</h4>"
            f"<table><tr><th>#</th><th style='text-align:left'>completion</th>{head}<th>reward</th><th>advantage</th>"
            f"<th>length</th><th>truncated</th></tr>{''.join(rows)}</table>"
            f"<div class='stats'>group mean {_num(mean, '+.4f')} · std {_num(std, '.4f')}"
            f"{' (logged only: scale_rewards none)' if getattr(step.config, 'scale_rewards', None) == 'none' else ''}</div></div>"
        )
    zero_groups = int(step.is_std_zero.view(-1, G)[:, 0].sum()) if step.num_groups else 0
    summary = (f"<p class='panel-note'>{step.num_groups} group(s) of {G} completions; {zero_groups} with zero std. "
               f"Rewards: weighted sum of the functions ({step.config.multi_objective_aggregation if hasattr(step.config, 'multi_objective_aggregation') else 'verl: weighted sum'}).</p>")
    return f"<div class='grpo-groups'>{summary}{''.join(groups)}</div>"


def token_weights_heatmap(r: Rollout, step: GRPOStep) -> go.Figure:
    """`token_weights` (B, T): one row per completion, one column per completion position; grey outside the
    loss mask. Hover: the token, its completion's advantage, the sampler ratio and policy ratio, the mask."""
    _check(r, step)
    B, T = step.token_weights.shape
    mask = step.completion_mask.bool().numpy()
    z = step.token_weights.float().numpy().astype(np.float64, copy=True)
    z[~mask] = np.nan
    ratio = _sequence_ratio(step)
    coef = step.coef_1.expand(B, T).float().numpy()
    ent = step.entropy_mask.float().numpy() if step.entropy_mask is not None else np.full((B, T), np.nan)
    adv = np.repeat(step.advantages.float().numpy()[:, None], T, axis=1)
    # numbers travel as one float array (plotly sends it base64-packed); only the token texts are strings
    custom = np.stack([adv, np.full((B, T), np.nan) if ratio is None else ratio, coef, mask.astype(float), ent], axis=-1)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1e-9
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(T), y=np.arange(B), customdata=custom, text=_token_texts(r), zmid=0.0, zmin=-max(bound, 1e-9),
        zmax=max(bound, 1e-9), colorscale="RdBu_r", hoverongaps=False, xgap=1 if T <= 64 else 0, ygap=1,
        colorbar=dict(title=dict(text="d loss / d logp", side="right"), thickness=12),
        hovertemplate=("<b>%{text}</b><br>completion %{y} · position %{x}<br>token weight %{z:.3e}<br>"
                       "advantage %{customdata[0]:.4f}<br>"
                       + ("sampler ratio none" if ratio is None else "sampler ratio %{customdata[1]:.4f}")
                       + " · policy ratio %{customdata[2]:.4f}<br>completion_mask %{customdata[3]:.0f}"
                       + ("" if step.entropy_mask is None else " · entropy_mask %{customdata[4]:.0f}")
                       + "<extra></extra>"),
    ))
    G = step.num_generations
    for g in range(1, step.num_groups):
        fig.add_hline(y=g * G - 0.5, line=dict(color="#111827", width=1.5))
    loss_name = getattr(step.config, "loss_type", None) or getattr(step.config, "loss_agg_mode", "")
    fig.update_layout(
        template="plotly_white", height=max(260, 140 + 22 * B), margin=dict(l=8, r=8, t=48, b=40), plot_bgcolor=MASK_GREY,
        title=dict(text=f"token_weights under {loss_name}: how much each token counts (blue: its probability is "
                        "pushed up, red: down; grey: outside the loss)", x=0, font=dict(size=13)),
        hoverlabel=dict(font=dict(family="ui-monospace, Menlo, Consolas, monospace", size=12), align="left"),
    )
    fig.update_xaxes(title="completion position", showgrid=False, zeroline=False, range=[-0.5, T - 0.5])
    fig.update_yaxes(tickvals=list(range(B)), ticktext=[esc(f"g{i // G} · {sample_label(r, i, 18)}") for i in range(B)],
                     autorange="reversed", automargin=True, showgrid=False, zeroline=False, tickfont=dict(size=10))
    return fig


def loss_type_table(r: Rollout, rewards_per_func, config: GRPOConfig, *, inputs: dict | None = None,
                    reward_func_names=None, use_sampler_logprobs: bool = True) -> pd.DataFrame:
    """The same rollout under every TRL loss type: for the shortest and the longest completion with a nonzero
    advantage, how much one of its tokens counts per unit of advantage under the loss's aggregation
    (`weight_per_advantage`: the sampler ratio and the entropy mask left out), and long / short: 1.0 means no
    length bias. Empty when no such pair exists."""
    columns = ["loss_type", "short (tokens)", "long (tokens)", "short: weight / advantage", "long: weight / advantage",
               "long / short", "note"]
    rows = []
    for loss_type in LOSS_TYPES:
        try:
            step = rollout_grpo_step(r, rewards_per_func, replace(config, loss_type=loss_type), inputs=inputs,
                                     reward_func_names=reward_func_names, use_sampler_logprobs=use_sampler_logprobs)
        except InputError as exc:  # a loss type these settings do not allow (e.g. vespo with a sequence-level mode)
            rows.append([loss_type, "", "", math.nan, math.nan, math.nan, str(exc)])
            continue
        pair = length_bias_pair(step)
        if pair is None:
            return pd.DataFrame(columns=columns)
        per_adv = [weight_per_advantage(step, i) for i in pair]
        counts = [int(step.completion_mask[i].sum()) for i in pair]
        ratio = per_adv[1] / per_adv[0] if per_adv[0] else math.nan
        rows.append([loss_type, f"#{pair[0]} ({counts[0]})", f"#{pair[1]} ({counts[1]})", *(_sig(x) for x in (*per_adv, ratio)), ""])
    return pd.DataFrame(rows, columns=columns)


def loss_type_figure(table: pd.DataFrame) -> go.Figure:
    """`loss_type_table` at a glance: per loss type, the short and the long completion's per-token weight per
    unit of advantage, each divided by the pair's mean (equal bars: no length bias)."""
    fig = go.Figure()
    if table.empty:
        fig.add_annotation(text="No two completions of different lengths with a nonzero advantage: nothing to compare "
                                "(every group may have zero std).", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    else:
        short, long = table["short: weight / advantage"].to_numpy(float), table["long: weight / advantage"].to_numpy(float)
        mean = (short + long) / 2
        mean[mean == 0] = 1.0
        s_label, l_label = table["short (tokens)"].max(), table["long (tokens)"].max()
        fig.add_bar(x=table["loss_type"], y=short / mean, name=f"short completion {s_label}", marker_color="#2563eb",
                    customdata=short, hovertemplate="%{x}: %{customdata:.3e} per unit advantage<extra>short</extra>")
        fig.add_bar(x=table["loss_type"], y=long / mean, name=f"long completion {l_label}", marker_color="#f59e0b",
                    customdata=long, hovertemplate="%{x}: %{customdata:.3e} per unit advantage<extra>long</extra>")
    fig.update_layout(template="plotly_white", barmode="group", height=320, margin=dict(l=8, r=8, t=64, b=40),
                      title=dict(text="Per-token weight per unit of advantage, short vs long completion, under each "
                                      "loss_type (equal bars: no length bias)", x=0, font=dict(size=13)),
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))
    fig.update_yaxes(title="relative to the pair's mean")
    return fig


def kl_entropy_figure(r: Rollout, step: GRPOStep) -> go.Figure:
    """Two heatmaps over the completion tokens: the per-token KL to the reference (k3, as TRL) and the
    entropy mask (`top_entropy_quantile`; 1 everywhere when it is 1.0, TRL computes none)."""
    _check(r, step)
    B, T = step.token_weights.shape
    mask = step.completion_mask.bool().numpy()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("per_token_kl (k3; enters the loss when beta > 0)",
                                                        "entropy_mask (top_entropy_quantile)"), horizontal_spacing=0.08)
    kl = np.full((B, T), np.nan) if step.per_token_kl is None else step.per_token_kl.float().numpy().astype(np.float64)
    kl = np.where(mask, kl, np.nan)
    ent = np.ones((B, T)) if step.entropy_mask is None else step.entropy_mask.float().numpy().astype(np.float64)
    ent = np.where(mask, ent, np.nan)
    toks = _token_texts(r)
    fig.add_trace(go.Heatmap(z=kl, customdata=toks, colorscale="Viridis", showscale=False, hoverongaps=False,
                             hovertemplate="%{customdata} · completion %{y}, position %{x}<br>kl %{z:.3e}<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Heatmap(z=ent, customdata=toks, colorscale=[[0, "#fca5a5"], [1, "#86efac"]], zmin=0, zmax=1,
                             showscale=False, hoverongaps=False,
                             hovertemplate="%{customdata} · completion %{y}, position %{x}<br>entropy mask %{z:.0f}<extra></extra>"),
                  row=1, col=2)
    fig.update_layout(template="plotly_white", height=max(240, 120 + 18 * B), margin=dict(l=8, r=8, t=40, b=30),
                      plot_bgcolor=MASK_GREY)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False, title="completion position")
    return fig


def sampler_correction_figure(r: Rollout, step: GRPOStep) -> go.Figure:
    """The sampler correction: per completion, the importance ratio that multiplies its loss (per sequence: one
    bar; per token: the mean over its tokens), with dropped (ratio set to 0) and clamped ones marked."""
    fig = go.Figure()
    s = step.sampler
    if s is None:
        fig.add_annotation(text="No sampler correction: the trainer's own logprobs are the sampler's, or it is off.",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    else:
        mask = step.completion_mask.float()
        if s.level == "sequence":  # TRL's (B, 1); verl's (B, T), one value over the mask and 0 outside it
            B = s.raw_ratio.shape[0]
            raw = s.raw_ratio.reshape(B, -1).float().amax(1).numpy()
            used = s.ratio.reshape(B, -1).float().amax(1).numpy()
            dropped = s.dropped.reshape(B, -1).bool().any(1).numpy()
        else:
            n = mask.sum(1).clamp(min=1)
            raw = ((s.raw_ratio.float() * mask).sum(1) / n).numpy()
            used = ((s.ratio.float() * mask).sum(1) / n).numpy()
            dropped = ((s.dropped.bool() & mask.bool()).any(1)).numpy()
        colors = ["#dc2626" if d else "#2563eb" for d in dropped]
        x = [f"{i}" for i in range(len(raw))]
        fig.add_bar(x=x, y=raw, name="raw ratio exp(trainer − sampler)", marker_color="#cbd5e1")
        fig.add_bar(x=x, y=used, name="ratio applied (red: dropped)", marker_color=colors)
        for bound in (s.clip_min, s.clip_max):
            if bound is not None:
                fig.add_hline(y=bound, line=dict(dash="dot", color="#6b7280"))
        fig.update_layout(barmode="group", title=dict(
            text=f"sampler correction: {s.mode} ({s.level} level), bounds [{s.clip_min}, {s.clip_max}]",
            x=0, font=dict(size=13)))
    fig.update_layout(template="plotly_white", height=280, margin=dict(l=8, r=8, t=48, b=40),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0.4))
    fig.update_xaxes(title="completion")
    return fig


def grpo_metrics_table(step: GRPOStep) -> pd.DataFrame:
    """The numbers TRL (or verl) logs for this batch under its metric names, then the config."""
    rows = [{"metric": k, "value": round(v, 6) if isinstance(v, float) and math.isfinite(v) else v}
            for k, v in step.metrics.items()]
    rows.append({"metric": "loss", "value": round(float(step.loss), 6)})
    rows += [{"metric": f"config/{k}", "value": str(v) if v is not None else "None"} for k, v in step.config.to_dict().items()]
    return pd.DataFrame(rows, columns=["metric", "value"]).astype({"value": "object"})
