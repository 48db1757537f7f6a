"""Opening GRPO files: a real TRL 1.16 `log_completions` Parquet file (written by one GRPOTrainer step, see
scripts/build_grpo_log.py) re-scored beside its own rewards and advantages, and verl dumps whose prompt is
already chat-templated text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from inspector.trainers.grpo_config import GRPOConfig
from inspector.trainers.grpo import rollout_grpo_step
from inspector.diagnostics.logged import compare_with_log
from inspector.sources.files import read_upload, rescore
from inspector.trainers.rewards import builtin_for_logged_name, exact_answer_reward, score_rewards

LOG = Path(__file__).parent / "data" / "trl_grpo_completions_00001.parquet"
FUNCS = ["smollm2-sentiment", "length_reward", "format_reward", "exact_answer_reward"]


def test_a_trl_grpo_log_keeps_its_reward_columns_and_advantages():
    parsed = read_upload(LOG.read_bytes(), LOG.name)
    assert parsed.kind == "trl-grpo" and parsed.reward_columns == FUNCS
    assert len(parsed.prompts) == 16 and parsed.num_generations() == 4
    assert parsed.prompts[0] == "What is 2 + 2? Answer with one number."  # chat messages -> the user's text
    assert len(parsed.advantages) == 16 and parsed.columns["step"] == [1] * 16
    table = parsed.rewards_per_func()
    assert table.shape == (16, 4) and table.dtype == torch.float32
    assert table[:, 3].tolist() == [float(v) for v in parsed.columns["exact_answer_reward"]]


def test_compare_with_log_names_each_disagreement():
    parsed = read_upload(LOG.read_bytes(), LOG.name)
    recomputed = {name: list(parsed.columns[name]) for name in FUNCS[1:]}
    recomputed["format_reward"] = [1.0] + recomputed["format_reward"][1:]
    rows, problems = compare_with_log(parsed, recomputed, parsed.advantages)
    assert problems == [
        "format_reward: 1 of 16 completions disagree (0: file +0.0000 vs +1.0000).",
        "smollm2-sentiment: not recomputed (no built-in reward function of that name); the file's values are used.",
    ]
    assert rows[0]["format_reward (file)"] == 0.0 and rows[0]["format_reward (recomputed)"] == 1.0
    assert rows[5]["advantage (file)"] == rows[5]["advantage (recomputed)"]


@pytest.mark.integration
def test_a_real_trl_grpo_log_rescored_agrees_with_trl(models):
    """TRL computed these rewards (its reward-model path included) and advantages in a real training step; we
    re-score the decoded completions and recompute the advantages from the file's rewards."""
    parsed = read_upload(LOG.read_bytes(), LOG.name)
    r = rescore(models, parsed, max_completion_length=24)
    assert r.settings["samples_per_prompt"] == 4 and r.prompt_index[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert r.chat_template_applied and "advantage" in r.columns
    funcs = [builtin_for_logged_name(name, models) for name in FUNCS]
    assert all(f is not None for f in funcs)
    table = score_rewards(r, funcs, tokenizer=models.tokenizer)
    recomputed = {name: table.rewards_per_func[:, j].tolist() for j, name in enumerate(table.names)}
    step = rollout_grpo_step(r, parsed.rewards_per_func(), GRPOConfig(num_generations=4),
                             reward_func_names=parsed.reward_columns)
    rows, problems = compare_with_log(parsed, recomputed, step.advantages.tolist())
    by_name = {p.split(":")[0]: p for p in problems}
    # the reward model's value, the format and the exact answer come back exactly as TRL logged them
    assert set(by_name) <= {"length_reward"}, problems
    # so do TRL's advantages, from its own per-function rewards
    torch.testing.assert_close(step.advantages, torch.tensor(parsed.advantages, dtype=torch.float32), atol=1e-5, rtol=0)
    # the length reward counts the trainer's ids; two decoded completions re-tokenize to 25 ids, not 24: named
    assert by_name["length_reward"].startswith("length_reward: 2 of 16 completions disagree (3: file -0.5000 vs -0.5625")
    # without the trainer's max_completion_length every cut completion gets an EOS: more of them disagree
    loose = rescore(models, parsed)
    t2 = score_rewards(loose, funcs[1:2], tokenizer=models.tokenizer)
    wrong = [i for i in range(16) if abs(float(t2.rewards_per_func[i, 0]) - parsed.columns["length_reward"][i]) > 1e-6]
    strict = [i for i in range(16) if abs(recomputed["length_reward"][i] - parsed.columns["length_reward"][i]) > 1e-6]
    assert strict == [3, 5] and len(wrong) == 9


EXTRA_LOG = Path(__file__).parent / "data" / "trl_grpo_extra_completions_00001.parquet"
SYSTEM = "You are a calculator. Reply with the number only."


def test_a_real_trl_log_with_log_extra_columns_keeps_them_apart_from_the_rewards():
    """scripts/build_grpo_log.py: reward_funcs=[number_reward, length_reward] (the second calls log_extra),
    reward_weights=[1.0, 0.5], each prompt a system and a user message."""
    parsed = read_upload(EXTRA_LOG.read_bytes(), EXTRA_LOG.name, reward_weights="1.0, 0.5")
    assert parsed.reward_columns == ["number_reward", "length_reward"]  # up to the built-in name, by TRL's order
    assert parsed.extra_columns == ["completion_tokens", "last_number"] and parsed.reward_weights == [1.0, 0.5]
    assert "completion_tokens, last_number taken as log_extra column(s)" in parsed.reward_columns_how
    assert parsed.prompt_messages[0] == [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": "What is 2 + 2? Answer with one number."}]
    assert parsed.num_generations() == 4 and parsed.rewards_per_func().shape == (12, 2)


@pytest.mark.integration
def test_a_real_trl_log_with_weights_and_a_system_prompt_reproduces_its_advantages(models):
    tok = models.tokenizer
    parsed = read_upload(EXTRA_LOG.read_bytes(), EXTRA_LOG.name, reward_weights=[1.0, 0.5])
    r = rescore(models, parsed, max_completion_length=16)
    assert r.settings["reward_weights"] == [1.0, 0.5] and r.settings["extra_columns"] == ["completion_tokens", "last_number"]
    assert r.chat_template_applied and r.prompts[0] == "What is 2 + 2? Answer with one number."
    # the whole chat prompt, system message included, rendered as TRL renders it (apply_chat_template, tokenized)
    for i in (0, 4, 8):
        trl_ids = tok.apply_chat_template(parsed.prompt_messages[i], tokenize=True, add_generation_prompt=True)
        trl_ids = list(trl_ids["input_ids"]) if hasattr(trl_ids, "keys") else list(trl_ids)
        assert r.queries[i][r.query_attention_mask[i].bool()].tolist() == trl_ids
    assert SYSTEM in tok.decode(r.queries[0][r.query_attention_mask[0].bool()])
    config = GRPOConfig(num_generations=4, reward_weights=tuple(r.settings["reward_weights"]))
    step = rollout_grpo_step(r, parsed.rewards_per_func(), config, reward_func_names=parsed.reward_columns)
    logged = torch.tensor(parsed.advantages, dtype=torch.float32)
    torch.testing.assert_close(step.advantages, logged, atol=1e-5, rtol=0)
    # without the weights, or with the numeric log_extra column taken for a reward, they are not reproduced
    unweighted = rollout_grpo_step(r, parsed.rewards_per_func(), GRPOConfig(num_generations=4),
                                   reward_func_names=parsed.reward_columns)
    assert (unweighted.advantages - logged).abs().max() > 0.03  # 0.036: far over the 1e-5 tolerance
    wrong = read_upload(EXTRA_LOG.read_bytes(), EXTRA_LOG.name,
                        reward_columns="number_reward, length_reward, completion_tokens", reward_weights="1, 0.5, 1")
    mixed = rollout_grpo_step(r, wrong.rewards_per_func(), GRPOConfig(num_generations=4, reward_weights=(1.0, 0.5, 1.0)),
                              reward_func_names=wrong.reward_columns)
    assert (mixed.advantages - logged).abs().max() > 0.05
    # the built-in length reward, re-run on the re-scored completions, gives back the logged column
    table = score_rewards(r, [builtin_for_logged_name("length_reward", models)], tokenizer=tok)
    rows, problems = compare_with_log(parsed, {"length_reward": table.rewards_per_func[:, 0].tolist()},
                                      step.advantages.tolist())
    assert problems == ["number_reward: not recomputed (no built-in reward function of that name); the file's values "
                        "are used."], problems


def _verl_dump(tokenizer, prompts, outputs, answers):
    """Rows as verl's trainer dumps them: `input` is the prompt ids (chat template applied) decoded without
    special tokens, `output` the response text, `gts` the ground truth, `score`, `step`, and an extra field."""
    rows = []
    for p, o, a in zip(prompts, outputs, answers):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True)
        ids = list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)
        rows.append({"input": tokenizer.decode(ids, skip_special_tokens=True), "output": o,
                     "gts": a, "score": 1.0, "step": 7, "acc": True})
    return "\n".join(json.dumps(row) for row in rows).encode()


@pytest.mark.integration
def test_a_verl_dump_is_tokenized_as_the_text_it_is(models):
    tok = models.tokenizer
    data = _verl_dump(tok, ["What is 2 + 2? Answer with one number.", "What is 3 + 5? Answer with one number."],
                      ["The answer is 4.", "The answer is 8."], ["4", "9"])
    parsed = read_upload(data, "7.jsonl")
    assert parsed.kind == "verl" and parsed.prompt_is_text
    assert parsed.columns["gts"] == ["4", "9"] and parsed.columns["acc"] == [True, True]
    assert parsed.prompts[0].startswith("system\n")  # verl's decoded chat template, special tokens gone
    r = rescore(models, parsed)
    assert not r.chat_template_applied
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert not (r.queries == im_start).any()  # not wrapped in the chat template a second time
    q0 = r.queries[0][r.query_attention_mask[0].bool()].tolist()
    assert tok.decode(q0) == parsed.prompts[0]
    assert r.columns["gts"] == ["4", "9"] and r.columns["step"] == [7, 7]
    assert any("can differ from the ids the trainer saw" in n for n in r.notes)
    # the kept gts column reaches reward functions as a keyword argument
    table = score_rewards(r, [exact_answer_reward], tokenizer=tok)
    assert table.rewards_per_func[:, 0].tolist() == [1.0, 0.0]
    assert not math.isnan(float(r.scores[0]))
