"""The GRPO step's entropies are the full distribution's (TRL's `entropy_from_logits` at logits / T), not
the sampled token's surprisal: on hand-built logits where the two rank tokens differently, the
`top_entropy_quantile` mask, the `entropy` metric and the loss equal TRL's own functions'."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from inspector.trainers.grpo_config import GRPOConfig
from inspector.trainers.grpo import grpo_step, rollout_grpo_inputs

EOS, PAD = 0, 7


def _logits_and_ids():
    """4 completions x 4 tokens over a vocabulary of 8. Rows alternate a peaked distribution whose sampled
    token is unlikely (low entropy, high surprisal) and a flat one (high entropy, surprisal near log 8)."""
    g = torch.Generator().manual_seed(30)
    B, T, V = 4, 4, 8
    logits = torch.randn(B, T, V, generator=g) * 0.3
    ids = torch.randint(1, V - 1, (B, T), generator=g)
    peaked = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            if peaked[b, t]:
                logits[b, t, (int(ids[b, t]) + 1) % V] += 9.0      # mass on another token than the sampled one
    ids[1, 3], ids[3, 2] = EOS, EOS                                # two completions stop early
    return logits, ids


def _trl(logits, ids, temperature):
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    scaled = logits / temperature
    return selective_log_softmax(scaled, ids), entropy_from_logits(scaled)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_mask_metric_and_loss_follow_the_full_distributions_entropy(temperature):
    from accelerate import Accelerator
    from trl.trainer.grpo_trainer import GRPOTrainer

    logits, ids = _logits_and_ids()
    logps, entropy = _trl(logits, ids, temperature)
    surprisal = -logps
    r = SimpleNamespace(responses=ids, eos_token_id=EOS, pad_token_id=PAD, settings={}, new_logprobs=logps,
                        logprobs=logps, ref_logprobs=logps, entropy=entropy, entropies=entropy)
    inputs = rollout_grpo_inputs(r, [EOS])
    mask = inputs["completion_mask"]
    holder = SimpleNamespace(accelerator=Accelerator(cpu=True))
    theirs = GRPOTrainer.get_high_entropy_mask(holder, entropy, mask, 0.5)
    wrong = GRPOTrainer.get_high_entropy_mask(holder, surprisal, mask, 0.5)
    assert not torch.equal(theirs, wrong), "the case must tell the entropy from the surprisal"
    rewards = torch.tensor([[1.0], [0.0], [0.3], [0.9]])
    cfg = GRPOConfig(num_generations=2, loss_type="grpo", top_entropy_quantile=0.5)
    s = grpo_step(rewards, config=cfg, **{**inputs, "sampling_per_token_logps": None})
    assert torch.equal(s.entropy_mask, theirs)
    expected = (entropy * mask).sum() / mask.sum()
    assert s.metrics["entropy"] == pytest.approx(expected.item(), rel=1e-6)
    assert abs(expected.item() - ((surprisal * mask).sum() / mask.sum()).item()) > 0.1
    # the loss counts exactly the high-entropy tokens: the token weights are 0 elsewhere
    assert torch.equal(s.token_weights != 0, theirs & (s.advantages.abs() > 0).unsqueeze(1))
