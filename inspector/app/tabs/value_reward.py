"""The Value & reward tab: what the value model and the reward model each read for the picked sample, and the
values along the response. A new rollout and the sample picker fill it."""

from __future__ import annotations

import gradio as gr

LABEL = "Value & reward"
ID = "value-reward"
HEADING = "Value model input versus reward model input (the picked sample)"


def layout(p: dict) -> None:
    p["vr_html"] = gr.HTML(elem_id="panel-value-reward")
    gr.Markdown("The value model on `query_responses`: `values[g]` is read at the token before response token g. "
                "TRL keeps them up to `sequence_lengths + 1` and uses 0 after (padding_mask_p1).",
                elem_classes="panel-note")
    p["values_plot"] = gr.Plot(elem_id="panel-values", show_label=False)


def wire(p: dict) -> None:
    """No events of its own: a new rollout and the sample picker fill it."""
