"""In-process generation against sampling with a vLLM server, each followed by the same recompute and scoring.

One process, one set of models, the sides alternating (inprocess, engine, inprocess, engine, ...) after one
warm-up run of each; the median of the repetitions is reported with the tokens generated per second. Both
sides are `run_rollout` on the same prompts, seed and settings (temperature 0.7, top_k 0, top_p 1.0,
attention "tokenizer"), so both run the same trainer-side passes (recompute, value and reward); the engine
side also runs the trainer-side capture of what the engine does not report (raw logprobs, entropy).

    python benchmarks/bench_engine.py [--reps 3] [--batch 8] [--tokens 128] [--engine-url URL]

Without --engine-url it starts the vLLM CPU server itself (scripts/vllm_env.sh builds its environment once)
with --logprobs-mode processed_logprobs, and stops it at the end. On a 2-core machine the server and the
inspector share the cores: the engine side's numbers include that contention, as a user's would.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_inspection import PROMPTS  # noqa: E402  (the same prompts as the inspection benchmark)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--engine-url", default=None)
    args = p.parse_args()

    from inspector import load_models, run_rollout
    from inspector.sources.serving import start_vllm

    server = None
    url = args.engine_url
    if url is None:
        t0 = time.perf_counter()
        server = start_vllm(logprobs_mode="processed_logprobs")
        url = server.url
        print(f"vLLM CPU server healthy in {time.perf_counter() - t0:.0f} s at {url}")
    try:
        models = load_models()
        prompts = PROMPTS[: args.batch]
        settings = dict(max_new_tokens=args.tokens, temperature=0.7, top_k=0, top_p=1.0, attention="tokenizer")
        sides = {"inprocess": None, "engine": url}
        runs = {name: [] for name in sides}
        for rep in range(args.reps + 1):  # rep 0 warms both paths up and is not counted
            for name, engine_url in sides.items():
                t0 = time.perf_counter()
                r = run_rollout(models, prompts, seed=rep, engine_url=engine_url, **settings)
                total = time.perf_counter() - t0
                tokens = int((~r.padding_mask).sum()) + int(r.contain_eos_token.sum())
                if rep:
                    runs[name].append((total, r.timings["generate"], tokens))
        print(f"\n{args.batch} prompts x {args.tokens} new tokens, median of {args.reps} alternating runs "
              f"({platform.machine()}, {os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()})")
        print(f"{'side':<10} {'total s':>8} {'sampling s':>11} {'tokens':>7} {'tokens/s (sampling)':>20}")
        med = {}
        for name, values in runs.items():
            total = statistics.median(v[0] for v in values)
            gen = statistics.median(v[1] for v in values)
            toks = statistics.median(v[2] for v in values)
            med[name] = (total, gen, toks)
            print(f"{name:<10} {total:>8.2f} {gen:>11.2f} {toks:>7.0f} {toks / gen:>20.1f}")
        (ti, gi, ni), (te, ge, ne) = med["inprocess"], med["engine"]
        print(f"\nengine / in-process, whole inspection (sampling + recompute + scoring): {te:.2f} / {ti:.2f} s = "
              f"{te / ti:.2f}x")
        print(f"engine / in-process, sampling alone, tokens per second: {ne / ge:.1f} / {ni / gi:.1f} = "
              f"{(ne / ge) / (ni / gi):.2f}x")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
