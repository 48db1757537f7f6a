"""What a hosted (free 2-vCPU Space) deployment answers in about 10 seconds: the basis of `inspector.limits.HOSTED`.

    HF_HUB_OFFLINE=1 python benchmarks/bench_hosted.py [--reps 2]

Times the whole answer to one click of "Run rollout" without the browser: the rollout (generation with the
capture, recompute, value and reward passes), the diagnostics, the PPO step and every view the page builds
(downloads written, figures serialised), on the default models, at sampling temperature 0.7. First the page's
default request (the "Sentiment contrast" prompts, 48 new tokens), then batches of long-answer prompts that never
stop early, so that every response runs the full max_new_tokens: the worst case of a request of that shape.
Torch uses 2 threads, as on a 2-vCPU Space. Prints the median wall and CPU time (both threads) of the
repetitions per shape, the machine's load average (on a shared machine the wall time includes waiting for the
cores; the CPU time does not), and the slowest request that fits the hosted limits.
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


def one_click(models, prompts: list[str], tokens: int, samples: int):
    """Seconds from the request to every view built, as the page's run callback and its PPO follow-up do."""
    from inspector.app.loading import models_markdown
    from inspector.app.rollouts import rollout_views
    from inspector.app.tabs.ppo import ppo_views
    from inspector.sources.runner import run_rollout

    started, cpu = time.perf_counter(), time.process_time()
    r = run_rollout(models, prompts, max_new_tokens=tokens, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                    seed=0, samples_per_prompt=samples)
    views = rollout_views(r, models_markdown(models))
    for fig in views:
        if hasattr(fig, "to_json"):
            fig.to_json()
    ppo_views(r, 0, 0.05, "k1", 1.0, 0.95, False, False, 1.0)
    return time.perf_counter() - started, time.process_time() - cpu, r


def main() -> None:
    from inspector import load_models  # first: it sets OMP_WAIT_POLICY before torch loads
    from inspector.sources.examples import EXAMPLES

    import torch
    from inspector.errors import LimitError
    from inspector.limits import HOSTED, Limits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = load_models()
    one_click(models, ["Hi"], 4, 1)  # warm the code paths
    default = EXAMPLES["Sentiment contrast"]
    shapes = [("the page's default request (48 tokens)", default, 48, 1),
              ("default prompts, 64 tokens", default, 64, 1),
              ("default prompts, 2 samples each, 64 tokens", default, 64, 2)]
    for batch, tokens in ((4, 64), (8, 64), (16, 32)):
        prompts = (LONG * 4)[:batch]
        shapes.append((f"long answers, {batch} samples x {tokens} tokens", prompts, tokens, 1))
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"Python {platform.python_version()}, {args.reps} repetitions, medians; load average "
          f"{os.getloadavg()[0]:.1f} (other processes share the cores when above ~2)", flush=True)
    fits = []
    hosted = Limits(**HOSTED)
    for label, prompts, tokens, samples in shapes:
        runs = [one_click(models, prompts, tokens, samples) for _ in range(args.reps)]
        wall = statistics.median(t for t, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs)
        r = runs[0][2]
        try:
            hosted.check_request(len(prompts), samples, tokens)
            hosted.check_batch(r.batch_size, r.context_length, tokens)
            within = True
        except LimitError:
            within = False
        if within:
            fits.append((wall, cpu))
        print(f"  {label:<44} wall {wall:5.1f} s  cpu {cpu:5.1f} s  "
              f"({r.batch_size} x ({r.context_length} + {r.response_width}) tokens)"
              f"{'  within the hosted limits' if within else ''}", flush=True)
    print(f"hosted limits {HOSTED}: slowest request within them: wall {max(w for w, _ in fits):.1f} s, "
          f"cpu {max(c for _, c in fits):.1f} s (2 threads: on idle cores the wall time is between cpu/2 and cpu); "
          f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
