"""The sampler-mismatch tab: the sampler's logprob against the trainer's recompute, token by token and per
sequence, what TRL 1.16's and verl's corrections do with each, the logged metrics, and the cause in words.

Pure functions of a Rollout and its `SamplerMismatch` (inspector/mismatch.py): no model pass.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..diagnostics.sampler import SamplerMismatch
from ..record.rollout import Rollout
from ._common import esc, sample_label, shown


def _fmt(x: float, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return format(x, spec)


def _trl_token_state(mm: SamplerMismatch, mode: str, b: int, t: int) -> str:
    c = mm.trl[mode]
    row, col = (b, 0) if c.level == "sequence" else (b, t)
    if bool(c.dropped[row, col]):
        return "dropped (0)"
    if bool(c.clamped[row, col]):
        return f"clamped to {_fmt(float(c.ratio[row, col]))}"
    return "kept"


def mismatch_figure(r: Rollout, mm: SamplerMismatch, mode: str = "token_mask") -> go.Figure:
    """Heatmap of trainer − sampler logprob per completion token (TRL's per_token_logps_diff), grey outside the
    completion mask. Hover: the token, both logprobs, the token ratio, the recomputes without the temperature
    and with top-k / top-p, and what TRL's `mode` and verl's token rollout_is do with it."""
    B, G = mm.diff.shape
    mask = mm.mask.numpy()
    z = np.where(mask, mm.diff.numpy().astype(float), np.nan)
    bound = max(float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 0.0, 1e-6)
    processed = r.processed_logprobs if r.processed_logprobs is not None else r.logprobs
    verl = mm.verl["token"]
    custom = np.empty((B, G, 8), dtype=object)
    for b in range(B):
        for t in range(G):
            custom[b, t] = [
                esc(shown(r.token(int(r.responses[b, t])), 16)), f"{float(mm.sampler[b, t]):.5f}",
                f"{float(mm.trainer[b, t]):.5f}", _fmt(float(mm.token_ratio[b, t])),
                f"{float(r.raw_logprobs[b, t]):.4f}", f"{float(processed[b, t]):.5f}",
                _trl_token_state(mm, mode, b, t) if mask[b, t] else "masked",
                _fmt(float(verl.ratio[b, t])) if mask[b, t] else "masked",
            ]
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(G), y=np.arange(B), customdata=custom, zmid=0, zmin=-bound, zmax=bound, colorscale="RdBu",
        hovertemplate=("sample %{y} · index %{x}<br>token %{customdata[0]}<br>sampler logprob %{customdata[1]}"
                       "<br>trainer logprob %{customdata[2]}<br>trainer − sampler %{z:.2e}<br>ratio %{customdata[3]}"
                       "<br>recompute without temperature %{customdata[4]}<br>recompute with top-k/top-p "
                       f"%{{customdata[5]}}<br>TRL {mode} %{{customdata[6]}}<br>verl rollout_is=token %{{customdata[7]}}"
                       "<extra></extra>"),
        colorbar=dict(title=dict(text="nats"), thickness=12), xgap=1 if G <= 64 else 0, ygap=1,
    ))
    fig.update_layout(template="plotly_white", height=max(240, 130 + 24 * B), margin=dict(l=8, r=8, t=40, b=40),
                      title=dict(text="trainer − sampler logprob per token (log importance ratio)", x=0,
                                 font=dict(size=14)), plot_bgcolor="#c4c4c4")
    fig.update_xaxes(title="completion index", showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=list(range(B)), ticktext=[esc(sample_label(r, i)) for i in range(B)],
                     autorange="reversed", automargin=True, showgrid=False)
    return fig


SEQUENCE_COLUMNS = ["sample", "tokens", "Σ gap", "seq ratio", "max |gap|", "TRL seq_truncate", "TRL seq_mask",
                    "TRL tok_truncate clamps", "TRL tok_mask drops", "verl seq", "verl tok clamps"]
"""Σ gap: the sum over the completion of trainer − sampler; seq ratio its exp (TRL's sequence-level ratio)."""


def sequence_table(r: Rollout, mm: SamplerMismatch) -> pd.DataFrame:
    """One row per completion: its sequence ratio and what each correction does to it."""
    rows = []
    for b in range(mm.diff.shape[0]):
        m = mm.mask[b]
        seq_t, seq_m = mm.trl["sequence_truncate"], mm.trl["sequence_mask"]
        rows.append({
            "sample": sample_label(r, b),
            "tokens": int(m.sum()),
            "Σ gap": round(float(mm.sequence_log_ratio[b]), 6),
            "seq ratio": round(float(mm.sequence_ratio[b]), 6),
            "max |gap|": round(float(mm.diff[b].abs().max()), 6) if m.any() else 0.0,
            "TRL seq_truncate": ("clamped to " if bool(seq_t.clamped[b, 0]) else "")
            + _fmt(float(seq_t.ratio[b, 0])),
            "TRL seq_mask": "dropped (0)" if bool(seq_m.dropped[b, 0]) else "kept",
            "TRL tok_truncate clamps": int((mm.trl["token_truncate"].clamped[b] & m).sum()),
            "TRL tok_mask drops": int((mm.trl["token_mask"].dropped[b] & m).sum()),
            "verl seq": ("clamped to " if bool(mm.verl["sequence"].clamped[b].any()) else "")
            + _fmt(float(mm.verl["sequence"].ratio[b][m].max()) if m.any() else 0.0),
            "verl tok clamps": int((mm.verl["token"].clamped[b] & m).sum()),
        })
    return pd.DataFrame(rows, columns=SEQUENCE_COLUMNS)


TOKEN_COLUMNS = ["sample", "index", "token", "sampler logprob", "trainer logprob", "trainer − sampler", "ratio",
                 "without temperature", "with top-k/top-p", "TRL token_truncate", "TRL token_mask"]


def token_table(r: Rollout, mm: SamplerMismatch, limit: int = 200) -> pd.DataFrame:
    """The completion tokens with the largest |trainer − sampler| first (at most `limit` rows)."""
    processed = r.processed_logprobs if r.processed_logprobs is not None else r.logprobs
    idx = mm.mask.nonzero().tolist()
    idx.sort(key=lambda bt: -abs(float(mm.diff[bt[0], bt[1]])))
    rows = []
    for b, t in idx[:limit]:
        rows.append({
            "sample": b, "index": t, "token": shown(r.token(int(r.responses[b, t])), 24),
            "sampler logprob": round(float(mm.sampler[b, t]), 6), "trainer logprob": round(float(mm.trainer[b, t]), 6),
            "trainer − sampler": float(f"{float(mm.diff[b, t]):.3e}"), "ratio": round(float(mm.token_ratio[b, t]), 6),
            "without temperature": round(float(r.raw_logprobs[b, t]), 6),
            "with top-k/top-p": round(float(processed[b, t]), 6),
            "TRL token_truncate": _trl_token_state(mm, "token_truncate", b, t),
            "TRL token_mask": _trl_token_state(mm, "token_mask", b, t),
        })
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS)


def metrics_table(mm: SamplerMismatch) -> pd.DataFrame:
    """TRL's `sampling/...` metrics (for the chosen mode) and verl's `training/rollout_probs_diff_...`."""
    rows = [{"metric": k, "value": float(f"{v:.6g}") if isinstance(v, float) else v} for k, v in mm.metrics.items()]
    rows.append({"metric": "config/vllm_importance_sampling_mode", "value": mm.settings.get("mode")})
    rows.append({"metric": "config/vllm_importance_sampling_clip_min", "value": "None" if mm.clip_min is None else mm.clip_min})
    rows.append({"metric": "config/vllm_importance_sampling_clip_max", "value": "None" if mm.clip_max is None else mm.clip_max})
    rows.append({"metric": "config/rollout_is_threshold (verl)", "value": mm.verl_threshold})
    return pd.DataFrame(rows, columns=["metric", "value"]).astype({"value": "object"})


def mismatch_markdown(r: Rollout, mm: SamplerMismatch) -> str:
    """Who sampled, the cause in words, and per mode how many tokens / sequences each correction touches."""
    e = r.engine or {}
    if e.get("url"):
        who = (f"**Sampled by** the engine at `{e['url']}` serving `{e.get('served_model')}`; the trainer recomputed "
               f"in-process in {e.get('trainer_dtype', 'float32')}.")
    else:
        who = "**Sampled in-process** by `transformers.generate`; the trainer recomputed with the same model."
    n_tok, n_seq = int(mm.mask.sum()), mm.mask.shape[0]
    lines = [who, f"**Cause:** {mm.diagnosis.text}"]
    if e.get("note"):
        lines.append(f"**Unreported logprobs:** {e['note']}")
    parts = []
    for mode, c in mm.trl.items():
        if c.level == "sequence":
            n = int(c.dropped.sum() if mode.endswith("mask") else c.clamped.sum())
            parts.append(f"`{mode}`: {n} of {n_seq} sequences {'dropped' if mode.endswith('mask') else 'clamped'}")
        else:
            hit = (c.dropped if mode.endswith("mask") else c.clamped) & mm.mask
            parts.append(f"`{mode}`: {int(hit.sum())} of {n_tok} tokens {'dropped' if mode.endswith('mask') else 'clamped'}")
    bounds = f"clip_min={mm.clip_min}, clip_max={mm.clip_max}"
    lines.append(f"**TRL 1.16** ({bounds}): " + "; ".join(parts) + ".")
    vt = (mm.verl["token"].clamped | mm.verl["token"].dropped) & mm.mask
    vs = ((mm.verl["sequence"].clamped | mm.verl["sequence"].dropped) & mm.mask).any(-1)
    lines.append(f"**verl rollout_is** (threshold {mm.verl_threshold}): `token` changes {int(vt.sum())} of {n_tok} tokens; "
                 f"`sequence` changes {int(vs.sum())} of {n_seq} sequences.")
    return "  \n".join(lines)
