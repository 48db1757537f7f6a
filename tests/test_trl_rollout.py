"""The rollout against TRL 0.x's own `PPOTrainer` code on the real default models: its stop token, its
rollout logprobs, and the PPO step fed them; the model's own generation settings, named and measured."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import trl0
from inspector import load_models, run_rollout
from inspector.diagnostics import diagnose
from inspector.trainers.ppo import PPOConfig, rollout_ppo_step
from inspector.views.compare import compare_html

pytestmark = pytest.mark.integration

PROMPTS = ["Write a short happy sentence about the sea.", "Name three fruits.", "Describe your day."]


def _trl(models, r, cfg: PPOConfig, **kw):
    return trl0.run_rollout_block(models, r.queries, cfg, temperature=r.settings["temperature"],
                                  response_length=r.settings["max_new_tokens"], seed=r.settings["seed"], **kw)


def _compare(r, step, trl, atol=1e-4):
    G = r.response_width
    assert torch.equal(trl["responses"][:, :G], r.responses), "TRL sampled other tokens"
    assert torch.all(trl["responses"][:, G:] == r.pad_token_id)
    for name in ("logprobs", "ref_logprobs", "values", "kl", "non_score_reward", "rewards", "advantages", "returns"):
        theirs = trl[name][:, :G].float()
        assert torch.allclose(getattr(step, name), theirs, atol=atol), (name, (getattr(step, name) - theirs).abs().max())
    assert torch.allclose(step.scores, trl["scores"].float(), atol=atol)
    assert torch.equal(r.sequence_lengths, trl["sequence_lengths"])
    for key, value in trl["metrics"].items():
        assert step.metrics[key] == pytest.approx(value, abs=1e-3), key


@pytest.mark.parametrize("cfg", [PPOConfig(), PPOConfig(whiten_rewards=True, kl_estimator="k3", missing_eos_penalty=1.0)])
def test_top_k_20_ppo_step_equals_trls_rollout(models, cfg):
    """3 prompts x 32 tokens at temperature 0.7 with top_k=20: TRL's rollout block, run from its wheel with the
    same seed and top_k set on its GenerationConfig, samples the same tokens and gives the same logprobs, KL,
    rewards, advantages and logged metrics as the page's PPO step."""
    r = run_rollout(models, PROMPTS, max_new_tokens=32, temperature=0.7, top_k=20, seed=3)
    step = rollout_ppo_step(r, cfg)
    trl = _trl(models, r, cfg, top_k=20)
    _compare(r, step, trl)
    # the PPO step is fed the sampling-time logprobs: the recompute would give another KL
    assert step.metrics["objective/kl"] > 0.1
    recomputed = rollout_ppo_step(dataclasses.replace(r, logprobs=r.new_logprobs), cfg)
    assert abs(recomputed.metrics["objective/kl"] - trl["metrics"]["objective/kl"]) > 0.1
    # the compare view sums the same KL over the valid tokens (top-k leaves -inf on some pads)
    assert not torch.isfinite(r.logprobs[r.padding_mask]).all()
    for i in range(r.batch_size):
        kl = float(torch.where(~r.padding_mask[i], r.logprobs[i] - r.ref_logprobs[i], 0).sum())
        assert f"KL {kl:+.4f}" in compare_html(r, i, (i + 1) % r.batch_size)


def test_default_settings_equal_trls_rollout(models):
    r = run_rollout(models, PROMPTS, max_new_tokens=24, temperature=0.7, seed=5)
    step = rollout_ppo_step(r)
    _compare(r, step, _trl(models, r, PPOConfig()))
    assert r.inherited_processors == []  # the default model's generation config adds no processor
    # with the defaults nothing visible changes: fed the recompute instead, the step differs below display precision
    recomputed = rollout_ppo_step(dataclasses.replace(r, logprobs=r.new_logprobs))
    assert torch.allclose(recomputed.advantages, step.advantages, atol=1e-3)
    assert recomputed.metrics == pytest.approx(step.metrics, abs=1e-3)


def test_a_custom_stop_token_ends_generation_as_in_trl(models):
    period = models.tokenizer.convert_tokens_to_ids(".")
    r = run_rollout(models, ["Write three short sentences about dogs.", "List two colours, then stop."],
                    max_new_tokens=40, temperature=0.7, seed=2, stop_token_id=".")
    trl = _trl(models, r, PPOConfig(), stop_token=None, stop_token_id=period)
    assert trl["stop_token_id"] == period
    _compare(r, rollout_ppo_step(r), trl)
    for row in r.responses.tolist():
        # the raw sequence ends at the stop token: nothing but padding after its first occurrence
        assert period in row
        end = row.index(period)
        assert all(t == r.pad_token_id for t in row[end + 1:])
    assert torch.equal(r.postprocessed_responses, r.responses)  # nothing left for the truncation to cut


def test_no_stop_token_generates_every_token(models):
    r = run_rollout(models, ["Say hi."], max_new_tokens=20, do_sample=False, stop_token_id=None)
    assert r.response_width == 20 and int(r.sequence_lengths[0]) == 19
    assert r.generation_config["values"]["eos_token_id"] is None


@pytest.fixture(scope="module")
def penalised(policy_copy):
    """The default policy's folder, its weights linked, with repetition_penalty 1.3 and no_repeat_ngram_size 3
    in its generation_config.json."""
    return load_models(str(policy_copy("SmolLM2-penalised", repetition_penalty=1.3, no_repeat_ngram_size=3)))


def _count_backbone_calls(model) -> tuple[list[int], object]:
    calls = [0]
    handle = getattr(model, model.base_model_prefix).register_forward_pre_hook(lambda *a, **k: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


def test_inherited_repetition_penalty_is_named_with_its_effect(penalised):
    r = run_rollout(penalised, PROMPTS, max_new_tokens=24, temperature=0.7, seed=0)
    assert r.generation_config["from_model"] == ["repetition_penalty", "no_repeat_ngram_size"]
    effects = {e["setting"]: e for e in r.inherited_processors}
    assert effects["repetition_penalty"]["value"] == 1.3 and effects["no_repeat_ngram_size"]["value"] == 3
    assert effects["repetition_penalty"]["max_effect"] > 0.01
    finding = {f.code: f for f in diagnose(r)}["inherited_generation_config"]
    assert "repetition_penalty=1.3" in finding.detail and "no_repeat_ngram_size=3" in finding.detail
    assert f"{effects['repetition_penalty']['max_effect']:.3g} nats" in finding.detail
    gap = {f.code: f for f in diagnose(r)}["logprob_gap"]
    assert "repetition_penalty=1.3" in gap.detail and "numerical" not in gap.detail
    # the measured effect is the real one: the sampled-from logprobs minus the recompute, once they are gone
    valid = ~r.padding_mask
    assert (r.logprobs - r.new_logprobs)[valid].abs().max() > 0.01
    assert effects["all inherited"]["max_gap_to_new_logprobs_without_it"] < 1e-3
    # and TRL's own rollout samples with them too: same tokens, same logprobs
    trl = _trl(penalised, r, PPOConfig())
    _compare(r, rollout_ppo_step(r), trl)


def test_ignoring_the_generation_config(penalised):
    r = run_rollout(penalised, PROMPTS, max_new_tokens=24, temperature=0.7, seed=0, ignore_generation_config=True)
    assert r.inherited_processors == [] and r.generation_config["model_config_used"] is False
    assert r.generation_config["values"]["repetition_penalty"] == 1.0
    assert (r.logprobs - r.new_logprobs)[~r.padding_mask].abs().max() < 1e-3
    assert "inherited_generation_config" not in {f.code for f in diagnose(r)}


def test_measuring_the_inherited_processors_costs_no_model_pass(models, penalised):
    counts = {}
    for name, m, ignore in (("default", models, False), ("penalised", penalised, False),
                            ("penalised, ignored", penalised, True)):
        calls, handle = _count_backbone_calls(m.policy)
        try:
            r = run_rollout(m, ["Say hi."], max_new_tokens=12, seed=0, stop_token_id=None, ignore_generation_config=ignore)
        finally:
            handle.remove()
        counts[name] = calls[0]
        assert r.response_width == 12
    # 12 generation steps and one recompute, whether or not processors were measured
    assert counts == {"default": 13, "penalised": 13, "penalised, ignored": 13}
