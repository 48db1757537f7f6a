"""Time every GRPO panel after a settings change, for 16 prompts x 8 completions x 256 tokens.

What the page redoes when a GRPO setting changes (no model pass): the step, the groups HTML, the token-weight
heatmap, the loss types side by side (one step per loss type), the KL / entropy figure, the sampler figure,
the metrics table and the GRPO diagnostics. Prints the median of --reps runs and the figures' JSON payload.

    python benchmarks/bench_grpo_views.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.diagnostics import diagnose_grpo  # noqa: E402
from inspector.trainers.grpo_config import GRPOConfig
from inspector.trainers.grpo import rollout_grpo_inputs, rollout_grpo_step  # noqa: E402
from inspector.views.grpo import (  # noqa: E402
    grpo_groups_html, grpo_metrics_table, kl_entropy_figure, loss_type_figure, loss_type_table,
    sampler_correction_figure, token_weights_heatmap,
)

PROMPTS, G, T, VOCAB, EOS, PAD = 16, 8, 256, 49152, 2, 2


def synthetic_rollout(seed: int = 0):
    """A rollout-shaped record with random ids and logprobs: completions stop at random lengths."""
    g = torch.Generator().manual_seed(seed)
    B = PROMPTS * G
    responses = torch.randint(3, 5000, (B, T), generator=g)
    stops = torch.randint(8, T + 40, (B,), generator=g)
    for i, s in enumerate(stops.tolist()):
        if s < T:
            responses[i, s:] = EOS
    lp = -torch.rand(B, T, generator=g) * 3
    ids = responses.unique().tolist()
    r = types.SimpleNamespace(
        responses=responses, new_logprobs=lp, logprobs=lp + 0.01 * torch.randn(B, T, generator=g),
        ref_logprobs=lp + 0.05 * torch.randn(B, T, generator=g), entropy=torch.rand(B, T, generator=g) * 4,
        eos_token_id=EOS, pad_token_id=PAD, settings={"samples_per_prompt": G, "max_new_tokens": T},
        prompts=[f"prompt {i // G}" for i in range(B)], response_texts=[f"completion {i}" for i in range(B)],
        tokens={i: f"t{i}" for i in ids}, batch_size=B, response_width=T,
    )
    r.token = lambda i: r.tokens.get(int(i), f"<{int(i)}>")
    rewards = torch.randint(0, 3, (B, 2), generator=g).float()
    return r, rewards


def panels(r, rewards, config, inputs):
    step = rollout_grpo_step(r, rewards, config, reward_func_names=["a", "b"], inputs=inputs)
    table = loss_type_table(r, rewards, config, inputs=inputs, reward_func_names=["a", "b"])
    figs = [token_weights_heatmap(r, step), loss_type_figure(table), kl_entropy_figure(r, step),
            sampler_correction_figure(r, step)]
    html = grpo_groups_html(r, step)
    grpo_metrics_table(step)
    diagnose_grpo(r, step)
    return figs, html


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    r, rewards = synthetic_rollout()
    inputs = rollout_grpo_inputs(r)
    times = []
    for rep in range(args.reps):
        config = GRPOConfig(num_generations=G, loss_type=("grpo", "dapo")[rep % 2], beta=0.04, reward_weights=(1.0, 0.5))
        start = time.perf_counter()
        figs, html = panels(r, rewards, config, inputs)
        times.append(time.perf_counter() - start)
    payload = sum(len(f.to_json()) for f in figs) + len(html)
    print(f"{PROMPTS} prompts x {G} completions x {T} tokens, every GRPO panel after a settings change: "
          f"median {statistics.median(times):.2f} s over {args.reps} runs (min {min(times):.2f} s); "
          f"payload {payload / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
