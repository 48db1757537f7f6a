"""The views of a training run: the trend charts per step (one plotly figure, a panel per measure, every point
carrying its step so a click can open it), what the format lacks, and one prompt's completions at two steps."""

from __future__ import annotations

import html

import numpy as np

PANELS = (
    ("Reward per function", ("reward_mean",), "reward/"),
    ("Completion length (tokens)", ("length_mean", "length_max", "length_chars_mean"), None),
    ("Truncated fraction", ("truncated_frac",), None),
    ("Zero-std groups (no signal)", ("zero_std_groups",), None),
    ("Advantage spread", ("adv_std", "adv_absmax"), None),
    ("Entropy", ("entropy",), None),
    ("Sampler-trainer gap", ("gap_abs", "gap_kl"), None),
    ("Dropped fraction (sequence_mask, cap 3)", ("dropped_frac",), None),
)
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")
LABELS = {"reward_mean": "reward (weighted sum)", "length_mean": "mean", "length_max": "max",
          "length_chars_mean": "mean (characters)", "truncated_frac": "truncated", "zero_std_groups": "zero-std groups",
          "adv_std": "std", "adv_absmax": "max |adv|", "entropy": "mean entropy", "gap_abs": "mean |trainer - sampler|",
          "gap_kl": "mean k3", "dropped_frac": "dropped"}


def _has(frame, col: str) -> bool:
    return col in frame and np.isfinite(frame[col].to_numpy(dtype=float, na_value=np.nan)).any()


def trend_panels(frame) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The panels with data, each (title, columns), and the titles of those the run lacks."""
    shown, missing = [], []
    for title, cols, prefix in PANELS:
        use = [c for c in cols if _has(frame, c)]
        if prefix:
            use += [c for c in frame.columns if c.startswith(prefix) and _has(frame, c)]
        (shown if use else missing).append((title, use) if use else title)
    return shown, missing


def trends_figure(frame, selected: int | None = None):
    """A panel per measure with data, two columns, x = step; each point's customdata is its step, and a step that
    logs an earlier step's completions again has an open marker. None when the frame is empty."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if frame is None or len(frame) == 0:
        return None
    panels, _ = trend_panels(frame)
    rows = (len(panels) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[t for t, _ in panels], vertical_spacing=0.32 / max(rows, 1),
                        horizontal_spacing=0.08)
    steps = [int(s) for s in frame["step"]]  # plain lists: the page's script reads a clicked point's step
    # a step that logs an earlier step's completions again (TRL, steps_per_generation > 1): an open marker
    repeats = ([int(v) if np.isfinite(v) else None for v in frame["repeat_of"].to_numpy(dtype=float, na_value=np.nan)]
               if "repeat_of" in frame else [None] * len(steps))
    symbols = ["circle-open" if m is not None else "circle" for m in repeats]
    said = [f"<br>the completions of step {m}, logged again" if m is not None else "" for m in repeats]
    for k, (title, cols) in enumerate(panels):
        r, c = k // 2 + 1, k % 2 + 1
        for col in cols:
            name = LABELS.get(col, col.split("/", 1)[-1])
            fig.add_trace(go.Scatter(x=steps, y=[float(v) for v in frame[col]], mode="lines+markers", name=name,
                                     customdata=steps, text=said, legendgroup=title, legendgrouptitle_text=title,
                                     line={"color": COLORS[cols.index(col) % len(COLORS)]},
                                     hovertemplate=f"step %{{x}}<br>{html.escape(name)}: %{{y:.4g}}%{{text}}"
                                                   f"<extra>{html.escape(title)}</extra>",
                                     marker={"size": 9, "symbol": symbols}), row=r, col=c)
        if selected is not None:
            fig.add_vline(x=selected, line_dash="dot", line_color="#b45309", row=r, col=c)
        fig.update_xaxes(title_text="step" if k >= len(panels) - 2 else None, row=r, col=c)
    fig.update_layout(height=230 * rows + 40, margin={"l": 40, "r": 10, "t": 40, "b": 30}, hovermode="closest",
                      clickmode="event", template="plotly_white",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.06, "x": 0, "groupclick": "toggleitem",
                              "font": {"size": 11}})
    return fig


def lacks_markdown(frame, run) -> str:
    """What the run's format lacks, by trend and by field."""
    _, missing = trend_panels(frame) if frame is not None and len(frame) else ([], [])
    parts = []
    if missing:
        parts.append("Not in this format (" + run.format + "): " + ", ".join(m.lower() for m in missing) + ".")
    lack = [f for f in ("logprobs", "new_logprobs", "ref_logprobs", "entropy", "advantages", "rewards_per_func",
                        "completion_ids") if run.lacks(f)]
    if lack:
        parts.append("Fields the files do not hold: " + ", ".join(f"`{f}`" for f in lack) + ".")
    return " ".join(parts)


def side_by_side_html(a: tuple[int, list[str]], b: tuple[int, list[str]], prompt: str) -> str:
    """One prompt's completions at two steps, in two columns."""
    cols = []
    for step, texts in (a, b):
        items = "".join(f"<li><pre class='run-completion'>{html.escape(t) or '<i>(empty)</i>'}</pre></li>" for t in texts)
        cols.append(f"<div class='run-side'><h4>step {step}</h4><ol start='0'>{items or '<li>(no completion)</li>'}</ol></div>")
    return (f"<div class='run-prompt'><b>Prompt:</b> <pre class='run-completion'>{html.escape(prompt)}</pre></div>"
            f"<div class='run-sides'>{''.join(cols)}</div>")


RUN_CSS = """
.run-sides { display: flex; gap: 1em; flex-wrap: wrap; }
.run-side { flex: 1 1 300px; min-width: 0; }
.run-completion { white-space: pre-wrap; word-break: break-word; margin: 0.2em 0; font-size: 0.9em; }
@media (max-width: 700px) {
  #run-row { flex-direction: column; }
  #run-row > div { min-width: 0 !important; width: 100%; }
}
"""
