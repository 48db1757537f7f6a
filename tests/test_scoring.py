"""get_reward and the logprob recompute on small randomly initialised models, and parity with TRL."""

from __future__ import annotations

import pytest
import torch

import trl0
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from inspector import first_true_indices, forward_logprobs, get_reward
from inspector.trainers.scoring import backbone_states, forward_logits, head_logprobs_and_entropies, trl_attention_mask

PAD = EOS = 2  # pad == eos, as in SmolLM2


def tiny_config(**extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, **extra,
    )


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    return LlamaForSequenceClassification(tiny_config(num_labels=1)).eval()


@pytest.fixture(scope="module")
def causal_model():
    torch.manual_seed(1)
    return LlamaForCausalLM(tiny_config()).eval()


# query width 3 (left padded), response width 4: pad == eos, no EOS, an immediate EOS, an EOS in the prompt
QUERY_RESPONSES = torch.tensor(
    [
        [PAD, 5, 6, 7, 8, EOS, PAD],   # stops after two tokens; the reward is read at 8 (before the EOS)
        [4, 5, 6, 7, 8, 9, 10],        # no stop: read at the last column
        [PAD, 5, 6, EOS, PAD, PAD, PAD],  # immediate stop: read inside the query, at 6
        [3, EOS, 6, 9, 9, 9, EOS],     # an EOS inside the prompt is hidden by TRL's mask
    ]
)
CONTEXT = 3


def test_get_reward_reads_where_trl_reads(reward_model):
    logits, scores, lengths = get_reward(reward_model, QUERY_RESPONSES, PAD, CONTEXT)
    assert logits.shape == (4, 7, 1)
    assert lengths.tolist() == [4, 6, 2, 5]
    assert torch.equal(scores, logits[torch.arange(4), lengths, 0])


def test_get_reward_matches_trl(reward_model):
    trl_utils = trl0.functions()
    ours = get_reward(reward_model, QUERY_RESPONSES, PAD, CONTEXT)
    theirs = trl_utils.get_reward(reward_model, QUERY_RESPONSES, PAD, CONTEXT)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)


def test_get_reward_matches_trl_on_random_batches(reward_model):
    trl_utils = trl0.functions()
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        ids = torch.randint(3, 32, (6, 12), generator=gen)
        ids[torch.rand(6, 12, generator=gen) < 0.15] = PAD
        context = int(torch.randint(1, 11, (1,), generator=gen))
        ours = get_reward(reward_model, ids, PAD, context)
        theirs = trl_utils.get_reward(reward_model, ids, PAD, context)
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, atol=1e-6)


def test_get_reward_with_an_explicit_mask(reward_model):
    # the true mask keeps the EOS of row 0 visible, and the score is read on it
    mask = QUERY_RESPONSES != PAD
    mask[0, 5] = True
    mask[3, 1] = True
    mask[3, 6] = True
    _, scores, lengths = get_reward(reward_model, QUERY_RESPONSES, PAD, CONTEXT, attention_mask=mask)
    assert lengths.tolist() == [5, 6, 2, 6]


def test_forward_logits_off_by_one_on_three_tokens(causal_model):
    ids = torch.tensor([[11, 12, 13]])  # query [11], response [12, 13]
    full = causal_model(input_ids=ids).logits  # (1, 3, V)
    sliced = forward_logits(causal_model, ids, PAD, context_length=1)
    assert sliced.shape == (1, 2, 32)
    assert torch.allclose(sliced, full[:, 0:2], atol=1e-5)
    lp = forward_logprobs(causal_model, ids, PAD, context_length=1)
    expected = torch.stack([torch.log_softmax(full[0, 0], -1)[12], torch.log_softmax(full[0, 1], -1)[13]])
    assert torch.allclose(lp[0], expected, atol=1e-5)


def test_forward_logprobs_divides_by_temperature(causal_model):
    ids = torch.tensor([[11, 12, 13, 14]])
    logits = forward_logits(causal_model, ids, PAD, context_length=2)
    lp = forward_logprobs(causal_model, ids, PAD, context_length=2, temperature=0.7)
    expected = torch.log_softmax(logits / (0.7 + 1e-7), -1).gather(-1, ids[:, 2:].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(lp, expected, atol=1e-5)


def test_head_logprobs_equal_forward_logprobs(causal_model):
    gen = torch.Generator().manual_seed(9)
    ids = torch.randint(3, 32, (5, 10), generator=gen)
    ids[:, :2] = PAD
    mask = trl_attention_mask(ids, PAD)
    hidden = backbone_states(causal_model.model, ids, mask)
    fast, none = head_logprobs_and_entropies(causal_model.lm_head, hidden, ids[:, 4:], 4, 0.9 + 1e-7, chunk=2,
                                             entropies=False)
    assert none is None
    slow = forward_logprobs(causal_model, ids, PAD, 4, temperature=0.9)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_sequence_lengths_idiom_for_rewards():
    responses = QUERY_RESPONSES[:, CONTEXT:]
    assert (first_true_indices(responses == PAD) - 1).tolist() == [1, 3, -1, 2]
