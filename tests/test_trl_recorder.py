"""The TRL recording hook (inspector/sources/trl_recorder.py): a real TRL 1.16 GRPOTrainer run on the default
policy (CPU, 2 prompts x 2 completions x 16 tokens, num_iterations=2 so TRL computes the old logprobs), recorded
and opened; every recorded number equals the tensors the trainer itself trained on (the inputs of its
`_compute_loss`, captured here from the trainer) and the rewards it computed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.sources.runs import open_run
from inspector.sources.trl_recorder import record_run

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("build_example_run", ROOT / "scripts" / "build_example_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    trainer = _script().tiny_grpo_trainer(str(tmp_path_factory.mktemp("trl")), max_steps=4)
    folder = tmp_path_factory.mktemp("run")
    outputs, loss_inputs = {}, []
    record_run(trainer, folder, on_step=lambda step, out, rpf: outputs.__setitem__(step, (
        {k: v.detach().clone() for k, v in out.items() if torch.is_tensor(v)}, rpf.detach().clone())))
    compute_loss, logps_and_entropies = trainer._compute_loss, trainer._get_per_token_logps_and_entropies
    in_loss = []

    def capturing_logps(*args, **kwargs):  # the entropies the loss computes (TRL's compute_entropy=True pass)
        got = logps_and_entropies(*args, **kwargs)
        if in_loss and kwargs.get("compute_entropy"):
            loss_inputs[-1][1]["entropies"] = got[1].detach().clone()
        return got

    def capturing_loss(model, inputs):
        loss_inputs.append((int(trainer.state.global_step) + 1,
                            {k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)}))
        in_loss.append(1)
        try:
            return compute_loss(model, inputs)
        finally:
            in_loss.pop()

    trainer._compute_loss = capturing_loss
    trainer._get_per_token_logps_and_entropies = capturing_logps
    trainer.train()
    return trainer, open_run(folder), outputs, loss_inputs


@pytest.mark.integration
def test_two_generations_recorded_as_steps_one_and_three(recorded):
    trainer, run, outputs, loss_inputs = recorded
    assert run.format == "inspector" and run.steps() == [1, 3] == sorted(outputs)
    assert not run.problems
    assert [s for s, _ in loss_inputs] == [1, 2, 3, 4]  # each generation trained two steps (num_iterations=2)


@pytest.mark.integration
def test_each_step_equals_the_trainers_tensors(recorded):
    trainer, run, outputs, loss_inputs = recorded
    for n, (out, rpf) in outputs.items():
        step = run.step(n)
        B = out["completion_ids"].size(0)
        assert step.samples == B == 4
        lengths = out["completion_mask"].sum(1).tolist()
        for i in range(B):
            L = int(lengths[i])
            prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()]
            assert step.prompt_ids[i].tolist() == prompt.tolist()
            assert step.completion_ids[i].tolist() == out["completion_ids"][i, :L].tolist()
            assert step.loss_mask[i].tolist() == out["completion_mask"][i, :L].tolist()
            np.testing.assert_array_equal(step.new_logprobs[i], out["old_per_token_logps"][i, :L].numpy())
            np.testing.assert_array_equal(step.ref_logprobs[i], out["ref_per_token_logps"][i, :L].numpy())
            assert len(step.entropy[i]) == L and np.isfinite(step.entropy[i]).all() and (step.entropy[i] >= 0).all()
        np.testing.assert_array_equal(step.advantages, out["advantages"].numpy())
        assert list(step.rewards_per_func) == list(trainer.reward_func_names) == ["brevity", "says_yes"]
        for j, name in enumerate(trainer.reward_func_names):
            np.testing.assert_array_equal(step.rewards_per_func[name], rpf[:, j].numpy())
        assert step.reward_weights == trainer.reward_weights.tolist() == [1.0, 0.5]
        assert step.logprobs is None  # no sampler logprobs on the transformers generate path
        assert step.group.tolist() == [0, 0, 1, 1]


@pytest.mark.integration
def test_the_recorded_rows_are_what_the_loss_trained_on(recorded):
    """`_prepare_inputs` shuffles a generation before `_compute_loss` sees it: each row the loss got is a
    recorded row, with the same advantage, masks and old logprobs."""
    trainer, run, outputs, loss_inputs = recorded
    for global_step, inputs in loss_inputs:
        gen = max(s for s in outputs if s <= global_step)
        step = run.step(gen)
        for i in range(inputs["completion_ids"].size(0)):
            L = int(inputs["completion_mask"][i].sum())
            ids = inputs["completion_ids"][i, :L].tolist()
            prompt = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()].tolist()
            hits = [k for k in range(step.samples)
                    if step.completion_ids[k].tolist() == ids and step.prompt_ids[k].tolist() == prompt]
            assert hits, f"a row trained at step {global_step} is not in recorded step {gen}"
            k = hits[0]
            assert float(step.advantages[k]) == float(inputs["advantages"][i])
            np.testing.assert_array_equal(step.new_logprobs[k], inputs["old_per_token_logps"][i, :L].numpy())
            if global_step == gen:  # the first update on these rows: the entropies the loss computed, before it
                np.testing.assert_allclose(step.entropy[k], inputs["entropies"][i, :L].numpy(), rtol=0, atol=1e-5)


@pytest.mark.integration
def test_the_recorded_step_opens_in_the_tabs(recorded):
    trainer, run, outputs, loss_inputs = recorded
    r = run.step(1).to_rollout(trainer.processing_class)
    assert r.batch_size == 4 and r.settings["run_step"] == 1
