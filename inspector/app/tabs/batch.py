"""The Batch & compare tab: one row per sample, the downloads of the whole rollout, and two samples side by
side."""

from __future__ import annotations

import gradio as gr

from ...record.rollout import Rollout
from ...views import BATCH_COLUMNS, compare_html
from ..common import sample_choices, spec_table

LABEL = "Batch & compare"
ID = "batch"
HEADING = "The batch, one row per sample, and its downloads"


def layout(p: dict) -> None:
    p["table"] = spec_table(BATCH_COLUMNS, "Batch", "panel-batch")
    with gr.Row():
        p["table_file"] = gr.File(label="Batch table (CSV)", elem_id="download-table")
        p["record_file"] = gr.File(label="Whole rollout (JSON record; JSONL and Parquet rows)",
                                   file_count="multiple", elem_id="download-record")
    gr.Markdown("#### Compare two samples")
    with gr.Row():
        p["compare_a"] = gr.Dropdown(choices=[], value=None, label="Left", elem_id="compare-a")
        p["compare_b"] = gr.Dropdown(choices=[], value=None, label="Right", elem_id="compare-b")
    p["compare_out"] = gr.HTML(elem_id="panel-compare")


def wire(p: dict) -> None:
    for picker in ("compare_a", "compare_b"):
        p[picker].change(compare_view, [p["session_rollout"], p["compare_a"], p["compare_b"]], p["compare_out"],
                         api_visibility="private")


def compare_view(r: Rollout | None, a, b):
    """Two picked samples side by side. While a picker (or the session's rollout) is not yet set, what is shown stays:
    a new rollout sets both pickers at once and draws its pair itself (`compare_choices`), and the pickers' change
    events that follow may run in either order, the first with the other picker still unset."""
    if r is None or a is None or b is None:
        return gr.update()
    a, b = int(a), int(b)
    if not (0 <= a < r.batch_size and 0 <= b < r.batch_size):
        return ""
    return compare_html(r, a, b)


def compare_choices(r: Rollout | None):
    """Both compare pickers reset to the first two samples of a new rollout, and those two side by side (drawn
    here: a picker whose value stays the same, or that sits in a tab not yet shown, sends no change event)."""
    if r is None:
        return gr.update(), gr.update(), gr.update()
    choices = sample_choices(r)
    b = min(1, r.batch_size - 1)
    return gr.update(choices=choices, value=0), gr.update(choices=choices, value=b), compare_html(r, 0, b)
