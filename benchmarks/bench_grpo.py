"""What recomputing the GRPO step costs after a settings change, with no model pass.

The page recomputes `rollout_grpo_step` from a rollout's recorded tensors each time a GRPO setting changes.
This times it for P prompts x G completions x T tokens (default 16 x 8 x 256), once per setting the page
offers, on tensors of the recorded shapes: completion ids with EOS at random places (some completions cut),
trainer, sampler and reference logprobs, entropies, and three reward functions with some None.
Each setting is timed `--reps` times after one warm-up; the median and the max are printed, with the
one-off cost of reading the rollout's inputs, beside the same run on one thread (on a
busy machine torch's thread pool costs more than these small tensors' work).

    python benchmarks/bench_grpo.py [--prompts 16] [--generations 8] [--tokens 256] [--reps 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.trainers.grpo_config import GRPOConfig, VerlGRPOConfig
from inspector.trainers.grpo import rollout_grpo_inputs, rollout_grpo_step  # noqa: E402

SETTINGS = {
    "dapo (TRL default), sequence_mask": GRPOConfig(),
    "grpo, batch std, mask truncated": GRPOConfig(loss_type="grpo", scale_rewards="batch", mask_truncated_completions=True),
    "dr_grpo, beta 0.04, top 20% entropy": GRPOConfig(loss_type="dr_grpo", beta=0.04, top_entropy_quantile=0.2),
    "luspo, sequence level, token_truncate": GRPOConfig(loss_type="luspo", importance_sampling_level="sequence",
                                                       vllm_importance_sampling_mode="token_truncate"),
    "vespo, token_mask": GRPOConfig(loss_type="vespo", vllm_importance_sampling_mode="token_mask"),
    "verl token-mean, rollout_is token": VerlGRPOConfig(rollout_is="token", use_kl_loss=True),
    "verl seq-mean-token-sum-norm": VerlGRPOConfig(loss_agg_mode="seq-mean-token-sum-norm"),
}


def recorded_tensors(prompts: int, generations: int, tokens: int, seed: int = 0):
    """A rollout's recorded tensors (the fields `rollout_grpo_inputs` reads), with realistic values."""
    g = torch.Generator().manual_seed(seed)
    B = prompts * generations
    eos, pad = 2, 2
    responses = torch.randint(3, 49152, (B, tokens), generator=g)
    stops = torch.randint(8, tokens + tokens // 4, (B,), generator=g)   # a quarter run past the end: cut
    for i, s in enumerate(stops.tolist()):
        if s < tokens:
            responses[i, s] = eos
            responses[i, s + 1:] = pad
    new = -torch.rand(B, tokens, generator=g).pow(3) * 6
    rollout = SimpleNamespace(
        responses=responses, eos_token_id=eos, pad_token_id=pad,
        settings={"samples_per_prompt": generations, "max_new_tokens": tokens},
        new_logprobs=new, logprobs=new + torch.randn(B, tokens, generator=g) * 0.02,
        ref_logprobs=new + torch.randn(B, tokens, generator=g) * 0.1, entropy=torch.rand(B, tokens, generator=g) * 4,
    )
    rewards = torch.randn(B, 3, generator=g)
    rewards[torch.rand(B, 3, generator=g) < 0.1] = float("nan")
    return rollout, rewards


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    rollout, rewards = recorded_tensors(a.prompts, a.generations, a.tokens)
    t0 = time.perf_counter()
    inputs = rollout_grpo_inputs(rollout)
    read = time.perf_counter() - t0
    print(f"GRPO step recompute: {a.prompts} prompts x {a.generations} completions x {a.tokens} tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"reading the rollout's inputs (once per rollout): {read * 1000:.1f} ms")
    default_threads = torch.get_num_threads()
    print(f"{'setting':40s} {'median ms':>10s} {'max ms':>8s} {f'median ms, 1 thread':>20s} {'1 thread / default':>19s}")
    worst = 0.0
    for name, config in SETTINGS.items():
        config = type(config)(**{**config.__dict__, "num_generations": a.generations})
        r = rewards.nan_to_num(0.0) if isinstance(config, VerlGRPOConfig) else rewards  # verl takes no None
        medians = []
        for threads in (default_threads, 1):  # alternating would not change the picture: both sides timed here
            torch.set_num_threads(threads)
            rollout_grpo_step(rollout, r, config, inputs=inputs)  # warm-up
            times = []
            for _ in range(a.reps):
                t = time.perf_counter()
                rollout_grpo_step(rollout, r, config, inputs=inputs)
                times.append(time.perf_counter() - t)
            medians.append(statistics.median(times))
            if threads == default_threads:
                top = max(times)
                worst = max(worst, top)
        torch.set_num_threads(default_threads)
        print(f"{name:40s} {medians[0] * 1000:10.1f} {top * 1000:8.1f} {medians[1] * 1000:20.1f} {medians[1] / medians[0]:19.2f}")
    print(f"slowest single recompute at {default_threads} threads: {worst * 1000:.1f} ms ({worst:.1%} of one second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
