"""Views of the PPO step, of logprob agreement and of the diagnostics: token-aligned rows, a gap heatmap, cards."""

from __future__ import annotations


import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from ..diagnostics import Finding
from ..trainers.ppo import PPOStep
from ..record.rollout import Rollout
from ._common import esc, fmt, plural, sample_label, shown, valid_mask
from .figures import MODEBAR

PPO_CSS = """
.ppo-wrap { overflow-x: auto; max-width: 100%; border: 1px solid #e5e7eb; border-radius: 6px; background: #fff; }
.ppo-table { border-collapse: collapse; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11.5px; color: #111827; }
.ppo-table th, .ppo-table td { padding: 2px 5px; border-right: 1px solid #f3f4f6; text-align: right; white-space: nowrap; }
.ppo-table th { position: sticky; left: 0; background: #f9fafb; text-align: left; font-weight: 600; z-index: 1; }
.ppo-table tr.tokrow td { background: #dcfce7; color: #14532d; text-align: center; }
.ppo-table td.pad { color: #9ca3af; background: #f3f4f6; }
.ppo-table td.scored { outline: 2px solid #7c3aed; outline-offset: -2px; font-weight: 700; }
.ppo-table td.neg { color: #b91c1c; } .ppo-table td.pos { color: #047857; }
.diag-list { display: flex; flex-direction: column; gap: 4px; }
.diag { border-left: 4px solid #f59e0b; background: #fffbeb; padding: 6px 10px; border-radius: 4px; color: #111827; }
.diag.info { border-left-color: #3b82f6; background: #eff6ff; }
.diag.ok { border-left-color: #10b981; background: #ecfdf5; }
.diag h4 { margin: 0 0 3px; font-size: 14px; }
.diag summary { cursor: pointer; font-size: 14px; }
.diag summary .more { color: #2563eb; font-size: 12px; margin-left: 6px; }
.diag[open] summary .more { display: none; }
.diag p { margin: 2px 0; font-size: 13px; }
.diag .where { color: #4b5563; font-size: 12px; }
"""

ROWS = [
    ("logprobs", "logprobs (sampled-from, masked)"),
    ("new_logprobs", "new_logprobs (recompute)"),
    ("ratio", "ratio exp(new − old), epoch 1"),
    ("ref_logprobs", "reference (masked)"),
    ("kl", "kl"),
    ("non_score_reward", "-kl_coef · kl"),
    ("rewards", "rewards"),
    ("values", "values (masked p1)"),
    ("advantages", "advantages (whitened)"),
    ("returns", "returns"),
]




def ppo_rows_html(r: Rollout, step: PPOStep, sample: int) -> str:
    """The PPO quantities of one sample as rows aligned under its response tokens (scrolls sideways)."""
    if not 0 <= sample < r.batch_size:
        raise IndexError(f"sample {sample} is out of range (0..{r.batch_size - 1})")
    G = r.response_width
    pad = step.padding_mask[sample].tolist()
    pad1 = step.padding_mask_p1[sample].tolist()
    scored = int(step.reward_positions[sample])
    head = "".join(f"<td title='index {t}, id {int(r.responses[sample, t])}'>{esc(shown(r.token(int(r.responses[sample, t])), 12))}</td>"
                   for t in range(G))
    lines = [f"<tr><th>index</th>{''.join(f'<td>{t}</td>' for t in range(G))}</tr>",
             f"<tr class='tokrow'><th>response token</th>{head}</tr>"]
    recompute = r.new_logprobs[sample]
    extra = {"new_logprobs": recompute, "ratio": torch.exp(recompute - r.logprobs[sample])}
    for name, label in ROWS:
        values = extra[name] if name in extra else getattr(step, name)[sample]
        cells = []
        for t in range(G):
            v = float(values[t])
            text = fmt(v, signed=True)
            masked = pad1[t] if name == "values" else pad[t]
            classes = ["pad"] if masked else []
            if name == "rewards" and t == scored:
                classes.append("scored")
            elif name in ("rewards", "advantages") and not masked:
                classes.append("pos" if text.startswith("+") else "neg" if text.startswith("-") else "")
            cells.append(f"<td class='{' '.join(classes)}'>{text}</td>")
        lines.append(f"<tr data-row='{name}'><th>{esc(label)}</th>{''.join(cells)}</tr>")
    lines.append(
        "<tr><th>padding_mask / _p1</th>"
        + "".join(f"<td class='{'pad' if pad[t] else ''}'>{int(pad[t])}/{int(pad1[t])}</td>" for t in range(G)) + "</tr>"
    )
    note = (f"<p class='panel-note'>score {fmt(step.scores[sample], 4, signed=True)} added to <b>rewards</b> at response index "
            f"{scored} (sequence_lengths + 1 = {int(r.sequence_lengths[sample]) + 1}"
            f"{', which does not fit, so sequence_lengths' if scored == int(r.sequence_lengths[sample]) else ''}); grey cells "
            f"are padding (logprobs there are INVALID_LOGPROB = 1.0).</p>")
    return f"<div class='ppo-view' data-sample='{sample}'>{note}<div class='ppo-wrap'><table class='ppo-table'>{''.join(lines)}</table></div></div>"


def ppo_metrics_table(step: PPOStep) -> pd.DataFrame:
    """The batch numbers TRL logs for this rollout, and the config that produced them."""
    rows = [{"metric": k, "value": str(int(v)) if "/num_" in k else fmt(v, 6)} for k, v in step.metrics.items()]
    rows += [{"metric": f"config/{k}", "value": "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)}
             for k, v in step.config.to_dict().items()]
    return pd.DataFrame(rows, columns=["metric", "value"]).astype({"value": "object"})


def logprob_gap_figure(r: Rollout) -> go.Figure:
    """Heatmap of logprobs - new_logprobs (sampling time minus training-time recompute), valid tokens only."""
    gap = (r.logprobs - r.new_logprobs).numpy().astype(float)
    gap = np.where(valid_mask(r).numpy() & np.isfinite(gap), gap, np.nan)
    raw_gap = (r.raw_logprobs - r.new_logprobs).numpy().astype(float)
    B, G = gap.shape
    bound = float(np.nanmax(np.abs(gap))) if np.isfinite(gap).any() else 1e-6
    bound = max(bound, 1e-6)
    custom = np.stack([
        np.vectorize(lambda i: shown(r.token(int(i)), 16), otypes=[object])(r.responses.numpy()),
        r.logprobs.numpy(), r.new_logprobs.numpy(), raw_gap,
    ], axis=-1)
    fig = go.Figure(go.Heatmap(
        z=gap, x=np.arange(G), y=np.arange(B), customdata=custom, zmid=0, zmin=-bound, zmax=bound, colorscale="RdBu",
        hovertemplate="sample %{y} · index %{x}<br>token %{customdata[0]}<br>logprobs (sampled-from) %{customdata[1]:.5f}"
                      "<br>new_logprobs (recompute) %{customdata[2]:.5f}<br>gap %{z:.2e}<br>raw - recompute %{customdata[3]:.2e}"
                      "<extra></extra>",
        colorbar=dict(title=dict(text="gap (nats)"), thickness=12), xgap=1 if G <= 64 else 0, ygap=1,
    ))
    fig.update_layout(template="plotly_white", height=max(240, 130 + 24 * B), margin=dict(l=8, r=8, t=40, b=40),
                      modebar=MODEBAR, title=dict(text="logprobs − new_logprobs, per token", x=0,
                                 font=dict(size=14)), plot_bgcolor="#c4c4c4")
    fig.update_xaxes(title="response index", showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=list(range(B)), ticktext=[esc(sample_label(r, i, 16)) for i in range(B)],
                     autorange="reversed", automargin=True, showgrid=False)
    return fig


def logprob_agreement_markdown(r: Rollout) -> str:
    """The gap summarised: max / mean |gap|, PPO's first-epoch ratio exp(new_logprobs - logprobs), and why."""
    valid = valid_mask(r)
    if not valid.any():
        return "No response token to compare."
    gap = (r.logprobs - r.new_logprobs)[valid]
    gap = gap[torch.isfinite(gap)]
    ratio = torch.exp(r.new_logprobs[valid] - r.logprobs[valid])
    ratio = ratio[torch.isfinite(ratio)]
    no_temp = (r.raw_logprobs - r.new_logprobs)[valid].abs()
    s = r.settings
    lines = [
        f"**max |gap|** {fmt(gap.abs().max(), 2, sci=True)} · **mean |gap|** {fmt(gap.abs().mean(), 2, sci=True)} nats over "
        f"{int(valid.sum())} tokens",
        f"**PPO's first-epoch ratio** exp(new_logprobs − logprobs): min {fmt(ratio.min(), 4)}, max "
        f"{fmt(ratio.max(), 4)}, mean {fmt(ratio.mean(), 4)} (the ratio TRL clips in its first optimisation "
        "step, before any update; 1.0 means the trainer recomputes exactly what was sampled)",
    ]
    temp = s.get("effective_temperature", 1.0)
    if abs(temp - 1.0) > 1e-6:
        lines.append(f"Had the recompute forgotten the temperature ({temp}), the gap would be up to "
                     f"{fmt(no_temp.max())} nats: that is the `raw_logprobs` row.")
    causes = []
    if s.get("do_sample") and s.get("top_k"):
        causes.append(f"top_k={s['top_k']}: sampling renormalised over the top {s['top_k']} tokens")
    if s.get("do_sample") and s.get("top_p", 1.0) < 1.0:
        causes.append(f"top_p={s['top_p']}: sampling renormalised over the nucleus")
    for e in r.inherited_processors:
        if e.get("processor") and e["max_effect"] > 1e-3:
            causes.append(f"{e['setting']}={e['value']!r} from the model's generation_config.json: up to "
                          f"{e['max_effect']:.3g} nats")
    if causes:
        lines.append("**Why there is a gap:** " + "; ".join(causes) + ". The training forward pass applies only the "
                     "temperature, so these tokens' probabilities differ.")
    elif float(gap.abs().max()) < 1e-3:
        lines.append("**No gap beyond float noise:** the recompute applies the same temperature and nothing else "
                     "was applied at sampling time (top_k=0, top_p=1.0, set explicitly; generate's silent default "
                     "top_k=50 is not in effect here).")
    else:
        lines.append("**Gap without truncation settings:** numerical differences between the cached generation and "
                     "the full forward pass (dtype, kernels).")
    lines.append(generation_settings_markdown(r))
    return "  \n".join(lines)


def generation_settings_markdown(r: Rollout) -> str:
    """The effective generation settings (the page's merged with the model's generation_config.json), the
    non-neutral ones, each marked where the model set it."""
    g = r.generation_config
    if not g:
        return "**Generation settings:** not recorded (a record from before they were)."
    inherited = set(g.get("from_model", []))
    neutral = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "typical_p": 1.0,
               "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "remove_invalid_values": False, "top_p": 1.0, "top_k": 0,
               "num_beams": 1}
    shown = [f"`{k}={v!r}`" + (" (from the model)" if k in inherited else "")
             for k, v in g.get("values", {}).items() if v is not None and neutral.get(k, object()) != v]
    source = ("the page's merged with the model's generation_config.json, as `generate` merges them"
              if g.get("model_config_used", True) else "the page's only: the model's generation_config.json was ignored")
    return (f"**Effective generation settings** ({source}): " + ", ".join(shown)
            + ". Generation stops at `eos_token_id`, the stop token (TRL 0.14+; `None`: no early stop).")


def diagnostics_html(findings: list[Finding]) -> str:
    """The findings as folded cards: the trap and the samples it touches on one line; opened, the detail, why it
    matters and the fix."""
    if not findings:
        return "<div class='diag-list'><div class='diag ok'><h4>No trap found in this rollout</h4></div></div>"
    cards = []
    for f in findings:
        where = ""
        if f.samples:
            where = f"{plural(len(f.samples), 'sample')} {', '.join(map(str, f.samples[:20]))}{' …' if len(f.samples) > 20 else ''}"
        positions = ""
        if f.positions:
            positions = (f"<p class='where'>positions (sample:index) {', '.join(f'{b}:{t}' for b, t in f.positions[:12])}"
                         f"{' …' if len(f.positions) > 12 else ''}</p>")
        cards.append(
            f"<details class='diag {esc(f.severity)}' data-code='{esc(f.code)}'><summary><b>"
            f"{'⚠' if f.severity == 'warning' else 'ℹ'} {esc(f.title)}</b>"
            f"{f' <span class=where>· {where}</span>' if where else ''} <span class='more'>why and fix</span></summary>"
            f"<p>{esc(f.detail)}</p>{positions}<p><b>Why it matters:</b> {esc(f.why)}</p>"
            f"<p><b>Fix:</b> {esc(f.fix)}</p></details>"
        )
    return f"<div class='diag-list'>{''.join(cards)}</div>"
