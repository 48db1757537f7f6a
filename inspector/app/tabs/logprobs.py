"""The Logprobs tab: the rollout's logprobs and entropies as heatmaps, and how far the training forward pass
moves from the sampling-time logprobs (PPO's first-epoch ratio). A new rollout fills it."""

from __future__ import annotations

import gradio as gr

from ...views import LOGPROB_KINDS

LABEL = "Logprobs"
ID = "logprobs"
HEADING = "Logprobs and entropy of each response token"


def layout(p: dict) -> None:
    gr.Markdown(f"Colour: `logprobs`, {LOGPROB_KINDS['logprobs']}; below, the entropy of that distribution in "
                "nats. Grey: after `sequence_lengths` (TRL's padding_mask). Hover a cell for its token, rank and "
                "the top alternatives.", elem_classes="panel-note")
    p["heatmap"] = gr.Plot(elem_id="panel-logprobs", show_label=False)
    p["entropy"] = gr.Plot(elem_id="panel-entropy", show_label=False)
    gr.Markdown("#### Logprob agreement: `logprobs` (sampling time) versus `new_logprobs` (the training forward pass) "
                "and PPO's first-epoch ratio")
    p["gap_md"] = gr.Markdown(elem_id="panel-agreement")
    p["gap_plot"] = gr.Plot(elem_id="panel-gap", show_label=False)


def wire(p: dict) -> None:
    """No events of its own: a new rollout fills it."""
