"""PPO quantities against TRL 0.x's own rollout code (the block of `PPOTrainer.train`, run from its wheel)
and against an independent, loop-by-loop implementation of the same math."""

from __future__ import annotations

import math

import pytest
import torch

from types import SimpleNamespace

import trl0
from inspector.errors import InputError
from inspector.trainers.ppo import PPOConfig, ppo_step

PAD = EOS = 2


def reference_step(logprobs, ref_logprobs, values, scores, seq_lens, has_eos, cfg: PPOConfig):
    """An independent loop: one sample and one position at a time, in plain Python floats."""
    B, G = len(logprobs), len(logprobs[0])
    scores = [s - cfg.missing_eos_penalty if (cfg.missing_eos_penalty is not None and not e) else s
              for s, e in zip(scores, has_eos)]
    out = {k: [[0.0] * G for _ in range(B)] for k in ("kl", "nsr", "rewards", "adv", "ret", "values")}
    for b in range(B):
        L = seq_lens[b]
        for t in range(G):
            lp = 1.0 if t > L else logprobs[b][t]
            rp = 1.0 if t > L else ref_logprobs[b][t]
            logr = rp - lp
            kl = -logr if cfg.kl_estimator == "k1" else math.exp(logr) - 1 - logr
            out["kl"][b][t] = kl
            out["nsr"][b][t] = -cfg.kl_coef * kl
            out["rewards"][b][t] = -cfg.kl_coef * kl
            out["values"][b][t] = 0.0 if t > L + 1 else values[b][t]
        end = L + 1 if L + 1 < G else L
        out["rewards"][b][end] += scores[b]
        gae = 0.0
        for t in reversed(range(G)):
            nxt = out["values"][b][t + 1] if t < G - 1 else 0.0
            delta = out["rewards"][b][t] + cfg.gamma * nxt - out["values"][b][t]
            gae = delta + cfg.gamma * cfg.lam * gae
            out["adv"][b][t] = gae
            out["ret"][b][t] = gae + out["values"][b][t]
    kept = [out["adv"][b][t] for b in range(B) for t in range(G) if t <= seq_lens[b]]
    mean = sum(kept) / len(kept)
    var = sum((x - mean) ** 2 for x in kept) / len(kept) * len(kept) / (len(kept) - 1)
    for b in range(B):
        for t in range(G):
            out["adv"][b][t] = 0.0 if t > seq_lens[b] else (out["adv"][b][t] - mean) / math.sqrt(var + 1e-8)
    out["scores"] = scores
    return out


def batch():
    """pad == eos (stops early), no EOS (cut by max_new_tokens), an empty response (immediate stop), and a
    response whose stop token sits at the last column (sequence_lengths + 1 does not fit)."""
    gen = torch.Generator().manual_seed(0)
    B, G = 4, 6
    logprobs = -torch.rand(B, G, generator=gen) * 3
    ref_logprobs = logprobs + 0.3 * torch.randn(B, G, generator=gen)
    values = torch.randn(B, G, generator=gen)
    scores = torch.tensor([0.8, -0.4, 0.1, 1.5])
    seq_lens = torch.tensor([2, 5, -1, 4])
    has_eos = torch.tensor([True, False, True, True])
    return logprobs, ref_logprobs, values, scores, seq_lens, has_eos


def responses():
    """Token ids that give `batch()`'s sequence lengths and EOS flags under pad == eos."""
    return torch.tensor([[5, 6, 7, EOS, PAD, PAD], [5, 6, 7, 8, 9, 10], [EOS, PAD, PAD, PAD, PAD, PAD],
                         [5, 6, 7, 8, 9, EOS]])


CONFIGS = [
    PPOConfig(),
    PPOConfig(kl_estimator="k3"),
    PPOConfig(missing_eos_penalty=1.0, kl_coef=0.2),
    PPOConfig(gamma=0.9, lam=0.8),
    PPOConfig(whiten_rewards=True),
    PPOConfig(whiten_rewards=True, kl_estimator="k3", missing_eos_penalty=0.5, gamma=0.95, lam=0.9),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_parity_with_trls_own_rollout_code(cfg):
    """The block of TRL 0.x's PPOTrainer.train from the EOS filter to the whitened advantages, and the metrics
    it logs, executed from the wheel on the same tensors."""
    lp, rp, v, s, L, e = batch()
    resp = responses()
    step = ppo_step(lp, rp, v, s, L, e, num_eos_tokens=int((resp == EOS).sum()), config=cfg)
    trl = trl0.post_rollout(cfg, SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS), responses=resp,
                            postprocessed_responses=resp, logprobs=lp, ref_logprobs=rp, sequence_lengths=L, scores=s,
                            values=v)
    assert torch.equal(trl["contain_eos_token"], e)
    for mine, theirs in (("logprobs", "logprobs"), ("ref_logprobs", "ref_logprobs"), ("values", "values"),
                         ("kl", "kl"), ("non_score_reward", "non_score_reward"), ("scores", "scores"),
                         ("rewards", "rewards"), ("advantages", "advantages"), ("returns", "returns"),
                         ("padding_mask", "padding_mask"), ("padding_mask_p1", "padding_mask_p1")):
        assert torch.allclose(getattr(step, mine).float(), trl[theirs].float(), atol=1e-6), mine
    assert step.metrics == pytest.approx(trl["metrics"], abs=1e-6)


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if not c.whiten_rewards])
def test_parity_with_the_loop_reference(cfg):
    lp, rp, v, s, L, e = batch()
    step = ppo_step(lp, rp, v, s, L, e, config=cfg)
    ref = reference_step(lp.tolist(), rp.tolist(), v.tolist(), s.tolist(), L.tolist(), e.tolist(), cfg)
    assert torch.allclose(step.kl, torch.tensor(ref["kl"]), atol=1e-5)
    assert torch.allclose(step.non_score_reward, torch.tensor(ref["nsr"]), atol=1e-6)
    assert torch.allclose(step.rewards, torch.tensor(ref["rewards"]), atol=1e-5)
    assert torch.allclose(step.values, torch.tensor(ref["values"]), atol=1e-6)
    assert torch.allclose(step.returns, torch.tensor(ref["ret"]), atol=1e-4)
    assert torch.allclose(step.advantages, torch.tensor(ref["adv"]), atol=1e-4)
    assert torch.allclose(step.scores, torch.tensor(ref["scores"]), atol=1e-6)


def test_where_the_score_goes():
    lp, rp, v, s, L, e = batch()
    step = ppo_step(lp, rp, v, s, L, e)
    # sequence_lengths + 1 when it fits (one position after the last real token, TRL issue 1893); else the last
    assert step.reward_positions.tolist() == [3, 5, 0, 5]
    assert step.padding_mask[2].all()  # the empty response: every position is padding
    assert torch.all(step.logprobs[step.padding_mask] == 1.0)


def test_missing_eos_penalty_only_touches_samples_without_eos():
    lp, rp, v, s, L, e = batch()
    step = ppo_step(lp, rp, v, s, L, e, config=PPOConfig(missing_eos_penalty=2.0))
    assert step.scores.tolist() == pytest.approx([0.8, -2.4, 0.1, 1.5])


def test_whiten_rewards_zeroes_padding():
    lp, rp, v, s, L, e = batch()
    step = ppo_step(lp, rp, v, s, L, e, config=PPOConfig(whiten_rewards=True))
    assert torch.all(step.rewards[step.padding_mask_p1] == 0)


def test_bad_config_is_refused():
    lp, rp, v, s, L, e = batch()
    with pytest.raises(InputError, match="kl_estimator"):
        ppo_step(lp, rp, v, s, L, e, config=PPOConfig(kl_estimator="k2"))
