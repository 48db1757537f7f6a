"""Integration tests of run_rollout on the real default models (loaded once per session)."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

import trl0

from inspector import EOS, InputError, first_true_indices, forward_logprobs, get_reward, run_rollout, truncate_response

pytestmark = pytest.mark.integration


def valid(rollout) -> torch.Tensor:
    """Response positions up to sequence_lengths (the tokens TRL trains on)."""
    return ~rollout.padding_mask


def test_the_manual_split(greedy_rollout):
    r = greedy_rollout
    Q = r.context_length
    assert Q == r.queries.shape[1]
    assert torch.equal(r.responses, r.sequences[:, Q:])
    assert torch.equal(r.query_responses, torch.cat((r.queries, r.responses), 1))
    # TRL's generate replaced the pad ids of the left padding by 0 in what the model saw and returned
    pads = r.queries == r.pad_token_id
    assert pads.any()
    assert torch.all(r.sequences[:, :Q][pads] == 0)
    assert torch.equal(r.sequences[:, :Q][~pads], r.queries[~pads])


def test_postprocessing_follows_trl(greedy_rollout):
    r = greedy_rollout
    assert r.stop_token_id == r.eos_token_id
    assert torch.equal(r.postprocessed_responses, truncate_response(r.stop_token_id, r.pad_token_id, r.responses))
    assert torch.equal(r.postprocessed_query_responses, torch.cat((r.queries, r.postprocessed_responses), 1))
    assert torch.equal(r.sequence_lengths, first_true_indices(r.postprocessed_responses == r.pad_token_id) - 1)
    assert torch.equal(r.contain_eos_token, (r.postprocessed_responses == r.eos_token_id).any(-1))
    assert r.pad_equals_eos  # SmolLM2: the common real-world trap, kept as it is


def test_queries_are_left_padded(greedy_rollout):
    r = greedy_rollout
    lengths = r.query_attention_mask.sum(1)
    assert lengths.min() < lengths.max()  # the prompts differ in length
    for row, n in zip(r.query_attention_mask.tolist(), lengths.tolist()):
        assert row == [0] * (len(row) - n) + [1] * n
    assert all(text.startswith("<|im_start|>") for text in r.query_texts)  # the chat template was applied


def test_greedy_generation_matches_trls_generate_recipe(models, greedy_rollout):
    """TRL's generate utility: pads replaced by 0, mask != pad, one generate call, then cat(queries, response)."""
    r = greedy_rollout
    mask = r.queries != r.pad_token_id
    output = models.policy.generate(
        input_ids=torch.masked_fill(r.queries, ~mask, 0),
        attention_mask=mask,
        generation_config=GenerationConfig(max_new_tokens=24, do_sample=False, pad_token_id=r.pad_token_id,
                                           eos_token_id=r.eos_token_id, return_dict_in_generate=True),
    )
    assert torch.equal(output.sequences, r.sequences)


def test_greedy_logprobs_equal_the_recompute(greedy_rollout):
    r = greedy_rollout
    gap = (r.logprobs - r.new_logprobs)[valid(r)].abs().max().item()
    assert gap < 1e-4
    assert torch.all(r.ranks[valid(r)] == 0)  # greedy takes the most likely token


def test_recompute_and_reference_equal_trls_forward(models, sampled_rollout):
    """TRL 0.x's `forward` and `selective_log_softmax` with logits / (temperature + 1e-7), as its rollout
    computes `ref_logprobs` and its optimisation loop `new_logprobs`."""
    fn = trl0.functions()
    r = sampled_rollout
    out = fn.forward(models.policy, r.query_responses, r.pad_token_id)
    logits = out.logits[:, r.context_length - 1 : -1] / (r.settings["temperature"] + 1e-7)
    theirs = fn.selective_log_softmax(logits, r.responses)
    assert torch.allclose(r.new_logprobs, theirs, atol=1e-4)
    assert torch.allclose(r.ref_logprobs, theirs, atol=1e-4)


def test_sampling_logprobs_need_the_temperature(models, sampled_rollout):
    r = sampled_rollout
    keep = valid(r)
    assert (r.logprobs - r.new_logprobs)[keep].abs().max().item() < 1e-3
    # the trap: a recompute that forgets the temperature does not match what was sampled
    without = forward_logprobs(models.policy, r.query_responses, r.pad_token_id, r.context_length, temperature=1.0)
    assert (r.logprobs - without)[keep].abs().max().item() > 0.05
    # and the raw logits' logprobs are exactly that temperature-less distribution
    assert (r.raw_logprobs - without)[keep].abs().max().item() < 1e-3


def test_values_and_scores_equal_trls_get_reward(models, sampled_rollout):
    r = sampled_rollout
    full_value, _, _ = get_reward(models.value, r.query_responses, r.pad_token_id, r.context_length)
    assert torch.allclose(r.values, full_value[:, r.context_length - 1 : -1].squeeze(-1), atol=1e-4)
    _, scores, lengths = get_reward(models.reward, r.postprocessed_query_responses, r.pad_token_id, r.context_length)
    assert torch.allclose(r.scores, scores, atol=1e-4)
    assert torch.equal(r.score_positions, lengths)
    assert torch.equal(r.score_positions, r.sequence_lengths + r.context_length)


def test_parity_with_trl_get_reward_on_the_default_reward_model(models, sampled_rollout):
    trl_utils = trl0.functions()
    r = sampled_rollout
    ours = get_reward(models.reward, r.postprocessed_query_responses, r.pad_token_id, r.context_length)
    theirs = trl_utils.get_reward(models.reward, r.postprocessed_query_responses, r.pad_token_id, r.context_length)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)


def test_capture_shapes(sampled_rollout):
    r = sampled_rollout
    B, G = r.responses.shape
    for name in ("logprobs", "raw_logprobs", "new_logprobs", "ref_logprobs", "entropy", "ranks", "values"):
        assert getattr(r, name).shape == (B, G), name
    assert r.topk_ids.shape == (B, G, 5)
    # the sampled token's logprob is never above the best alternative's
    assert torch.all(r.logprobs <= r.topk_logprobs[..., 0] + 1e-5)
    assert all(int(i) in r.tokens for i in r.topk_ids.flatten()[:50])


def test_same_seed_same_rollout(models, sampled_rollout):
    again = run_rollout(
        models,
        ["Tell me about your favourite food.", "Describe a rainy day in one sentence."],
        max_new_tokens=24, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, seed=1234,
    )
    assert torch.equal(again.sequences, sampled_rollout.sequences)
    assert torch.allclose(again.scores, sampled_rollout.scores)


def test_no_truncation_and_a_custom_stop_token(models):
    period = models.tokenizer.convert_tokens_to_ids(".")
    r = run_rollout(models, ["Write three short sentences about dogs."], max_new_tokens=30, do_sample=False, stop_token_id=period)
    assert r.stop_token_id == period
    assert r.responses[0, -1] == period and (r.responses[0, :-1] != period).all()  # generation ended at it
    # in TRL 0.11 to 0.13 generation never stopped early and the truncation cut after the first stop token
    old = run_rollout(models, ["Write three short sentences about dogs."], max_new_tokens=30, do_sample=False,
                      stop_token_id=period, generation_stop="never")
    assert old.response_width == 30
    cut = truncate_response(period, old.pad_token_id, old.responses)
    assert torch.equal(old.postprocessed_responses, cut) and not torch.equal(cut, old.responses)
    assert torch.equal(old.responses[0, : r.response_width], r.responses[0])
    plain = run_rollout(models, ["Write two short sentences about cats."], max_new_tokens=20, do_sample=False, stop_token_id=None)
    assert plain.stop_token_id is None and plain.response_width == 20
    assert torch.equal(plain.postprocessed_responses, plain.responses)


def test_tokenizer_attention_keeps_eos_in_the_prompt_visible(models):
    r = run_rollout(models, ["Say hello."], max_new_tokens=8, do_sample=False, attention="tokenizer")
    assert r.attention == "tokenizer"
    # the chat template's <|im_end|> tokens stay in the query side of sequences: nothing was replaced by 0
    assert torch.equal(r.sequences[:, : r.context_length], r.queries)
    assert (r.logprobs - r.new_logprobs)[valid(r)].abs().max().item() < 1e-4


def test_samples_per_prompt(models):
    r = run_rollout(models, ["Name a colour."], max_new_tokens=6, samples_per_prompt=3, seed=7)
    assert r.batch_size == 3 and r.prompt_index == [0, 0, 0]
    assert len(set(map(tuple, r.responses.tolist()))) > 1  # sampled, not copies


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        ([], {}, "no prompts"),
        (["  "], {}, "empty"),
        (["hi"], {"temperature": 0.0}, "temperature"),
        (["hi"], {"top_p": 0.0}, "top_p"),
        (["hi"], {"max_new_tokens": 0}, "max_new_tokens"),
        (["hi"], {"attention": "sideways"}, "attention"),
        (["word " * 50], {"max_prompt_tokens": 20}, "limit of 20"),
        (["word " * 15], {"max_prompt_tokens": 20}, "limit is 20"),
        (["hi"], {"seed": -1}, "seed"),
        (["hi\ud800"], {}, "surrogate"),
        (["hi", 3], {}, "not text"),
        (["hi"], {"stop_token_id": 10**9}, "stop_token_id"),
    ],
)
def test_bad_input_is_refused_clearly(models, prompts, kwargs, message):
    with pytest.raises(InputError, match=message):
        run_rollout(models, prompts, **kwargs)


def test_default_stop_is_eos(models):
    r = run_rollout(models, ["Hi"], max_new_tokens=4, do_sample=False, stop_token_id=EOS)
    assert r.stop_token_id == models.tokenizer.eos_token_id
