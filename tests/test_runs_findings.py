"""Run findings: each fires on a hand-built run with its trap (written in a trainer's format) and stays silent on
the same run without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from inspector.diagnostics.run import run_findings
from inspector.sources.runs import RunWriter, open_run

DATA = Path(__file__).parent / "data" / "runs"
EOS, PAD = 2, 0
STEPS = 6


@pytest.fixture(autouse=True)
def _summaries(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_RUN_SUMMARIES", str(tmp_path / "summaries"))


def _codes(run) -> set[str]:
    return {f.code for f in run_findings(run)}


def prime_rl_run(folder: Path, *, gap=lambda k: 0.01, entropy=lambda k: 1.5) -> Path:
    """A prime-rl token export (token_export.py's record layout), 8 samples of 2 groups per step."""
    rng = np.random.default_rng(0)
    for k in range(1, STEPS + 1):
        d = folder / "token_exports" / f"step_{k}"
        d.mkdir(parents=True)
        lines = []
        for i in range(8):
            prompt, n = [5, 6, 7 + i // 4], 10
            mask = [False] * 3 + [True] * n
            inf = (-np.abs(rng.normal(0.5, 0.2, 13))).tolist()
            tr = (np.asarray(inf) + rng.normal(0, gap(k), 13)).tolist()
            lines.append({"schema_version": 1, "step": k, "rank": 0, "micro_step": 0, "micro_sequence_idx": i,
                          "export_sequence_idx": i, "env_name": "x", "token_ids": prompt + [9] * (n - 1) + [EOS],
                          "position_ids": list(range(13)), "loss_mask": mask, "advantages": [float(i % 2) - 0.5] * 13,
                          "inference_logprobs": inf, "trainer_logprobs": tr,
                          "entropy": np.abs(rng.normal(entropy(k), 0.05, 13)).tolist()})
        (d / "rank_0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (d / "STABLE").touch()
    return folder


def native_run(folder: Path, *, length=lambda k: 8, truncated=lambda k: 0.0, reward=lambda k, i, n: float(i % 2),
               bad_advantage_step=None, G=4) -> Path:
    """The inspector's own format, TRL's advantages from the rewards (scale_rewards="group"), 8 samples per step."""
    from inspector.trainers.grpo import _trl_advantages
    from inspector.trainers.grpo_config import GRPOConfig

    w = RunWriter(folder)
    for k in range(1, STEPS + 1):
        n = length(k)
        ids = torch.full((8, n), 9)
        cut = int(round(truncated(k) * 8))
        for i in range(cut, 8):
            ids[i, -1] = EOS
        rpf = torch.tensor([[reward(k, i, n)] for i in range(8)])
        adv = _trl_advantages(rpf, torch.ones(1), G, GRPOConfig(num_generations=G))[3]
        if k == bad_advantage_step:
            adv = adv.flip(0)
        w.write_step(k, prompt_ids=torch.tensor([[5, 6, 7 + i // G] for i in range(8)]), prompt_mask=torch.ones(8, 3),
                     completion_ids=ids, completion_mask=torch.ones(8, n), advantages=adv, rewards_per_func=rpf,
                     reward_func_names=["r"], reward_weights=[1.0], extra={"eos_token_ids": [EOS], "pad_token_id": PAD})
    return folder


def test_clean_runs_are_silent(tmp_path):
    assert _codes(open_run(prime_rl_run(tmp_path / "p"))) == set()
    assert _codes(open_run(native_run(tmp_path / "n"))) == set()


def test_sampler_trainer_gap_growing(tmp_path):
    run = open_run(prime_rl_run(tmp_path / "p", gap=lambda k: 0.01 * k))
    f = next(f for f in run_findings(run) if f.code == "run_gap_growing")
    assert f.steps[0] == 1 and f.steps[-1] == STEPS and "steps 1..6" in f.detail and f.fix


def test_entropy_collapsing(tmp_path):
    run = open_run(prime_rl_run(tmp_path / "p", entropy=lambda k: 2.0 / k))
    f = next(f for f in run_findings(run) if f.code == "run_entropy_collapse")
    assert f.steps == [1, STEPS, STEPS] and "falls from" in f.detail
    assert _codes(run) == {"run_entropy_collapse"}


def test_lengthening_until_truncated(tmp_path):
    run = open_run(native_run(tmp_path / "n", length=lambda k: 4 * k, truncated=lambda k: (k - 1) / 6))
    f = next(f for f in run_findings(run) if f.code == "run_lengthening_to_truncation")
    assert f.steps[1] == 3 and "max_completion_length" in f.fix   # a fifth or more cut from step 3
    assert "run_lengthening_to_truncation" not in _codes(open_run(native_run(tmp_path / "m", length=lambda k: 4 * k)))


def test_zero_std_groups_rising(tmp_path):
    # from step 4 every completion of a group gets the same reward
    run = open_run(native_run(tmp_path / "n", reward=lambda k, i, n: float(i % 2) if k < 4 else 1.0))
    f = next(f for f in run_findings(run) if f.code == "run_zero_std_rising")
    assert f.steps[-1] == STEPS and "0% to 100%" in f.detail


def test_reward_rising_while_length_explodes(tmp_path):
    run = open_run(native_run(tmp_path / "n", length=lambda k: 3 * 2 ** k, reward=lambda k, i, n: n / 10 + i % 2))
    f = next(f for f in run_findings(run) if f.code == "run_reward_with_length")
    assert f.steps == [1, STEPS]
    same_length = open_run(native_run(tmp_path / "m", reward=lambda k, i, n: k + i % 2))
    assert "run_reward_with_length" not in _codes(same_length)


def test_logged_advantages_that_do_not_follow_from_the_rewards(tmp_path):
    run = open_run(native_run(tmp_path / "n", bad_advantage_step=4))
    f = next(f for f in run_findings(run) if f.code == "run_advantages_mismatch")
    assert f.steps == [4] and "step 4" in f.detail


def test_trl_log_with_edited_advantages(tmp_path):
    root = Path(shutil.copytree(DATA / "trl", tmp_path / "trl"))
    path = root / "completions_00002.parquet"
    df = pd.read_parquet(path)
    df["advantage"] = df["advantage"] * 2.0   # scale_rewards="none" would not give these either
    df.to_parquet(path)
    found = [f for f in run_findings(open_run(root)) if f.code == "run_advantages_mismatch"]
    assert len(found) == 1 and found[0].steps == [2]


def test_findings_from_a_summary_alone(tmp_path):
    frame = open_run(prime_rl_run(tmp_path / "p", entropy=lambda k: 2.0 / k)).summary()
    assert {f.code for f in run_findings(frame)} == {"run_entropy_collapse"}
