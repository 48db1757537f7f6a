"""The sampler mismatch: where the logprobs the sampler reported and the trainer's recompute disagree, what
TRL 1.16's and verl's corrections do about it, and why the two differ.

Pure torch over a Rollout, no model pass: `rollout.logprobs` are the sampler's (the serving engine's, or
`generate`'s), `rollout.new_logprobs` the trainer's recompute (logits / temperature). The corrections are
`inspector.trainers.sampler.sampler_correction` (TRL's `vllm_importance_sampling_mode`) and
`inspector.trainers.sampler.verl_sampler_correction` (verl's `rollout_is`), called as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..trainers.sampler import (
    SAMPLER_MODES,
    SamplerCorrection,
    sampler_correction,
    verl_debug_metrics,
    verl_sampler_correction,
)
from ..trainers.grpo import trl_completion_mask, trl_eos_token_ids
from ..trainers.grpo_common import sampling_metrics

AGREE = 1e-3
"""Mean |gap| (nats) under which the sampler's and the trainer's logprobs are the same distribution up to float noise."""


@dataclass
class Diagnosis:
    """Why the sampler's logprobs differ from the trainer's. `cause`: "agree", "attention_mask",
    "raw_logprobs", "truncation", "inherited_processors" (in-process only) or "numerical"; `distances`: mean |sampler - candidate| over the
    completion tokens for each recompute the inspector made ("trainer", "no_temperature", "truncated")."""

    cause: str
    text: str
    distances: dict[str, float]


@dataclass
class SamplerMismatch:
    """Per token (B, G) and per sequence (B,), over TRL's completion mask (the first EOS inside it)."""

    mask: torch.Tensor              # (B, G) bool
    sampler: torch.Tensor           # (B, G) the sampler's logprobs (rollout.logprobs)
    trainer: torch.Tensor           # (B, G) the trainer's recompute (rollout.new_logprobs)
    diff: torch.Tensor              # (B, G) trainer - sampler, 0 outside the mask (TRL's per_token_logps_diff)
    token_ratio: torch.Tensor       # (B, G) exp(diff)
    sequence_log_ratio: torch.Tensor  # (B,) sum of diff
    sequence_ratio: torch.Tensor    # (B,) exp(sum of diff)
    trl: dict[str, SamplerCorrection]   # one per vllm_importance_sampling_mode
    verl: dict[str, SamplerCorrection]  # verl's rollout_is "token" and "sequence"
    metrics: dict[str, float]
    diagnosis: Diagnosis
    clip_min: float | None = None
    clip_max: float | None = 3.0
    verl_threshold: float | str = 2.0
    settings: dict = field(default_factory=dict)


def _masked_mean_abs(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    gap = (a - b)[mask]
    gap = gap[torch.isfinite(gap)]
    return float(gap.abs().mean()) if gap.numel() else float("nan")


def _hidden_prompt_tokens(r) -> int:
    """Prompt tokens the trainer's TRL-style mask hid (ids == pad inside the tokenizer's mask) that a sampler
    fed the true prompt saw: the `<|im_end|>` of a chat template when pad == EOS."""
    if r.attention != "trl":
        return 0
    return int(((r.queries == r.pad_token_id) & r.query_attention_mask.bool()).sum())


def diagnose(r, mask: torch.Tensor) -> Diagnosis:
    """Say which recompute the sampler's numbers match: the trainer's own (the same distribution), the one
    without the temperature (a server in raw_logprobs mode), the one renormalised over top-k / top-p (processed
    logprobs with truncation), or none (a numerical gap: dtype, kernels). The trainer hiding prompt tokens the
    engine saw (TRL's PPO mask with pad == EOS) is named first: it changes every number after it."""
    s = r.settings or {}
    temp = float(s.get("effective_temperature", s.get("temperature", 1.0)))
    truncating = bool(s.get("do_sample", True)) and (int(s.get("top_k") or 0) > 0 or float(s.get("top_p", 1.0)) < 1.0)
    engine = (r.engine or {}).get("engine", "transformers.generate")
    served = r.engine.get("url") if r.engine else None
    who = f"The engine at {served}" if served else "The sampler"
    candidates = {"trainer": r.new_logprobs, "no_temperature": r.raw_logprobs}
    if r.processed_logprobs is not None:
        candidates["truncated"] = r.processed_logprobs
    distances = {k: _masked_mean_abs(r.logprobs, v, mask) for k, v in candidates.items()}
    d_trainer = distances["trainer"]
    hidden = _hidden_prompt_tokens(r) if engine != "transformers.generate" else 0
    if hidden and d_trainer > AGREE:
        return Diagnosis("attention_mask", (
            f"The trainer's recompute hid {hidden} prompt token(s) equal to the pad token that the engine saw: the "
            "PPO-style mask `ids != pad_token_id` with pad == EOS hides the chat template's end-of-turn tokens. "
            f"That alone moves every logprob (mean |gap| {d_trainer:.2e} nats). Recompute with the tokenizer's mask "
            "(attention = tokenizer, as TRL's GRPOTrainer builds it from the prompt mask) to compare like with like."
        ), distances)
    if d_trainer <= AGREE:
        return Diagnosis("agree", (
            f"{who} reports the distribution the trainer recomputes: mean |gap| {d_trainer:.2e} nats, float noise. "
            "The importance ratios stay near 1 and no correction changes the loss."
        ), distances)
    best = min(distances, key=lambda k: distances[k] if distances[k] == distances[k] else float("inf"))
    clearly = distances[best] <= AGREE or distances[best] < 0.2 * d_trainer
    if best == "no_temperature" and clearly and abs(temp - 1.0) > 1e-6:
        return Diagnosis("raw_logprobs", (
            f"{who} reports logprobs before the temperature (T = {temp:g}): they match the recompute without the "
            f"temperature (mean |gap| {distances['no_temperature']:.2e}) and not the trainer's, which divides the "
            f"logits by T (mean |gap| {d_trainer:.2e}). This server reports raw logprobs (vLLM's default "
            "`--logprobs-mode raw_logprobs`): run it with `--logprobs-mode processed_logprobs`."
        ), distances)
    if best == "truncated" and clearly and truncating:
        return Diagnosis("truncation", (
            f"{who} reports logprobs renormalised over the tokens top-k / top-p kept (top_k={s.get('top_k')}, "
            f"top_p={s.get('top_p')}): they match the recompute with that truncation (mean |gap| "
            f"{distances['truncated']:.2e}), while the trainer normalises over the whole vocabulary (mean |gap| "
            f"{d_trainer:.2e}): a per-token bias of log(kept mass). Sample without top-k / top-p for RL, or expect "
            "the correction to act on every token."
        ), distances)
    acting = [e for e in (r.inherited_processors or []) if e.get("processor") and e.get("max_effect", 0) > AGREE]
    if acting and engine == "transformers.generate":
        names = ", ".join(f"{e['setting']}={e['value']!r}" for e in acting)
        return Diagnosis("inherited_processors", (
            f"`generate` sampled with logits processors from the model's generation_config.json ({names}) that the "
            f"trainer's recompute does not apply (mean |gap| {d_trainer:.2e}): see the diagnostics above, or ignore "
            "the model's generation config."
        ), distances)
    dtype = (r.engine or {}).get("trainer_dtype") or "the trainer's dtype"
    return Diagnosis("numerical", (
        f"{who}'s logprobs match none of the recomputes closely (trainer {d_trainer:.2e}, without temperature "
        f"{distances['no_temperature']:.2e}"
        + (f", truncated {distances['truncated']:.2e}" if "truncated" in distances else "")
        + f" nats mean |gap|): the gap is numerical: precision (trainer in {dtype}; a bf16 sampler or LM head), "
        "attention and matmul kernels, or batch composition. Per-token gaps add up over a sequence: see the "
        "sequence ratios."
    ), distances)


def sampler_mismatch(r, *, clip_min: float | None = None, clip_max: float | None = 3.0,
                     verl_threshold: float | str = 2.0, mode: str = "sequence_mask",
                     eos_token_ids: list[int] | None = None) -> SamplerMismatch:
    """The mismatch of a Rollout token by token, with TRL 1.16's correction under every
    `vllm_importance_sampling_mode` (with `clip_min` / `clip_max`), verl's `rollout_is` token and sequence
    weights (with `verl_threshold`), TRL's `sampling/...` metrics for `mode` and verl's
    `training/rollout_probs_diff_...` metrics, and the diagnosis."""
    if eos_token_ids is None:
        eos_token_ids = trl_eos_token_ids(r.eos_token_id, (r.settings or {}).get("generation_eos_token_ids"))
    mask = trl_completion_mask(r.responses, eos_token_ids, r.pad_token_id)[0].bool()
    trainer, sampler = r.new_logprobs.float(), r.logprobs.float()
    trl = {m: sampler_correction(trainer, sampler, mask, m, clip_min, clip_max) for m in SAMPLER_MODES}
    verl = {lvl: verl_sampler_correction(trainer, sampler, mask, lvl, verl_threshold) for lvl in ("token", "sequence")}
    diff = trl["token_truncate"].logps_diff
    metrics = sampling_metrics(trainer, sampler, mask, trl[mode])
    metrics |= verl_debug_metrics(trainer, sampler, mask)
    return SamplerMismatch(
        mask=mask, sampler=sampler, trainer=trainer, diff=diff, token_ratio=torch.exp(diff),
        sequence_log_ratio=diff.sum(-1), sequence_ratio=torch.exp(diff.sum(-1)), trl=trl, verl=verl,
        metrics=metrics, diagnosis=diagnose(r, mask), clip_min=clip_min, clip_max=clip_max,
        verl_threshold=verl_threshold, settings={"mode": mode},
    )
