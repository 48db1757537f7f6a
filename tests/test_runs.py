"""Run readers over fixtures written by each trainer's own writer code (scripts/build_run_fixtures.py,
scripts/build_trl_run.py): named values of one step checked against the file as written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from inspector.errors import InputError
from inspector.sources.runs import RunWriter, open_run

DATA = Path(__file__).parent / "data" / "runs"


@pytest.fixture(autouse=True)
def _summaries(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_RUN_SUMMARIES", str(tmp_path / "summaries"))


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 400_000


def test_prime_rl_step_equals_the_export():
    run = open_run(DATA / "prime_rl")
    assert run.format == "prime-rl" and run.steps() == [1, 2]
    rec = json.loads((DATA / "prime_rl/token_exports/step_1/rank_0.jsonl").read_text().splitlines()[1])
    step = run.step(1)
    p = rec["loss_mask"].index(True)
    assert step.prompt_ids[1].tolist() == rec["token_ids"][:p]
    assert step.completion_ids[1].tolist() == rec["token_ids"][p:]
    assert step.loss_mask[1].tolist() == [int(b) for b in rec["loss_mask"][p:]]
    assert step.logprobs[1].tolist() == rec["inference_logprobs"][p:]
    assert step.new_logprobs[1].tolist() == rec["trainer_logprobs"][p:]
    assert step.advantages[1].tolist() == rec["advantages"][p:]
    assert step.entropy[1].tolist() == rec["entropy"][p:]
    assert step.samples == 4 and step.group.tolist() == [0, 0, 1, 1]   # rank 0's two samples, then rank 1's
    assert run.lacks("rewards") == "not in this format (prime-rl)" and run.lacks("logprobs") is None


def test_nemo_rl_step_unwraps_the_batch_slices():
    run = open_run(DATA / "nemo_rl")
    assert run.format == "nemo-rl" and run.steps() == [1, 2]
    rec = json.loads((DATA / "nemo_rl/train_data_step2.jsonl").read_text().splitlines()[3])
    assert len(rec["token_ids"]) == 1   # the writer's length-1 batch slice
    ids, mask, L = rec["token_ids"][0], rec["token_loss_mask"][0], rec["input_lengths"][0]
    p = mask.index(1)
    step = run.step(2)
    assert step.prompt_ids[3].tolist() == ids[:p] and step.completion_ids[3].tolist() == ids[p:L]
    assert step.loss_mask[3].tolist() == mask[p:L]
    assert step.logprobs[3].tolist() == rec["generation_logprobs"][0][p:L]
    assert step.new_logprobs[3].tolist() == rec["prev_logprobs"][0][p:L]
    assert step.advantages[3].tolist() == rec["advantages"][0][p:L]
    assert step.rewards[3] == rec["rewards"][0]
    assert step.columns["content"][3] == rec["content"][0]


class _RawBatch(pickle.Unpickler):
    """The SkyRL pickle's state dict, decoded independently of the reader."""

    def find_class(self, module, name):
        if name == "_rebuild_tensor_batch":
            return lambda cls, state: state
        if name == "TrainingInputBatch":
            return None
        return super().find_class(module, name)


def test_skyrl_step_equals_the_training_batch():
    path = DATA / "skyrl/dumped_data/global_step_1_training_input.pkl"
    with open(path, "rb") as fh:
        state = _RawBatch(fh).load()
    raw = {k: np.frombuffer(v["data"], dtype=v["dtype"]).reshape(v["shape"])
           for k, v in state["batch_dict"].items() if v is not None}
    run = open_run(DATA / "skyrl")
    assert run.format == "skyrl" and run.steps() == [1, 2]
    step = run.step(1)
    i = 2
    resp = raw["response_mask"][i].astype(bool)
    full = raw["sequences"][i][raw["attention_mask"][i].astype(bool)]
    n = int(resp.sum())
    assert step.completion_ids[i].tolist() == full[-n:].tolist() and step.prompt_ids[i].tolist() == full[:-n].tolist()
    assert step.logprobs[i].tolist() == raw["rollout_logprobs"][i][resp].tolist()
    assert step.new_logprobs[i].tolist() == raw["action_log_probs"][i][resp].tolist()
    assert step.ref_logprobs[i].tolist() == raw["base_action_log_probs"][i][resp].tolist()
    assert step.advantages[i].tolist() == raw["advantages"][i][resp].tolist()
    assert step.loss_mask[i].tolist() == raw["loss_mask"][i][resp].astype(int).tolist()
    assert step.group.tolist() == [0, 0, 1, 1]   # metadata policy_prompt_boundaries
    assert run.lacks("rewards") == "not in this format (skyrl)"


def test_slime_step_equals_the_train_dump():
    raw = torch.load(DATA / "slime/train_data/2.pt", weights_only=True)
    s = raw["samples"][1]
    run = open_run(DATA / "slime")
    assert run.format == "slime" and run.steps() == [1, 2]
    step = run.step(2)
    L = int(s["response_lengths"])
    assert step.completion_ids[1].tolist() == s["tokens"][-L:].tolist()
    assert step.prompt_ids[1].tolist() == s["tokens"][:-L].tolist()
    assert step.loss_mask[1].tolist() == s["loss_masks"].tolist()
    assert step.logprobs[1].tolist() == s["rollout_log_probs"].tolist()
    assert step.new_logprobs[1].tolist() == s["log_probs"].tolist()
    assert step.ref_logprobs[1].tolist() == s["ref_log_probs"].tolist()
    assert step.advantages[1].tolist() == s["advantages"].tolist()
    assert step.entropy[1].tolist() == s["entropy"].tolist()
    assert step.rewards[1] == s["rewards"]


def test_verl_step_keeps_the_dump_columns():
    rows = [json.loads(x) for x in (DATA / "verl/2.jsonl").read_text().splitlines()]
    run = open_run(DATA / "verl")
    assert run.format == "verl" and run.steps() == [1, 2]
    step = run.step(2)
    assert step.prompt_text == [r["input"] for r in rows] and step.completion_text == [r["output"] for r in rows]
    assert step.rewards.tolist() == [r["score"] for r in rows]
    assert step.columns["acc"] == [r["acc"] for r in rows] and step.columns["request_id"][0] == rows[0]["request_id"]
    assert step.group.tolist() == [0, 0, 1, 1]
    assert step.completion_ids is None and run.lacks("completion_ids") == "not in this format (verl)"


def test_trl_completions_run_reads_every_step_and_reproduces_the_advantages():
    from inspector.diagnostics.run import advantage_errors, run_findings

    run = open_run(DATA / "trl")
    assert run.format == "trl-completions" and run.steps() == [1, 2, 3]
    df = pd.read_parquet(DATA / "trl/completions_00002.parquet")
    step = run.step(2)
    assert step.advantages.tolist() == df["advantage"].tolist()
    assert list(step.rewards_per_func) == ["length_reward", "e_reward"]
    assert step.rewards_per_func["e_reward"].tolist() == df["e_reward"].tolist()
    assert [str(c) for c in step.completion_text] == [str(c) for c in df["completion"]]
    errors = advantage_errors(run)
    assert set(errors) == {1, 2, 3} and max(e for e, _ in errors.values()) < 1e-5   # TRL's own logged advantages
    assert not [f for f in run_findings(run) if f.code == "run_advantages_mismatch"]


def test_a_single_trl_file_opens_as_a_one_step_run():
    run = open_run(DATA.parent / "trl_grpo_completions_00001.parquet")
    assert run.steps() == [1] and run.step(1).samples == 16


def test_native_round_trip():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        w = RunWriter(tmp)
        w.write_step(5, prompt_ids=torch.tensor([[0, 7, 8], [9, 7, 8]]), prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
                     completion_ids=torch.tensor([[3, 4, 2, 0], [5, 2, 0, 0]]),
                     completion_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
                     tool_mask=torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]),
                     sampling_logprobs=torch.tensor([[-0.5, -1.0, -0.1, 0.0], [-0.2, -0.3, 0.0, 0.0]]),
                     old_logprobs=None, advantages=torch.tensor([0.7, -0.7]),
                     rewards_per_func=torch.tensor([[1.0, 0.5], [0.0, 0.5]]), reward_func_names=["acc", "fmt"],
                     reward_weights=[1.0, 2.0], extra={"eos_token_ids": [2], "pad_token_id": 0})
        run = open_run(tmp)
        assert run.format == "inspector" and run.steps() == [5]
        s = run.step(5)
        assert s.prompt_ids[0].tolist() == [7, 8] and s.prompt_ids[1].tolist() == [9, 7, 8]
        assert s.completion_ids[0].tolist() == [3, 4, 2] and s.completion_ids[1].tolist() == [5, 2]
        assert s.loss_mask[0].tolist() == [1, 0, 1] and s.tool_mask[0].tolist() == [1, 0, 1]
        assert s.logprobs[1].tolist() == pytest.approx([-0.2, -0.3])
        assert s.new_logprobs is None and s.lacks("new_logprobs") == "not in this format (inspector)"
        assert s.rewards.tolist() == [2.0, 1.0] and s.reward_weights == [1.0, 2.0]
        assert s.advantages.tolist() == pytest.approx([0.7, -0.7])


def test_unknown_source_and_step():
    with pytest.raises(InputError, match="no such file or folder"):
        open_run("/nonexistent/run")
    with pytest.raises(InputError, match="step 9 is not in this run"):
        open_run(DATA / "verl").step(9)


def test_verl_v1_groups_by_the_uid_sample_part():
    """verl's TransferQueue trainer writes `uid` = `{uid}_{session_id}_{index}`, rows sorted by it; a dataset uid may
    hold "_" itself, so the sample part is what is left of the last two."""
    rows = [json.loads(x) for x in (DATA / "verl_v1/1.jsonl").read_text().splitlines()]
    step = open_run(DATA / "verl_v1").step(1)
    assert step.columns["uid"] == [r["uid"] for r in rows] == ["gsm8k_train_17_0_0", "gsm8k_train_17_1_0",
                                                                "gsm8k_train_4_0_0", "gsm8k_train_4_1_0"]
    assert step.group.tolist() == [0, 0, 1, 1] and any("uid's sample part" in n for n in step.notes)
    assert step.rewards.tolist() == [r["score"] for r in rows]
