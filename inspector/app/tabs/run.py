"""The Run tab: open a training run (a folder path locally, an upload of a zip or of files, a Hub dataset id),
its trends per step and findings, a step picked (a point of a trend chart, or the step picker) opened in every
other tab as the page's current rollout, and one prompt's completions at two steps side by side.

The address follows what is picked (`?run=<source>&step=<n>&sample=<i>&tab=<id>`), so a link opens the same view;
the example run shipped with the app (inspector/assets/example-run, built by scripts/build_example_run.py) opens
when the link names no run. A gr.Timer rescans the open run, so steps a trainer finishes appear without a reload.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import gradio as gr

from ...diagnostics.run import run_findings
from ...errors import InputError, InspectorError
from ...limits import Limits, hosted
from ...record.run_rollout import load_tokenizer
from ...sources.runs import open_run
from ...views import diagnostics_html
from ...views.run_trends import lacks_markdown, side_by_side_html, trends_figure
from ..common import friendly, session_of
from .run_scripts import ADDRESS_JS, ARRIVAL_TAB_JS, RUN_JS

LABEL = "Run"
ID = "run"
HEADING = "A training run: trends per step, findings, and any step opened in every tab"

EXAMPLE_RUN = Path(__file__).resolve().parents[2] / "assets" / "example-run"
EXAMPLE_KEY = "example"
REFRESH_SECONDS = 5.0
VIEW_OUTPUTS = ["run_state", "run_status", "run_trends", "run_lacks", "run_findings", "run_problems", "run_step",
                "cmp_a", "cmp_b", "cmp_prompt", "cmp_out"]

def layout(p: dict) -> None:
    p["run_state"] = gr.State(None, time_to_live=6 * 3600)
    p["run_link"] = gr.Textbox("", elem_id="run-link", elem_classes="run-hidden", show_label=False, container=False)
    # a box, not a gr.State: the script that writes the address reads it in the browser
    p["run_want_sample"] = gr.State(None)  # the sample a link names, for the step it opens
    with gr.Row(equal_height=False, elem_id="run-open-row"):
        p["run_source"] = gr.Textbox("", label="Open a run: a folder or file path, or a Hub dataset id", scale=3,
                                     placeholder="runs/my-run  ·  output/completions  ·  user/my-trl-logs",
                                     elem_id="run-source")
        p["run_upload"] = gr.File(label="…or upload a .zip or the run's files", file_count="multiple", scale=2,
                                  elem_id="run-upload")
    p["run_open"] = gr.Button("Open the run", variant="secondary", elem_id="run-open")
    p["run_status"] = gr.Markdown("", elem_id="run-status")
    p["run_problems"] = gr.Markdown("", elem_id="run-problems")
    with gr.Row(equal_height=False, elem_id="run-row"):
        with gr.Column(scale=4, min_width=300):
            p["run_trends"] = gr.Plot(elem_id="run-trends", show_label=False)
        with gr.Column(scale=1, min_width=160):
            p["run_step"] = gr.Dropdown(choices=[], value=None, label="Step (or click a point)", elem_id="run-step")
            gr.Markdown("The step opens in every tab: Sequences, Logprobs, GRPO, Sampler mismatch.",
                        elem_classes="panel-note")
    p["run_click"] = gr.Textbox("", elem_id="run-click", elem_classes="run-hidden", show_label=False, container=False)
    p["run_lacks"] = gr.Markdown("", elem_id="run-lacks", elem_classes="panel-note")
    gr.Markdown("#### Findings across steps")
    p["run_findings"] = gr.HTML(elem_id="run-findings")
    gr.Markdown("#### One prompt at two steps")
    with gr.Row():
        p["cmp_prompt"] = gr.Dropdown(choices=[], value=None, label="Prompt", scale=3, elem_id="run-cmp-prompt")
        p["cmp_a"] = gr.Dropdown(choices=[], value=None, label="Step A", scale=1, elem_id="run-cmp-a")
        p["cmp_b"] = gr.Dropdown(choices=[], value=None, label="Step B", scale=1, elem_id="run-cmp-b")
    p["cmp_out"] = gr.HTML(elem_id="run-side-by-side")
    p["run_timer"] = gr.Timer(REFRESH_SECONDS, active=False)


# ---- opening -------------------------------------------------------------------------------------------------

UPLOADS_KEPT_SECONDS = 24 * 3600
UPLOAD_PREFIX = "upload:"


def uploads_dir() -> Path:
    """Where uploaded runs are kept, one folder per upload named by its contents' digest, so that a link can name
    one (`?run=upload:<id>`) while this server keeps it (a day)."""
    return Path(os.environ.get("INSPECTOR_RUN_UPLOADS", Path(tempfile.gettempdir()) / "inspector-run-uploads"))


def _digest(paths: list[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def _prune_uploads(base: Path) -> None:
    cutoff = time.time() - UPLOADS_KEPT_SECONDS
    for d in base.iterdir() if base.is_dir() else ():
        try:
            if d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _unpack(files, limit: int) -> tuple[Path, str, list[str]]:
    """Uploaded files (a zip, or the run's files) in the folder of their digest; members over `limit` bytes are left
    out. Returns (the run's folder, its link source `upload:<id>`, problems)."""
    paths = [Path(f if isinstance(f, str) else f.name) for f in files]
    key = _digest(paths)
    base = uploads_dir()
    base.mkdir(parents=True, exist_ok=True)
    _prune_uploads(base)
    root = base / key
    if not (root / ".complete").is_file():
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
        problems = _unpack_into(work, paths, limit)
        (work / ".problems").write_text("\n".join(problems))
        (work / ".complete").touch()
        if root.exists() and not (root / ".complete").is_file():  # an unfinished earlier unpacking, never a
            shutil.rmtree(root, ignore_errors=True)                # finished one another session just put there
        try:
            os.replace(work, root)
        except OSError:  # the same files unpacked at the same moment by another session: keep theirs
            shutil.rmtree(work, ignore_errors=True)
            if not (root / ".complete").is_file():
                raise
    os.utime(root)  # opened again: kept a day from now
    problems = [m for m in (root / ".problems").read_text().splitlines() if m]
    return _run_folder(root), UPLOAD_PREFIX + key, problems


def _run_folder(root: Path) -> Path:
    inner = [d for d in root.iterdir() if not d.name.startswith(".")]
    return inner[0] if len(inner) == 1 and inner[0].is_dir() else root  # a zip of the run's folder


def _unpack_into(folder: Path, paths: list[Path], limit: int) -> list[str]:
    problems = []
    for path in paths:
        if path.suffix == ".zip":
            try:
                with zipfile.ZipFile(path) as z:
                    for m in z.infolist():
                        name = Path(m.filename)
                        if m.is_dir() or name.is_absolute() or ".." in name.parts or name.name.startswith("."):
                            continue
                        if m.file_size > limit:
                            problems.append(f"{m.filename}: {m.file_size:,} bytes, over the upload limit of {limit:,}; "
                                            "left out.")
                            continue
                        target = folder / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with z.open(m) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                        stamp = time.mktime((*m.date_time, 0, 0, -1))  # the file's own time: it is not being written
                        os.utime(target, (stamp, stamp))
            except zipfile.BadZipFile:
                problems.append(f"{path.name}: not a readable zip file; left out.")
        elif path.stat().st_size > limit:
            problems.append(f"{path.name}: over the upload limit of {limit:,} bytes; left out.")
        else:
            shutil.copy2(path, folder / path.name)
    return problems


def _uploaded(text: str) -> Path:
    key = text[len(UPLOAD_PREFIX):]
    root = uploads_dir() / key
    if not (len(key) == 20 and all(ch in "0123456789abcdef" for ch in key) and (root / ".complete").is_file()):
        raise InputError(f"The uploaded run {text[:40]!r} is not on this server (an upload is kept a day after it was "
                         "last opened): upload its files again.")
    os.utime(root)
    return _run_folder(root)


def _source(text: str, files) -> tuple[object, str | None, list[str]]:
    """What to open: (run, link source or None, problems from unpacking)."""
    text = (text or "").strip()
    if files:
        folder, link, problems = _unpack(files if isinstance(files, list) else [files], Limits.from_env().max_upload_bytes)
        return open_run(folder, hosted=hosted()), link, problems
    if not text or text == EXAMPLE_KEY:
        return open_run(EXAMPLE_RUN), EXAMPLE_KEY, []
    if text.startswith(UPLOAD_PREFIX):
        return open_run(_uploaded(text), hosted=hosted()), text, []
    if hosted() and (text.startswith((".", "/", "~")) or Path(text).expanduser().exists()):
        raise InputError("Local paths are refused on a hosted deployment: upload the run's files (or a zip), or give "
                         "a Hub dataset id.")
    return open_run(text, hosted=hosted()), text, []


def _tok(policy: str):
    from ...models import DEFAULT_POLICY

    return load_tokenizer((policy or "").strip() or DEFAULT_POLICY)


def run_views(run, link: str | None, problems: list[str], selected: int | None = None) -> tuple:
    """Every view of an opened run, in the order of VIEW_OUTPUTS."""
    frame = run.summary()
    steps = run.steps()
    all_problems = list(problems) + list(run.problems)
    findings = run_findings(run) if len(frame) else []
    selected = selected if selected in steps else (steps[-1] if steps else None)
    name = ("the example run (recorded from TRL 1.16 on the default model)" if link == EXAMPLE_KEY
            else f"the uploaded run `{link}`" if (link or "").startswith(UPLOAD_PREFIX) else f"`{run.source}`")
    status = (f"**Run** {name} · format `{run.format}` · {len(steps)} complete step(s)"
              + (f" ({steps[0]} to {steps[-1]})" if steps else "") + ("  \n" + " ".join(run.notes) if run.notes else ""))
    note = ("**Some files were left out; the rest of the run is open:**\n" + "\n".join(f"- {m}" for m in all_problems)
            if all_problems else "")
    first, last = (steps[0], steps[-1]) if steps else (None, None)
    return ({"run": run, "link": link}, status, trends_figure(frame, selected), lacks_markdown(frame, run),
            diagnostics_html(findings).replace("No trap found in this rollout", "No trend found across these steps"), note, gr.update(choices=steps, value=selected),
            gr.update(choices=steps, value=first), gr.update(choices=steps, value=last), _first_prompts(run, first), "")


def _first_prompts(run, first):
    """The side-by-side's prompts for a newly opened run (step A keeps its value when it is the same number,
    so its change event does not come)."""
    try:
        return prompt_choices({"run": run}, first, "")
    except gr.Error:
        return gr.update(choices=[], value=None)


def open_callback(text, files):
    """Open the run named (or uploaded); a run that cannot be opened leaves the one on screen as it was and says
    why under the Open button."""
    try:
        run, link, problems = _source(text, files)
        if not run.steps() and not run.problems and not problems:
            raise InputError(f"{run.source}: no complete step yet.")
        return (*run_views(run, link, problems), gr.update(active=True))
    except InspectorError as exc:
        views = [gr.skip()] * len(VIEW_OUTPUTS)
        views[VIEW_OUTPUTS.index("run_problems")] = f"**Not opened:** {exc}"
        return (*views, gr.skip())
    except Exception as exc:
        raise friendly(exc) from exc


def refresh_callback(state):
    """The timer: new steps of a run still being written, without a reload."""
    if not state:
        return (*[gr.skip()] * len(VIEW_OUTPUTS),)
    run = state["run"]
    try:
        new = run.refresh()
    except InspectorError:
        return (*[gr.skip()] * len(VIEW_OUTPUTS),)
    if not new:
        return (*[gr.skip()] * len(VIEW_OUTPUTS),)
    views = run_views(run, state.get("link"), [])
    # keep what the reader picked: only the charts, findings and the pickers' choices change
    return (views[0], views[1], views[2], views[3], views[4], views[5], gr.update(choices=run.steps()),
            gr.update(choices=run.steps()), gr.update(choices=run.steps()), gr.skip(), gr.skip())


# ---- a step in every tab -------------------------------------------------------------------------------------

def step_views(state, step, want, sample, policy, request: gr.Request = None):
    """The picked step as the page's current rollout: `rollouts.ROLLOUT_OUTPUTS`, then the trainer choice (GRPO,
    so the GRPO tab shows the step), the run's link and the link's sample (used once). It shows sample `want`
    (a link's) or else the sample picked now."""
    from ..rollouts import ROLLOUT_OUTPUTS, rollout_views

    if not state or step in (None, ""):
        return (*[gr.skip()] * (len(ROLLOUT_OUTPUTS) + 1), gr.skip(), gr.skip())
    run = state["run"]
    try:
        n = int(step)
        r = run.step(n).to_rollout(_tok(policy))
    except Exception as exc:
        raise friendly(exc) from exc
    trainer = r.trainer  # the step's own trainer (RunStep.to_rollout sets it)
    pick = want if want not in (None, "") else sample
    i = int(pick) if str(pick).isdigit() and int(pick) < r.batch_size else 0
    link = state.get("link") or ""
    where = ("the example run" if link == EXAMPLE_KEY else f"the uploaded run `{link}`" if link.startswith(UPLOAD_PREFIX)
             else f"run `{run.source}`")
    origin = f"**Step {n}** of {where} ({run.format}, opened from the Run tab)"
    summary = "A run's step: the trainer's own tensors, no model needed to show it."
    views = rollout_views(r, summary, session_of(request), origin, i)
    return (*views, gr.update(value=trainer), state.get("link") or "", None)


def _prompt_key(step, i: int):
    if step.prompt_ids is not None:
        return tuple(int(t) for t in step.prompt_ids[i])
    return str(step.prompt_text[i]) if step.prompt_text is not None else i


def _texts(step, idx: list[int], tok) -> list[str]:
    if step.completion_ids is not None and tok is not None:
        return [tok.decode(step.completion_ids[i]) for i in idx]
    return [str(step.completion_text[i]) if step.completion_text is not None else "" for i in idx]


def _prompt_label(step, i: int, tok) -> str:
    if step.prompt_text is not None:
        text = str(step.prompt_text[i])
    elif step.prompt_ids is not None and tok is not None:
        text = tok.decode(step.prompt_ids[i], skip_special_tokens=True)
    else:
        text = f"prompt {i}"
    if "user\n" in text:  # a chat prompt decoded without its special tokens: its last user turn
        text = text.rsplit("user\n", 1)[1].removesuffix("\n").removesuffix("assistant")
    text = " ".join(text.split())
    return text[:80] + "…" if len(text) > 80 else text


def prompt_choices(state, a, policy):
    """The prompts of step A, one per group, for the side-by-side picker."""
    if not state or a in (None, ""):
        return gr.update(choices=[], value=None)
    try:
        step, tok = state["run"].step(int(a)), _tok(policy)
    except Exception as exc:
        raise friendly(exc) from exc
    seen, choices = set(), []
    for i in range(step.samples):
        key = _prompt_key(step, i)
        if key not in seen:
            seen.add(key)
            choices.append((f"{len(choices)}: {_prompt_label(step, i, tok)}", i))
    return gr.update(choices=choices, value=choices[0][1] if choices else None)


def side_by_side(state, a, b, prompt, policy) -> str:
    """Step A's sample `prompt` names a prompt; its completions at steps A and B."""
    if not state or a in (None, "") or b in (None, "") or prompt in (None, ""):
        return ""
    try:
        run, tok = state["run"], _tok(policy)
        sa, sb = run.step(int(a)), run.step(int(b))
        key = _prompt_key(sa, int(prompt))
        ia = [i for i in range(sa.samples) if _prompt_key(sa, i) == key]
        ib = [i for i in range(sb.samples) if _prompt_key(sb, i) == key]
    except Exception as exc:
        raise friendly(exc) from exc
    out = side_by_side_html((int(a), _texts(sa, ia, tok)), (int(b), _texts(sb, ib, tok)), _prompt_label(sa, int(prompt), tok))
    if not ib:
        out = f"<p class='panel-note'>Step {b} has no completion of this prompt.</p>" + out
    return out


# ---- events and arrival ---------------------------------------------------------------------------------------

def wire(p: dict) -> None:
    from ..rollouts import ROLLOUT_OUTPUTS

    c = lambda names: [p[n] for n in names]  # noqa: E731
    free = dict(api_visibility="private", concurrency_limit=None)
    p["run_open"].click(open_callback, c(["run_source", "run_upload"]), [*c(VIEW_OUTPUTS), p["run_timer"]], **free)
    p["run_timer"].tick(refresh_callback, p["run_state"], c(VIEW_OUTPUTS), show_progress="hidden", **free)
    p["run_click"].change(lambda v: gr.update(value=int(str(v).split("#")[0])) if str(v).split("#")[0].isdigit()
                         else gr.skip(), p["run_click"], p["run_step"], **free)
    shown = c([*ROLLOUT_OUTPUTS, "trainer", "run_link", "run_want_sample"])
    p["run_step"].change(step_views, c(["run_state", "run_step", "run_want_sample", "sample", "policy"]), shown, **free).then(
        None, c(["run_link", "run_step", "sample"]), None, js=ADDRESS_JS)
    p["run_step"].change(_mark_step, c(["run_state", "run_step"]), p["run_trends"], **free)
    p["sample"].input(None, c(["run_link", "run_step", "sample"]), None, js=ADDRESS_JS)
    p["cmp_a"].change(prompt_choices, c(["run_state", "cmp_a", "policy"]), p["cmp_prompt"], **free)
    for name in ("cmp_a", "cmp_b", "cmp_prompt"):
        p[name].change(side_by_side, c(["run_state", "cmp_a", "cmp_b", "cmp_prompt", "policy"]), p["cmp_out"], **free)


def _mark_step(state, step):
    if not state or step in (None, ""):
        return gr.skip()
    return trends_figure(state["run"].summary(), int(step))


def arrival(query: dict):
    """On arrival: the run the link names (`run`; the example run otherwise), its `step` opened in every tab when
    the link names one, and the `tab` it names (the Run tab for a link to a run or a step). Returns VIEW_OUTPUTS, the
    timer, the tab to select ("" for none), the step and the sample the link names."""
    source = query.get("run") or ""
    notes = []
    try:
        run, link, _ = _source(source, None)
    except InspectorError as exc:
        notes.append(f"The link's run could not be opened: {exc} The example run is shown.")
        run, link = open_run(EXAMPLE_RUN), EXAMPLE_KEY
    steps = run.steps()
    step = None
    if query.get("step") not in (None, ""):
        try:
            step = int(query["step"])
            if step not in steps:
                raise ValueError
        except ValueError:
            notes.append(f"The link's step {str(query['step'])[:20]!r} is not in this run; showing the last step.")
            step = None
    views = list(run_views(run, link, [], step))
    if step is None:
        views[VIEW_OUTPUTS.index("run_step")] = gr.update(choices=steps, value=None)
    if notes:
        views[VIEW_OUTPUTS.index("run_problems")] = "**Link:** " + " ".join(notes)
    tab = query.get("tab") or (ID if query.get("run") or step is not None else None)
    return (*views, gr.update(active=True), tab or "", step, query.get("sample"))


def arrival_event(p: dict) -> dict:
    """The `.then` of the page's arrival: the run, then (through the step picker) the step the link names, from
    the link the page was opened with (`landing`)."""
    def arrive(landing):
        views = arrival(dict(landing or {}))
        step, sample = views[-2], views[-1]
        want = int(sample) if step is not None and str(sample or "").isdigit() else None
        out = list(views[:-2])
        if step is not None:
            out[VIEW_OUTPUTS.index("run_step")] = gr.update(choices=out[0]["run"].steps(), value=step)
        return (*out, want)

    return dict(fn=arrive, inputs=[p["landing"]],
                outputs=[*[p[n] for n in VIEW_OUTPUTS], p["run_timer"], p["arrival_tab"], p["run_want_sample"]],
                concurrency_limit=None, api_visibility="private")


def arrival_tab_event(p: dict) -> dict:
    """The last `.then` of the arrival: the link's tab selected in the browser (see ARRIVAL_TAB_JS)."""
    return dict(fn=None, inputs=[p["arrival_tab"]], outputs=None, js=ARRIVAL_TAB_JS)


__all__ = ["LABEL", "ID", "HEADING", "layout", "wire", "arrival_event", "arrival_tab_event", "RUN_JS", "EXAMPLE_RUN", "open_callback",
           "step_views", "side_by_side"]
