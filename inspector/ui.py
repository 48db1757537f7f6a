"""The Gradio app: every part of a rollout side by side. The only module that imports gradio.

Callbacks are thin: they read widget values, call one core function and return views. Models load through
the process-wide cache in `inspector.models` (shared by every session); each session keeps its own
rollout in a `gr.State`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from gradio.utils import get_upload_folder

from . import models as model_registry
from .errors import InputError, InspectorError
from .examples import DEFAULT_EXAMPLE, EXAMPLE_SETTINGS, EXAMPLES, example_path, find_example, load_example
from .export import rollout_from_dict, rollout_to_dict, rollout_to_json, rollout_to_jsonl, rollout_to_parquet
from .importing import read_upload_file, rescore
from .limits import Limits
from .models import DEFAULT_POLICY, DEFAULT_REWARD, load_models
from .rollout import EOS, Rollout, run_rollout
from .diagnostics import diagnose
from .mismatch import sampler_mismatch
from .ppo import PPOConfig, rollout_ppo_step
from .diagnostics import diagnose_grpo
from .grpo import LOSS_TYPES, MULTI_OBJECTIVE_AGGREGATIONS, SAMPLER_MODES, SCALE_REWARDS, VERL_LOSS_AGG_MODES, make_config, rollout_grpo_step, trainer_mismatch
from .importing import compare_with_log
from .rewards import BUILTIN_REWARDS, DEFAULT_FORMAT_PATTERN, DEFAULT_LENGTH_TARGET, RewardTable, attach_reward_logs, builtin_for_logged_name, builtin_reward, score_rewards
from .views.grpo import (
    GRPO_CSS,
    grpo_groups_html,
    grpo_metrics_table,
    kl_entropy_figure,
    loss_type_figure,
    loss_type_table,
    sampler_correction_figure,
    token_weights_heatmap,
)
from .views.mismatch import (
    SEQUENCE_COLUMNS,
    metrics_table,
    mismatch_figure,
    mismatch_markdown,
    sequence_table,
    token_table,
)
from .views import (
    BATCH_COLUMNS,
    LOGPROB_KINDS,
    PPO_CSS,
    diagnostics_html,
    displayed,
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
from .views._common import fmt, plural

log = logging.getLogger("inspector.ui")

try:  # ZeroGPU on Spaces: run the model work inside a GPU allocation; a plain call everywhere else
    import spaces
except ImportError:  # pragma: no cover - depends on the host
    spaces = None

MODEL_GROUP = "models"
"""The one concurrency group of every handler that loads or runs a model (run, open a file, the API's rollout
and open_file, load): the queue bounds all model work together. INSPECTOR_MODEL_CONCURRENCY (default 1)."""


def gpu_duration() -> int:
    """Seconds of GPU a model-heavy handler asks ZeroGPU for: generation's time limit plus loading and passes."""
    return int(Limits.from_env().max_time) + 60


def gpu(fn):
    """Mark a model-heavy handler: `spaces.GPU` with a duration that covers INSPECTOR_MAX_TIME (a plain call
    where the `spaces` package is absent or the Space has no ZeroGPU). Its arguments must pickle."""
    fn.gpu_duration = gpu_duration()  # set before wrapping: the wrapper copies it
    return spaces.GPU(duration=fn.gpu_duration)(fn) if spaces is not None else fn


def model_event() -> dict:
    """The event settings of a model-heavy handler: the shared concurrency group."""
    return {"concurrency_id": MODEL_GROUP,
            "concurrency_limit": int(os.environ.get("INSPECTOR_MODEL_CONCURRENCY", "1"))}

CSS = TOKEN_CSS + PPO_CSS + GRPO_CSS + """
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
        row("value", m.value, m.names["value"], "the reward model itself" if m.value_is_reward else "")
        if m.value is not None else "| value | none | | | | every value is 0 |",
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


@gpu
def load_callback(policy, reward, value, reference, progress=gr.Progress()):
    """Load (or fetch from the shared cache) the four models; returns their summary."""
    try:
        progress(0.1, desc="Loading models")
        m = load_models(**_names(policy, reward, value, reference), progress=lambda msg: progress(0.5, desc=msg))
    except Exception as exc:
        raise _friendly(exc) from exc
    return models_markdown(m)


def vocabulary_check(policy, reward, value):
    """When the models are chosen: does the value model (the reward model when blank) share the policy's
    vocabulary? If not, say so and show the way out (no value model); reads tokenizers only."""
    problem = model_registry.value_vocabulary_problem(policy, reward, value)
    return (f"**Value model:** {problem}" if problem else ""), gr.update(visible=bool(problem))


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _rollout(names: dict, prompts: list[str], settings: dict, progress=None) -> tuple[model_registry.Models, Rollout]:
    m = load_models(**names, progress=(lambda msg: progress(0.02, msg)) if progress else None)
    r = run_rollout(m, prompts, stop_token_id=settings.pop("stop"), progress=progress, **settings)
    r.settings["created"] = _now()  # travels with the record: a re-opened rollout says when it was made
    return m, r


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        out.append((f"{i}: {prompt[:60]}{'…' if len(prompt) > 60 else ''}  (score {fmt(r.scores[i], signed=True)})", i))
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


def _number_problem(name: str, value, low: float | None = None, high: float | None = None, *, above: bool = False,
                    whole: bool = False, hint: str = "") -> str | None:
    """What is wrong with the number `value` typed into the field `name` (its allowed range in the message), or None."""
    if low is not None and high is not None:
        allowed = f"{'above' if above else 'from'} {low:g} {'and at most' if above else 'to'} {high:g}"
    elif low is not None:
        allowed = f"{'above' if above else 'at least'} {low:g}"
    else:
        allowed = "any number"
    kind = "a whole number" if whole else "a number"
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return f"{name} is empty: type {kind} {allowed}{hint}."
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"{name} must be {kind} {allowed}, not {str(value)[:40]!r}{hint}."
    bad = (whole and not v.is_integer()) or (low is not None and (v <= low if above else v < low)) \
        or (high is not None and v > high)
    return f"{name} must be {kind} {allowed} (got {v:g}){hint}." if bad else None


def ppo_problems(kl_coef, gamma, lam, penalty_on, penalty) -> dict[str, str]:
    """The PPO settings the page refuses, by field: {field: message}."""
    problems = {
        "kl_coef": _number_problem("kl_coef", kl_coef, 0, hint="; TRL's default is 0.05"),
        "gamma": _number_problem("gamma", gamma, 0, 1, hint="; TRL's default is 1.0"),
        "lam": _number_problem("lam", lam, 0, 1, hint="; TRL's default is 0.95"),
        "missing_eos_penalty": _number_problem("missing_eos_penalty", penalty, 0) if penalty_on else None,
    }
    return {k: v for k, v in problems.items() if v}


def ppo_validator(r, sample, kl_coef, kl_estimator, gamma, lam, whiten_rewards, penalty_on, penalty):
    """Each PPO setting checked on its own field (gradio shows a refusal on the field and keeps the results)."""
    problems = ppo_problems(kl_coef, gamma, lam, penalty_on, penalty)
    fields = [None, None, "kl_coef", None, "gamma", "lam", None, None, "missing_eos_penalty"]
    return [gr.validate(f not in problems, problems.get(f, "")) for f in fields]


def kl_note(r: Rollout) -> str:
    """Why the KL rows are zero when the reference is the policy, and how to pick another reference."""
    if r.model_names.get("reference") != r.model_names.get("policy"):
        return ""
    return ("<p class='panel-note kl-note' data-note='reference-is-policy'><b>KL is 0 by construction:</b> the reference "
            "model is the policy itself (Models ▸ Reference model is blank), so <code>ref_logprobs</code> equal the "
            "policy's own logprobs and <code>kl</code>, <code>-kl_coef · kl</code> and kl_coef change nothing (what "
            "is left is float noise between sampling and the recompute). To see a KL penalty, type another "
            "checkpoint with the same tokenizer (a Hub id or a local folder) in Models ▸ Reference model and run "
            "again.</p>")


def ppo_views(r: Rollout | None, sample, kl_coef, kl_estimator, gamma, lam, whiten_rewards, penalty_on, penalty):
    """The PPO step of the picked sample under the settings in the page (pure math: no model pass)."""
    if r is None:
        return "", None
    try:
        problems = ppo_problems(kl_coef, gamma, lam, penalty_on, penalty)
        if problems:
            raise InputError(" ".join(problems.values()))
        config = PPOConfig(kl_coef=float(kl_coef), kl_estimator=str(kl_estimator), gamma=float(gamma), lam=float(lam),
                           whiten_rewards=bool(whiten_rewards),
                           missing_eos_penalty=float(penalty) if penalty_on else None)
        step = rollout_ppo_step(r, config)
    except Exception as exc:
        raise _friendly(exc) from exc
    i = int(sample or 0) if 0 <= int(sample or 0) < r.batch_size else 0
    note = (f"<p class='panel-note' id='no-value-note'>{model_registry.NO_VALUE_NOTE}</p>"
            if r.model_names.get("value") == model_registry.NO_VALUE else "")
    return note + kl_note(r) + ppo_rows_html(r, step, i), ppo_metrics_table(step)


DOWNLOADS_TTL = 6 * 3600  # as long as a session keeps its rollout


def downloads_root() -> Path:
    """Where the page's downloads are written: inside gradio's cache folder, so that gradio serves them without
    copying each one again, one folder per session."""
    return Path(get_upload_folder()) / "rollout-inspector-downloads"


def _downloads(r: Rollout, session: str | None = None) -> tuple[str, list[str]]:
    """Write the rollout's downloads into the session's folder, replacing its previous rollout's, and remove
    the folders of sessions idle for longer than a session keeps its rollout: disk stays bounded by the
    sessions, not by the rollouts."""
    root = downloads_root()
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = "".join(c for c in (session or "") if c.isalnum())[:64] or "anonymous"
    for old in root.iterdir():
        try:
            if old.name.startswith(name + "-") or now - old.stat().st_mtime > DOWNLOADS_TTL:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # removed meanwhile by another session's sweep
            pass
    folder = Path(tempfile.mkdtemp(prefix=name + "-", dir=root))  # a new name: the page fetches it afresh
    table = folder / "rollout_batch.csv"
    batch_table(r).to_csv(table, index=False)
    record = folder / "rollout.json"
    record.write_text(rollout_to_json(r), encoding="utf-8")
    rows = folder / "rollout.jsonl"
    rows.write_text(rollout_to_jsonl(r), encoding="utf-8")
    parquet = folder / "rollout.parquet"
    rollout_to_parquet(r, str(parquet))
    return str(table), [str(record), str(rows), str(parquet)]


def batch_views(r: Rollout, session: str | None = None):
    """Every batch-level view of a rollout, in the order of the page's outputs."""
    table_csv, record_json = _downloads(r, session)
    return (
        _status(r),  # replaced by `rollout_views` where the rollout has an origin
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


def _status(r: Rollout, origin: str | None = None) -> str:
    """The line above the views: where the rollout came from (a file, a saved example) and its shape and times."""
    t = r.timings
    shape = (f"**{plural(r.batch_size, 'sample')} × {plural(r.response_width, 'token')}** · context_length "
             f"{r.context_length} · attention `{r.attention}`")
    if origin:
        return f"{origin} · {shape}"
    passes = sum(v for k, v in t.items() if k not in ("generate", "total"))
    return (f"{shape} · generate {t.get('generate', 0):.1f} s · passes "
            f"{passes:.1f} s · total {t.get('total', 0):.1f} s")


def _made(r: Rollout) -> str:
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
        return f"Opened **`{name}`**: our rollout record, {_made(r)}; shown as saved, no model needed"
    kind = _KINDS.get(source.split(":", 1)[0], "a table of completions")
    return (f"Opened **`{name}`**: {kind}, re-scored now by the models above (the file does not say when it was "
            "made)")


def run_problems(prompts_text, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop_choice,
                 stop_custom) -> dict[str, str]:
    """The generation settings the page refuses, by field: {field: message}. Nothing a widget shows is changed
    silently: temperature 0 with sampling is refused here, not rounded up."""
    problems = {
        "prompts": None if parse_prompts(prompts_text) else "There are no prompts: write at least one, one per line.",
        "max_new_tokens": _number_problem("max_new_tokens", max_new_tokens, 1, whole=True),
        "seed": _number_problem("seed", seed, 0, 2**63 - 1, whole=True),
    }
    if do_sample:
        problems["temperature"] = _number_problem(
            "temperature", temperature, 0, None, above=True,
            hint=" when sampling; untick do_sample for greedy decoding (temperature does not apply then)")
        problems["top_p"] = _number_problem("top_p", top_p, 0, 1, above=True, hint="; 1 turns it off")
        problems["top_k"] = _number_problem("top_k", top_k, 0, whole=True, hint="; 0 turns it off")
    if stop_choice == "Custom token" and not (stop_custom or "").strip() and stop_custom != " ":
        problems["stop_custom"] = "Type the custom stop token (one token of the policy's tokenizer), or pick EOS."
    return {k: v for k, v in problems.items() if v}


def run_validator(*values):
    """Each generation setting checked on its own field; `values` come in the order of `RUN_INPUTS`."""
    v = dict(zip(RUN_INPUTS, values))
    problems = run_problems(v.get("prompts"), v.get("max_new_tokens"), v.get("do_sample"), v.get("temperature"),
                            v.get("top_k"), v.get("top_p"), v.get("seed"), v.get("stop_choice"), v.get("stop_custom"))
    return [gr.validate(name not in problems, problems.get(name, "")) for name in RUN_INPUTS[:len(values)]]


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
            ignore_generation_config=bool(ignore_generation_config), stop=_stop_value(stop_choice, stop_custom),
            engine_url=(engine_url or "").strip() or None, trainer=str(trainer or "ppo"),
        )
        m, r = _rollout(_names(policy, reward, value, reference) | {"dtype": precision or "float32"},
                        parse_prompts(prompts_text), settings, progress=lambda f, msg: progress(f, desc=msg))
    except Exception as exc:
        raise _friendly(exc) from exc
    return rollout_views(r, models_markdown(m), _session(request))


def _session(request) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def rollout_views(r: Rollout, summary: str, session: str | None = None, origin: str | None = None,
                  sample: int = 0) -> tuple:
    """Every output of a new rollout, in the order of the page's `ROLLOUT_OUTPUTS`; `session` names the folder
    of its downloads, `origin` opens the status line (where the rollout came from), `sample` is the one the
    per-sample views show."""
    return (r, summary, gr.update(choices=_sample_choices(r), value=sample), _status(r, origin),
            *batch_views(r, session)[1:], *sample_views(r, sample), *compare_choices(r))


def example_origin(name: str, r: Rollout) -> str:
    return (f"**Saved example** “{name}” (`{example_path(name).name}`, our rollout record of the default models, "
            f"{_made(r)}): no model is loaded")


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


def compare_choices(r: Rollout | None):
    """Both compare pickers reset to the first two samples of a new rollout, and those two side by side (drawn
    here: a picker whose value stays the same, or that sits in a tab not yet shown, sends no change event)."""
    if r is None:
        return gr.update(), gr.update(), gr.update()
    choices = _sample_choices(r)
    b = min(1, r.batch_size - 1)
    return gr.update(choices=choices, value=0), gr.update(choices=choices, value=b), compare_view(r, 0, b)


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
            names = _names(policy, reward, value, reference)
            m = load_models(**names, progress=lambda msg: progress(0.05, desc=msg))
            r = rescore(m, parsed, stop_token_id=_stop_value(stop_choice, stop_custom), use_chat_template=bool(use_chat),
                        attention=str(attention), temperature=_temperature(temperature),
                        progress=lambda f, msg: progress(f, desc=msg))
            origin = file_origin(path.name, r, parsed.source)
    except Exception as exc:
        raise _friendly(exc) from exc
    return rollout_views(r, models_markdown(m) if m is not None else "Opened a saved rollout: no model was needed.",
                         _session(request), origin)


def _temperature(value) -> float:
    try:
        return float(1.0 if value is None else value)
    except (TypeError, ValueError):
        raise InspectorError(f"The training temperature must be a number above 0, not {value!r}.") from None


@gpu
def open_file_api(file, temperature: float = 1.0, reward_columns: str = "", reward_weights: str = "") -> dict:
    """Open a file through the API: a rollout record comes back validated; a table of completions (TRL's or
    verl's) comes back re-scored by the default models, as a rollout record, its logprobs taken at the
    training `temperature` the completions were sampled at (default 1.0). For a TRL GRPO log,
    `reward_columns` (comma-separated names) tells its reward columns from its log_extra columns and
    `reward_weights` (comma-separated) gives TRL's `reward_weights`; the record's settings say how it decided."""
    try:
        if file is None:
            raise InspectorError("No file was sent.")
        parsed = read_upload_file(file if isinstance(file, str) else getattr(file, "name", None) or file["path"],
                                  reward_columns=reward_columns, reward_weights=reward_weights)
        if isinstance(parsed, dict):
            return rollout_to_dict(rollout_from_dict(parsed))
        return rollout_to_dict(rescore(load_models(), parsed, temperature=_temperature(temperature)))
    except Exception as exc:
        raise _friendly(exc) from exc


@gpu
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
    ignore_generation_config: bool = False,
    policy: str = "",
    reward: str = "",
    value: str = "",
    reference: str = "",
    trainer: str = "ppo",
    reward_funcs: list[str] | None = None,
    reward_weights: list[float] | None = None,
    grpo_settings: dict | None = None,
    engine_url: str = "",
) -> dict:
    """Run a rollout and return the whole record as JSON: every tensor as nested lists, with texts and settings.

    stop_token: "eos", "none", or one token of the policy's tokenizer. engine_url: sample with that
    OpenAI-compatible server (on a hosted deployment only one of INSPECTOR_ENGINE_URLS); blank: in-process.
    trainer: "ppo" (default), "grpo" (TRL 1.16) or "verl"; with GRPO, samples_per_prompt is num_generations (>= 2)
    and the answer also holds `grpo` (the step under TRL's names) and `grpo_diagnostics`. reward_funcs: built-in
    reward functions by name (sentiment, length, format, exact_answer; default sentiment), reward_weights one
    weight each; grpo_settings: GRPOConfig fields (or verl's: loss_agg_mode, norm_adv_by_std_in_grpo, rollout_is,
    rollout_is_threshold), plus use_sampler_logprobs, length_target and format_pattern.
    """
    if isinstance(prompts, str):
        prompts = parse_prompts(prompts)
    stop = {"eos": EOS, "none": None}.get(str(stop_token).lower(), stop_token)
    try:
        check_trainer(str(trainer), int(samples_per_prompt))
        m, r = _rollout(
            _names(policy, reward, value, reference), list(prompts),
            dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                 top_p=top_p, seed=seed, samples_per_prompt=samples_per_prompt,
                 use_chat_template=use_chat_template, attention=attention, compare_masks=bool(compare_masks),
                 ignore_generation_config=bool(ignore_generation_config), stop=stop,
                 engine_url=(engine_url or "").strip() or None, trainer=str(trainer)),
        )
        record = rollout_to_dict(r)
        if trainer != "ppo":
            record.update(_grpo_api(m, r, str(trainer), reward_funcs, reward_weights, dict(grpo_settings or {})))
    except Exception as exc:
        raise _friendly(exc) from exc
    return record


def _grpo_api(m, r: Rollout, trainer: str, reward_funcs, reward_weights, settings: dict) -> dict:
    """The GRPO step of a rollout for the API: built-in reward functions only (never code by name)."""
    names = list(reward_funcs or ["sentiment"])
    unknown = [n for n in names if n not in BUILTIN_REWARDS]
    if unknown:
        raise InspectorError(f"reward_funcs {unknown} are not built in; choose from {', '.join(BUILTIN_REWARDS)}.")
    weights = [1.0] * len(names) if reward_weights is None else [float(w) for w in reward_weights]
    if len(weights) != len(names):
        raise InspectorError(f"reward_weights has {len(weights)} values for {len(names)} reward functions.")
    funcs = [builtin_reward(n, m, length_target=int(settings.pop("length_target", DEFAULT_LENGTH_TARGET)),
                            format_pattern=settings.pop("format_pattern", DEFAULT_FORMAT_PATTERN)) for n in names]
    table = score_rewards(r, funcs, weights, tokenizer=m.tokenizer)
    use_sampler = bool(settings.pop("use_sampler_logprobs", True))
    config = make_config(trainer, num_generations=int(r.settings["samples_per_prompt"]), reward_weights=tuple(weights),
                         **settings)
    step = attach_reward_logs(rollout_grpo_step(r, table.rewards_per_func, config, reward_func_names=table.names,
                                                use_sampler_logprobs=use_sampler), table)
    return {"trainer": trainer, "grpo": step.to_dict(), "grpo_diagnostics": [f.to_dict() for f in diagnose_grpo(r, step)]}


# ---------------------------------------------------------------------------------------------- the page

def _keeping_results(fn, outputs: int):
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
        "\n".join(EXAMPLES[DEFAULT_EXAMPLE]), lines=5, max_lines=14,
        label="Prompts (one per line)", elem_id="prompts",
    )
    p["run"] = gr.Button("Run rollout", variant="primary", elem_id="run")
    gr.Markdown("Ctrl+Enter (⌘+Enter) in the prompts runs.", elem_classes="panel-note", elem_id="run-hint")
    p["run_message"] = gr.Markdown("", visible=False, elem_id="run-message")
    p["example_set"] = gr.Dropdown(list(EXAMPLES), value=None, label="Example prompt sets", elem_id="example-set")
    p["use_chat"] = gr.Checkbox(EXAMPLE_SETTINGS["use_chat_template"], label="Apply the chat template")
    trainer_controls(p)
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


def _overview(p: dict) -> None:
    """Above the tabs: what is on screen, the traps found in it, and the sample every per-sample view shows."""
    with gr.Row(equal_height=True, elem_id="status-row"):
        p["status"] = gr.Markdown("Press **Run rollout**.", elem_id="status-line")
        p["fresh"] = gr.Button("Run a fresh one", size="sm", scale=0, min_width=150, visible=False, elem_id="run-fresh")
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
        gr.Markdown(f"Colour: `logprobs`, {LOGPROB_KINDS['logprobs']}; below, the entropy of that distribution in "
                    "nats. Grey: after `sequence_lengths` (TRL's padding_mask). Hover a cell for its token, rank and "
                    "the top alternatives.", elem_classes="panel-note")
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
        gr.Markdown("The value model on `query_responses`: `values[g]` is read at the token before response token g. "
                    "TRL keeps them up to `sequence_lengths + 1` and uses 0 after (padding_mask_p1).",
                    elem_classes="panel-note")
        p["values_plot"] = gr.Plot(elem_id="panel-values", show_label=False)


def _ppo_tab(p: dict) -> None:
    with gr.Tab("PPO step", id="ppo", elem_id="tab-ppo"):
        gr.Markdown("#### The PPO step, token by token (TRL 0.14–0.25 `PPOTrainer`, fed the rollout's sampling-time "
                    "`logprobs`), for the picked sample")
        with gr.Row(elem_id="ppo-settings"):
            p["kl_coef"] = gr.Number(0.05, label="kl_coef", min_width=110, elem_id="kl-coef")
            p["kl_estimator"] = gr.Radio(["k1", "k3"], value="k1", label="kl_estimator", min_width=130,
                                         elem_id="kl-estimator")
            p["gamma"] = gr.Number(1.0, label="gamma", min_width=110, elem_id="gamma")
            p["lam"] = gr.Number(0.95, label="lam", min_width=110, elem_id="lam")
        with gr.Row(elem_id="ppo-settings-2"):
            p["whiten_rewards"] = gr.Checkbox(False, label="whiten_rewards", min_width=160)
            p["penalty_on"] = gr.Checkbox(False, label="apply missing_eos_penalty", min_width=220)
            p["penalty"] = gr.Number(1.0, label="missing_eos_penalty", min_width=190, elem_id="missing-eos-penalty")
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


# ---------------------------------------------------------------------------------------------- GRPO

TRAINERS = [("PPO (TRL 0.x)", "ppo"), ("GRPO (TRL 1.16)", "grpo"), ("verl GRPO", "verl")]
REWARD_LABELS = {"sentiment": "sentiment reward model", "length": "length", "format": "format (regex)",
                 "exact_answer": "exact answer (arithmetic set)"}
GRPO_SETTINGS = ["loss_type", "scale_rewards", "multi_objective_aggregation", "mask_truncated_completions",
                 "importance_sampling_level", "epsilon", "epsilon_high", "delta", "beta", "top_entropy_quantile",
                 "use_sampler_logprobs", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
                 "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max",
                 "loss_agg_mode", "norm_adv_by_std_in_grpo", "rollout_is", "rollout_is_threshold"]
VERL_SETTINGS = ("loss_agg_mode", "norm_adv_by_std_in_grpo", "rollout_is", "rollout_is_threshold")
REWARD_INPUTS = ["reward_funcs", "w_sentiment", "w_length", "w_format", "w_exact_answer"]
GRPO_OUTPUTS = ["grpo_status", "grpo_diagnostics", "grpo_groups", "grpo_log", "grpo_weights", "grpo_loss_types",
                "grpo_loss_table", "grpo_kl", "grpo_sampler", "grpo_metrics"]


def check_trainer(trainer: str, samples_per_prompt: int) -> None:
    """GRPO turns samples per prompt into num_generations, which must be at least 2."""
    if trainer not in dict((v, k) for k, v in TRAINERS):
        raise InspectorError(f"trainer must be one of {', '.join(v for _, v in TRAINERS)} (got {trainer!r}).")
    if trainer != "ppo" and int(samples_per_prompt) < 2:
        raise InspectorError(
            f"GRPO compares the completions of each prompt: num_generations (samples per prompt) must be at least 2, "
            f"not {samples_per_prompt}. Set samples per prompt to 2 or more, or choose PPO.")


@gpu
def grpo_rewards(r: Rollout | None, policy="", reward="", value="", reference="", length_target=DEFAULT_LENGTH_TARGET,
                 format_pattern=DEFAULT_FORMAT_PATTERN) -> dict | None:
    """Every built-in reward function over the rollout's completions (one reward-model pass), or, for an opened
    TRL GRPO log, the file's own reward columns with the built-ins of the same names re-run beside them."""
    if r is None:
        return None
    try:
        m = load_models(**_names(policy, reward, value, reference))
        logged = r.settings.get("reward_columns")
        if logged:
            file_table = RewardTable(
                torch.tensor([[float("nan") if v is None else float(v) for v in r.columns[c]] for c in logged]).T,
                list(logged), list(r.settings.get("reward_weights") or [1.0] * len(logged)))
            funcs = {name: builtin_for_logged_name(name, m) for name in logged}
            funcs = {k: f for k, f in funcs.items() if f is not None}
            recomputed = {}
            if funcs:
                t = score_rewards(r, list(funcs.values()), tokenizer=m.tokenizer)
                recomputed = {name: t.rewards_per_func[:, j].tolist() for j, name in enumerate(funcs)}
            return {"table": file_table, "from_file": True, "recomputed": recomputed}
        funcs = [builtin_reward(n, m, length_target=int(length_target or DEFAULT_LENGTH_TARGET),
                                format_pattern=format_pattern or DEFAULT_FORMAT_PATTERN) for n in BUILTIN_REWARDS]
        return {"table": score_rewards(r, funcs, tokenizer=m.tokenizer), "from_file": False}
    except Exception as exc:
        raise _friendly(exc) from exc


def _grpo_config(trainer: str, G: int, weights: list[float], s: dict):
    if trainer == "verl":
        return make_config("verl", num_generations=G, reward_weights=tuple(weights), loss_agg_mode=s["loss_agg_mode"],
                           norm_adv_by_std_in_grpo=bool(s["norm_adv_by_std_in_grpo"]),
                           rollout_is=None if s["rollout_is"] in (None, "off") else s["rollout_is"],
                           rollout_is_threshold=float(s["rollout_is_threshold"] or 2.0))
    keep = {k: v for k, v in s.items() if k not in VERL_SETTINGS and k != "use_sampler_logprobs"}
    for key in ("epsilon", "beta", "top_entropy_quantile"):
        keep[key] = float(keep[key] or 0.0)
    for key in ("epsilon_high", "delta", "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max"):
        keep[key] = None if keep[key] in (None, "") else float(keep[key])
    keep["mask_truncated_completions"] = bool(keep["mask_truncated_completions"])
    keep["vllm_importance_sampling_correction"] = bool(keep["vllm_importance_sampling_correction"])
    return make_config("grpo", num_generations=G, reward_weights=tuple(weights), **keep)


def grpo_step_for(r: Rollout, state: dict, trainer: str, reward_funcs: list[str], weights: dict, settings: dict):
    """The GRPO step of a rollout under the page's settings (pure math over the recorded tensors). Returns
    (step, RewardTable used). Raises InspectorError for settings GRPO refuses."""
    G = int(r.settings.get("samples_per_prompt", 1))
    check_trainer(trainer, G)
    table: RewardTable = state["table"]
    if state.get("from_file"):
        rpf, names, w = table.rewards_per_func, table.names, table.weights
    else:
        chosen = [n for n in BUILTIN_REWARDS if n in (reward_funcs or [])]
        if not chosen:
            raise InspectorError("Choose at least one reward function.")
        idx = [BUILTIN_REWARDS.index(n) for n in chosen]
        rpf, names = table.rewards_per_func[:, idx], [table.names[i] for i in idx]
        w = [float(weights.get(n, 1.0) if weights.get(n) is not None else 1.0) for n in chosen]
    config = _grpo_config(trainer, G, w, settings)
    step = rollout_grpo_step(r, rpf, config, reward_func_names=names,
                             use_sampler_logprobs=bool(settings.get("use_sampler_logprobs", True)))
    attach_reward_logs(step, table)  # log_metric values join the metrics table, log_extra columns the step
    return step, RewardTable(rpf, names, w, table.extra, table.metrics)


def grpo_views(r: Rollout | None, state: dict | None, trainer: str, reward_funcs, w_sentiment, w_length, w_format,
               w_exact_answer, *settings):
    """Every GRPO panel for the settings in the page (no model pass), in the order of GRPO_OUTPUTS."""
    blank = (gr.update(visible=False), None, None, None, None, None, None)
    if r is None or state is None:
        return ("Run a rollout (or open a file) first.", "", "", *blank)
    if trainer == "ppo":
        return ("Choose **GRPO (TRL 1.16)** or **verl GRPO** under *Trainer* (left) to see this rollout as GRPO "
                "trains on it: groups, advantages and how much each token counts.", "", "", *blank)
    mismatch = trainer_mismatch(r, trainer)
    if mismatch:  # never show one trainer's numbers computed under another's conventions
        return (f"**{mismatch}**", "", "", *blank)
    G = int(r.settings.get("samples_per_prompt", 1))
    if G < 2:
        return (f"This rollout has {G} sample per prompt. GRPO needs num_generations ≥ 2: set *samples per prompt* to 2 "
                "or more and run again.", "", "", *blank)
    s = dict(zip(GRPO_SETTINGS, settings))
    weights = {"sentiment": w_sentiment, "length": w_length, "format": w_format, "exact_answer": w_exact_answer}
    try:
        step, used = grpo_step_for(r, state, trainer, reward_funcs, weights, s)
        log_update = gr.update(visible=False)
        problems = []
        if state.get("from_file"):
            from .importing import Completions

            parsed = Completions(r.prompts, r.response_texts, None, "file", kind="trl-grpo", columns=r.columns,
                                 reward_columns=used.names, advantages=r.columns.get("advantage"))
            rows, problems = compare_with_log(parsed, state["recomputed"], step.advantages.tolist())
            log_update = gr.update(value=pd.DataFrame(rows), visible=True)
        loss_frame = loss_type_table(r, used.rewards_per_func, step.config, reward_func_names=used.names,
                                     use_sampler_logprobs=bool(s.get("use_sampler_logprobs", True))) \
            if trainer == "grpo" else pd.DataFrame()
    except Exception as exc:
        raise _friendly(exc) from exc
    name = "TRL 1.16 GRPOTrainer" if trainer == "grpo" else "verl GRPO"
    loss = getattr(step.config, "loss_type", None) or getattr(step.config, "loss_agg_mode", "")
    status = (f"**{name}** · {step.num_groups} group(s) × num_generations {G} · loss `{loss}` · rewards "
              + ", ".join(f"`{n}` ×{w:g}" for n, w in zip(used.names, used.weights))
              + f" · loss {float(step.loss):+.5f}")
    if state.get("from_file") and r.settings.get("reward_columns_how"):
        status += f"  \nReward columns {r.settings['reward_columns_how']} (Open a file)."
    if problems:
        status += "  \n**The file and the recompute disagree:** " + " ".join(problems)
    return (status, diagnostics_html(diagnose_grpo(r, step)), grpo_groups_html(r, step), log_update,
            token_weights_heatmap(r, step), loss_type_figure(loss_frame) if trainer == "grpo" else None, loss_frame,
            kl_entropy_figure(r, step), sampler_correction_figure(r, step), grpo_metrics_table(step))


def trainer_controls(p: dict) -> None:
    """The trainer choice and GRPO's reward functions (only the built-ins: the page never imports code)."""
    p["trainer"] = gr.Radio(TRAINERS, value="ppo", label="Trainer", elem_id="trainer")
    with gr.Accordion("GRPO reward functions", open=False, elem_id="grpo-rewards"):
        p["reward_funcs"] = gr.CheckboxGroup([(REWARD_LABELS[n], n) for n in BUILTIN_REWARDS], value=["sentiment"],
                                             label="Reward functions (TRL's signature, built in)", elem_id="reward-funcs")
        with gr.Row():
            for n in BUILTIN_REWARDS:
                p[f"w_{n}"] = gr.Number(1.0, label=f"weight: {n}", min_width=80, elem_id=f"weight-{n}")
        p["length_target"] = gr.Number(DEFAULT_LENGTH_TARGET, precision=0, minimum=1, label="length reward: target tokens",
                                       elem_id="length-target")
        p["format_pattern"] = gr.Textbox(DEFAULT_FORMAT_PATTERN, label="format reward: regular expression (whole completion)",
                                         elem_id="format-pattern")
        gr.Markdown("The library and the CLI take any function with TRL's signature (`--reward-func module:function`); "
                    "this page offers only these.", elem_classes="panel-note")


def grpo_tab(p: dict) -> None:
    with gr.Tab("GRPO", id="grpo", elem_id="tab-grpo"):
        p["grpo_status"] = gr.Markdown("Choose GRPO under *Trainer* to see this tab.", elem_id="grpo-status")
        with gr.Accordion("GRPO settings (TRL's GRPOConfig names; recomputed without a model pass)", open=False,
                          elem_id="grpo-settings"):
            with gr.Row(elem_id="grpo-trl-settings"):
                p["loss_type"] = gr.Dropdown(list(LOSS_TYPES), value="dapo", label="loss_type", elem_id="loss-type")
                p["scale_rewards"] = gr.Dropdown(list(SCALE_REWARDS), value="group", label="scale_rewards")
                p["multi_objective_aggregation"] = gr.Dropdown(list(MULTI_OBJECTIVE_AGGREGATIONS), value="sum_then_normalize",
                                                               label="multi_objective_aggregation")
                p["importance_sampling_level"] = gr.Dropdown(["token", "sequence"], value="token",
                                                             label="importance_sampling_level")
                p["mask_truncated_completions"] = gr.Checkbox(False, label="mask_truncated_completions")
                p["epsilon"] = gr.Number(0.2, label="epsilon", min_width=80)
                p["epsilon_high"] = gr.Number(None, label="epsilon_high (blank = epsilon)", min_width=80)
                p["delta"] = gr.Number(None, label="delta (blank = off)", min_width=80)
                p["beta"] = gr.Number(0.0, label="beta", min_width=80)
                p["top_entropy_quantile"] = gr.Number(1.0, label="top_entropy_quantile", min_width=80)
            with gr.Row(elem_id="grpo-sampler-settings"):
                p["use_sampler_logprobs"] = gr.Checkbox(True, label="the rollout's logprobs are a sampler's (correct for them)")
                p["vllm_importance_sampling_correction"] = gr.Checkbox(True, label="vllm_importance_sampling_correction")
                p["vllm_importance_sampling_mode"] = gr.Dropdown(list(SAMPLER_MODES), value="sequence_mask",
                                                                 label="vllm_importance_sampling_mode")
                p["vllm_importance_sampling_clip_min"] = gr.Number(None, label="clip_min (blank = none)", min_width=80)
                p["vllm_importance_sampling_clip_max"] = gr.Number(3.0, label="clip_max", min_width=80)
            with gr.Row(elem_id="grpo-verl-settings", visible=False) as verl_row:
                p["loss_agg_mode"] = gr.Dropdown(list(VERL_LOSS_AGG_MODES), value="token-mean", label="loss_agg_mode")
                p["norm_adv_by_std_in_grpo"] = gr.Checkbox(True, label="norm_adv_by_std_in_grpo")
                p["rollout_is"] = gr.Dropdown(["off", "token", "sequence"], value="off", label="rollout_is")
                p["rollout_is_threshold"] = gr.Number(2.0, label="rollout_is_threshold", min_width=80)
            p["grpo_verl_row"] = verl_row
        p["grpo_diagnostics"] = gr.HTML(elem_id="panel-grpo-diagnostics")
        gr.Markdown("#### Groups: each prompt's completions, rewards and advantages")
        p["grpo_groups"] = gr.HTML(elem_id="panel-grpo-groups")
        p["grpo_log"] = gr.Dataframe(label="The file's rewards and advantages beside the recomputed ones",
                                     interactive=False, visible=False, elem_id="panel-grpo-log", max_height=420)
        gr.Markdown("#### How much each token counts: `token_weights` = d loss / d logprob")
        p["grpo_weights"] = gr.Plot(elem_id="panel-grpo-weights", show_label=False)
        gr.Markdown("#### The same rollout under each `loss_type`: length bias at a glance")
        p["grpo_loss_types"] = gr.Plot(elem_id="panel-grpo-loss-types", show_label=False)
        p["grpo_loss_table"] = gr.Dataframe(interactive=False, label="Per-token weight per unit of advantage",
                                            elem_id="panel-grpo-loss-table")
        gr.Markdown("#### Per-token KL and the entropy mask")
        p["grpo_kl"] = gr.Plot(elem_id="panel-grpo-kl", show_label=False)
        gr.Markdown("#### Sampler correction")
        p["grpo_sampler"] = gr.Plot(elem_id="panel-grpo-sampler", show_label=False)
        p["grpo_metrics"] = gr.Dataframe(headers=["metric", "value"], datatype=["str", "str"], interactive=False,
                                         label="What the trainer logs for this batch", elem_id="panel-grpo-metrics")
    p["grpo_state"] = gr.State(None, time_to_live=6 * 3600)


def wire_grpo(p: dict) -> None:
    """The GRPO tab's events: rewards once per rollout (one reward-model pass), views on every setting change."""
    c = lambda names: [p[n] for n in names]  # noqa: E731
    rewards = dict(fn=grpo_rewards, inputs=c(["session_rollout", "policy", "reward", "value", "reference",
                                              "length_target", "format_pattern"]),
                   outputs=p["grpo_state"], api_visibility="private", **model_event())
    views = dict(fn=grpo_views, inputs=c(["session_rollout", "grpo_state", "trainer", *REWARD_INPUTS, *GRPO_SETTINGS]),
                 outputs=c(GRPO_OUTPUTS), api_visibility="private")
    p["session_rollout"].change(**rewards).then(**views)
    p["length_target"].change(**rewards).then(**views)
    p["format_pattern"].submit(**rewards).then(**views)
    p["format_pattern"].blur(**rewards).then(**views)
    for name in ["trainer", *REWARD_INPUTS, *GRPO_SETTINGS]:
        p[name].change(**views)

    def trainer_changed(trainer, samples):
        grpo = trainer != "ppo"
        return (gr.update(value=4) if grpo and int(samples or 1) < 2 else gr.update(),
                gr.update(visible=trainer == "verl"))

    p["trainer"].change(trainer_changed, c(["trainer", "samples"]), [p["samples"], p["grpo_verl_row"]],
                        api_visibility="private")


def _mismatch_tab(p: dict) -> None:
    with gr.Tab("Sampler mismatch", id="mismatch", elem_id="tab-mismatch"):
        gr.Markdown("#### The sampler's logprobs (the engine's, or `generate`'s) against the trainer's recompute, "
                    "and what TRL 1.16's and verl's corrections do with them")
        with gr.Row(elem_id="mismatch-settings"):
            inputs = [p["session_rollout"],
                      gr.Dropdown(list(SAMPLER_MODES), value="sequence_mask", min_width=160,
                                  label="vllm_importance_sampling_mode", elem_id="is-mode"),
                      gr.Number(0, label="clip_min (0 = None)", min_width=110, elem_id="is-clip-min"),
                      gr.Number(3.0, label="clip_max", min_width=90, elem_id="is-clip-max"),
                      gr.Number(2.0, label="verl rollout_is_threshold", min_width=120, elem_id="verl-threshold")]
        outputs = [gr.Markdown(elem_id="panel-mismatch"), gr.Plot(elem_id="panel-mismatch-plot", show_label=False),
                   gr.Dataframe(interactive=False, label="Per sequence", elem_id="panel-mismatch-sequences",
                                headers=SEQUENCE_COLUMNS, column_widths=["200px"] + ["110px"] * (len(SEQUENCE_COLUMNS) - 1)),
                   gr.Dataframe(interactive=False, label="Per token, largest gap first", max_height=480,
                                elem_id="panel-mismatch-tokens"),
                   gr.Dataframe(interactive=False, label="What TRL and verl log for this batch",
                                elem_id="panel-mismatch-metrics")]
        for control in inputs:
            control.change(mismatch_views, inputs, outputs, api_visibility="private")


def mismatch_views(r: Rollout | None, mode, clip_min, clip_max, verl_threshold):
    """The mismatch tab of a rollout under the chosen correction settings (no model pass)."""
    if r is None:
        return ("Run a rollout; give an engine URL to sample with a server.", None, None, None, None)
    try:
        mm = sampler_mismatch(r, clip_min=clip_min or None, clip_max=clip_max, mode=mode, verl_threshold=verl_threshold)
    except Exception as exc:
        raise _friendly(exc) from exc
    return (mismatch_markdown(r, mm), mismatch_figure(r, mm, "token_mask"), sequence_table(r, mm),
            token_table(r, mm), metrics_table(mm))


TABS = [_sequences_tab, _logprobs_tab, _value_reward_tab, _ppo_tab, grpo_tab, _mismatch_tab, _batch_tab]
"""The views, one tab each, in the order of the tab bar. A tab is a function that adds its components to the
page's dict of components; its events are wired in `_wire`."""

PPO_INPUTS = ["kl_coef", "kl_estimator", "gamma", "lam", "whiten_rewards", "penalty_on", "penalty"]
ROLLOUT_OUTPUTS = ["session_rollout", "models_md", "sample", "status", "diagnostics", "seq_html", "heatmap", "entropy",
                   "stops", "table", "table_file", "record_file", "gap_plot", "gap_md", "split_view", "vr_html",
                   "values_plot", "compare_a", "compare_b", "compare_out"]
"""The components a new rollout fills, in the order of `rollout_views`."""
RUN_INPUTS = ["policy", "reward", "value", "reference", "prompts", "use_chat", "max_new_tokens", "do_sample",
              "temperature", "top_k", "top_p", "seed", "samples", "stop_choice", "stop_custom", "attention",
              "compare_masks", "ignore_generation_config", "engine_url", "precision", "trainer"]


def _wire(p: dict) -> None:
    """Every event of the page."""
    c = lambda names: [p[n] for n in names]  # noqa: E731
    ppo_inputs, rollout_outputs = c(PPO_INPUTS), c(ROLLOUT_OUTPUTS)
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
    ppo = dict(fn=ppo_views, inputs=[p["session_rollout"], p["sample"], *ppo_inputs],
               outputs=[p["ppo_html"], p["ppo_metrics"]], validator=ppo_validator, api_visibility="private")
    kept = [*rollout_outputs, p["run_message"], p["fresh"]]
    for button in (p["run"], p["fresh"]):
        button.click(_keeping_results(run_callback, len(rollout_outputs)), c(RUN_INPUTS), kept,
                     validator=run_validator, api_visibility="private", **model_event()).then(**ppo)
    p["import"].click(
        _keeping_results(import_callback, len(rollout_outputs)),
        c(["upload", "policy", "reward", "value", "reference", "use_chat", "stop_choice", "stop_custom", "attention",
           "import_temperature", "import_reward_columns", "import_reward_weights"]),
        kept,
        api_visibility="private", **model_event(),
    ).then(**ppo)
    for picker in ("compare_a", "compare_b"):
        p[picker].change(compare_view, c(["session_rollout", "compare_a", "compare_b"]), p["compare_out"],
                         api_visibility="private")
    p["sample"].change(sample_views, c(["session_rollout", "sample"]), c(["split_view", "vr_html", "values_plot"]),
                       api_visibility="private")
    for control in (p["sample"], *ppo_inputs):
        control.change(**ppo)
    wire_grpo(p)


def _arrival(p: dict, demo: gr.Blocks) -> None:
    """On arrival: the saved example the link names, shown at once (no model, no queue behind a running rollout)."""
    def arrive(request: gr.Request):
        return (*arrival_views(dict(request.query_params) if request else {}, _session(request)),
                gr.update(visible=True))

    demo.load(arrive, None, [p[n] for n in ROLLOUT_OUTPUTS] + [p["prompts"], p["example_set"], p["run_message"],
                                                             p["fresh"]],
              concurrency_limit=None, api_visibility="private").then(
        ppo_views, [p["session_rollout"], p["sample"], *[p[n] for n in PPO_INPUTS]], [p["ppo_html"], p["ppo_metrics"]],
        concurrency_limit=None, api_visibility="private")


def build_app() -> gr.Blocks:
    """The Blocks of the app. Nothing loads at build time; models load on the first click."""
    # delete_cache: gradio's copies of uploads older than a session's lifetime go, hourly
    with gr.Blocks(title="Rollout Inspector", fill_width=True, delete_cache=(3600, DOWNLOADS_TTL)) as demo:
        gr.Markdown(
            "## Rollout Inspector\nWhat a PPO trainer trains on, token by token, computed as TRL computes it.",
            elem_id="page-intro",
        )
        p: dict = {"session_rollout": gr.State(None, time_to_live=6 * 3600)}
        with gr.Row(equal_height=False, elem_id="page-row"):
            with gr.Column(scale=1, min_width=300, elem_id="controls"):
                _controls(p)
            with gr.Column(scale=3, min_width=300, elem_id="results"):
                _overview(p)
                with gr.Tabs(elem_id="views", overflow_behavior="wrap") as p["tabs"]:
                    for tab in TABS:
                        tab(p)
        _wire(p)
        _arrival(p, demo)
        gr.api(rollout_api, api_name="rollout", **model_event())
        with gr.Row(visible=False):  # the file endpoint: a File input so that clients upload as they should
            api_file = gr.File()
            api_temperature = gr.Number(1.0)
            api_columns, api_weights = gr.Textbox(""), gr.Textbox("")
            api_record = gr.JSON()
            api_button = gr.Button()
        api_button.click(open_file_api, [api_file, api_temperature, api_columns, api_weights], api_record, api_name="open_file",
                         **model_event())
    demo.queue(max_size=int(os.environ.get("INSPECTOR_QUEUE_SIZE", "16")), default_concurrency_limit=1)
    return demo


def launch_kwargs() -> dict:
    """What `launch()` takes in Gradio 6 besides the server settings: the page's CSS, theme and script, and the
    upload size limit (INSPECTOR_MAX_UPLOAD_BYTES), which gradio enforces before a file is stored."""
    return {"css": CSS, "theme": gr.themes.Soft(), "js": PAGE_JS, "max_file_size": Limits.from_env().max_upload_bytes}
