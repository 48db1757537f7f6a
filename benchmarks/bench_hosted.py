"""What a hosted (free 2-vCPU Space) deployment answers in about 10 seconds: the basis of `inspector.limits.HOSTED`.

    HF_HUB_OFFLINE=1 python benchmarks/bench_hosted.py [--reps 2]

Times the whole answer to one click of "Run rollout" without the browser: the rollout (generation with the
capture, recompute, value and reward passes), the diagnostics, the PPO step and every view the page builds
(downloads written, figures serialised), on the default models, at sampling temperature 0.7. First the page's
default request (the "Sentiment contrast" prompts, 48 new tokens), then batches of long-answer prompts that never
stop early, so that every response runs the full max_new_tokens: the worst case of a request of that shape.
Torch uses 2 threads, as on a 2-vCPU Space. Prints the median of the repetitions per shape, and the requests
that fit the hosted limits with their worst time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LONG = [  # prompts the default policy answers at length: every response runs to max_new_tokens
    "Tell me a long story about a dragon who learns to bake bread.",
    "List twenty animals, one per line.",
    "Write a detailed essay about the history of the bicycle.",
    "Explain, step by step and at length, how a steam engine works.",
]


def one_click(models, prompts: list[str], tokens: int, samples: int) -> float:
    """Seconds from the request to every view built, as the page's run callback and its PPO follow-up do."""
    from inspector import ui
    from inspector.rollout import run_rollout

    started = time.perf_counter()
    r = run_rollout(models, prompts, max_new_tokens=tokens, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                    seed=0, samples_per_prompt=samples)
    views = ui.rollout_views(r, ui.models_markdown(models))
    for fig in views:
        if hasattr(fig, "to_json"):
            fig.to_json()
    ui.ppo_views(r, 0, 0.05, "k1", 1.0, 0.95, False, False, 1.0)
    seconds = time.perf_counter() - started
    ui.remove_downloads(views)
    return seconds


def main() -> None:
    import torch

    from inspector import load_models, ui
    from inspector.limits import HOSTED

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = load_models()
    one_click(models, ["Hi"], 4, 1)  # warm the code paths
    shapes = [("default page request: Sentiment contrast", ui.EXAMPLES["Sentiment contrast"], 48, 1)]
    for batch in (4, 8, 16):
        for tokens in (32, 64):
            prompts = (LONG * 4)[:batch]
            shapes.append((f"long answers, {batch} samples x {tokens} tokens", prompts, tokens, 1))
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"Python {platform.python_version()}, {args.reps} repetitions, medians")
    fits = []
    for label, prompts, tokens, samples in shapes:
        times = [one_click(models, prompts, tokens, samples) for _ in range(args.reps)]
        median = statistics.median(times)
        batch = len(prompts) * samples
        within = (batch <= HOSTED["max_prompts"] * HOSTED["max_samples_per_prompt"] and tokens <= HOSTED["max_new_tokens"]
                  and batch * (64 + tokens) <= HOSTED["max_total_tokens"])
        if within:
            fits.append(median)
        print(f"  {label:<48} {median:6.1f} s  ({', '.join(f'{t:.1f}' for t in times)})"
              f"{'  within the hosted limits' if within else ''}")
    print(f"hosted limits {HOSTED}: slowest request within them {max(fits):.1f} s")


if __name__ == "__main__":
    main()
