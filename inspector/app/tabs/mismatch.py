"""The Sampler mismatch tab: the sampler's logprobs (an engine's, or `generate`'s) against the trainer's
recompute, and what TRL 1.16's and verl's corrections do with them, under the settings chosen here."""

from __future__ import annotations

import gradio as gr

from ...diagnostics.sampler import sampler_mismatch
from ...record.rollout import Rollout
from ...trainers.sampler import SAMPLER_MODES
from ...views.mismatch import SEQUENCE_COLUMNS, metrics_table, mismatch_figure, mismatch_markdown, sequence_table, token_table
from ..common import friendly

LABEL = "Sampler mismatch"
ID = "mismatch"
HEADING = ("The sampler's logprobs (the engine's, or `generate`'s) against the trainer's recompute, and what TRL "
           "1.16's and verl's corrections do with them")
INPUTS = ["session_rollout", "is_mode", "is_clip_min", "is_clip_max", "verl_threshold"]
OUTPUTS = ["mismatch_md", "mismatch_plot", "mismatch_sequences", "mismatch_tokens", "mismatch_metrics"]


def layout(p: dict) -> None:
    with gr.Row(elem_id="mismatch-settings"):
        p["is_mode"] = gr.Dropdown(list(SAMPLER_MODES), value="sequence_mask", min_width=160,
                                   label="vllm_importance_sampling_mode", elem_id="is-mode")
        p["is_clip_min"] = gr.Number(0, label="clip_min (0 = None)", min_width=110, elem_id="is-clip-min")
        p["is_clip_max"] = gr.Number(3.0, label="clip_max", min_width=90, elem_id="is-clip-max")
        p["verl_threshold"] = gr.Number(2.0, label="verl rollout_is_threshold", min_width=120, elem_id="verl-threshold")
    p["mismatch_md"] = gr.Markdown(elem_id="panel-mismatch")
    p["mismatch_plot"] = gr.Plot(elem_id="panel-mismatch-plot", show_label=False)
    p["mismatch_sequences"] = gr.Dataframe(
        interactive=False, label="Per sequence", elem_id="panel-mismatch-sequences", headers=SEQUENCE_COLUMNS,
        column_widths=["200px"] + ["110px"] * (len(SEQUENCE_COLUMNS) - 1))
    p["mismatch_tokens"] = gr.Dataframe(interactive=False, label="Per token, largest gap first", max_height=480,
                                        elem_id="panel-mismatch-tokens")
    p["mismatch_metrics"] = gr.Dataframe(interactive=False, label="What TRL and verl log for this batch",
                                         elem_id="panel-mismatch-metrics")


def wire(p: dict) -> None:
    inputs, outputs = [p[n] for n in INPUTS], [p[n] for n in OUTPUTS]
    for control in inputs:
        control.change(mismatch_views, inputs, outputs, api_visibility="private")


def mismatch_views(r: Rollout | None, mode, clip_min, clip_max, verl_threshold):
    """The mismatch tab of a rollout under the chosen correction settings (no model pass)."""
    if r is None:
        return ("Run a rollout; give an engine URL to sample with a server.", None, None, None, None)
    try:
        mm = sampler_mismatch(r, clip_min=clip_min or None, clip_max=clip_max, mode=mode, verl_threshold=verl_threshold)
    except Exception as exc:
        raise friendly(exc) from exc
    return (mismatch_markdown(r, mm), mismatch_figure(r, mm, "token_mask"), sequence_table(r, mm),
            token_table(r, mm), metrics_table(mm))
