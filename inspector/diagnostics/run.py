"""Findings across a run's steps, read from its per-step summary (`Run.summary()`): each names the steps and the fix.

A trend compares the mean of the first third of the steps with the last third (at least 3 steps). The advantage
check recomputes a step's advantages from its logged per-function rewards with TRL 1.16's formula
(`_generate_and_score_completions`, as inspector/trainers/grpo.py `_trl_advantages`), given num_generations and
scale_rewards, and compares them with the advantages the trainer logged.
"""

from __future__ import annotations

import math

import numpy as np

from .finding import Finding

ADV_ATOL = 1e-4


def _thirds(frame, column: str):
    """(first-third mean, last-third mean, steps, values) of a column over steps with a value, or None."""
    if column not in frame.columns:
        return None
    sub = frame[["step", column]].dropna()
    if len(sub) < 3:
        return None
    k = max(1, len(sub) // 3)
    values = sub[column].to_numpy(dtype=float)
    return float(values[:k].mean()), float(values[-k:].mean()), sub["step"].astype(int).tolist(), values


def _span(steps: list[int]) -> str:
    return f"steps {steps[0]}..{steps[-1]}"


def _trend(frame, column: str, fires, extreme, code: str, title: str, what: str, why: str, fix: str) -> Finding | None:
    """A finding over one column's trend: `fires(first, last)` on the first and last thirds' means; `extreme` (argmax
    or argmin) names the step to open. `what` may use {first}, {last}, {span} and {at} (that step)."""
    t = _thirds(frame, column)
    if t is None:
        return None
    first, last, steps, values = t
    if not fires(first, last):
        return None
    at = steps[int(extreme(values))]
    text = dict(first=first, last=last, span=_span(steps), at=at)
    return Finding(code, title, "warning", what.format(**text), why, fix.format(**text), steps=[steps[0], at, steps[-1]])


def _gap(frame) -> Finding | None:
    for column, label, floor in (("gap_kl", "mean k3 KL", 1e-3), ("gap_abs", "mean |trainer - sampler|", 1e-2)):
        found = _trend(
            frame, column, lambda first, last: last > floor and last >= 2.0 * max(first, floor / 4), np.argmax,
            "run_gap_growing", "The sampler-trainer gap grows over training",
            label + " between the sampler's and the trainer's logprobs on trained tokens goes from {first:.4g} "
            "(first steps) to {last:.4g} (last steps) over {span}; highest at step {at}.",
            "The further the sampler drifts from the trainer, the more off-policy every update is: the importance "
            "weights grow, more samples are truncated or dropped by the correction, and training can diverge.",
            "Open the steps with the largest gap in the Sampler mismatch tab; check the sampler's precision and "
            "kernels against the trainer's (bf16 vs fp32 lm head), weight sync after each step, and turn on the "
            "importance-sampling correction (TRL vllm_importance_sampling_correction, verl rollout_is).")
        if found is not None:
            return found
    return None


def _entropy(frame) -> Finding | None:
    return _trend(
        frame, "entropy", lambda first, last: first > 0.05 and last < 0.5 * first, np.argmin,
        "run_entropy_collapse", "Entropy collapses",
        "Mean token entropy on trained tokens falls from {first:.3g} to {last:.3g} over {span} (lowest at step {at}).",
        "A policy whose entropy collapses stops exploring: groups become identical, their rewards agree, and "
        "GRPO's advantages vanish.",
        "Look at the low-entropy steps' completions; raise the sampling temperature, add an entropy bonus or "
        "clip-higher (epsilon_high), or lower the learning rate.")


def _length_column(frame) -> str | None:
    return "length_mean" if "length_mean" in frame.columns else ("length_chars_mean" if "length_chars_mean" in frame.columns else None)


def _truncation(frame) -> Finding | None:
    col = _length_column(frame)
    length, trunc = (_thirds(frame, col) if col else None), _thirds(frame, "truncated_frac")
    if length is None or trunc is None:
        return None
    (l0, l1, steps, _), (t0, t1, tsteps, tvalues) = length, trunc
    if l1 >= 1.3 * l0 and t1 >= 0.2 and t1 > t0 + 0.1:
        hit = next((s for s, v in zip(tsteps, tvalues) if v >= 0.2), tsteps[-1])
        return Finding(
            "run_lengthening_to_truncation", "Completions lengthen until they are truncated", "warning",
            f"Mean completion length goes from {l0:.1f} to {l1:.1f} and the truncated fraction from {t0:.0%} to "
            f"{t1:.0%} over {_span(steps)}; a fifth or more are cut from step {hit}.",
            "A truncated completion has no end: its reward is read from a cut text, and with "
            "mask_truncated_completions off it is still trained on, teaching the model to run on.",
            "Raise max_completion_length, set mask_truncated_completions=True, or add a length penalty; open step "
            f"{hit} to read the cut completions.", steps=[steps[0], hit, steps[-1]])
    return None


def _zero_std(frame) -> Finding | None:
    return _trend(
        frame, "zero_std_groups", lambda first, last: last >= 0.5 and last >= first + 0.2, np.argmax,
        "run_zero_std_rising", "Groups with zero reward spread rise (no learning signal)",
        "The fraction of groups whose completions all get the same reward goes from {first:.0%} to {last:.0%} "
        "over {span} (most at step {at}).",
        "A group whose rewards agree has zero advantage for every completion: it costs a rollout and teaches "
        "nothing.",
        "Make the task harder or the reward finer-grained, raise num_generations or the temperature, or filter "
        "such groups (dynamic sampling).")


def _reward_hacking(frame) -> Finding | None:
    col = _length_column(frame)
    reward, length = _thirds(frame, "reward_mean"), (_thirds(frame, col) if col else None)
    if reward is None or length is None:
        return None
    (r0, r1, steps, rv), (l0, l1, _, _) = reward, length
    spread = float(np.nanstd(rv)) or 1.0
    if r1 > r0 + 0.5 * spread and l0 > 0 and l1 >= 2.0 * l0:
        return Finding(
            "run_reward_with_length", "Reward rises while completion length explodes", "warning",
            f"The mean reward goes from {r0:.3g} to {r1:.3g} while the mean completion length goes from {l0:.1f} to "
            f"{l1:.1f} over {_span(steps)}.",
            "A reward that grows with length can be earned by writing more rather than better: a reward-hacking hint.",
            f"Read completions at steps {steps[0]} and {steps[-1]} side by side; check each reward function for a "
            "length bias, add a length penalty or use a length-normalised loss (dr_grpo).",
            steps=[steps[0], steps[-1]])
    return None


def advantage_errors(run, num_generations: int | None = None, scale_rewards: str = "group",
                     reward_weights=None) -> dict[int, tuple[float, int]]:
    """{step: (largest |logged - recomputed| advantage, samples)} for steps with per-function rewards and
    per-sample advantages (TRL completions logs, the inspector's runs); num_generations defaults to each step's
    group size (consecutive equal prompts)."""
    import torch

    from ..record.run import _per_sample_advantage
    from ..record.run_rollout import _group_size
    from ..trainers.grpo import _trl_advantages
    from ..trainers.grpo_config import GRPOConfig

    out = {}
    if not {"rewards_per_func", "advantages"} <= set(run.fields):
        return out
    for n in run.steps():
        step = run.step(n)
        if not step.rewards_per_func or step.advantages is None:
            continue
        G = num_generations or _group_size(step.group)
        B = step.samples
        if G < 2 or B % G:
            continue
        names = list(step.rewards_per_func)
        w = reward_weights or step.reward_weights or [1.0] * len(names)
        rpf = torch.tensor(np.stack([np.asarray(step.rewards_per_func[k], np.float64) for k in names], 1), dtype=torch.float32)
        config = GRPOConfig(num_generations=G, scale_rewards=scale_rewards, reward_weights=tuple(w))
        adv = _trl_advantages(rpf, torch.tensor(w, dtype=torch.float32), G, config)[3]
        logged = _per_sample_advantage(step)
        out[n] = (float(np.nanmax(np.abs(logged - adv.double().numpy()))), B)
    return out


def _advantages(errors: dict, scale_rewards: str) -> Finding | None:
    bad = sorted(n for n, (err, _) in errors.items() if not err <= ADV_ATOL)
    if not bad:
        return None
    worst = max(bad, key=lambda n: errors[n][0] if math.isfinite(errors[n][0]) else math.inf)
    return Finding(
        "run_advantages_mismatch", "Logged advantages do not follow from the logged rewards", "warning",
        f"At step(s) {', '.join(map(str, bad[:10]))} the advantages in the file differ from TRL's formula over the same "
        f"per-function rewards (scale_rewards={scale_rewards!r}); largest gap {errors[worst][0]:.3g} at step {worst}.",
        "The advantage is what the loss multiplies: if it does not follow from the rewards, the trainer learned from "
        "something other than what its reward functions said (wrong weights, group order, scale_rewards, or rows "
        "from another step).",
        "Check num_generations, scale_rewards and reward_weights against the run's config; open the step in the GRPO "
        "tab to compare advantage by advantage.", steps=bad)


def run_findings(run_or_summary, *, num_generations: int | None = None, scale_rewards: str = "group",
                 reward_weights=None) -> list[Finding]:
    """Every run finding that fires. Accepts a Run (the advantage check then reads its steps) or its summary."""
    frame = run_or_summary if hasattr(run_or_summary, "columns") else run_or_summary.summary()
    frame = frame.sort_values("step") if "step" in frame.columns else frame
    found = [f for f in (_gap(frame), _entropy(frame), _truncation(frame), _zero_std(frame), _reward_hacking(frame))
             if f is not None]
    if not hasattr(run_or_summary, "columns"):
        errors = advantage_errors(run_or_summary, num_generations, scale_rewards, reward_weights)
        f = _advantages(errors, scale_rewards)
        if f is not None:
            found.append(f)
    return found
