"""End to end: a rollout made with `run_rollout(trainer="grpo")` against TRL 1.16's real `GRPOTrainer` fed the
SAME completions. TRL runs its own `_generate_and_score_completions` (its `model.generate` replaced by one that
returns our rollout's sequences, the plain-generate path; or its `rollout_func` returning our ids and sampler
logprobs, the vLLM-path layout) and its own `_compute_loss`; we run `rollout_grpo_step` on the record.
Compared: the prompt ids, completion_mask, per-token logprobs, entropies, rewards, advantages, loss, token
weights (the gradient of TRL's loss with respect to its per-token logprobs) and the logged metrics."""

from __future__ import annotations


import pytest
import torch

from inspector.trainers.grpo_config import GRPOConfig
from inspector.trainers.grpo import rollout_grpo_inputs, rollout_grpo_step
from inspector.trainers.rewards import score_rewards
from test_grpo import _settings_on_trainer, _trl_policy_logps, r_has_e, r_length, r_prompt

pytestmark = pytest.mark.integration

PROMPTS = ["Write a long story about the sea.", "What is 2 + 2? Answer with one number."]
G, TOKENS, TEMPERATURE = 2, 16, 0.9
FUNCS = [r_length, r_has_e, r_prompt]


def _trl_trainer(path, tmp, generation_eos=None):
    """TRL's own trainer on the policy at `path`; `generation_eos` becomes the model's generation-config EOS
    (TRL's way to stop at another token: its `eos_token_ids` are read from there)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if generation_eos is not None:
        model.generation_config.eos_token_id = generation_eos
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    args = TRLConfig(output_dir=str(tmp), use_cpu=True, per_device_train_batch_size=len(PROMPTS) * G,
                     num_generations=G, max_completion_length=TOKENS, report_to="none", beta=0.0,
                     temperature=TEMPERATURE, seed=0, bf16=False, logging_steps=1)
    trainer = GRPOTrainer(model=model, reward_funcs=FUNCS, args=args, train_dataset=ds)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer, [ds[i] for i in range(len(PROMPTS)) for _ in range(G)]


def _trl_on_our_completions(trainer, inputs, r, cfg: GRPOConfig, vllm_layout: bool) -> dict:
    """TRL's generate-and-score and loss on the rollout's completions; the gradient of its loss with respect
    to its per-token logprobs; what its `generate` was given."""
    seen, held, recorded = {}, {}, {}
    generate, per_token, calculate = trainer.model.generate, trainer._get_per_token_logps_and_entropies, \
        trainer._calculate_rewards

    def replay_generate(*a, **kw):
        seen["input_ids"], seen["attention_mask"] = kw["input_ids"].clone(), kw["attention_mask"].clone()
        return r.sequences.clone()

    def holding(*a, **kw):
        logps, ents, aux = per_token(*a, **kw)
        if logps.requires_grad:
            held["logps"] = logps
        return logps, ents, aux

    def recording_rewards(*a, **kw):
        recorded["rewards_per_func"] = calculate(*a, **kw)
        return recorded["rewards_per_func"]

    mask = rollout_grpo_inputs(r)["completion_mask"].bool()
    if vllm_layout:
        prompt_ids = [q[m.bool()].tolist() for q, m in zip(r.queries, r.query_attention_mask)]
        trainer.rollout_func = lambda prompts, tr: {
            "prompt_ids": prompt_ids, "completion_ids": [c[m].tolist() for c, m in zip(r.responses, mask)],
            "logprobs": [lp[m].tolist() for lp, m in zip(r.logprobs, mask)]}
    else:
        trainer.model.generate = replay_generate
    trainer._get_per_token_logps_and_entropies = holding
    trainer._calculate_rewards = recording_rewards
    _settings_on_trainer(trainer, cfg, use_vllm=vllm_layout)
    trainer._metrics["train"].clear()
    try:
        out = trainer._generate_and_score_completions(inputs)
        logps, entropies = _trl_policy_logps(trainer, out)
        loss = trainer._compute_loss(trainer.model, out)
        (grad,) = torch.autograd.grad(loss, held["logps"])
    finally:
        trainer.model.generate, trainer.rollout_func = generate, None
        trainer._get_per_token_logps_and_entropies, trainer._calculate_rewards = per_token, calculate
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return dict(out=out, logps=logps.detach(), entropies=entropies, loss=loss.detach(), grad=grad, metrics=metrics,
                seen=seen, rewards_per_func=recorded["rewards_per_func"])


def _compare(r, tokenizer, trainer, inputs, cfg: GRPOConfig, vllm_layout: bool, label: str):
    trl = _trl_on_our_completions(trainer, inputs, r, cfg, vllm_layout)
    out = trl["out"]
    if not vllm_layout:  # the prompts tokenize identically: chat template, left padding, mask
        assert torch.equal(trl["seen"]["input_ids"], r.queries)
        assert torch.equal(trl["seen"]["attention_mask"].long(), r.query_attention_mask.long())
    assert trainer.eos_token_ids == r.eos_token_ids
    table = score_rewards(r, FUNCS, list(cfg.reward_weights or (1.0, 1.0, 1.0)), tokenizer=tokenizer)
    assert torch.allclose(table.rewards_per_func, trl["rewards_per_func"], equal_nan=True)
    s = rollout_grpo_step(r, table.rewards_per_func, cfg, reward_func_names=table.names,
                          use_sampler_logprobs=vllm_layout)
    T = out["completion_mask"].shape[1]
    m = out["completion_mask"].bool()
    assert torch.equal(s.completion_mask[:, :T].long(), out["completion_mask"].long())
    assert s.completion_mask[:, T:].sum() == 0
    assert m.any()
    logp_gap = (r.new_logprobs[:, :T] - trl["logps"])[m].abs().max().item()
    ent_gap = (r.entropies[:, :T] - trl["entropies"])[m].abs().max().item()
    weight_gap = (s.token_weights[:, :T] - trl["grad"])[m].abs().max().item()
    print(f"\nGRPO parity [{label}{', vLLM layout' if vllm_layout else ''}]: {int(m.sum())} tokens, max |logp diff| "
          f"{logp_gap:.2e}, max |entropy diff| {ent_gap:.2e}, max |weight diff| {weight_gap:.2e}, "
          f"loss {s.loss.item():+.8f} vs TRL {trl['loss'].item():+.8f}")
    assert logp_gap < 2e-4 and ent_gap < 2e-4
    assert torch.allclose(s.advantages, out["advantages"], atol=1e-5)
    # the vLLM layout's ratio carries the two recomputes' float32 difference (~1e-5 nats): the loss shows it
    assert s.loss.item() == pytest.approx(trl["loss"].item(), rel=1e-4, abs=2e-5 if vllm_layout else 1e-6)
    assert weight_gap < 1e-6 + 1e-4 * trl["grad"].abs().max().item()
    assert (trl["grad"][~m] == 0).all() and (s.token_weights[:, :T][~m] == 0).all()
    if vllm_layout:
        ours, theirs = s.importance_sampling_ratio, out["importance_sampling_ratio"]
        if theirs.shape[1] > 1:  # token level: compare where the mask is 1
            ours, theirs = ours[:, :T][m], theirs[m]
        assert torch.allclose(ours, theirs, rtol=1e-4)
    compared = [k for k in trl["metrics"] if k in s.metrics]
    for key in compared:
        assert s.metrics[key] == pytest.approx(trl["metrics"][key], rel=1e-4, abs=1e-4), key
    assert {"entropy", "completions/clipped_ratio", "reward", "reward_std"} <= set(compared)
    return s, trl


@pytest.fixture(scope="module")
def default_trainer(tmp_path_factory):
    from inspector.weights import converted_default_policy

    return _trl_trainer(converted_default_policy(), tmp_path_factory.mktemp("grpo-parity"))


def _rollout(models, **kw):
    from inspector import run_rollout

    return run_rollout(models, PROMPTS, max_new_tokens=TOKENS, temperature=TEMPERATURE, seed=kw.pop("seed", 1),
                       samples_per_prompt=G, trainer="grpo", **kw)


@pytest.fixture(scope="module")
def default_rollout(models):
    return _rollout(models)


def test_default_sampling_weighted_rewards_one_returning_none(models, default_trainer, default_rollout):
    r = default_rollout
    assert r.trainer == "grpo" and "cat(prompt_mask, completion_mask)" in r.conventions["new_logprobs"]
    cfg = GRPOConfig(num_generations=G, beta=0.0, reward_weights=(1.0, 2.0, 0.5))
    for vllm_layout in (False, True):
        s, trl = _compare(r, models.tokenizer, *default_trainer, cfg, vllm_layout, "default, weighted")
    assert torch.isnan(trl["rewards_per_func"][:, 1]).any(), "r_has_e should have returned None somewhere"


def test_top_k_top_p_entropy_is_the_full_vocabularys(models, default_trainer):
    r = _rollout(models, top_k=5, top_p=0.9, seed=2)
    valid = rollout_grpo_inputs(r)["completion_mask"].bool()
    # the sampled-from distribution (top-k 5) is narrower than the full vocabulary TRL's entropy sees
    assert (r.entropies[valid] - r.entropy[valid]).mean() > 0.1
    cfg = GRPOConfig(num_generations=G, beta=0.0, top_entropy_quantile=0.5)
    _compare(r, models.tokenizer, *default_trainer, cfg, False, "top_k=5 top_p=0.9, entropy mask")


def test_mask_truncated_completions(models, default_trainer, default_rollout):
    r = default_rollout
    s, _ = _compare(r, models.tokenizer, *default_trainer,
                    GRPOConfig(num_generations=G, beta=0.0, mask_truncated_completions=True), False, "mask_truncated")
    assert 0 < s.is_truncated.sum() < len(s.is_truncated), "the batch should hold both finished and cut completions"


def test_custom_stop_token_with_pad_equal_to_eos(models, tmp_path_factory):
    """A stop token other than EOS, on a model whose pad is its EOS: TRL stops there through the generation
    config's EOS, and the pad after it (never sampled) is in no mask and gets no weight."""
    stop = models.tokenizer.convert_tokens_to_ids(",")
    r = _rollout(models, stop_token_id=",", seed=0)
    assert r.pad_equals_eos and r.eos_token_ids == [models.tokenizer.eos_token_id, stop]
    ends = (r.responses == stop).int().argmax(1)
    stopped = (r.responses == stop).any(1) & (ends + 1 < r.response_width)
    assert stopped.any(), "no completion stopped at the comma before the end"
    rows = stopped.nonzero().flatten()
    assert (r.responses[rows, ends[rows] + 1] == r.pad_token_id).all()
    from inspector.weights import converted_default_policy

    trainer, inputs = _trl_trainer(converted_default_policy(), tmp_path_factory.mktemp("grpo-stop"),
                                   generation_eos=stop)
    s, trl = _compare(r, models.tokenizer, trainer, inputs, GRPOConfig(num_generations=G, beta=0.0), False,
                      "custom stop ','")
    assert (s.completion_mask[rows, ends[rows] + 1] == 0).all() and (s.token_weights[rows, ends[rows] + 1] == 0).all()


def test_a_model_with_two_eos_ids(tmp_path_factory, policy_copy):
    from inspector import load_models

    from inspector.weights import converted_default_policy
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(converted_default_policy()))
    other = tok.convert_tokens_to_ids(",")
    folder = policy_copy("SmolLM2-two-eos", eos_token_id=[tok.eos_token_id, other])  # several EOS ids
    models = load_models(str(folder))
    r = _rollout(models, seed=0)
    assert r.eos_token_ids == [tok.eos_token_id, other]
    ends = (r.responses == other).int().argmax(1)
    early = (r.responses == other).any(1) & (ends + 1 < r.response_width)
    assert early.any(), "no completion ended at the second EOS id before the last column"
    # generation stopped there: nothing but padding after the first EOS id of each row
    mask = rollout_grpo_inputs(r)["completion_mask"].bool()
    assert (r.responses[~mask] == r.pad_token_id).all()
    trainer, inputs = _trl_trainer(folder, tmp_path_factory.mktemp("grpo-two-eos"))
    _compare(r, models.tokenizer, trainer, inputs, GRPOConfig(num_generations=G, beta=0.0), False, "two EOS ids")
