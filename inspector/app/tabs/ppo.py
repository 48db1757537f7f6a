"""The PPO step tab: TRL 0.x's PPO step over the picked sample, recomputed on every setting change without a
model pass, and what TRL logs for the batch."""

from __future__ import annotations

import gradio as gr

from ... import models as model_registry
from ...errors import InputError
from ...record.rollout import Rollout
from ...trainers.ppo import PPOConfig, rollout_ppo_step
from ...views import ppo_metrics_table, ppo_rows_html
from ..common import friendly
from ..validation import ppo_problems

LABEL = "PPO step"
ID = "ppo"
HEADING = ("The PPO step, token by token (TRL 0.14–0.25 `PPOTrainer`, fed the rollout's sampling-time `logprobs`), "
           "for the picked sample")
PPO_INPUTS = ["kl_coef", "kl_estimator", "gamma", "lam", "whiten_rewards", "penalty_on", "penalty"]


def layout(p: dict) -> None:
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


def event(p: dict) -> dict:
    """The PPO views' event settings: run after every new rollout, and on every PPO setting or sample change."""
    return dict(fn=ppo_views, inputs=[p["session_rollout"], p["sample"], *[p[n] for n in PPO_INPUTS]],
                outputs=[p["ppo_html"], p["ppo_metrics"]], validator=ppo_validator, api_visibility="private")


def wire(p: dict) -> None:
    for control in (p["sample"], *[p[n] for n in PPO_INPUTS]):
        control.change(**event(p))


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
        raise friendly(exc) from exc
    i = int(sample or 0) if 0 <= int(sample or 0) < r.batch_size else 0
    note = (f"<p class='panel-note' id='no-value-note'>{model_registry.NO_VALUE_NOTE}</p>"
            if r.model_names.get("value") == model_registry.NO_VALUE else "")
    return note + kl_note(r) + ppo_rows_html(r, step, i), ppo_metrics_table(step)
