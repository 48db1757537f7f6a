"""Write a real TRL GRPO completion log: one training step of TRL 1.16's own GRPOTrainer on the default model.

4 arithmetic prompts x 4 completions x 24 tokens on CPU, with four reward functions (the built-in sentiment
reward model, the length, format and exact-answer rewards), `log_completions=True`, `report_to="none"`.
TRL writes `completions/completions_00001.parquet` (step, prompt, completion as chat messages, one column per
reward function, advantage); the script copies it to `tests/data/trl_grpo_completions_00001.parquet`, the
file the import tests open. About a minute of CPU:

    HF_HUB_OFFLINE=1 python scripts/build_grpo_log.py [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET = ROOT / "tests" / "data" / "trl_grpo_completions_00001.parquet"
PROMPTS = 4
GENERATIONS = 4
TOKENS = 24
SEED = 0


def trl_grpo_log(output_dir: Path) -> Path:
    """Run the one-step training in `output_dir`; return the Parquet file TRL wrote."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from inspector.models import DEFAULT_REWARD, load_models
    from inspector.weights import converted_default_policy
    from inspector.trainers.rewards import arithmetic_answers, exact_answer_reward, format_reward, length_reward

    policy_dir = converted_default_policy()
    models = load_models()  # the built-in reward model: the policy's backbone with the sentiment head
    reward_model = models.reward
    reward_model.config._name_or_path = DEFAULT_REWARD.split(":")[-1]  # TRL names the column after it
    rows = [{"prompt": [{"role": "user", "content": p}], "answer": a} for p, a in list(arithmetic_answers().items())[:PROMPTS]]
    config = GRPOConfig(
        output_dir=str(output_dir), use_cpu=True, bf16=False, fp16=False, report_to="none", seed=SEED,
        per_device_train_batch_size=PROMPTS * GENERATIONS, num_generations=GENERATIONS,
        max_completion_length=TOKENS, max_steps=1, logging_steps=1, log_completions=True,
        save_strategy="no", dataloader_num_workers=0, shuffle_dataset=False,
    )
    trainer = GRPOTrainer(
        model=str(policy_dir),
        reward_funcs=[reward_model, length_reward, format_reward, exact_answer_reward],
        reward_processing_classes=[AutoTokenizer.from_pretrained(policy_dir), None, None, None],
        args=config,
        train_dataset=Dataset.from_list(rows),
    )
    trainer.train()
    return output_dir / "completions" / "completions_00001.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TARGET)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        written = trl_grpo_log(Path(tmp))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written, args.out)
    import pandas as pd

    print(pd.read_parquet(args.out).to_string(max_colwidth=40))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
