"""`python -m inspector run PATH`: open a training run, print its per-step table and the findings across steps."""

from __future__ import annotations

import argparse
import sys

from .errors import InspectorError

TABLE_COLUMNS = ("step", "samples", "reward_mean", "length_mean", "length_chars_mean", "truncated_frac",
                 "zero_std_groups", "adv_std", "entropy", "gap_abs", "gap_kl", "dropped_frac")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inspector run", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("path", help="a run folder or file (TRL completions, verl, NeMo-RL, prime-rl, SkyRL, slime, the "
                                "inspector's own) or a Hub dataset id written by TRL's log_completions_hub_repo")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a SkyRL/slime pickle that needs more than the whitelisted globals: unpickling can run "
                        "any code the file holds, so only for files you trust (never on a hosted deployment)")
    p.add_argument("--tokenizer", default=None, help="tokenizer for text-only formats (ids may differ from the trainer's)")
    p.add_argument("--num-generations", type=int, default=None, help="group size for the advantage check")
    p.add_argument("--scale-rewards", default="group", choices=("group", "batch", "none"),
                   help="TRL's scale_rewards for the advantage check (default: TRL's, group)")
    return p


def format_table(frame) -> str:
    import pandas as pd

    cols = [c for c in TABLE_COLUMNS if c in frame.columns] + sorted(c for c in frame.columns if c.startswith("reward/"))
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.max_rows", 10_000):
        return frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from .diagnostics.run import run_findings
    from .sources.runs import open_run

    try:
        run = open_run(args.path, tokenizer=args.tokenizer, allow_pickle=args.allow_pickle)
        steps = run.steps()
        print(f"{run.source}: {run.format} run, {len(steps)} complete step(s)")
        lacking = [f for f in ("completion_ids", "logprobs", "new_logprobs", "ref_logprobs", "advantages", "rewards",
                               "rewards_per_func", "entropy") if run.lacks(f)]
        if lacking:
            print(f"not in this format ({run.format}): {', '.join(lacking)}")

        def progress(done, total, row):
            if done == 1 or done == total or done % 50 == 0:
                print(f"... read {done}/{total} step(s)", file=sys.stderr)

        frame = run.summary(progress=progress)
        print(format_table(frame) if len(frame) else "(no complete step)")
        findings = run_findings(run, num_generations=args.num_generations, scale_rewards=args.scale_rewards)
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for text in run.problems:
        print(f"problem: {text}")
    print(f"\n{len(findings)} finding(s)" + (":" if findings else "."))
    for f in findings:
        print(f"- [{f.severity}] {f.title} (steps {', '.join(map(str, f.steps))})\n  {f.detail}\n  fix: {f.fix}")
    return 0
