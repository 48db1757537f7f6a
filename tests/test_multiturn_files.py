"""Readers of trainers' multi-turn files: one trajectory of each fixture checked against the file's own values.

The fixtures (tests/data/multiturn/) are built by scripts/build_multiturn_fixtures.py from the same two tool-calling
conversations: sample 0 calls multiply(12, 7), gets 84 and answers "84."; sample 1 calls multiply(12, 8).
The j-th sampled token of sample s has the logprob -(s + 1) / 10 - j / 1000 in every file that keeps logprobs.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from inspector.errors import InputError
from inspector.sources.multiturn_files import detect_format, open_multiturn
from inspector.sources.multiturn_files.prime_rl import branches
from inspector.sources.multiturn_files.skyrl import load_skyrl_pickle

DATA = Path(__file__).parent / "data" / "multiturn"
FILES = {
    "verl": DATA / "verl_agent_loop.jsonl",
    "prime-rl": DATA / "prime_rl_traces.jsonl",
    "skyrl": DATA / "skyrl_global_step_1_training_input.pkl",
    "nemo-rl": DATA / "nemo_rl_train_data_step1.jsonl",
    "transcript": DATA / "openai_transcripts.jsonl",
}
IM_END, NEWLINE = 2, 198


@pytest.fixture(scope="module")
def tokenizer():
    from inspector.models import DEFAULT_POLICY, _tokenizer_only

    return _tokenizer_only(DEFAULT_POLICY)


def text(tok, ids):
    return tok.decode(ids)


def position_of(tok, ids, needle: str) -> int:
    """The index of the token where `needle` starts in the decoded stream."""
    at = text(tok, ids).index(needle)
    return next(i for i in range(len(ids)) if len(text(tok, ids[:i + 1])) > at)


def test_fixtures_stay_small():
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 300_000


@pytest.mark.parametrize("fmt", list(FILES))
def test_the_format_is_recognised(fmt):
    assert detect_format(FILES[fmt]) == fmt


@pytest.mark.parametrize("fmt", ["verl", "prime-rl", "skyrl", "nemo-rl"])
def test_sampled_tokens_masks_and_logprobs_match_the_file(fmt, tokenizer):
    r = open_multiturn(FILES[fmt], tokenizer)
    assert len(r) == 2
    t = r.trajectories[1]
    assert t.source == fmt
    # the prompt ends with the generation prompt; the completion opens with the model's tool call
    assert text(tokenizer, t.prompt_ids).endswith("What is 12 * 7?<|im_end|>\n<|im_start|>assistant\n")
    assert text(tokenizer, t.completion_ids).startswith('<tool_call>\n{"name": "multiply", "arguments": {"a": 12, "b": 8}}')
    sampled = [i for i, s in enumerate(t.sampled) if s]
    assert sampled[0] == t.prompt_length
    assert len(sampled) == sum(t.loss_mask) == 46
    # the first and the 35th sampled token: the tool call's first token and its closing <|im_end|>
    assert t.token_ids[sampled[34]] == IM_END and t.token_ids[sampled[34] + 1] == NEWLINE
    assert not t.sampled[sampled[34] + 1]                        # the template's "\n" after <|im_end|>: not sampled
    assert t.logprobs[sampled[0]] == pytest.approx(-0.2)
    assert t.logprobs[sampled[34]] == pytest.approx(-0.234)
    assert t.logprobs[sampled[-1]] == pytest.approx(-0.245)
    assert t.logprobs[sampled[34] + 1] is None                     # 0.0 in the file, read as "not sampled"
    # the tool reply: role tool, not trained
    k = position_of(tokenizer, t.token_ids, "<tool_response>\n96")
    assert t.role[k] == "tool" and not t.sampled[k] and t.loss_mask[k - t.prompt_length] == 0
    assert t.role[sampled[0]] == "assistant" and t.role[0] == "system"
    assert t.num_turns == 2 and t.turn[sampled[-1]] == 2 and t.turn[0] == 0
    assert t.token_ids[sampled[-1]] == IM_END and text(tokenizer, t.token_ids[sampled[-1] - 5:sampled[-1]]).endswith("96.")


def test_verl_reads_attention_mask_and_its_padding(tokenizer):
    row = json.loads(FILES["verl"].read_text().splitlines()[0])
    t = open_multiturn(FILES["verl"], tokenizer).trajectories[0]
    assert t.prompt_length == sum(row["attention_mask"][:len(row["prompts"])]) == 202
    n = sum(row["attention_mask"][len(row["prompts"]):])
    assert t.completion_ids == row["responses"][:n] and len(t.completion_ids) == n
    assert t.loss_mask == row["response_mask"][:n]
    assert "__num_turns__ = 4" in t.notes


def test_verl_without_attention_mask_cuts_pads_by_the_pad_id(tokenizer, tmp_path):
    rows = [json.loads(l) for l in FILES["verl"].read_text().splitlines()]
    for row in rows:
        del row["attention_mask"]
    path = tmp_path / "dump.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = open_multiturn(path, tokenizer).trajectories[0]
    b = open_multiturn(FILES["verl"], tokenizer).trajectories[0]
    assert a.token_ids == b.token_ids and a.loss_mask == b.loss_mask   # pad == EOS: the sampled EOS is kept
    with pytest.raises(InputError, match="pad id"):
        open_multiturn(path, None)


def test_prime_rl_expands_compact_logprobs_and_advantages(tokenizer):
    episode = json.loads(FILES["prime-rl"].read_text().splitlines()[0])
    nodes = episode["traces"][0]["nodes"]
    r = open_multiturn(FILES["prime-rl"], tokenizer)
    t = r.trajectories[0]
    assert t.token_ids == [x for n in nodes for x in n["token_ids"]]
    first = nodes[2]
    assert len(first["logprobs"]) == sum(first["mask"]) < len(first["token_ids"])
    start = len(nodes[0]["token_ids"]) + len(nodes[1]["token_ids"])
    offset = first["mask"].index(True)
    assert t.logprobs[start + offset] == first["logprobs"][0] == pytest.approx(-0.1)
    assert t.logprobs[start] is None and t.role[start] == "assistant"   # the generation-prompt scaffold
    assert r.advantages == [0.7071, -0.7071] and r.rewards == [1.0, 0.0]
    assert t.messages[2]["tool_calls"][0]["function"]["name"] == "multiply"
    assert any("template-scaffold" in n for n in t.notes)


def test_prime_rl_branches_follow_parent_links():
    nodes = [{}, {"parent": 0}, {"parent": 1}, {"parent": 1}, {"parent": 3}]
    assert branches(nodes) == [[0, 1, 2], [0, 1, 3, 4]]
    with pytest.raises(InputError, match="parent"):
        branches([{"parent": 0}])


def test_prime_rl_refuses_compact_values_that_do_not_fit_the_mask(tmp_path, tokenizer):
    episode = json.loads(FILES["prime-rl"].read_text().splitlines()[0])
    episode["traces"][0]["nodes"][2]["logprobs"].pop()
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps(episode) + "\n")
    with pytest.raises(InputError, match="compact"):
        open_multiturn(path, tokenizer)


def test_skyrl_right_aligned_response_and_groups(tokenizer):
    b = load_skyrl_pickle(FILES["skyrl"])
    r = open_multiturn(FILES["skyrl"], tokenizer)
    t0, t1 = r.trajectories
    R = b["loss_mask"].shape[1]
    n1 = int(b["response_mask"][1].sum())
    assert t1.completion_ids == b["sequences"][1, -n1:].tolist()
    assert t1.loss_mask == b["loss_mask"][1, R - n1:].astype(int).tolist()
    n0 = int(b["response_mask"][0].sum())
    assert n0 < n1 and t0.completion_ids == b["sequences"][0, -n0:].tolist()   # the shorter response: right-aligned
    assert t0.loss_mask == b["loss_mask"][0, R - n0:].astype(int).tolist() and t0.loss_mask[-1] == 0
    assert t0.logprobs[t0.prompt_length] == pytest.approx(-0.1)
    assert t0.group == t1.group == 0
    assert r.advantages[0] == pytest.approx(0.7071)


def test_skyrl_pickle_with_another_global_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo unsafe",))

    path = tmp_path / "global_step_1_training_input.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InputError, match="posix.system|os.system|nt.system"):
        load_skyrl_pickle(path)


def test_nemo_rl_unwraps_batch_slices_and_keeps_the_sample_mask(tokenizer, tmp_path):
    rows = [json.loads(l) for l in FILES["nemo-rl"].read_text().splitlines()]
    r = open_multiturn(FILES["nemo-rl"], tokenizer)
    t = r.trajectories[0]
    L = rows[0]["input_lengths"][0]
    assert len(t.token_ids) == L < len(rows[0]["token_ids"][0])
    assert t.loss_mask == rows[0]["token_loss_mask"][0][t.prompt_length:L]
    assert r.advantages == [0.7071, -0.7071] and r.rewards == [1.0, 0.0]
    assert t.group == r.trajectories[1].group == 0
    rows[1]["sample_loss_mask"] = [0.0]
    path = tmp_path / "train_data_step1.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    dropped = open_multiturn(path, tokenizer).trajectories[1]
    assert sum(dropped.loss_mask) == 0 and sum(dropped.sampled) == 46
    rows[0]["rewards"] = [1.0, 2.0]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    with pytest.raises(InputError, match="one-element"):
        open_multiturn(path, tokenizer)


def test_transcripts_mark_the_generation_spans_as_trl_s_training_template_does(tokenizer):
    r = open_multiturn(FILES["transcript"], tokenizer)
    t = r.trajectories[0]
    assert "qwen2_5_training" in t.notes[0]
    marked = [i for i, s in enumerate(t.sampled) if s]
    # TRL's qwen2_5_training.jinja opens {% generation %} right after "<|im_start|>assistant": the "\n" before
    # the tool call and the "\n" after <|im_end|> are in the span (4 more tokens than were sampled)
    assert len(marked) == sum(t.loss_mask) == 39 + 4
    assert text(tokenizer, t.token_ids[:t.prompt_length]).endswith("<|im_start|>assistant")
    assert t.token_ids[marked[0]] == NEWLINE and t.token_ids[marked[-1]] == NEWLINE
    assert t.logprobs == [None] * len(t.token_ids)
    k = position_of(tokenizer, t.token_ids, "84\n</tool_response>")
    assert t.role[0] == "system" and t.role[k] == "tool" and not t.sampled[k]
    assert t.events == [{"turn": 1, "tool_calls": ["multiply"]}]


def test_transcripts_take_a_named_trl_template_and_refuse_an_unknown_one(tokenizer):
    r = open_multiturn(FILES["transcript"], tokenizer, template="qwen3_training")
    t = r.trajectories[0]
    assert "<think>" in text(tokenizer, [x for x, s in zip(t.token_ids, t.sampled) if s])
    with pytest.raises(InputError, match="no chat template"):
        open_multiturn(FILES["transcript"], tokenizer, template="nope")
    with pytest.raises(InputError, match="tokenizer"):
        open_multiturn(FILES["transcript"], None)


def test_an_unknown_file_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(InputError, match="not a multi-turn file"):
        detect_format(path)
