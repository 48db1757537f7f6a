"""The Gradio app: every part of a rollout side by side. The only module that imports gradio.

Callbacks are thin: they read widget values, call one core function and return views. Models load through
the process-wide cache in `inspector.models` (shared by every session); each session keeps its own
rollout in a `gr.State`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import gradio as gr

from . import models as model_registry
from .errors import InspectorError
from .export import rollout_from_dict, rollout_to_dict, rollout_to_json, rollout_to_jsonl, rollout_to_parquet
from .importing import read_upload
from .models import DEFAULT_POLICY, DEFAULT_REWARD, load_models
from .rollout import EOS, Rollout, run_rollout, score_completions
from .diagnostics import diagnose
from .ppo import PPOConfig, rollout_ppo_step
from .views import (
    BATCH_COLUMNS,
    PPO_CSS,
    diagnostics_html,
    logprob_agreement_markdown,
    logprob_gap_figure,
    ppo_metrics_table,
    ppo_rows_html,
    STOP_COLUMNS,
    TOKEN_CSS,
    batch_table,
    column_datatypes,
    column_widths,
    compare_html,
    entropy_heatmap,
    logprob_heatmap,
    sequences_html,
    split_html,
    stops_table,
    value_reward_html,
    values_figure,
)

log = logging.getLogger("inspector.ui")

try:  # ZeroGPU on Spaces: run the model work inside a GPU allocation; a plain call everywhere else
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn):
        return fn

EXAMPLES = {
    "Sentiment contrast": [
        "Write one sentence about a wonderful day at the beach with friends.",
        "Write one sentence about a terrible day stuck in traffic in the rain.",
        "Describe your favourite meal with enthusiasm, in one sentence.",
        "Complain about a broken phone in one sentence.",
    ],
    "Short answers (pad == EOS)": [
        "What is 2 + 2? Answer with one number.",
        "Reply with exactly one word: yes or no. Is the sky blue?",
        "Name one colour.",
    ],
    "Cut by max_new_tokens (no EOS)": [
        "Tell me a long story about a dragon who learns to bake bread.",
        "List twenty animals, one per line.",
    ],
}

CSS = TOKEN_CSS + PPO_CSS + """
.panel-note { color: #4b5563; font-size: 0.9em; }
#status-line { min-height: 1.5em; }
"""

STOP_CHOICES = ["EOS token", "No truncation", "Custom token"]

PAGE_JS = """
() => {
  // Ctrl+Enter (Cmd+Enter on a Mac) in the prompts runs the rollout, as the Run button does.
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey) || !e.target.closest || !e.target.closest('#prompts')) return;
    const run = document.querySelector('#run');
    if (!run) return;
    e.preventDefault();
    e.target.dispatchEvent(new Event('input', {bubbles: true}));
    run.click();
  }, true);
}
"""


# ---------------------------------------------------------------------------------------------- core calls

def _friendly(exc: Exception) -> gr.Error:
    if isinstance(exc, InspectorError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("unexpected error")
    return gr.Error(f"Something went wrong ({type(exc).__name__}). The app is still running; please try again.",
                    print_exception=False)


def _names(policy: str, reward: str, value: str, reference: str) -> dict:
    return {"policy": policy.strip() or None, "reward": reward.strip() or None,
            "value": value.strip() or None, "reference": reference.strip() or None}


def models_markdown(m: model_registry.Models) -> str:
    """A summary of the loaded models: size, dtype and device, the special ids, and the traps they set."""
    tok = m.tokenizer

    def params(module):
        return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f} M"

    def row(role, module, name, shared=""):
        return f"| {role} | `{name}` | {params(module)} | {next(module.parameters()).dtype} | {m.device} | {shared} |"

    rows = [
        "| role | model | parameters | dtype | device | note |",
        "|---|---|---|---|---|---|",
        row("policy", m.policy, m.names["policy"]),
        row("reference", m.reference, m.names["reference"], "the policy itself" if m.reference_is_policy else ""),
        row("reward", m.reward, m.names["reward"],
            "backbone shared with the policy" if getattr(m.reward, m.reward.base_model_prefix) is getattr(m.policy, m.policy.base_model_prefix) else ""),
        row("value", m.value, m.names["value"], "the reward model itself" if m.value_is_reward else ""),
    ]
    pad, eos = tok.pad_token_id, tok.eos_token_id
    same = model_registry.same_tokenizer(m.reward_tokenizer, tok)
    facts = [
        f"**pad** {pad} `{tok.pad_token}` · **eos** {eos} `{tok.eos_token}` · **default stop** {eos} `{tok.eos_token}`",
        f"**reward tokenizer is the policy's:** {'yes' if same else 'no (responses are re-encoded for it)'}",
        f"**pad token == EOS token:** {'**yes** (TRL masks every EOS as padding; the reward is read before the EOS)' if pad == eos else 'no'}",
        f"loaded in {m.load_seconds:.1f} s",
    ] + [f"note: {n}" for n in m.notes]
    return "\n".join(rows) + "\n\n" + "  \n".join(facts)


def load_callback(policy, reward, value, reference, progress=gr.Progress()):
    """Load (or fetch from the shared cache) the four models; returns their summary."""
    try:
        progress(0.1, desc="Loading models")
        m = load_models(**_names(policy, reward, value, reference), progress=lambda msg: progress(0.5, desc=msg))
    except Exception as exc:
        raise _friendly(exc) from exc
    return models_markdown(m)


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


@gpu
def _rollout(names: dict, prompts: list[str], settings: dict, progress=None) -> tuple[model_registry.Models, Rollout]:
    m = load_models(**names, progress=(lambda msg: progress(0.02, msg)) if progress else None)
    return m, run_rollout(m, prompts, stop_token_id=settings.pop("stop"), progress=progress, **settings)


def _stop_value(choice: str, custom: str):
    if choice == "No truncation":
        return None
    if choice == "Custom token":
        if not (custom or "").strip() and custom != " ":
            raise InspectorError("Type the custom stop token (one token of the policy's tokenizer), or pick EOS.")
        return custom
    return EOS


def _sample_choices(r: Rollout) -> list[tuple[str, int]]:
    out = []
    for i in range(r.batch_size):
        prompt = r.prompts[i].replace("\n", " ")
        out.append((f"{i}: {prompt[:60]}{'…' if len(prompt) > 60 else ''}  (score {float(r.scores[i]):+.3f})", i))
    return out


def sample_views(r: Rollout | None, sample: int | None):
    """The views of one sample: the split, the value-versus-reward inputs and the values figure."""
    if r is None:
        return "", "", None
    i = int(sample or 0)
    if not 0 <= i < r.batch_size:
        i = 0
    return split_html(r, i), value_reward_html(r, i), values_figure(r, i)


def compare_view(r: Rollout | None, a, b) -> str:
    """Two picked samples side by side."""
    if r is None or a is None or b is None:
        return ""
    a, b = int(a), int(b)
    if not (0 <= a < r.batch_size and 0 <= b < r.batch_size):
        return ""
    return compare_html(r, a, b)


def ppo_views(r: Rollout | None, sample, kl_coef, kl_estimator, gamma, lam, whiten_rewards, penalty_on, penalty):
    """The PPO step of the picked sample under the settings in the page (pure math: no model pass)."""
    if r is None:
        return "", None
    try:
        config = PPOConfig(kl_coef=float(kl_coef), kl_estimator=str(kl_estimator), gamma=float(gamma), lam=float(lam),
                           whiten_rewards=bool(whiten_rewards),
                           missing_eos_penalty=float(penalty) if penalty_on else None)
        step = rollout_ppo_step(r, config)
    except Exception as exc:
        raise _friendly(exc) from exc
    i = int(sample or 0) if 0 <= int(sample or 0) < r.batch_size else 0
    return ppo_rows_html(r, step, i), ppo_metrics_table(step)


def _downloads(r: Rollout) -> tuple[str, list[str]]:
    folder = Path(tempfile.mkdtemp(prefix="rollout-"))
    table = folder / "rollout_batch.csv"
    batch_table(r).to_csv(table, index=False)
    record = folder / "rollout.json"
    record.write_text(rollout_to_json(r), encoding="utf-8")
    rows = folder / "rollout.jsonl"
    rows.write_text(rollout_to_jsonl(r), encoding="utf-8")
    parquet = folder / "rollout.parquet"
    rollout_to_parquet(r, str(parquet))
    return str(table), [str(record), str(rows), str(parquet)]


def batch_views(r: Rollout):
    """Every batch-level view of a rollout, in the order of the page's outputs."""
    table_csv, record_json = _downloads(r)
    return (
        _status(r),
        diagnostics_html(diagnose(r)),
        sequences_html(r),
        logprob_heatmap(r),
        entropy_heatmap(r),
        stops_table(r),
        batch_table(r),
        table_csv,
        record_json,
        logprob_gap_figure(r),
        logprob_agreement_markdown(r),
    )


def _status(r: Rollout) -> str:
    t = r.timings
    return (f"**{r.batch_size} samples × {r.response_width} tokens** · context_length {r.context_length} · "
            f"attention `{r.attention}` · generate {t.get('generate', 0):.1f} s · passes "
            f"{t.get('logprobs', 0) + t.get('value_reward', 0):.1f} s · total {t.get('total', 0):.1f} s")


def run_callback(policy, reward, value, reference, prompts_text, use_chat, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
                 samples, stop_choice, stop_custom, attention, compare_masks=False, progress=gr.Progress()):
    """Run one rollout for this session and return every view of it."""
    try:
        settings = dict(
            max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), temperature=float(temperature),
            top_k=int(top_k), top_p=float(top_p), seed=int(seed), samples_per_prompt=int(samples),
            use_chat_template=bool(use_chat), attention=str(attention), compare_masks=bool(compare_masks),
            stop=_stop_value(stop_choice, stop_custom),
        )
        m, r = _rollout(_names(policy, reward, value, reference), parse_prompts(prompts_text), settings,
                        progress=lambda f, msg: progress(f, desc=msg))
    except Exception as exc:
        raise _friendly(exc) from exc
    return rollout_views(r, models_markdown(m))


def rollout_views(r: Rollout, summary: str) -> tuple:
    """Every output of a new rollout, in the order of the page's `ROLLOUT_OUTPUTS`."""
    return (r, summary, gr.update(choices=_sample_choices(r), value=0), *batch_views(r), *sample_views(r, 0))


def compare_choices(r: Rollout | None):
    """Both compare pickers, reset to the first two samples of a new rollout."""
    if r is None:
        return gr.update(), gr.update()
    choices = _sample_choices(r)
    return gr.update(choices=choices, value=0), gr.update(choices=choices, value=min(1, r.batch_size - 1))


def import_callback(upload, policy, reward, value, reference, use_chat, stop_choice, stop_custom, attention,
                    progress=gr.Progress()):
    """Open a file: a rollout record is shown as it is (no model needed); a table of completions (TRL's
    prompt / completion / reward, verl's input / output / score) is re-scored with the loaded models."""
    try:
        if upload is None:
            raise InspectorError("Choose a file first: a rollout .json, or a .jsonl / .csv / .parquet of completions.")
        path = Path(upload if isinstance(upload, str) else upload.name)
        data = path.read_bytes()
        parsed = read_upload(data, path.name)
        if isinstance(parsed, dict):
            r = rollout_from_dict(parsed)
            m = None
        else:
            names = _names(policy, reward, value, reference)
            m = load_models(**names, progress=lambda msg: progress(0.05, desc=msg))
            r = score_completions(m, parsed.prompts, parsed.completions,
                                  stop_token_id=_stop_value(stop_choice, stop_custom),
                                  use_chat_template=bool(use_chat), attention=str(attention), source=parsed.source,
                                  progress=lambda f, msg: progress(f, desc=msg))
            if parsed.rewards is not None:
                r.notes.append("The file's own rewards, by sample: "
                               + ", ".join(f"{i}: {v:+.3f}" for i, v in enumerate(parsed.rewards[:50])))
    except Exception as exc:
        raise _friendly(exc) from exc
    return rollout_views(r, models_markdown(m) if m is not None else "Opened a saved rollout: no model was needed.")


def open_file_api(file) -> dict:
    """Open a file through the API: a rollout record comes back validated; a table of completions (TRL's or
    verl's) comes back re-scored by the default models, as a rollout record."""
    try:
        if file is None:
            raise InspectorError("No file was sent.")
        path = Path(file if isinstance(file, str) else getattr(file, "name", None) or file["path"])
        parsed = read_upload(path.read_bytes(), path.name)
        if isinstance(parsed, dict):
            return rollout_to_dict(rollout_from_dict(parsed))
        m = load_models()
        return rollout_to_dict(score_completions(m, parsed.prompts, parsed.completions, source=parsed.source))
    except Exception as exc:
        raise _friendly(exc) from exc


def rollout_api(
    prompts: list[str],
    max_new_tokens: int = 48,
    do_sample: bool = True,
    temperature: float = 0.7,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    samples_per_prompt: int = 1,
    stop_token: str = "eos",
    use_chat_template: bool = True,
    attention: str = "trl",
    compare_masks: bool = False,
    policy: str = "",
    reward: str = "",
    value: str = "",
    reference: str = "",
) -> dict:
    """Run a rollout and return the whole record as JSON: every tensor as nested lists, with texts and settings.

    stop_token: "eos", "none", or one token of the policy's tokenizer.
    """
    if isinstance(prompts, str):
        prompts = parse_prompts(prompts)
    stop = {"eos": EOS, "none": None}.get(str(stop_token).lower(), stop_token)
    try:
        _, r = _rollout(
            _names(policy, reward, value, reference), list(prompts),
            dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                 top_p=top_p, seed=seed, samples_per_prompt=samples_per_prompt,
                 use_chat_template=use_chat_template, attention=attention, compare_masks=bool(compare_masks),
                 stop=stop),
        )
    except Exception as exc:
        raise _friendly(exc) from exc
    return rollout_to_dict(r)


# ---------------------------------------------------------------------------------------------- the page

def _df(spec, label, elem_id):
    return gr.Dataframe(
        elem_id=elem_id, headers=[c.name for c in spec], datatype=column_datatypes(spec),
        column_widths=column_widths(spec), label=label, interactive=False, wrap=True, max_height=640,
        show_search="filter",
    )


def _controls(p: dict) -> None:
    """The left column: prompts and the Run button first (inside the first screen on a laptop and a phone),
    then the settings, folded."""
    p["prompts"] = gr.Textbox(
        "\n".join(EXAMPLES["Sentiment contrast"]), lines=5, max_lines=14,
        label="Prompts (one per line)", elem_id="prompts",
    )
    p["run"] = gr.Button("Run rollout", variant="primary", elem_id="run")
    gr.Markdown("Ctrl+Enter (⌘+Enter) in the prompts runs.", elem_classes="panel-note", elem_id="run-hint")
    p["run_message"] = gr.Markdown("", elem_id="run-message")
    p["example_set"] = gr.Dropdown(list(EXAMPLES), value=None, label="Example prompt sets", elem_id="example-set")
    p["use_chat"] = gr.Checkbox(True, label="Apply the chat template")
    with gr.Accordion("Generation settings", open=False, elem_id="generation-settings"):
        p["max_new_tokens"] = gr.Slider(1, 512, value=48, step=1, label="max_new_tokens", elem_id="max-new-tokens")
        p["do_sample"] = gr.Checkbox(True, label="do_sample (off = greedy)", elem_id="do-sample")
        p["temperature"] = gr.Slider(0, 2.0, value=0.7, step=0.05, label="temperature", elem_id="temperature")
        p["top_k"] = gr.Slider(0, 200, value=0, step=1, label="top_k (0 = off)", elem_id="top-k")
        p["top_p"] = gr.Slider(0, 1.0, value=1.0, step=0.01, label="top_p (1 = off)", elem_id="top-p")
        p["seed"] = gr.Number(0, precision=0, label="seed", elem_id="seed")
        p["samples"] = gr.Slider(1, 8, value=1, step=1, label="samples per prompt", elem_id="samples")
        p["stop_choice"] = gr.Radio(STOP_CHOICES, value=STOP_CHOICES[0], label="Stop token (truncation)",
                                    elem_id="stop-choice")
        p["stop_custom"] = gr.Textbox("", label="Custom stop token", placeholder="e.g. .", visible=False,
                                      elem_id="stop-custom")
        p["attention"] = gr.Radio(
            [("TRL mask (ids != pad)", "trl"), ("Tokenizer's true mask", "tokenizer")], value="trl",
            label="Attention mask",
        )
        p["compare_masks"] = gr.Checkbox(False, label="Also score under the true mask (one more reward pass)",
                                         elem_id="compare-masks")
    with gr.Accordion("Models", open=False, elem_id="models"):
        p["policy"] = gr.Textbox(DEFAULT_POLICY, label="Policy (Hub id or local folder)")
        p["reward"] = gr.Textbox(DEFAULT_REWARD, label="Reward model")
        p["value"] = gr.Textbox("", label="Value model", placeholder="blank = the reward model")
        p["reference"] = gr.Textbox("", label="Reference model", placeholder="blank = the policy", elem_id="reference")
        p["load"] = gr.Button("Load models")
        p["models_md"] = gr.Markdown("Models load on the first run (the defaults work offline).")
    with gr.Accordion("Open a file", open=False, elem_id="open-file"):
        p["upload"] = gr.File(label="A rollout .json, or completions (.jsonl / .csv / .parquet)",
                              file_types=[".json", ".jsonl", ".csv", ".parquet"], elem_id="upload")
        gr.Markdown("TRL completion tables (`prompt`, `completion`, `reward`) and verl dumps (`input`, "
                    "`output`, `score`) are re-scored with the models above.", elem_classes="panel-note")
        p["import"] = gr.Button("Open and inspect", elem_id="import")


def _overview(p: dict) -> None:
    """Above the tabs: what is on screen, the traps found in it, and the sample every per-sample view shows."""
    p["status"] = gr.Markdown("Press **Run rollout**.", elem_id="status-line")
    p["diagnostics"] = gr.HTML(elem_id="panel-diagnostics")
    p["sample"] = gr.Dropdown(choices=[], value=None, label="Sample", elem_id="sample-picker")


def _sequences_tab(p: dict) -> None:
    with gr.Tab("Sequences", id="sequences", elem_id="tab-sequences"):
        gr.Markdown("#### Raw `output.sequences`")
        p["seq_html"] = gr.HTML(elem_id="panel-sequences")
        gr.Markdown("#### The manual split at `context_length` (the picked sample)")
        p["split_view"] = gr.HTML(elem_id="panel-split")
        gr.Markdown("#### Stop and pad")
        p["stops"] = _df(STOP_COLUMNS, "Stop and pad positions", "panel-stops")


def _logprobs_tab(p: dict) -> None:
    with gr.Tab("Logprobs", id="logprobs", elem_id="tab-logprobs"):
        p["heatmap"] = gr.Plot(elem_id="panel-logprobs", show_label=False)
        p["entropy"] = gr.Plot(elem_id="panel-entropy", show_label=False)
        gr.Markdown("#### Logprob agreement: `logprobs` (sampling time) versus `new_logprobs` (the training forward pass) "
                    "and PPO's first-epoch ratio")
        p["gap_md"] = gr.Markdown(elem_id="panel-agreement")
        p["gap_plot"] = gr.Plot(elem_id="panel-gap", show_label=False)


def _value_reward_tab(p: dict) -> None:
    with gr.Tab("Value & reward", id="value-reward", elem_id="tab-value-reward"):
        gr.Markdown("#### Value model input versus reward model input (the picked sample)")
        p["vr_html"] = gr.HTML(elem_id="panel-value-reward")
        p["values_plot"] = gr.Plot(elem_id="panel-values", show_label=False)


def _ppo_tab(p: dict) -> None:
    with gr.Tab("PPO step", id="ppo", elem_id="tab-ppo"):
        gr.Markdown("#### The PPO step, token by token (TRL's semantics, fed the rollout's sampling-time `logprobs`), "
                    "for the picked sample")
        with gr.Row(elem_id="ppo-settings"):
            p["kl_coef"] = gr.Number(0.05, label="kl_coef", min_width=90, elem_id="kl-coef")
            p["kl_estimator"] = gr.Radio(["k1", "k3"], value="k1", label="kl_estimator", min_width=120,
                                         elem_id="kl-estimator")
            p["gamma"] = gr.Number(1.0, label="gamma", min_width=90, elem_id="gamma")
            p["lam"] = gr.Number(0.95, label="lam", min_width=90, elem_id="lam")
            with gr.Column(min_width=200):
                p["whiten_rewards"] = gr.Checkbox(False, label="whiten_rewards")
                p["penalty_on"] = gr.Checkbox(False, label="apply missing_eos_penalty")
            p["penalty"] = gr.Number(1.0, label="missing_eos_penalty", min_width=170, elem_id="missing-eos-penalty")
        p["ppo_html"] = gr.HTML(elem_id="panel-ppo")
        p["ppo_metrics"] = gr.Dataframe(headers=["metric", "value"], datatype=["str", "str"], interactive=False,
                                        label="What TRL logs for this batch", elem_id="panel-ppo-metrics")


def _batch_tab(p: dict) -> None:
    with gr.Tab("Batch & compare", id="batch", elem_id="tab-batch"):
        p["table"] = _df(BATCH_COLUMNS, "Batch", "panel-batch")
        with gr.Row():
            p["table_file"] = gr.File(label="Batch table (CSV)", elem_id="download-table")
            p["record_file"] = gr.File(label="Whole rollout (JSON record; JSONL and Parquet rows)",
                                       file_count="multiple", elem_id="download-record")
        gr.Markdown("#### Compare two samples")
        with gr.Row():
            p["compare_a"] = gr.Dropdown(choices=[], value=None, label="Left", elem_id="compare-a")
            p["compare_b"] = gr.Dropdown(choices=[], value=None, label="Right", elem_id="compare-b")
        p["compare_out"] = gr.HTML(elem_id="panel-compare")


TABS = [_sequences_tab, _logprobs_tab, _value_reward_tab, _ppo_tab, _batch_tab]
"""The views, one tab each, in the order of the tab bar. A tab is a function that adds its components to the
page's dict of components; its events are wired in `_wire`."""

PPO_INPUTS = ["kl_coef", "kl_estimator", "gamma", "lam", "whiten_rewards", "penalty_on", "penalty"]
ROLLOUT_OUTPUTS = ["session_rollout", "models_md", "sample", "status", "diagnostics", "seq_html", "heatmap", "entropy",
                   "stops", "table", "table_file", "record_file", "gap_plot", "gap_md", "split_view", "vr_html",
                   "values_plot"]
"""The components a new rollout fills, in the order of `rollout_views`."""
RUN_INPUTS = ["policy", "reward", "value", "reference", "prompts", "use_chat", "max_new_tokens", "do_sample",
              "temperature", "top_k", "top_p", "seed", "samples", "stop_choice", "stop_custom", "attention",
              "compare_masks"]


def _wire(p: dict) -> None:
    """Every event of the page."""
    c = lambda names: [p[n] for n in names]  # noqa: E731
    ppo_inputs, rollout_outputs = c(PPO_INPUTS), c(ROLLOUT_OUTPUTS)
    p["example_set"].change(lambda k: "\n".join(EXAMPLES[k]) if k else gr.update(), p["example_set"], p["prompts"],
                            api_visibility="private")
    p["stop_choice"].change(lambda choice: gr.update(visible=choice == "Custom token"), p["stop_choice"],
                            p["stop_custom"], api_visibility="private")
    p["load"].click(load_callback, c(["policy", "reward", "value", "reference"]), [p["models_md"]],
                    api_visibility="private")
    ppo = dict(fn=ppo_views, inputs=[p["session_rollout"], p["sample"], *ppo_inputs],
               outputs=[p["ppo_html"], p["ppo_metrics"]], api_visibility="private")
    p["run"].click(run_callback, c(RUN_INPUTS), rollout_outputs, api_visibility="private").then(**ppo)
    p["import"].click(
        import_callback,
        c(["upload", "policy", "reward", "value", "reference", "use_chat", "stop_choice", "stop_custom", "attention"]),
        rollout_outputs,
        api_visibility="private",
    ).then(**ppo)
    p["session_rollout"].change(compare_choices, p["session_rollout"], c(["compare_a", "compare_b"]),
                                api_visibility="private")
    for picker in ("compare_a", "compare_b"):
        p[picker].change(compare_view, c(["session_rollout", "compare_a", "compare_b"]), p["compare_out"],
                         api_visibility="private")
    p["sample"].change(sample_views, c(["session_rollout", "sample"]), c(["split_view", "vr_html", "values_plot"]),
                       api_visibility="private")
    for control in (p["sample"], *ppo_inputs):
        control.change(**ppo)


def build_app() -> gr.Blocks:
    """The Blocks of the app. Nothing loads at build time; models load on the first click."""
    with gr.Blocks(title="Rollout Inspector", fill_width=True) as demo:
        gr.Markdown(
            "## Rollout Inspector\nSee exactly what a PPO trainer trains on, token by token: the raw "
            "`output.sequences`, the split at `context_length`, per-token logprobs, where the stop and the pads are, "
            "what the value and reward models each see, and the PPO step.", elem_id="page-intro",
        )
        p: dict = {"session_rollout": gr.State(None, time_to_live=6 * 3600)}
        with gr.Row(equal_height=False, elem_id="page-row"):
            with gr.Column(scale=1, min_width=300, elem_id="controls"):
                _controls(p)
            with gr.Column(scale=3, min_width=300, elem_id="results"):
                _overview(p)
                with gr.Tabs(elem_id="views", overflow_behavior="wrap"):
                    for tab in TABS:
                        tab(p)
        _wire(p)
        gr.api(rollout_api, api_name="rollout")
        with gr.Row(visible=False):  # the file endpoint: a File input so that clients upload as they should
            api_file = gr.File()
            api_record = gr.JSON()
            api_button = gr.Button()
        api_button.click(open_file_api, api_file, api_record, api_name="open_file")
    demo.queue(max_size=int(os.environ.get("INSPECTOR_QUEUE_SIZE", "16")), default_concurrency_limit=1)
    return demo


def launch_kwargs() -> dict:
    """What `launch()` takes in Gradio 6 besides the server settings: the page's CSS and theme."""
    return {"css": CSS, "theme": gr.themes.Soft(), "js": PAGE_JS}
