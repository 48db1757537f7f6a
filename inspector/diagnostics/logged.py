"""A trainer's own logged numbers (a TRL GRPO log's reward columns and advantages) beside the recomputed ones,
with each disagreement named."""

from __future__ import annotations

import math

from ..sources.files import Completions, as_number


AGREE_ATOL = 1e-4


def compare_with_log(parsed: Completions, recomputed: dict[str, list], advantages=None,
                     atol: float = AGREE_ATOL) -> tuple[list[dict], list[str]]:
    """The file's per-function rewards and advantages beside the recomputed ones.

    `recomputed`: reward-function name -> one value per completion (NaN or None where it gave none), for the
    functions that could be re-run; `advantages`: the advantages recomputed from the file's rewards. Returns
    (rows, disagreements): one row per completion with `<name> (file)` / `<name> (recomputed)` pairs, and one
    sentence per column that disagrees beyond `atol`, naming the samples."""
    rows = [{"sample": i, "prompt": p[:60]} for i, p in enumerate(parsed.prompts)]
    problems = []
    pairs = [(name, [as_number(v) for v in parsed.columns[name]], [as_number(v) for v in recomputed[name]])
             for name in parsed.reward_columns if name in recomputed]
    if advantages is not None and parsed.advantages is not None:
        pairs.append(("advantage", parsed.advantages, [as_number(v) for v in advantages]))
    for name, logged, ours in pairs:
        bad = []
        for i, (a, b) in enumerate(zip(logged, ours)):
            rows[i][f"{name} (file)"] = a
            rows[i][f"{name} (recomputed)"] = b
            if math.isnan(a) != math.isnan(b) or (not math.isnan(a) and abs(a - b) > atol):
                bad.append(i)
        if bad:
            shown = ", ".join(f"{i}: file {logged[i]:+.4f} vs {ours[i]:+.4f}" for i in bad[:8])
            problems.append(f"{name}: {len(bad)} of {len(logged)} completions disagree ({shown}{' …' if len(bad) > 8 else ''}).")
    for name in parsed.reward_columns:
        if name not in recomputed:
            problems.append(f"{name}: not recomputed (no built-in reward function of that name); the file's values are used.")
    return rows, problems
