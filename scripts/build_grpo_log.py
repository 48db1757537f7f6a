"""Write real TRL GRPO completion logs: one training step of TRL 1.16's own GRPOTrainer on the default model.

Two runs on CPU, each with `log_completions=True`, `report_to="none"`. TRL writes
`completions/completions_00001.parquet` (step, prompt and completion as chat messages, one column per reward
function, then the `log_extra` columns, then advantage); the script copies each to tests/data:

- `trl_grpo_completions_00001.parquet`: 4 arithmetic prompts x 4 completions x 24 tokens, four reward
  functions (the built-in sentiment reward model, the length, format and exact-answer rewards), weights 1.
- `trl_grpo_extra_completions_00001.parquet`: 3 prompts x 4 completions x 16 tokens, each prompt a system
  message and a user message, two reward functions weighted 1.0 and 0.5 (`reward_weights`): a user's
  `number_reward` (1 when the completion writes a digit) and the built-in length reward, which calls
  `log_extra` (a numeric and a text column, written between the reward columns and advantage).

About a minute of CPU per run:

    HF_HUB_OFFLINE=1 python scripts/build_grpo_log.py [--only plain|extra]
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
EXTRA_TARGET = ROOT / "tests" / "data" / "trl_grpo_extra_completions_00001.parquet"
SYSTEM = "You are a calculator. Reply with the number only."
EXTRA_PROMPTS = 3
EXTRA_TOKENS = 16
EXTRA_WEIGHTS = [1.0, 0.5]
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


def number_reward(prompts, completions, **kwargs):
    """A user's reward function (a name the inspector does not know): 1.0 when the completion writes a digit."""
    import re

    return [1.0 if re.search(r"\d", c[-1]["content"]) else 0.0 for c in completions]


def length_reward(prompts, completions, completion_ids, log_extra=None, **kwargs):
    """The built-in length reward (its logged name is the built-in's), logging two extra columns as a user's
    reward function does: the completion's token count (a number) and the last number it writes (text)."""
    import re

    from inspector.trainers.rewards import length_reward as builtin

    if log_extra is not None:
        log_extra("completion_tokens", [len(ids) for ids in completion_ids])
        last = [re.findall(r"-?\d+", c[-1]["content"]) for c in completions]
        log_extra("last_number", [found[-1] if found else "" for found in last])
    return builtin(prompts, completions, completion_ids)


def trl_grpo_extra_log(output_dir: Path) -> Path:
    """One step with a system prompt, two weighted reward functions and `log_extra` columns; the Parquet file."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from inspector.weights import converted_default_policy
    from inspector.trainers.rewards import arithmetic_answers

    rows = [{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}], "answer": a}
            for p, a in list(arithmetic_answers().items())[:EXTRA_PROMPTS]]
    config = GRPOConfig(
        output_dir=str(output_dir), use_cpu=True, bf16=False, fp16=False, report_to="none", seed=SEED,
        per_device_train_batch_size=EXTRA_PROMPTS * GENERATIONS, num_generations=GENERATIONS,
        max_completion_length=EXTRA_TOKENS, max_steps=1, logging_steps=1, log_completions=True,
        save_strategy="no", dataloader_num_workers=0, shuffle_dataset=False, reward_weights=EXTRA_WEIGHTS,
    )
    trainer = GRPOTrainer(model=str(converted_default_policy()), reward_funcs=[number_reward, length_reward],
                          args=config, train_dataset=Dataset.from_list(rows))
    trainer.train()
    return output_dir / "completions" / "completions_00001.parquet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("plain", "extra"), default=None, help="build one of the two files")
    args = parser.parse_args()
    import pandas as pd

    for name, run, out in (("plain", trl_grpo_log, TARGET), ("extra", trl_grpo_extra_log, EXTRA_TARGET)):
        if args.only not in (None, name):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            written = run(Path(tmp))
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(written, out)
        print(pd.read_parquet(out).to_string(max_colwidth=40))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
