"""The Sequences tab: the raw `output.sequences`, the split at `context_length` of the picked sample, and where
each sample stops and pads. A new rollout fills it (`rollouts.ROLLOUT_OUTPUTS`)."""

from __future__ import annotations

import gradio as gr

from ...views import STOP_COLUMNS
from ..common import spec_table

LABEL = "Sequences"
ID = "sequences"
HEADING = "Raw `output.sequences`"


def layout(p: dict) -> None:
    p["seq_html"] = gr.HTML(elem_id="panel-sequences")
    gr.Markdown("#### The manual split at `context_length` (the picked sample)")
    p["split_view"] = gr.HTML(elem_id="panel-split")
    gr.Markdown("#### Stop and pad")
    p["stops"] = spec_table(STOP_COLUMNS, "Stop and pad positions", "panel-stops")


def wire(p: dict) -> None:
    """No events of its own: a new rollout and the sample picker fill it."""
