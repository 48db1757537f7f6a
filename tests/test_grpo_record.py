"""What a rollout made for a GRPO-family trainer holds: its trainer, whose convention each field follows, the
trainer's entropies from the recompute's own pass, every EOS id, a mask without unsampled pads; that records
keep and reopen these, and that one trainer's rollout is never read silently as another's."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from inspector.record.format import rollout_from_dict, rollout_to_dict
from inspector.trainers.grpo import rollout_grpo_inputs, trainer_mismatch
from inspector.trainers.scoring import backbone_states, forward_logits, head_logprobs_and_entropies

PAD = EOS = 2
STOP = 7


def _record(**extra):
    responses = torch.tensor([[5, STOP, PAD, PAD], [5, 6, EOS, PAD], [5, 6, 6, 6]])
    fields = dict(responses=responses, eos_token_id=EOS, pad_token_id=PAD, stop_token_id=STOP, settings={},
                  new_logprobs=torch.zeros(3, 4), logprobs=torch.zeros(3, 4), ref_logprobs=torch.zeros(3, 4),
                  entropy=torch.ones(3, 4), entropies=torch.full((3, 4), 2.0))
    return SimpleNamespace(**(fields | extra))


def test_a_custom_stop_ends_the_mask_and_the_pad_after_it_stays_out():
    """pad == EOS: the pad after the stop token was never sampled. TRL (stop set as the generation config's
    EOS) counts the stop as an EOS id; the record's ids without the stop must still end the mask there."""
    for recorded in ([], [EOS], [EOS, STOP]):
        inputs = rollout_grpo_inputs(_record(eos_token_ids=recorded))
        assert inputs["completion_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], recorded
        assert inputs["is_truncated"].tolist() == [False, False, True]


def test_the_step_reads_the_trainers_entropies_not_the_sampled_from_ones():
    inputs = rollout_grpo_inputs(_record(eos_token_ids=[EOS]))
    assert torch.equal(inputs["entropies"], torch.full((3, 4), 2.0))
    old = _record(eos_token_ids=[EOS])
    del old.entropies
    assert rollout_grpo_inputs(old)["entropies"] is None  # never the sampled-from `entropy` in its place


def test_every_eos_id_of_the_record_ends_the_mask():
    r = _record(responses=torch.tensor([[5, 9, 6, PAD], [5, 6, EOS, PAD]]), stop_token_id=EOS,
                eos_token_ids=[EOS, 9])
    assert rollout_grpo_inputs(r)["completion_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]


def test_a_trainer_switch_says_what_to_run_again():
    ppo, grpo, verl = (SimpleNamespace(trainer=t) for t in ("ppo", "grpo", "verl"))
    assert trainer_mismatch(ppo, "ppo") is None and trainer_mismatch(grpo, "verl") is None
    assert trainer_mismatch(verl, "grpo") is None
    message = trainer_mismatch(ppo, "grpo")
    assert "ids != pad" in message and "Trainer = GRPO (TRL 1.16)" in message and "--trainer grpo" in message
    assert "--trainer ppo" in trainer_mismatch(grpo, "ppo")
    assert "--trainer verl" in trainer_mismatch(SimpleNamespace(), "verl")  # a record from before: PPO's


def test_head_entropies_are_the_full_vocabularys_at_logits_over_t_from_the_same_pass():
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=PAD,
                                         eos_token_id=EOS)).eval()
    ids = torch.randint(3, 32, (3, 9), generator=torch.Generator().manual_seed(4))
    ids[:, :2] = PAD
    mask = ids != PAD
    hidden = backbone_states(model.model, ids, mask)
    logps, ents = head_logprobs_and_entropies(model.lm_head, hidden, ids[:, 4:], 4, 0.7)
    logits = forward_logits(model, ids, PAD, 4, attention_mask=mask) / 0.7
    logp = torch.log_softmax(logits, -1)
    assert torch.allclose(logps, logp.gather(-1, ids[:, 4:].unsqueeze(-1)).squeeze(-1), atol=1e-5)
    assert torch.allclose(ents, -(logp.exp() * logp).sum(-1), atol=1e-5)


@pytest.mark.integration
def test_the_record_keeps_its_trainer_conventions_entropies_and_eos_ids(models):
    from inspector import run_rollout

    r = run_rollout(models, ["Say hi."], max_new_tokens=6, seed=0, samples_per_prompt=2, trainer="verl")
    assert r.trainer == "verl" and r.eos_token_ids == [models.tokenizer.eos_token_id]
    assert "TRL 1.16 GRPO" in r.conventions["new_logprobs"] and r.entropies.shape == r.responses.shape
    again = rollout_from_dict(json.loads(json.dumps(rollout_to_dict(r))))
    assert again.trainer == "verl" and again.conventions == r.conventions and again.eos_token_ids == r.eos_token_ids
    assert torch.equal(again.entropies, r.entropies)
    old = rollout_to_dict(r)
    for name in ("trainer", "conventions", "entropies", "eos_token_ids"):
        old.pop(name)
        old["dtypes"].pop(name, None)
    before = rollout_from_dict(json.loads(json.dumps(old)))
    assert before.trainer == "ppo" and before.entropies is None and before.eos_token_ids == []
    assert trainer_mismatch(before, "grpo") is not None


@pytest.mark.integration
def test_grpo_costs_no_model_pass_more_than_ppo(models):
    from inspector import run_rollout

    counts = {}
    for trainer in ("ppo", "grpo"):
        backbone = getattr(models.policy, models.policy.base_model_prefix)
        calls = [0]
        handle = backbone.register_forward_pre_hook(lambda *a, **k: calls.__setitem__(0, calls[0] + 1))
        try:
            r = run_rollout(models, ["Say hi."], max_new_tokens=12, seed=0, stop_token_id=None, trainer=trainer,
                            samples_per_prompt=2)
        finally:
            handle.remove()
        counts[trainer] = calls[0]
        assert r.response_width == 12
        assert (r.entropies is None) == (trainer == "ppo")  # TRL's PPO rollout computes no entropies: nor do we
    print(f"\nbackbone calls per rollout (12 generated tokens): {counts}")
    assert counts == {"ppo": 13, "grpo": 13}   # 12 generation steps and one recompute (GRPO's entropies included)
