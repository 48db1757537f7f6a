"""The left column: prompts and the Run button first (inside the first screen on a laptop and a phone), then
the trainer, the generation settings, the models and the file to open, folded."""

from __future__ import annotations

import gradio as gr

from .. import models as model_registry
from ..models import DEFAULT_POLICY, DEFAULT_REWARD
from ..sources.examples import DEFAULT_EXAMPLE, EXAMPLE_SETTINGS, EXAMPLES
from .tabs import grpo


STOP_CHOICES = ["EOS token", "No truncation", "Custom token"]


RUN_INPUTS = ["policy", "reward", "value", "reference", "prompts", "use_chat", "max_new_tokens", "do_sample",
              "temperature", "top_k", "top_p", "seed", "samples", "stop_choice", "stop_custom", "attention",
              "compare_masks", "ignore_generation_config", "engine_url", "precision", "trainer"]


def left_column(p: dict) -> None:
    """The left column: prompts and the Run button first (inside the first screen on a laptop and a phone),
    then the settings, folded."""
    p["prompts"] = gr.Textbox(
        "\n".join(EXAMPLES[DEFAULT_EXAMPLE]), lines=5, max_lines=14,
        label="Prompts (one per line)", elem_id="prompts",
    )
    p["run"] = gr.Button("Run rollout", variant="primary", elem_id="run")
    gr.Markdown("Ctrl+Enter (⌘+Enter) in the prompts runs.", elem_classes="panel-note", elem_id="run-hint")
    p["run_message"] = gr.Markdown("", visible=False, elem_id="run-message")
    p["example_set"] = gr.Dropdown(list(EXAMPLES), value=None, label="Example prompt sets", elem_id="example-set")
    p["use_chat"] = gr.Checkbox(EXAMPLE_SETTINGS["use_chat_template"], label="Apply the chat template")
    grpo.controls(p)
    with gr.Accordion("Generation settings", open=False, elem_id="generation-settings"):
        p["max_new_tokens"] = gr.Slider(1, 512, value=EXAMPLE_SETTINGS["max_new_tokens"], step=1, label="max_new_tokens", elem_id="max-new-tokens")
        p["do_sample"] = gr.Checkbox(EXAMPLE_SETTINGS["do_sample"], label="do_sample (off = greedy)", elem_id="do-sample")
        p["temperature"] = gr.Slider(0, 2.0, value=EXAMPLE_SETTINGS["temperature"], step=0.05, label="temperature", elem_id="temperature")
        p["top_k"] = gr.Slider(0, 200, value=EXAMPLE_SETTINGS["top_k"], step=1, label="top_k (0 = off)", elem_id="top-k")
        p["top_p"] = gr.Slider(0, 1.0, value=EXAMPLE_SETTINGS["top_p"], step=0.01, label="top_p (1 = off)", elem_id="top-p")
        p["seed"] = gr.Number(EXAMPLE_SETTINGS["seed"], precision=0, label="seed", elem_id="seed")
        p["samples"] = gr.Slider(1, 8, value=EXAMPLE_SETTINGS["samples_per_prompt"], step=1, label="samples per prompt", elem_id="samples")
        p["stop_choice"] = gr.Radio(STOP_CHOICES, value=STOP_CHOICES[0], label="Stop token", elem_id="stop-choice",
                                    info="Generation stops at it and truncation cuts after it, as in TRL 0.14+ "
                                         "(no truncation: no early stop either)")
        p["stop_custom"] = gr.Textbox("", label="Custom stop token", placeholder="e.g. .", visible=False,
                                      elem_id="stop-custom")
        p["attention"] = gr.Radio(
            [("TRL mask (ids != pad)", "trl"), ("Tokenizer's true mask", "tokenizer")], value=EXAMPLE_SETTINGS["attention"],
            label="Attention mask",
        )
        p["compare_masks"] = gr.Checkbox(False, label="Also score under the true mask (one more reward pass)",
                                         elem_id="compare-masks")
        p["ignore_generation_config"] = gr.Checkbox(
            False, label="Ignore the model's generation_config.json (its repetition penalty, n-gram bans, ...: "
                         "generate merges them in, as in TRL)", elem_id="ignore-generation-config")
        p["engine_url"] = gr.Textbox("", label="Sampling engine URL (blank = in-process transformers)",
                                     placeholder="http://127.0.0.1:8000 (an OpenAI-compatible server, e.g. vLLM)",
                                     elem_id="engine-url")
    with gr.Accordion("Models", open=False, elem_id="models"):
        p["policy"] = gr.Textbox(DEFAULT_POLICY, label="Policy (Hub id or local folder)")
        p["reward"] = gr.Textbox(DEFAULT_REWARD, label="Reward model")
        p["value"] = gr.Textbox("", label="Value model", placeholder="blank = the reward model; none = no value model")
        p["reference"] = gr.Textbox("", label="Reference model", placeholder="blank = the policy", elem_id="reference")
        p["precision"] = gr.Radio(list(model_registry.PRECISIONS), value="float32", elem_id="precision",
                                  label="Trainer precision (bfloat16-fp32-head: TRL's cast_lm_head_to_fp32)")
        p["vocab_note"] = gr.Markdown("", elem_id="vocab-note")
        p["no_value"] = gr.Button("Use no value model (values 0)", visible=False, elem_id="no-value")
        p["load"] = gr.Button("Load models")
        p["models_md"] = gr.Markdown("Models load on the first run (the defaults work offline).")
    with gr.Accordion("Open a file", open=False, elem_id="open-file"):
        p["upload"] = gr.File(label="A rollout .json, or completions (.jsonl / .csv / .parquet)",
                              file_types=[".json", ".jsonl", ".csv", ".parquet"], elem_id="upload")
        gr.Markdown("TRL completion tables (`prompt`, `completion`, `reward`), TRL GRPO logs "
                    "(`completions_00001.parquet`: its reward columns and advantages appear in the GRPO tab beside "
                    "the recomputed ones) and verl dumps (`input`, `output`, `gts`, `score`) are re-scored with the "
                    "models above.", elem_classes="panel-note")
        p["import_temperature"] = gr.Number(
            1.0, label="Training temperature of the completions", minimum=0.01, elem_id="import-temperature",
            info="The sampling temperature they were generated at (1.0: TRL GRPO's and verl's default; TRL PPO's is "
                 "0.7); logprobs and the recompute use it")
        with gr.Row():
            p["import_reward_columns"] = gr.Textbox(
                "", label="TRL GRPO log: reward columns", elem_id="import-reward-columns", max_lines=1,
                placeholder="blank = by TRL's column order", info="Comma-separated, in reward_funcs order; the "
                "other columns are log_extra ones")
            p["import_reward_weights"] = gr.Textbox(
                "", label="reward_weights", elem_id="import-reward-weights", max_lines=1, placeholder="blank = 1 each",
                info="Comma-separated, as TRL's reward_weights")
        p["import"] = gr.Button("Open and inspect", elem_id="import")
