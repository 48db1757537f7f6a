"""Import: files shaped like TRL's completion tables and verl's dumps, our own records, and hostile files."""

from __future__ import annotations

import io
import json
import pickle

import pandas as pd
import pytest
import torch

from inspector import InputError
from inspector.record.format import rollout_from_dict, rollout_to_dict, rollout_to_jsonl
from inspector.sources.files import Completions, read_upload
from inspector.limits import Limits
from inspector.sources.runner import score_completions

TRL_ROWS = [
    {"prompt": "Write a happy sentence.", "completion": "What a lovely, sunny day it is!", "reward": 0.8},
    {"prompt": "Write a sad sentence.", "completion": "I lost my keys and missed the last train home.", "reward": -0.5},
]


def test_trl_csv():
    data = pd.DataFrame(TRL_ROWS).to_csv(index=False).encode()
    got = read_upload(data, "completions.csv")
    assert isinstance(got, Completions)
    assert got.prompts == [r["prompt"] for r in TRL_ROWS] and got.rewards == [0.8, -0.5]
    assert got.source.startswith("trl")


def test_trl_parquet():
    buf = io.BytesIO()
    pd.DataFrame(TRL_ROWS).to_parquet(buf)
    got = read_upload(buf.getvalue(), "completions.parquet")
    assert got.completions == [r["completion"] for r in TRL_ROWS]


def test_trl_chat_format_cells():
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]}]
    got = read_upload(json.dumps(rows).encode(), "chat.json")
    assert got.prompts == ["Hi"] and got.completions == ["Hello!"] and got.rewards is None


def test_verl_jsonl():
    lines = "\n".join(json.dumps({"input": f"Q{i}", "output": f"A{i}", "score": i / 2, "step": 3}) for i in range(3))
    got = read_upload(lines.encode(), "rollouts.jsonl")
    assert got.prompts == ["Q0", "Q1", "Q2"] and got.rewards == [0.0, 0.5, 1.0]
    assert got.source.startswith("verl")


@pytest.mark.parametrize(
    "data, name, message",
    [
        (pickle.dumps({"prompt": "x"}), "rollout.json", "pickle"),
        (b"PK\x03\x04 fake zip", "model.csv", "zip"),
        (b"", "empty.json", "empty"),
        (b"{not json", "broken.json", "not JSON"),
        (b'{"prompt": "a"}\n{oops', "broken.jsonl", "line 2"),
        (b"\xff\xfe\x00garbage", "bad.csv", "UTF-8"),
        (b"not parquet at all", "x.parquet", "PAR1"),
        (json.dumps([{"question": "a", "answer": "b"}]).encode(), "odd.json", "expected a prompt column"),
        (json.dumps({"hello": 1}).encode(), "obj.json", "not a rollout record"),
        (json.dumps([{"prompt": 3, "completion": "b"}]).encode(), "types.json", "row 1"),
    ],
)
def test_bad_files_are_refused_clearly(data, name, message):
    with pytest.raises(InputError, match=message):
        read_upload(data, name)


def test_size_and_row_limits():
    small = Limits(max_upload_bytes=100, max_upload_rows=2)
    with pytest.raises(InputError, match="INSPECTOR_MAX_UPLOAD_BYTES"):
        read_upload(b"x" * 101, "big.csv", small)
    rows = "\n".join(json.dumps({"prompt": "p", "completion": "c"}) for _ in range(3)).encode()
    with pytest.raises(InputError, match="INSPECTOR_MAX_UPLOAD_ROWS"):
        read_upload(rows, "many.jsonl", Limits(max_upload_rows=2))


@pytest.mark.integration
def test_our_record_round_trips_without_models(sampled_rollout):
    data = json.dumps(rollout_to_dict(sampled_rollout)).encode()
    record = read_upload(data, "rollout.json")
    again = rollout_from_dict(record)
    for name in ("sequences", "responses", "sequence_lengths", "scores", "values", "logprobs", "new_logprobs",
                 "topk_ids"):
        assert torch.equal(getattr(again, name), getattr(sampled_rollout, name)), name


@pytest.mark.integration
def test_a_format_1_record_opens_with_its_logprobs_renamed(sampled_rollout):
    """Format 1 called the sampling-time logprobs `gen_logprobs` and the recompute `logprobs`."""
    data = rollout_to_dict(sampled_rollout)
    data["format"] = "rollout-inspector/1"
    data["gen_logprobs"], data["logprobs"] = data.pop("logprobs"), data.pop("new_logprobs")
    data["dtypes"]["gen_logprobs"], data["dtypes"]["logprobs"] = data["dtypes"].pop("logprobs"), data["dtypes"].pop("new_logprobs")
    again = rollout_from_dict(read_upload(json.dumps(data).encode(), "old.json"))
    assert torch.equal(again.logprobs, sampled_rollout.logprobs)
    assert torch.equal(again.new_logprobs, sampled_rollout.new_logprobs)
    assert not torch.equal(again.logprobs, again.new_logprobs)  # temperature 0.7: the two differ somewhere


@pytest.mark.integration
def test_completions_are_rescored(models, sampled_rollout):
    # our own JSONL export is a TRL-shaped table: re-scoring it gives back the same scores
    got = read_upload(rollout_to_jsonl(sampled_rollout).encode(), "export.jsonl")
    ended = sampled_rollout.contain_eos_token.tolist()
    r = score_completions(models, got.prompts, got.completions, ended=ended, source=got.source)
    assert r.batch_size == sampled_rollout.batch_size
    assert torch.allclose(r.scores, sampled_rollout.scores, atol=1e-3)
    assert any("Imported completions" in n for n in r.notes)


@pytest.mark.integration
def test_imported_completions_take_the_training_temperature(models):
    prompts, completions = ["How was your day?"], ["It was wonderful, I loved every minute of it!"]
    hot = score_completions(models, prompts, completions, temperature=0.7)
    plain = score_completions(models, prompts, completions)
    valid = ~hot.padding_mask
    assert plain.settings["temperature"] == 1.0 and hot.settings["temperature"] == 0.7
    # logprobs under logits / 0.7, the recompute under logits / (0.7 + 1e-7): they agree, and differ from T = 1
    assert (hot.logprobs - hot.new_logprobs)[valid].abs().max() < 1e-4
    assert (hot.logprobs - plain.logprobs)[valid].abs().max() > 0.05
    assert torch.allclose(hot.raw_logprobs, plain.logprobs, atol=1e-5)  # the raw logits' logprobs are T = 1's
    with pytest.raises(InputError, match="temperature"):
        score_completions(models, prompts, completions, temperature=0)


@pytest.mark.integration
def test_rescoring_orders_sentiment(models):
    r = score_completions(
        models, ["How was your day?"] * 2,
        ["It was wonderful, I loved every minute of it!", "It was awful, everything went wrong and I hate it."],
    )
    assert r.scores[0] > r.scores[1]


@pytest.mark.integration
def test_rescoring_refuses_mismatched_inputs(models):
    with pytest.raises(InputError, match="pair up"):
        score_completions(models, ["a", "b"], ["c"])


def _trl_log(rows, columns):
    """A TRL GRPO completion log as `GRPOTrainer.log` writes it: step, prompt, completion, the reward columns, the
    log_extra columns, advantage (`columns`: name -> values, in that order)."""
    table = {"step": [1] * len(rows), "prompt": [p for p, _ in rows], "completion": [c for _, c in rows],
             **columns, "advantage": [0.0] * len(rows)}
    buf = io.BytesIO()
    pd.DataFrame(table).to_parquet(buf)
    return buf.getvalue()


CHAT = [([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
         [{"role": "assistant", "content": "4"}])] * 2


def test_a_numeric_log_extra_column_after_a_builtin_reward_is_not_a_reward():
    data = _trl_log(CHAT, {"format_reward": [1.0, 0.0], "exact_answer_reward": [1.0, None],
                           "completion_tokens": [2, 5], "parsed": ["4", "x"]})
    got = read_upload(data, "completions_00001.parquet")
    assert got.reward_columns == ["format_reward", "exact_answer_reward"]
    assert got.extra_columns == ["completion_tokens", "parsed"] and got.reward_weights == [1.0, 1.0]
    assert "'exact_answer_reward', a built-in reward function's name" in got.reward_columns_how
    assert "completion_tokens, parsed taken as log_extra column(s)" in got.reward_columns_how
    assert got.rewards_per_func().shape == (2, 2)


def test_unknown_reward_names_are_the_numeric_columns_before_the_first_text_column():
    data = _trl_log(CHAT, {"my_reward": [1.0, 0.0], "other": [0.5, 0.5], "note": ["a", "b"], "late": [1, 2]})
    got = read_upload(data, "completions_00001.parquet")
    assert got.reward_columns == ["my_reward", "other"] and got.extra_columns == ["note", "late"]
    assert got.reward_columns_how.startswith("no column bears a built-in reward function's name")


def test_the_reward_columns_and_weights_can_be_named():
    data = _trl_log(CHAT, {"my_reward": [1.0, 0.0], "other": [0.5, 0.5], "count": [3, 4]})
    got = read_upload(data, "completions_00001.parquet", reward_columns="my_reward, other", reward_weights="1, 0.5")
    assert got.reward_columns == ["my_reward", "other"] and got.extra_columns == ["count"]
    assert got.reward_weights == [1.0, 0.5] and "named in the reward-columns field" in got.reward_columns_how
    got = read_upload(data, "completions_00001.parquet", reward_columns=["my_reward"], reward_weights=[2.0])
    assert got.reward_columns == ["my_reward"] and got.extra_columns == ["other", "count"]
    with pytest.raises(InputError, match="'nope' is not in the file"):
        read_upload(data, "completions_00001.parquet", reward_columns="nope")
    with pytest.raises(InputError, match="reward_weights has 1 value"):
        read_upload(data, "completions_00001.parquet", reward_columns="my_reward, other", reward_weights="1")
    with pytest.raises(InputError, match="numbers separated by commas"):
        read_upload(data, "completions_00001.parquet", reward_weights="1, x, 2")
    text = _trl_log(CHAT, {"my_reward": [1.0, 0.0], "note": ["a", "b"]})
    with pytest.raises(InputError, match="'note' holds values that are not numbers"):
        read_upload(text, "completions_00001.parquet", reward_columns="my_reward, note")


def test_a_chat_prompt_keeps_its_system_message_and_groups_by_the_whole_prompt():
    other = [([{"role": "system", "content": "Be loud."}, {"role": "user", "content": "2 + 2?"}],
              [{"role": "assistant", "content": "FOUR"}])] * 2
    got = read_upload(_trl_log(CHAT + other, {"format_reward": [1.0, 0.0, 0.0, 1.0]}), "completions_00001.parquet")
    assert got.prompts == ["2 + 2?"] * 4  # the user's text, shown
    assert got.prompt_messages[0] == CHAT[0][0] and got.prompt_messages[2][0]["content"] == "Be loud."
    assert got.num_generations() == 2  # the same user text under two system messages: two groups
    with pytest.raises(InputError, match="row 1: A chat message.s content must be text, got int"):
        read_upload(json.dumps([{"prompt": [{"role": "user", "content": 3}], "completion": "c"}]).encode(), "x.json")
