"""Where a rollout enters the page (a run, an opened file, the saved example a visitor arrives on) and every
view it fills across the tabs, in the order of `ROLLOUT_OUTPUTS`."""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from .. import models as model_registry
from ..diagnostics import diagnose
from ..errors import InputError, InspectorError
from ..models import load_models
from ..record.format import rollout_from_dict
from ..record.rollout import Rollout
from ..sources.examples import DEFAULT_EXAMPLE, EXAMPLES, example_path, find_example, load_example
from ..sources.files import read_upload_file, rescore
from ..sources.runner import run_rollout
from ..views import (
    BATCH_COLUMNS,
    STOP_COLUMNS,
    batch_table,
    diagnostics_html,
    displayed,
    entropy_heatmap,
    logprob_agreement_markdown,
    logprob_gap_figure,
    logprob_heatmap,
    sequences_html,
    split_html,
    stops_table,
    value_reward_html,
    values_figure,
)
from ..views._common import plural
from .common import friendly, model_names, parse_prompts, sample_choices, session_of, stop_value, training_temperature
from .hosting import gpu, write_downloads
from .loading import models_markdown
from .tabs.batch import compare_choices
from .validation import check_trainer, run_problems


ROLLOUT_OUTPUTS = ["session_rollout", "models_md", "sample", "status", "diagnostics", "seq_html", "heatmap", "entropy",
                   "stops", "table", "table_file", "record_file", "gap_plot", "gap_md", "split_view", "vr_html",
                   "values_plot", "compare_a", "compare_b", "compare_out"]
"""The components a new rollout fills, in the order of `rollout_views`."""


def new_rollout(names: dict, prompts: list[str], settings: dict, progress=None) -> tuple[model_registry.Models, Rollout]:
    m = load_models(**names, progress=(lambda msg: progress(0.02, msg)) if progress else None)
    r = run_rollout(m, prompts, stop_token_id=settings.pop("stop"), progress=progress, **settings)
    r.settings["created"] = _now()  # travels with the record: a re-opened rollout says when it was made
    return m, r


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sample_views(r: Rollout | None, sample: int | None):
    """The views of one sample: the split, the value-versus-reward inputs and the values figure."""
    if r is None:
        return "", "", None
    i = int(sample or 0)
    if not 0 <= i < r.batch_size:
        i = 0
    return split_html(r, i), value_reward_html(r, i), values_figure(r, i)


def batch_views(r: Rollout, session: str | None = None):
    """Every batch-level view of a rollout, in the order of the page's outputs."""
    table_csv, record_json = write_downloads(r, session)
    return (
        status_line(r),  # replaced by `rollout_views` where the rollout has an origin
        diagnostics_html(diagnose(r)),
        sequences_html(r),
        logprob_heatmap(r),
        entropy_heatmap(r),
        displayed(stops_table(r), STOP_COLUMNS),
        displayed(batch_table(r), BATCH_COLUMNS),
        table_csv,
        record_json,
        logprob_gap_figure(r),
        logprob_agreement_markdown(r),
    )


def status_line(r: Rollout, origin: str | None = None) -> str:
    """The line above the views: where the rollout came from (a file, a saved example) and its shape and times."""
    t = r.timings
    shape = (f"**{plural(r.batch_size, 'sample')} × {plural(r.response_width, 'token')}** · context_length "
             f"{r.context_length} · attention `{r.attention}`")
    if origin:
        return f"{origin} · {shape}"
    passes = sum(v for k, v in t.items() if k not in ("generate", "total"))
    return (f"{shape} · generate {t.get('generate', 0):.1f} s · passes "
            f"{passes:.1f} s · total {t.get('total', 0):.1f} s")


def made_when(r: Rollout) -> str:
    created = r.settings.get("created")
    if not created:
        return "the record does not say when it was made"
    try:
        return "made " + datetime.fromisoformat(created).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return f"made {created}"


_KINDS = {"trl": "a TRL completions table", "verl": "a verl rollout dump", "table": "a table of completions"}


def file_origin(name: str, r: Rollout, source: str | None = None) -> str:
    """'Opened `x.json`: our rollout record, made ...' for the status line of a rollout read from a file."""
    if source is None:
        return f"Opened **`{name}`**: our rollout record, {made_when(r)}; shown as saved, no model needed"
    kind = _KINDS.get(source.split(":", 1)[0], "a table of completions")
    return (f"Opened **`{name}`**: {kind}, re-scored now by the models above (the file does not say when it was "
            "made)")


@gpu
def run_callback(policy, reward, value, reference, prompts_text, use_chat, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
                 samples, stop_choice, stop_custom, attention, compare_masks=False, ignore_generation_config=False,
                 engine_url="", precision="float32", trainer="ppo",
                 request: gr.Request = None, progress=gr.Progress()):
    """Run one rollout for this session and return every view of it."""
    try:
        check_trainer(trainer, int(samples))
        problems = run_problems(prompts_text, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop_choice,
                                stop_custom)
        if problems:
            raise InputError(" ".join(problems.values()))
        settings = dict(
            max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), temperature=float(temperature),
            top_k=int(top_k), top_p=float(top_p), seed=int(seed), samples_per_prompt=int(samples),
            use_chat_template=bool(use_chat), attention=str(attention), compare_masks=bool(compare_masks),
            ignore_generation_config=bool(ignore_generation_config), stop=stop_value(stop_choice, stop_custom),
            engine_url=(engine_url or "").strip() or None, trainer=str(trainer or "ppo"),
        )
        m, r = new_rollout(model_names(policy, reward, value, reference) | {"dtype": precision or "float32"},
                        parse_prompts(prompts_text), settings, progress=lambda f, msg: progress(f, desc=msg))
    except Exception as exc:
        raise friendly(exc) from exc
    return rollout_views(r, models_markdown(m), session_of(request))


def rollout_views(r: Rollout, summary: str, session: str | None = None, origin: str | None = None,
                  sample: int = 0) -> tuple:
    """Every output of a new rollout, in the order of the page's `ROLLOUT_OUTPUTS`; `session` names the folder
    of its downloads, `origin` opens the status line (where the rollout came from), `sample` is the one the
    per-sample views show."""
    return (r, summary, gr.update(choices=sample_choices(r), value=sample), status_line(r, origin),
            *batch_views(r, session)[1:], *sample_views(r, sample), *compare_choices(r))


def example_origin(name: str, r: Rollout) -> str:
    return (f"**Saved example** “{name}” (`{example_path(name).name}`, our rollout record of the default models, "
            f"{made_when(r)}): no model is loaded")


def arrival_views(query: dict, session: str | None = None) -> tuple:
    """What the page shows on arrival: the saved example a link names (`?example=<slug or name>&sample=<i>`; the
    default set otherwise), on the named sample, before any model loads. Returns `rollout_views`, then the prompts,
    the example set and a note about anything in the link that could not be followed."""
    notes = []
    try:
        name = find_example(query.get("example"))
    except InspectorError as exc:
        name = DEFAULT_EXAMPLE
        notes.append(str(exc))
    r = load_example(name)
    sample = 0
    if query.get("sample") not in (None, ""):
        try:
            sample = int(query["sample"])
            if not 0 <= sample < r.batch_size:
                raise ValueError
        except ValueError:
            notes.append(f"The link's sample {str(query['sample'])[:20]!r} is not one of this example's "
                         f"{plural(r.batch_size, 'sample')} (0 to {r.batch_size - 1}); showing sample 0.")
            sample = 0
    summary = "Models load on the first run (the defaults work offline); the example on screen needed none."
    note = " ".join(notes)
    return (*rollout_views(r, summary, session, example_origin(name, r), sample), "\n".join(EXAMPLES[name]), name,
            gr.update(value=f"**Link:** {note}" if note else "", visible=bool(note)))


@gpu
def import_callback(upload, policy, reward, value, reference, use_chat, stop_choice, stop_custom, attention,
                    temperature=1.0, reward_columns="", reward_weights="", request: gr.Request = None,
                    progress=gr.Progress()):
    """Open a file: a rollout record is shown as it is (no model needed); a table of completions (TRL's
    prompt / completion / reward, verl's input / output / score) is re-scored with the loaded models. For a TRL
    GRPO log, `reward_columns` / `reward_weights` (comma-separated) name its reward functions' columns and give
    TRL's `reward_weights`."""
    try:
        if upload is None:
            raise InspectorError("Choose a file first: a rollout .json, or a .jsonl / .csv / .parquet of completions.")
        path = Path(upload if isinstance(upload, str) else upload.name)
        parsed = read_upload_file(path, reward_columns=reward_columns, reward_weights=reward_weights)
        if isinstance(parsed, dict):
            r = rollout_from_dict(parsed)
            m = None
            origin = file_origin(path.name, r)
        else:
            names = model_names(policy, reward, value, reference)
            m = load_models(**names, progress=lambda msg: progress(0.05, desc=msg))
            r = rescore(m, parsed, stop_token_id=stop_value(stop_choice, stop_custom), use_chat_template=bool(use_chat),
                        attention=str(attention), temperature=training_temperature(temperature),
                        progress=lambda f, msg: progress(f, desc=msg))
            origin = file_origin(path.name, r, parsed.source)
    except Exception as exc:
        raise friendly(exc) from exc
    return rollout_views(r, models_markdown(m) if m is not None else "Opened a saved rollout: no model was needed.",
                         session_of(request), origin)


def keeping_results(fn, outputs: int):
    """`fn` for the page: when it refuses (a gr.Error), every result on screen stays as it was, unmarked, and the
    message shows under the Run button; when it succeeds the message clears and the saved-example button goes.
    Returns `outputs` values, then the message and the saved-example button."""
    @functools.wraps(fn)
    def page_fn(*args, **kwargs):
        try:
            views = fn(*args, **kwargs)
        except gr.Error as exc:
            return (*[gr.skip()] * outputs, gr.update(value=f"**Not run:** {exc.message}", visible=True), gr.skip())
        return (*views, gr.update(value="", visible=False), gr.update(visible=False))
    return page_fn
