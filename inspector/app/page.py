"""The page: the controls on the left, the overview and the tabs on the right, the events between them, and
`build_app`, which assembles them. The app is the only package that imports gradio.

Callbacks are thin: they read widget values, call one core function and return views. Models load through
the process-wide cache in `inspector.models` (shared by every session); each session keeps its own
rollout in a `gr.State`.
"""

from __future__ import annotations

import os

import gradio as gr

from .. import models as model_registry
from ..limits import Limits
from ..sources.examples import EXAMPLES
from ..views import PPO_CSS, TOKEN_CSS
from ..views.grpo import GRPO_CSS
from ..views.run_trends import RUN_CSS
from ..views.turns import TURNS_CSS
from . import api
from .controls import RUN_INPUTS, left_column
from .hosting import DOWNLOADS_TTL, model_event
from .loading import load_callback, vocabulary_check
from .rollouts import ROLLOUT_OUTPUTS, arrival_views, import_callback, keeping_results, run_callback, sample_views
from .common import session_of
from .tabs import TABS, ppo, run
from .validation import run_validator

CSS = TOKEN_CSS + PPO_CSS + GRPO_CSS + TURNS_CSS + RUN_CSS + """
.run-hidden { display: none !important; }
.panel-note { color: #4b5563; font-size: 0.9em; }
#status-line { min-height: 1.5em; }
#status-row { align-items: flex-start; }
#run-message { color: #b91c1c; }
/* table headers break between words, never inside one */
#panel-stops th, #panel-batch th, #panel-ppo-metrics th, #panel-stops th *, #panel-batch th *, #panel-ppo-metrics th * {
  word-break: normal !important; overflow-wrap: normal !important; hyphens: none !important; }
/* a picker's text ends before its arrow */
#sample-picker input, #compare-a input, #compare-b input { text-overflow: ellipsis; padding-right: 2.2em; }
@media (max-width: 700px) {
  #status-row { flex-direction: column; }
  #run-fresh { width: 100%; }
  #page-intro p { font-size: 0.9em; }
}
"""

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

SESSION_TTL = 6 * 3600  # as long as the downloads of a session are kept


def _overview(p: dict) -> None:
    """Above the tabs: what is on screen, the traps found in it, and the sample every per-sample view shows."""
    with gr.Row(equal_height=True, elem_id="status-row"):
        p["status"] = gr.Markdown("Press **Run rollout**.", elem_id="status-line")
        p["fresh"] = gr.Button("Run a fresh one", size="sm", scale=0, min_width=150, visible=False, elem_id="run-fresh")
    p["diagnostics"] = gr.HTML(elem_id="panel-diagnostics")
    p["sample"] = gr.Dropdown(choices=[], value=None, label="Sample", elem_id="sample-picker")
    # the tab a link names, for the script that selects it (a box: the script reads it in the browser)
    p["arrival_tab"] = gr.Textbox("", elem_id="arrival-tab", elem_classes="run-hidden", show_label=False,
                                  container=False)


def _tabs(p: dict) -> None:
    """The tabs, each from its own module, under its own label and heading. Only `gr.Tab`s may sit in the
    `gr.Tabs`: the tab bar reads its buttons from the children in order, so anything else there (a `gr.State`)
    shifts the labels, and a tab shown later takes the label of the one after it."""
    with gr.Tabs(elem_id="views", overflow_behavior="wrap") as p["tabs"]:
        for tab in TABS:
            with gr.Tab(tab.LABEL, id=tab.ID, elem_id=f"tab-{tab.ID}"):
                gr.Markdown(f"#### {tab.HEADING}", elem_id=f"heading-{tab.ID}", elem_classes="tab-heading")
                tab.layout(p)
    strays = [type(c).__name__ for c in p["tabs"].children if not isinstance(c, gr.Tab)]
    assert not strays, f"only tabs may sit in the tab bar's gr.Tabs, not {strays}"


def _wire(p: dict) -> None:
    """The events of the controls and the overview; each tab wires its own."""
    c = lambda names: [p[n] for n in names]  # noqa: E731
    rollout_outputs = c(ROLLOUT_OUTPUTS)
    p["example_set"].input(lambda k: "\n".join(EXAMPLES[k]) if k else gr.update(), p["example_set"], p["prompts"],
                           api_visibility="private")
    p["stop_choice"].change(lambda choice: gr.update(visible=choice == "Custom token"), p["stop_choice"],
                            p["stop_custom"], api_visibility="private")
    check = dict(fn=vocabulary_check, inputs=c(["policy", "reward", "value"]), outputs=c(["vocab_note", "no_value"]),
                 api_visibility="private", concurrency_id="vocabulary", concurrency_limit=1)  # in order: last wins
    for box in ("policy", "reward", "value"):
        for event in (p[box].blur, p[box].submit):
            event(**check)
    p["no_value"].click(lambda: model_registry.NO_VALUE, None, p["value"], api_visibility="private").then(**check)
    p["load"].click(load_callback, c(["policy", "reward", "value", "reference"]), [p["models_md"]],
                    api_visibility="private", **model_event())
    kept = [*rollout_outputs, p["run_message"], p["fresh"]]
    for button in (p["run"], p["fresh"]):
        button.click(keeping_results(run_callback, len(rollout_outputs)), c(RUN_INPUTS), kept,
                     validator=run_validator, api_visibility="private", **model_event()).then(**ppo.event(p))
    p["import"].click(
        keeping_results(import_callback, len(rollout_outputs)),
        c(["upload", "policy", "reward", "value", "reference", "use_chat", "stop_choice", "stop_custom", "attention",
           "import_temperature", "import_reward_columns", "import_reward_weights"]),
        kept,
        api_visibility="private", **model_event(),
    ).then(**ppo.event(p))
    p["sample"].change(sample_views, c(["session_rollout", "sample"]), c(["split_view", "vr_html", "values_plot"]),
                       api_visibility="private")
    for tab in TABS:
        tab.wire(p)


def _arrival(p: dict, demo: gr.Blocks) -> None:
    """On arrival: the saved example the link names, shown at once (no model, no queue behind a running rollout);
    then the run, its step and the tab the link names. Every step reads the link as the page was opened with it
    (`landing`), never the address of the moment: the page rewrites its address as the visitor picks tabs and
    steps, and a later step of the arrival would take the visitor's own last pick for the link's."""
    def arrive(request: gr.Request):
        landing = dict(request.query_params) if request else {}
        return (*arrival_views(landing, session_of(request)), gr.update(visible=True), landing)

    ppo_views = ppo.event(p)
    demo.load(arrive, None, [p[n] for n in ROLLOUT_OUTPUTS] + [p["prompts"], p["example_set"], p["run_message"],
                                                             p["fresh"], p["landing"]],
              concurrency_limit=None, api_visibility="private").then(
        ppo_views["fn"], ppo_views["inputs"], ppo_views["outputs"], concurrency_limit=None, api_visibility="private").then(
        **run.arrival_event(p)).then(**run.arrival_tab_event(p))


def build_app() -> gr.Blocks:
    """The Blocks of the app. Nothing loads at build time; models load on the first click."""
    # delete_cache: gradio's copies of uploads older than a session's lifetime go, hourly
    with gr.Blocks(title="Rollout Inspector", fill_width=True, delete_cache=(3600, DOWNLOADS_TTL)) as demo:
        gr.Markdown(
            "## Rollout Inspector\nWhat a PPO trainer trains on, token by token, computed as TRL computes it.",
            elem_id="page-intro",
        )
        # the session's state, outside the tabs (see `_tabs`)
        p: dict = {"session_rollout": gr.State(None, time_to_live=SESSION_TTL),
                   "grpo_state": gr.State(None, time_to_live=SESSION_TTL),
                   "landing": gr.State(None)}  # the query of the link the page was opened with
        with gr.Row(equal_height=False, elem_id="page-row"):
            with gr.Column(scale=1, min_width=300, elem_id="controls"):
                left_column(p)
            with gr.Column(scale=3, min_width=300, elem_id="results"):
                _overview(p)
                _tabs(p)
        _wire(p)
        _arrival(p, demo)
        api.add_endpoints()
    demo.queue(max_size=int(os.environ.get("INSPECTOR_QUEUE_SIZE", "16")), default_concurrency_limit=1)
    return demo


def launch_kwargs() -> dict:
    """What `launch()` takes in Gradio 6 besides the server settings: the page's CSS, theme and script, and the
    upload size limit (INSPECTOR_MAX_UPLOAD_BYTES), which gradio enforces before a file is stored."""
    return {"css": CSS, "theme": gr.themes.Soft(), "js": "() => { (" + PAGE_JS + ")(); (" + run.RUN_JS + ")(); }", "max_file_size": Limits.from_env().max_upload_bytes}
