"""Write a real multi-step TRL 1.16 completions log: three training steps of TRL's own GRPOTrainer on the default
model with `log_completions=True`, copied to tests/data/runs/trl/ (`completions_00001.parquet` ...).

2 prompts x 4 completions x 16 tokens per step on the CPU, two reward functions (`length_reward`, `e_reward`),
TRL's defaults otherwise (`scale_rewards="group"`, sum_then_normalize, weights 1); `report_to="none"`.
About a minute or two of CPU:

    HF_HUB_OFFLINE=1 python scripts/build_trl_run.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET = ROOT / "tests" / "data" / "runs" / "trl"
PROMPTS = ["What is 2 + 2?", "Name a colour."]
NUM_GENERATIONS = 4
MAX_COMPLETION_LENGTH = 16
STEPS = 3


def length_reward(completions, **kwargs):
    return [len(c[0]["content"]) / 50.0 for c in completions]


def e_reward(completions, **kwargs):
    return [float(c[0]["content"].count("e") > 2) for c in completions]


def main() -> int:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from inspector.weights import converted_default_policy

    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS] * STEPS})
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(output_dir=tmp, use_cpu=True, per_device_train_batch_size=len(PROMPTS) * NUM_GENERATIONS,
                          num_generations=NUM_GENERATIONS, max_completion_length=MAX_COMPLETION_LENGTH,
                          report_to="none", temperature=1.0, seed=0, bf16=False, logging_steps=1,
                          log_completions=True, max_steps=STEPS, save_strategy="no", learning_rate=1e-5)
        trainer = GRPOTrainer(model=str(converted_default_policy()), reward_funcs=[length_reward, e_reward],
                              args=args, train_dataset=ds)
        trainer.train()
        shutil.rmtree(TARGET, ignore_errors=True)
        TARGET.mkdir(parents=True)
        for p in sorted((Path(tmp) / "completions").glob("completions_*.parquet")):
            shutil.copy(p, TARGET / p.name)
    print("wrote", sorted(p.name for p in TARGET.iterdir()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
