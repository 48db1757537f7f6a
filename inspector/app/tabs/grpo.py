"""The GRPO tab: the rollout as TRL 1.16's GRPOTrainer or verl trains on it (groups, advantages, how much each
token counts, each loss_type side by side, the sampler correction), recomputed on every setting change without
a model pass; the rewards come once per rollout (one reward-model pass). Its reward-function controls sit in
the left column (`controls`)."""

from __future__ import annotations

import gradio as gr
import pandas as pd
import torch

from ...diagnostics import diagnose_grpo
from ...errors import InspectorError
from ...models import load_models
from ...record.rollout import Rollout
from ...diagnostics.logged import compare_with_log
from ...sources.files import Completions
from ...trainers.grpo import rollout_grpo_step, trainer_mismatch
from ...trainers.grpo_config import LOSS_TYPES, MULTI_OBJECTIVE_AGGREGATIONS, SCALE_REWARDS, VERL_LOSS_AGG_MODES, make_config
from ...trainers.rewards import (
    BUILTIN_REWARDS,
    DEFAULT_FORMAT_PATTERN,
    DEFAULT_LENGTH_TARGET,
    RewardTable,
    attach_reward_logs,
    builtin_for_logged_name,
    builtin_reward,
    score_rewards,
)
from ...trainers.sampler import SAMPLER_MODES
from ...views import diagnostics_html
from ...views.grpo import (
    grpo_groups_html,
    grpo_metrics_table,
    kl_entropy_figure,
    loss_type_figure,
    loss_type_table,
    sampler_correction_figure,
    token_weights_heatmap,
)
from ..common import friendly, model_names
from ..hosting import gpu, model_event
from ..validation import check_trainer

LABEL = "GRPO"
ID = "grpo"
HEADING = "The GRPO step: groups, advantages and how much each token counts"

TRAINER_CHOICES = [("PPO (TRL 0.x)", "ppo"), ("GRPO (TRL 1.16)", "grpo"), ("verl GRPO", "verl")]


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


def controls(p: dict) -> None:
    """The trainer choice and GRPO's reward functions (only the built-ins: the page never imports code)."""
    p["trainer"] = gr.Radio(TRAINER_CHOICES, value="ppo", label="Trainer", elem_id="trainer")
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


def layout(p: dict) -> None:
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


def wire(p: dict) -> None:
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


@gpu
def grpo_rewards(r: Rollout | None, policy="", reward="", value="", reference="", length_target=DEFAULT_LENGTH_TARGET,
                 format_pattern=DEFAULT_FORMAT_PATTERN) -> dict | None:
    """Every built-in reward function over the rollout's completions (one reward-model pass), or, for an opened
    TRL GRPO log, the file's own reward columns with the built-ins of the same names re-run beside them."""
    if r is None:
        return None
    try:
        m = load_models(**model_names(policy, reward, value, reference))
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
        raise friendly(exc) from exc


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
            parsed = Completions(r.prompts, r.response_texts, None, "file", kind="trl-grpo", columns=r.columns,
                                 reward_columns=used.names, advantages=r.columns.get("advantage"))
            rows, problems = compare_with_log(parsed, state["recomputed"], step.advantages.tolist())
            log_update = gr.update(value=pd.DataFrame(rows), visible=True)
        loss_frame = loss_type_table(r, used.rewards_per_func, step.config, reward_func_names=used.names,
                                     use_sampler_logprobs=bool(s.get("use_sampler_logprobs", True))) \
            if trainer == "grpo" else pd.DataFrame()
    except Exception as exc:
        raise friendly(exc) from exc
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
