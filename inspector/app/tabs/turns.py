"""The Multi-turn tab: a multi-turn rollout (TRL 1.16's tool loop: tools, an environment or a scripted one) on the
policy, or a trainer's multi-turn file, shown turn by turn: roles, masks, logprobs, the GRPO step, template drift,
the findings and what the reward functions receive."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ...errors import InputError
from ...models import load_models
from ...sources.multiturn_files import FORMATS, open_multiturn
from ...views.turns import (
    GRPO_COLUMNS,
    drift_html,
    findings_html,
    grpo_table,
    logprob_heatmap,
    notes_markdown,
    reward_input_html,
    token_weight_heatmap,
    turns_html,
)
from ..common import friendly, model_names, parse_prompts
from ..hosting import gpu, model_event

LABEL = "Multi-turn"
ID = "turns"
HEADING = "Multi-turn rollouts: which tokens the model wrote, which the trainer trains on"
MODES = [("scripted environment (any chat model)", "scripted"), ("python tools (calculator)", "tools"),
         ("environment (guess the number)", "env")]
DEFAULT_PROMPTS = "What is 12 * 7? Use the calculator if you need it."
ALL = "all turns"
OUTPUTS = ["mt_status", "mt_sample", "mt_turn", "mt_view", "mt_reward", "mt_findings", "mt_drift", "mt_grpo",
           "mt_logprobs", "mt_weights", "mt_notes"]


def layout(p: dict) -> None:
    p["mt_state"] = gr.State(None, time_to_live=6 * 3600)
    gr.Markdown("Each sample is the whole token stream: prompt, the model's turns, tool or environment replies. "
                "Tokens sit in blocks by role; green: trained (TRL's `completion_mask` × `tool_mask`), grey text: "
                "not trained, orange dashed: sampled but masked, red: not sampled but trained.",
                elem_classes="panel-note")
    with gr.Row(equal_height=False):
        p["mt_mode"] = gr.Dropdown(MODES, value="scripted", label="mode", elem_id="mt-mode", min_width=180)
        p["mt_max_turns"] = gr.Number(2, precision=0, minimum=0, label="max turns", elem_id="mt-max-turns", min_width=90)
        p["mt_max_len"] = gr.Number(48, precision=0, minimum=1, label="max completion length", elem_id="mt-max-len",
                                    min_width=90)
        p["mt_generations"] = gr.Number(2, precision=0, minimum=2, label="generations", elem_id="mt-generations",
                                        min_width=90)
        p["mt_seed"] = gr.Number(0, precision=0, label="seed", elem_id="mt-seed", min_width=80)
    p["mt_prompts"] = gr.Textbox(DEFAULT_PROMPTS, lines=2, label="prompts (one per line)", elem_id="mt-prompts")
    p["mt_run"] = gr.Button("Run multi-turn rollout", variant="primary", elem_id="mt-run")
    with gr.Accordion("Open a multi-turn file (verl, prime-rl, SkyRL, NeMo-RL, transcripts)", open=False):
        p["mt_file"] = gr.File(label="file", elem_id="mt-file", file_types=[".jsonl", ".json", ".pkl"])
        with gr.Row():
            p["mt_format"] = gr.Dropdown(["auto", *FORMATS], value="auto", label="format", elem_id="mt-format")
            p["mt_template"] = gr.Textbox("auto", label="transcripts: chat template (auto, or a TRL *_training name)",
                                          elem_id="mt-template")
        p["mt_open"] = gr.Button("Open file", elem_id="mt-open")
    p["mt_status"] = gr.Markdown("Press **Run multi-turn rollout** or open a file.", elem_id="mt-status")
    with gr.Row(equal_height=False):
        p["mt_sample"] = gr.Dropdown(choices=[], value=None, label="sample", elem_id="mt-sample", min_width=160)
        p["mt_turn"] = gr.Dropdown(choices=[ALL], value=ALL, label="turn", elem_id="mt-turn", min_width=160)
        p["mt_prev"] = gr.Button("◀ previous turn", size="sm", elem_id="mt-prev", min_width=120)
        p["mt_next"] = gr.Button("next turn ▶", size="sm", elem_id="mt-next", min_width=120)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            p["mt_view"] = gr.HTML(elem_id="mt-view")
        with gr.Column(scale=2, min_width=280):
            gr.Markdown("#### What the reward functions receive")
            p["mt_reward"] = gr.HTML(elem_id="mt-reward")
    gr.Markdown("#### Findings")
    p["mt_findings"] = gr.HTML(elem_id="mt-findings")
    gr.Markdown("#### Template drift: the stream as generated against a fresh `apply_chat_template` of the final messages")
    p["mt_drift"] = gr.HTML(elem_id="mt-drift")
    gr.Markdown("#### The GRPO step: advantages over model tokens only")
    p["mt_grpo"] = gr.Dataframe(pd.DataFrame(columns=GRPO_COLUMNS), interactive=False, wrap=True, elem_id="mt-grpo")
    p["mt_weights"] = gr.Plot(elem_id="mt-weights", show_label=False)
    p["mt_logprobs"] = gr.Plot(elem_id="mt-logprobs", show_label=False)
    p["mt_notes"] = gr.Markdown(elem_id="mt-notes")


def _turn_value(choice) -> int | None:
    if choice in (None, ALL):
        return None
    return int(str(choice).split()[-1]) if str(choice).split()[-1].isdigit() else 0


def _turn_choices(r, sample: int) -> list:
    turns = sorted(set(r.trajectories[sample].turn)) if r and r.trajectories else []
    return [ALL] + [("prompt" if k == 0 else f"turn {k}", "prompt 0" if k == 0 else f"turn {k}") for k in turns]


def turn_views(r, sample=0, turn=ALL) -> tuple:
    """Every output of the tab for one sample and turn choice (ALL, "prompt 0", "turn k")."""
    if r is None or not r.trajectories:
        return ("Press **Run multi-turn rollout** or open a file.", gr.update(choices=[], value=None),
                gr.update(choices=[ALL], value=ALL), turns_html(None), "", "", "", pd.DataFrame(columns=GRPO_COLUMNS),
                None, None, "")
    sample = min(max(int(sample or 0), 0), len(r) - 1)
    t = r.trajectories[sample]
    made = r.settings.get("file") or f"mode {r.settings.get('mode', '?')}, on {r.model_names.get('policy', 'the policy')}"
    status = (f"**{len(r)} trajector{'y' if len(r) == 1 else 'ies'}** ({t.source}; {made}) · sample {sample}: "
              f"{t.num_turns} turn(s), {sum(t.loss_mask)} of {len(t.completion_ids)} completion tokens trained")
    samples = [(f"{i}: {tr.source} · {tr.num_turns} turn(s)", i) for i, tr in enumerate(r.trajectories)]
    choices = _turn_choices(r, sample)
    turn = turn if turn in [c if isinstance(c, str) else c[1] for c in choices] else ALL
    return (status, gr.update(choices=samples, value=sample), gr.update(choices=choices, value=turn),
            turns_html(r, sample, _turn_value(turn)), reward_input_html(t), findings_html(r), drift_html(r, sample),
            grpo_table(r), logprob_heatmap(r), token_weight_heatmap(r), notes_markdown(r, sample))


def step_turn(r, sample, turn, delta: int):
    """The turn choice `delta` turns on from `turn` (ALL counts as before the prompt)."""
    values = [c if isinstance(c, str) else c[1] for c in _turn_choices(r, int(sample or 0))] if r else [ALL]
    i = values.index(turn) if turn in values else 0
    return values[min(max(i + delta, 0), len(values) - 1)]


@gpu
def run_turns(policy, reward, value, reference, mode, prompts_text, max_turns, max_len, generations, seed,
              progress=gr.Progress()):
    from ...sources.multiturn_run import run_multiturn

    try:
        prompts = parse_prompts(prompts_text)
        if not prompts:
            raise InputError("Write at least one prompt.")
        models = load_models(**model_names(policy, reward, value, reference))
        progress(0.1, "multi-turn rollout")
        r = run_multiturn(models, prompts, mode=mode, env="guess" if mode == "env" else None, max_turns=int(max_turns),
                          max_completion_length=int(max_len), num_generations=int(generations), seed=int(seed or 0))
        r.settings["mode"] = mode
        return (r, *turn_views(r, 0, "turn 1" if any(k == 1 for k in r.trajectories[0].turn) else ALL))
    except Exception as exc:
        raise friendly(exc) from exc


@gpu
def open_turns(file, fmt, template, policy, reward, value, reference):
    try:
        if file is None:
            raise InputError("Choose a file first.")
        path = file if isinstance(file, str) else getattr(file, "name", None) or file["path"]
        tokenizer = load_models(**model_names(policy, reward, value, reference)).tokenizer
        r = open_multiturn(path, tokenizer, None if fmt in (None, "auto") else fmt, template)
        return (r, *turn_views(r, 0, ALL))
    except Exception as exc:
        raise friendly(exc) from exc


def wire(p: dict) -> None:
    c = lambda names: [p[n] for n in names]  # noqa: E731
    names = c(["policy", "reward", "value", "reference"])
    outputs = [p["mt_state"], *c(OUTPUTS)]
    p["mt_run"].click(run_turns, [*names, *c(["mt_mode", "mt_prompts", "mt_max_turns", "mt_max_len", "mt_generations",
                                              "mt_seed"])], outputs, api_visibility="private", **model_event())
    p["mt_open"].click(open_turns, [p["mt_file"], p["mt_format"], p["mt_template"], *names], outputs,
                       api_visibility="private", **model_event())
    p["mt_sample"].input(lambda r, s: turn_views(r, s, ALL), c(["mt_state", "mt_sample"]), c(OUTPUTS),
                         api_visibility="private")
    p["mt_turn"].input(turn_views, c(["mt_state", "mt_sample", "mt_turn"]), c(OUTPUTS), api_visibility="private")
    for button, delta in ((p["mt_prev"], -1), (p["mt_next"], 1)):
        button.click(lambda r, s, t, d=delta: turn_views(r, s, step_turn(r, s, t, d)), c(["mt_state", "mt_sample", "mt_turn"]),
                     c(OUTPUTS), api_visibility="private")
