"""Runs still being written, bad files, pickles, the Hub, the saved summary and the CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from inspector.errors import InputError
from inspector.sources.runs import PickleRefused, open_run

DATA = Path(__file__).parent / "data" / "runs"


@pytest.fixture(autouse=True)
def _summaries(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_RUN_SUMMARIES", str(tmp_path / "summaries"))


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA / name, tmp_path / name))


def _age(path: Path, seconds: float = 60) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prime_rl_step_appears_once_stable(tmp_path):
    root = _copy("prime_rl", tmp_path)
    shutil.copytree(root / "token_exports/step_2", root / "token_exports/step_3")
    (root / "token_exports/step_3/STABLE").unlink()
    run = open_run(root)
    assert run.steps() == [1, 2]
    assert run.refresh() == []
    (root / "token_exports/step_3/STABLE").touch()
    assert run.refresh() == [3] and run.steps() == [1, 2, 3]
    assert run.step(3).samples == 4


def test_trl_parquet_counts_once_its_footer_is_written(tmp_path):
    root = _copy("trl", tmp_path)
    whole = (root / "completions_00003.parquet").read_bytes()
    (root / "completions_00003.parquet").write_bytes(whole[: len(whole) // 2])
    run = open_run(root)
    assert run.steps() == [1, 2]
    (root / "completions_00003.parquet").write_bytes(whole)
    assert run.refresh() == [3]


def test_jsonl_being_written_is_not_a_step_until_finished(tmp_path):
    root = _copy("nemo_rl", tmp_path)
    path = root / "train_data_step2.jsonl"
    text = path.read_bytes()
    path.write_bytes(text[:-40])           # the newest file, cut mid-line: still being written
    _age(root / "train_data_step1.jsonl")
    run = open_run(root)
    assert run.steps() == [1] and not run.problems
    path.write_bytes(text)
    _age(path)
    assert run.refresh() == [2]


def test_whole_lines_of_a_fresh_newest_file_wait_until_it_stops_changing(tmp_path):
    root = _copy("verl", tmp_path)
    path = root / "2.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))    # verl's writer thread between two lines
    _age(root / "1.jsonl")
    run = open_run(root)
    assert run.steps() == [1]
    path.write_text("".join(lines))
    assert run.refresh() == []
    _age(path, 5)
    assert run.refresh() == [2] and run.step(2).samples == 4


def test_a_truncated_line_in_a_finished_step_is_left_out_with_a_message(tmp_path):
    root = _copy("nemo_rl", tmp_path)
    path = root / "train_data_step1.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    lines[1] = lines[1][:100] + "\n"
    path.write_text("".join(lines))
    _age(path), _age(root / "train_data_step2.jsonl")
    run = open_run(root)
    step = run.step(1)
    assert step.samples == 3
    p, L = first["token_loss_mask"][0].index(1), first["input_lengths"][0]   # read line by line, still unwrapped
    assert step.completion_ids[0].tolist() == first["token_ids"][0][p:L]
    assert step.logprobs[0].tolist() == first["generation_logprobs"][0][p:L]
    assert any("train_data_step1.jsonl line 2: not valid JSON" in p for p in run.problems)
    assert run.step(2).samples == 4
    assert len(run.summary()) == 2


def test_a_truncated_prime_rl_line_is_left_out(tmp_path):
    root = _copy("prime_rl", tmp_path)
    path = root / "token_exports/step_1/rank_1.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0][:80] + "\n" + lines[1])
    run = open_run(root)
    assert run.step(1).samples == 3
    assert any("rank_1.jsonl line 1: not valid JSON" in p for p in run.problems)


def test_a_missing_step_is_named(tmp_path):
    root = _copy("verl", tmp_path)
    shutil.copy(root / "2.jsonl", root / "4.jsonl")
    for p in root.iterdir():
        _age(p)
    run = open_run(root)
    assert run.steps() == [1, 2, 4]
    assert any("step(s) 3 missing" in p for p in run.problems)


def test_a_column_of_the_wrong_type_is_left_out_and_the_step_opens(tmp_path):
    root = _copy("trl", tmp_path)
    df = pd.read_parquet(root / "completions_00002.parquet")
    df["advantage"] = df["advantage"].astype(str)
    df.to_parquet(root / "completions_00002.parquet")
    run = open_run(root)
    step = run.step(2)
    assert step.advantages is None and step.completion_text is not None
    assert any("'advantage' column holds" in p for p in run.problems)
    assert run.step(1).advantages is not None


def test_a_prime_rl_value_of_the_wrong_type(tmp_path):
    root = _copy("prime_rl", tmp_path)
    path = root / "token_exports/step_2/rank_0.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    recs[0]["advantages"] = "oops"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = open_run(root)
    step = run.step(2)
    assert step.advantages is None and step.samples == 4
    assert any("'advantages' holds str" in p for p in run.problems)


def test_an_oversized_upload_is_left_out_with_the_limit_named(tmp_path, monkeypatch):
    root = _copy("verl", tmp_path)
    (root / "3.jsonl").write_text((root / "2.jsonl").read_text() * 3)
    for p in root.iterdir():
        _age(p)
    monkeypatch.setenv("INSPECTOR_MAX_UPLOAD_BYTES", "2000")
    run = open_run(root, hosted=True)
    assert run.steps() == [1, 2]
    assert any("over the upload limit" in p and "INSPECTOR_MAX_UPLOAD_BYTES" in p for p in run.problems)


def test_hub_dataset_not_cached_offline_names_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InputError, match="someone/grpo-completions.*not in the local Hub cache"):
        open_run("someone/grpo-completions")


# ------------------------------------------------------------------------------------------------ pickles

class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_skyrl_pickle_with_another_global_is_refused(tmp_path):
    folder = tmp_path / "dumped_data"
    folder.mkdir()
    (folder / "global_step_1_training_input.pkl").write_bytes(pickle.dumps(_Evil()))
    run = open_run(tmp_path)
    with pytest.raises(PickleRefused, match="needs the global .*system.*allow_pickle=True \\(command line: --allow-pickle\\)"):
        run.step(1)
    hosted = open_run(tmp_path, hosted=True, allow_pickle=True)
    with pytest.raises(PickleRefused, match="hosted deployment"):
        hosted.step(1)
    assert "step 1" in hosted.summary().to_string() or hosted.problems


def test_slime_dump_needing_more_than_weights_loads_only_when_allowed(tmp_path):
    raw = torch.load(DATA / "slime/train_data/1.pt", weights_only=True)
    raw["samples"][0]["metadata"] = np.array([1, 2])   # numpy: torch's weights_only loader refuses it
    folder = tmp_path / "train_data"
    folder.mkdir()
    torch.save(raw, folder / "1.pt")
    with pytest.raises(PickleRefused, match="holds objects beyond tensors.*allow_pickle=True"):
        open_run(tmp_path).step(1)
    with pytest.raises(PickleRefused, match="hosted deployment"):
        open_run(tmp_path, allow_pickle=True, hosted=True).step(1)
    assert open_run(tmp_path, allow_pickle=True).step(1).samples == 4


# ------------------------------------------------------------------------------------------------ summary

def test_summary_is_saved_and_reused_on_a_second_open(tmp_path):
    root = _copy("prime_rl", tmp_path)
    seen = []
    first = open_run(root).summary(progress=lambda done, total, row: seen.append((done, total, row["step"])))
    assert seen == [(1, 2, 1), (2, 2, 2)]
    again = open_run(root)
    again.reader.read = lambda *a, **k: pytest.fail("the saved summary should be reused")
    pd.testing.assert_frame_equal(again.summary(), first)


def test_summary_rereads_a_changed_step(tmp_path):
    root = _copy("verl", tmp_path)
    for p in root.iterdir():
        _age(p)
    assert open_run(root).summary()["samples"].tolist() == [4, 4]
    path = root / "2.jsonl"
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    _age(path, 30)
    assert open_run(root).summary()["samples"].tolist() == [4, 1]
    run = open_run(root)                     # an open run sees a step's file change on refresh
    path.write_text((root / "1.jsonl").read_text())
    _age(path, 20)
    assert run.refresh() == [2] and run.summary()["samples"].tolist() == [4, 4]


def test_cli_run_prints_the_table_and_findings(capsys):
    from inspector.__main__ import main

    assert main(["run", str(DATA / "prime_rl")]) == 0
    out = capsys.readouterr().out
    assert "prime-rl run, 2 complete step(s)" in out and "gap_kl" in out and "finding(s)" in out
    assert "not in this format (prime-rl): ref_logprobs, rewards" in out
    assert main(["run", "/nonexistent"]) == 1


def test_summaries_default_to_the_cache_folder(monkeypatch):
    from inspector.record.run import summary_dir
    from inspector.weights import cache_dir

    monkeypatch.delenv("INSPECTOR_RUN_SUMMARIES")
    assert summary_dir() == cache_dir() / "run-summaries"


def test_trl_steps_logging_one_generation_again_are_marked(tmp_path):
    """TRL 1.16 logs its last generation_batch_size completions at every log (deques never cleared): with
    steps_per_generation = 3, steps 4 and 5 write step 3's rows again under their own step numbers."""
    from inspector.views.run_trends import trends_figure

    root = _copy("trl", tmp_path)
    rows = pd.read_parquet(root / "completions_00003.parquet")
    for n in (4, 5):
        rows.assign(step=n).to_parquet(root / f"completions_{n:05d}.parquet")
    run = open_run(root)
    assert [run.step(n).repeat_of for n in (1, 2, 3, 4, 5)] == [None, None, None, 3, 3]
    assert any("same completions as step 3" in note for note in run.step(5).notes)
    frame = run.summary()
    assert frame["repeat_of"].tolist()[3:] == [3, 3] and frame["repeat_of"].isna().tolist()[:3] == [True] * 3
    marker = trends_figure(frame).data[0].marker.symbol
    assert list(marker) == ["circle"] * 3 + ["circle-open"] * 2
    rows.assign(step=6, completion=["something else"] * len(rows)).to_parquet(root / "completions_00006.parquet")
    run.refresh()
    assert run.step(6).repeat_of is None  # a new generation
