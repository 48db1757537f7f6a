"""One test per diagnostic: a rollout built to have the trap raises the finding; a clean one does not."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from inspector import get_reward, run_rollout
from inspector.diagnostics import diagnose

pytestmark = pytest.mark.integration


def codes(r) -> set[str]:
    return {f.code for f in diagnose(r)}


@pytest.fixture(scope="module")
def clean(greedy_rollout):
    """The greedy rollout with pad != eos, as a tokenizer with its own pad token would give."""
    return dataclasses.replace(greedy_rollout, pad_equals_eos=False)


def test_pad_equals_eos(greedy_rollout, clean):
    findings = {f.code: f for f in diagnose(greedy_rollout)}
    f = findings["pad_equals_eos"]
    assert f.severity == "warning"
    # SmolLM2's chat template ends the system and user turns with <|im_end|>: hidden from every model
    assert "inside the prompts" in f.detail and f.positions
    assert "pad_equals_eos" not in codes(clean)


def test_right_padding(clean):
    mask = clean.query_attention_mask.clone()
    mask[0] = mask[0].flip(0)  # real tokens first, then padding
    assert "right_padding" in codes(dataclasses.replace(clean, query_attention_mask=mask))
    assert "right_padding" not in codes(clean)


def test_no_stop_token(models):
    cut = run_rollout(models, ["Tell me a long story about a dragon."], max_new_tokens=6, do_sample=False)
    assert not cut.contain_eos_token.any()
    f = {f.code: f for f in diagnose(cut)}["no_stop_token"]
    assert f.samples == [0]
    assert "missing_eos_penalty" in f.fix


def test_no_stop_token_absent_when_every_response_stops(greedy_rollout):
    stopped = [i for i in range(greedy_rollout.batch_size) if bool(greedy_rollout.contain_eos_token[i])]
    assert stopped, "the greedy fixture has short answers that stop"
    f = {f.code: f for f in diagnose(greedy_rollout)}.get("no_stop_token")
    assert f is None or set(f.samples).isdisjoint(stopped)


def test_empty_response(clean):
    r = clean
    responses = r.responses.clone()
    responses[0, :] = r.pad_token_id  # the first token is the stop token, which is the pad token here
    post = responses.clone()
    lengths = r.sequence_lengths.clone()
    lengths[0] = -1
    empty = dataclasses.replace(r, responses=responses, postprocessed_responses=post, sequence_lengths=lengths)
    f = {f.code: f for f in diagnose(empty)}["empty_response"]
    assert f.samples == [0] and f.positions == [(0, r.context_length - 1)]
    assert "empty_response" not in codes(clean)


def test_reward_on_special(clean):
    r = clean
    ids = r.reward_query_responses.clone()
    ids[0, int(r.score_positions[0])] = r.eos_token_id
    assert "reward_on_special" in codes(dataclasses.replace(r, reward_query_responses=ids))
    normal = [int(r.reward_query_responses[i, int(r.score_positions[i])]) not in r.special_ids for i in range(r.batch_size)]
    assert all(normal)  # the clean rollout reads every score on an ordinary token
    assert "reward_on_special" not in codes(r)


def test_no_chat_template(models, clean):
    plain = run_rollout(models, ["Hello there"], max_new_tokens=4, do_sample=False, use_chat_template=False)
    f = {f.code: f for f in diagnose(plain)}["no_chat_template"]
    assert "turned off" in f.detail
    assert "no_chat_template" not in codes(clean)


def test_logprob_gap_names_top_k(models, clean):
    topk = run_rollout(models, ["Name three fruits."], max_new_tokens=12, do_sample=True, temperature=1.0, top_k=5, seed=2)
    f = {f.code: f for f in diagnose(topk)}["logprob_gap"]
    assert "top_k=5" in f.detail
    assert "logprob_gap" not in codes(clean)


def test_reward_tokenizer_differs(clean):
    assert "reward_tokenizer_differs" in codes(dataclasses.replace(clean, reward_tokenizer_is_policy=False))
    assert "reward_tokenizer_differs" not in codes(clean)


def test_warnings_come_first(greedy_rollout):
    severities = [f.severity for f in diagnose(dataclasses.replace(greedy_rollout, chat_template_applied=False))]
    assert "warning" in severities and "info" in severities
    assert severities == sorted(severities, key=lambda s: s != "warning")


def test_trl_mask_versus_true_mask(models, greedy_rollout, clean):
    assert greedy_rollout.scores_true_mask is None  # opt-in: it costs one more reward pass
    assert "Turn on" in {f.code: f for f in diagnose(greedy_rollout)}["pad_equals_eos"].detail
    r = run_rollout(models, greedy_rollout.prompts, max_new_tokens=24, do_sample=False, seed=0, compare_masks=True)
    assert torch.equal(r.scores, greedy_rollout.scores)
    # one reward pass under the true mask, read at TRL's position (the mask's effect alone) and at the EOS the
    # true mask keeps (the read position's effect on top)
    true = torch.cat((r.query_attention_mask.bool(), ~r.padding_mask | (torch.arange(r.response_width) ==
                      (r.sequence_lengths + 1).unsqueeze(1)) & r.contain_eos_token.unsqueeze(1)), dim=1)
    logits, at_end, ends = get_reward(models.reward, r.postprocessed_query_responses, r.pad_token_id, r.context_length,
                                      attention_mask=true)
    rows = torch.arange(r.batch_size)
    assert torch.allclose(r.scores_true_mask, logits[rows, r.score_positions, 0], atol=1e-5)
    assert torch.allclose(r.scores_true_mask_at_end, at_end, atol=1e-5)
    assert torch.equal(ends[r.contain_eos_token], r.score_positions[r.contain_eos_token] + 1)  # one later
    f = {f.code: f for f in diagnose(r)}["mask_changes_reward"]
    mask_effect = float((r.scores_true_mask - r.scores).abs().max())
    read_effect = float((r.scores_true_mask_at_end - r.scores_true_mask).abs().max())
    assert f"mask alone changes them by up to {mask_effect:.3f}" in f.detail
    assert f"up to {read_effect:.3f} more: the read position's effect" in f.detail
    assert not torch.allclose(r.scores, r.scores_true_mask)  # the hidden prompt EOS tokens do change the reward
    assert "mask_changes_reward" not in codes(dataclasses.replace(clean, scores_true_mask=None))
    # the same scores under attention="tokenizer" directly
    tok = run_rollout(models, r.prompts, max_new_tokens=24, do_sample=False, seed=0, attention="tokenizer",
                      compare_masks=True)
    assert tok.scores_true_mask is None
