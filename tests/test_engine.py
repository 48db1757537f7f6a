"""Rollouts sampled by a real vLLM CPU server (started once per session per logprobs mode, see conftest.py),
recomputed in-process: the layout, the agreement, the diagnosis, and the corrections against TRL 1.16's
inline code written out as an independent loop."""

from __future__ import annotations

import json
import math

import pytest
import torch

from inspector import run_rollout
from inspector.sources.engine import EngineError
from inspector.diagnostics.sampler import sampler_mismatch
from inspector.views.mismatch import mismatch_markdown
from test_trl_rollout import penalised  # noqa: F401 (a fixture: the default policy with a repetition penalty)

pytestmark = pytest.mark.integration

PROMPTS = ["Write a happy sentence.", "Name a fruit."]
ARGS = dict(max_new_tokens=24, temperature=0.7, seed=0, samples_per_prompt=2)


@pytest.fixture(scope="module")
def processed_rollout(models, vllm_processed):
    return run_rollout(models, PROMPTS, engine_url=vllm_processed, attention="tokenizer", **ARGS)


@pytest.fixture(scope="module")
def raw_rollout(models, vllm_raw):
    return run_rollout(models, PROMPTS, engine_url=vllm_raw, attention="tokenizer", **ARGS)


def test_the_record_says_who_sampled(processed_rollout, vllm_processed):
    e = processed_rollout.engine
    assert e["engine"] == "openai-completions" and e["url"] == vllm_processed
    assert e["served_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert e["vocabulary_check"].startswith("/tokenize")
    assert e["trainer_dtype"] == "float32"
    assert len(e["finish_reasons"]) == 4 and set(e["finish_reasons"]) <= {"stop", "length"}
    assert e["request"]["n"] == 2 and e["request"]["temperature"] == 0.7 and e["request"]["seed"] == 0


def test_an_engine_rollout_reopens_from_its_record_with_the_same_mismatch(processed_rollout):
    from inspector.record.format import rollout_from_dict, rollout_to_json

    again = rollout_from_dict(json.loads(rollout_to_json(processed_rollout)))
    assert again.engine == processed_rollout.engine
    assert torch.equal(again.processed_logprobs, processed_rollout.processed_logprobs)
    a, b = sampler_mismatch(again), sampler_mismatch(processed_rollout)
    assert a.diagnosis == b.diagnosis and torch.equal(a.sequence_ratio, b.sequence_ratio)


def test_sequences_are_laid_out_as_trls_vllm_path(processed_rollout):
    r = processed_rollout
    Q, pad, eos = r.context_length, r.pad_token_id, r.eos_token_id
    # left-padded queries with the pad id (not generate's 0): the ids the engine was sent, as TRL pads them
    assert torch.equal(r.sequences[:, :Q], r.queries)
    for b, reason in enumerate(r.engine["finish_reasons"]):
        row = r.responses[b].tolist()
        if reason == "stop":
            end = row.index(eos) + 1  # the EOS is returned and kept, then the pad id to the right
            assert all(t == pad for t in row[end:])
            assert torch.all(r.logprobs[b, end:] == 0.0)  # TRL pads sampling logprobs with 0.0
        else:
            assert eos not in row and len(row) == r.response_width == 24
    assert torch.all(r.logprobs[r.responses != pad] < 0)


def test_an_engine_rollout_has_every_panel_of_an_in_process_one(models, processed_rollout):
    from inspector.app.rollouts import rollout_views

    local = run_rollout(models, PROMPTS, attention="tokenizer", **ARGS)
    engine_views = rollout_views(processed_rollout, "")
    local_views = rollout_views(local, "")
    assert [type(v) for v in engine_views] == [type(v) for v in local_views]
    for name in ("logprobs", "new_logprobs", "raw_logprobs", "ref_logprobs", "ranks", "entropy", "values"):
        a, b = getattr(processed_rollout, name), getattr(local, name)
        assert a.shape[0] == b.shape[0] and a.dtype == b.dtype, name
        assert torch.isfinite(a[~processed_rollout.padding_mask]).all(), name
    assert processed_rollout.topk_ids.shape[-1] == local.topk_ids.shape[-1] == 5
    # the engine's top alternatives, best first, with the sampled token's rank where it is among them
    top = processed_rollout.topk_logprobs
    assert torch.all(top[..., :-1] >= top[..., 1:])


def test_processed_logprobs_agree_with_the_fp32_recompute(processed_rollout):
    r = processed_rollout
    mm = sampler_mismatch(r)
    gap = (r.logprobs - r.new_logprobs)[mm.mask].abs()
    print(f"\nprocessed_logprobs vs fp32 recompute at T=0.7: max |gap| {float(gap.max()):.2e}, "
          f"mean {float(gap.mean()):.2e} over {int(mm.mask.sum())} tokens")
    assert float(gap.max()) < 1e-3
    assert mm.diagnosis.cause == "agree"
    assert mm.diagnosis.distances["no_temperature"] > 0.1  # the candidates really differ here


def test_raw_logprobs_give_a_large_gap_and_the_diagnosis_names_the_temperature(raw_rollout):
    r = raw_rollout
    mm = sampler_mismatch(r)
    gap = (r.logprobs - r.new_logprobs)[mm.mask].abs()
    print(f"\nraw_logprobs vs recompute at T=0.7: max |gap| {float(gap.max()):.3f}, mean {float(gap.mean()):.3f}")
    assert float(gap.mean()) > 0.1
    assert mm.diagnosis.cause == "raw_logprobs"
    assert "T = 0.7" in mm.diagnosis.text and "--logprobs-mode processed_logprobs" in mm.diagnosis.text
    # the raw engine numbers are the recompute without the temperature
    assert float((r.logprobs - r.raw_logprobs)[mm.mask].abs().max()) < 1e-3


def test_top_k_top_p_renormalisation_is_named(models, vllm_processed):
    r = run_rollout(models, PROMPTS[:1], engine_url=vllm_processed, attention="tokenizer", top_k=20, top_p=0.9,
                    **(ARGS | {"samples_per_prompt": 1}))
    mm = sampler_mismatch(r)
    assert mm.diagnosis.cause == "truncation", mm.diagnosis
    assert float((r.logprobs - r.processed_logprobs)[mm.mask].abs().max()) < 1e-3
    assert "top_k=20" in mm.diagnosis.text


def test_a_ppo_mask_that_hides_prompt_tokens_is_named_first(models, vllm_processed):
    r = run_rollout(models, PROMPTS[:1], engine_url=vllm_processed, attention="trl", **(ARGS | {"samples_per_prompt": 1}))
    mm = sampler_mismatch(r)
    assert mm.diagnosis.cause == "attention_mask"
    assert "attention = tokenizer" in mm.diagnosis.text


def test_the_same_seed_gives_the_same_engine_rollout(models, vllm_processed, processed_rollout):
    again = run_rollout(models, PROMPTS, engine_url=vllm_processed, attention="tokenizer", **ARGS)
    assert torch.equal(again.sequences, processed_rollout.sequences)
    # n samples of one prompt differ (vLLM seeds sample i with seed + i)
    assert not torch.equal(processed_rollout.responses[0], processed_rollout.responses[1])


def test_bf16_trainer_against_fp32_engine_is_a_numerical_gap(vllm_processed):
    from inspector import load_models

    bf16 = load_models(dtype="bfloat16-fp32-head")
    assert bf16.policy.lm_head.weight.dtype == torch.float32
    assert next(bf16.policy.model.layers.parameters()).dtype == torch.bfloat16
    r = run_rollout(bf16, PROMPTS[:1], engine_url=vllm_processed, attention="tokenizer", **(ARGS | {"samples_per_prompt": 1}))
    mm = sampler_mismatch(r)
    assert r.engine["trainer_dtype"] == "bfloat16-fp32-head"
    assert mm.diagnosis.cause == "numerical" and "bfloat16-fp32-head" in mm.diagnosis.text
    assert 1e-3 < mm.diagnosis.distances["trainer"] < 0.5


def test_hosted_refuses_an_unlisted_engine_before_anything_runs(models, monkeypatch, vllm_processed):
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    monkeypatch.setenv("INSPECTOR_ENGINE_URLS", "http://10.1.2.3:8000")
    with pytest.raises(EngineError, match="refused.*INSPECTOR_ENGINE_URLS"):
        run_rollout(models, PROMPTS[:1], engine_url=vllm_processed, max_new_tokens=4)
    monkeypatch.setenv("INSPECTOR_ENGINE_URLS", vllm_processed)
    r = run_rollout(models, PROMPTS[:1], engine_url=vllm_processed, max_new_tokens=4)
    assert r.engine["url"] == vllm_processed


# ------------------------------------------------------------------------------------------------------------------
# TRL 1.16 `_generate_and_score_completions` (grpo_trainer.py ~2660-2705 and ~2860-2895) is inline in a method:
# written out here as a plain loop over sequences and tokens, independent of the tensor code under test.

def trl_loop(trainer, sampler, mask, mode, clip_min, clip_max):
    """(ratio as nested lists: per token for token_* modes, [[r]] per sequence otherwise; metrics)."""
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    out, deltas, kept_ratios = [], [], []
    for b in range(len(trainer)):
        diffs = []
        for t in range(len(trainer[b])):
            d = (trainer[b][t] - sampler[b][t]) * (1.0 if mask[b][t] else 0.0)
            diffs.append(0.0 if d != d else d)
            if mask[b][t]:
                deltas.append(abs(trainer[b][t] - sampler[b][t]))
        values = [sum(diffs)] if mode.startswith("sequence") else diffs
        row = []
        for t, v in enumerate(values):
            r = math.exp(v)
            if mode.endswith("truncate"):
                r = min(max(r, clip_min if clip_min is not None else -math.inf), clip_max if clip_max is not None else math.inf)
            elif r < lo or r > hi:
                r = 0.0
            row.append(r)
            if mode.startswith("sequence") or mask[b][t]:
                kept_ratios.append(r)
        out.append(row)
    metrics = {
        "sampling/sampling_logp_difference/mean": sum(deltas) / len(deltas),
        "sampling/sampling_logp_difference/max": max(deltas),
        "sampling/importance_sampling_ratio/min": min(kept_ratios),
        "sampling/importance_sampling_ratio/mean": sum(kept_ratios) / len(kept_ratios),
        "sampling/importance_sampling_ratio/max": max(kept_ratios),
    }
    return out, metrics


@pytest.mark.parametrize("clip_min, clip_max", [(None, 3.0), (0.5, 2.0), (0.97, 1.03), (None, 1.0001)])
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_corrections_equal_trls_inline_code(raw_rollout, processed_rollout, mode, clip_min, clip_max):
    for r in (raw_rollout, processed_rollout):
        mm = sampler_mismatch(r, clip_min=clip_min, clip_max=clip_max, mode=mode)
        expected, metrics = trl_loop(mm.trainer.tolist(), mm.sampler.tolist(), mm.mask.tolist(), mode, clip_min, clip_max)
        got = mm.trl[mode].ratio
        assert got.shape == ((r.batch_size, 1) if mode.startswith("sequence") else mm.diff.shape)
        assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-7)
        for name, value in metrics.items():
            assert mm.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    # the raw server's ratios are far from 1: the modes really clamp and drop here
    decided = sampler_mismatch(raw_rollout, clip_min=0.5, clip_max=2.0).trl
    assert decided["token_mask"].dropped.any() and decided["token_truncate"].clamped.any()


def verl_loop(trainer, sampler, mask, level, threshold):
    """verl's compute_rollout_correction_weights (TIS, a float threshold) as a loop: per token or per sequence
    (sum over the mask) log ratio clamped to +-20, exp, zero on padding, then min(w, threshold)."""
    out = []
    for b in range(len(trainer)):
        total = sum((trainer[b][t] - sampler[b][t]) for t in range(len(trainer[b])) if mask[b][t])
        row = []
        for t in range(len(trainer[b])):
            lr = total if level == "sequence" else trainer[b][t] - sampler[b][t]
            w = math.exp(min(max(lr, -20.0), 20.0)) * (1.0 if mask[b][t] else 0.0)
            row.append(min(w, threshold))
        out.append(row)
    return out


@pytest.fixture(scope="module")
def verl_debug():
    """verl's `calculate_debug_metrics` (verl/utils/debug/metrics.py), read from verl's published wheel."""
    import logging
    import zipfile

    from test_grpo import _lift, _verl_wheel

    with zipfile.ZipFile(_verl_wheel()) as z:
        source = z.read("verl/utils/debug/metrics.py").decode()
    ns = _lift(source, {"calculate_debug_metrics", "calculate_log_prob_diff", "pearson_correlation_coefficient"},
               {"torch": torch, "logger": logging.getLogger("verl"), "DataProto": object}, "verl/utils/debug/metrics.py")
    return ns["calculate_debug_metrics"]


@pytest.mark.parametrize("threshold", [2.0, 1.2])
def test_verl_rollout_is_and_debug_metrics_equal_verls(raw_rollout, verl_debug, threshold):
    from types import SimpleNamespace

    mm = sampler_mismatch(raw_rollout, verl_threshold=threshold)
    args = (mm.trainer.tolist(), mm.sampler.tolist(), mm.mask.tolist())
    for level in ("token", "sequence"):
        expected = torch.tensor(verl_loop(*args, level, threshold), dtype=torch.float64)
        assert torch.allclose(mm.verl[level].ratio.double(), expected, rtol=1e-5, atol=1e-7), level
    # verl reads the batch's tensors by name; a dict is what its `data.batch` lookups need
    batch = {"rollout_log_probs": mm.sampler, "old_log_probs": mm.trainer, "response_mask": mm.mask.long(),
             "responses": raw_rollout.responses}
    theirs = verl_debug(SimpleNamespace(batch=batch))
    assert set(theirs) <= set(mm.metrics)
    for name, value in theirs.items():
        assert mm.metrics[name] == pytest.approx(value, rel=1e-5), name


def test_in_process_sampling_with_inherited_processors_is_named(penalised):
    r = run_rollout(penalised, PROMPTS[:1], attention="tokenizer", **(ARGS | {"samples_per_prompt": 1}))
    mm = sampler_mismatch(r)
    assert mm.diagnosis.cause == "inherited_processors", mm.diagnosis
    assert "repetition_penalty=1.3" in mm.diagnosis.text


def test_in_process_sampling_agrees_with_its_recompute(sampled_rollout):
    mm = sampler_mismatch(sampled_rollout)
    assert mm.diagnosis.cause == "agree" and not sampled_rollout.engine.get("url")
    assert "Sampled in-process" in mismatch_markdown(sampled_rollout, mm)


from test_grpo_parity import default_trainer  # noqa: E402,F401 (a fixture: TRL 1.16's GRPOTrainer on the default policy)


def test_a_grpo_engine_rollout_is_what_trls_vllm_path_computes(models, vllm_processed, default_trainer):  # noqa: F811
    """trainer="grpo": the request stops at every EOS id, the recompute sees GRPO's mask (the sampler-trainer gap
    is numerical, not the 1.6 nats PPO's `ids != pad` gives), and TRL's vLLM path fed the engine's ids and
    logprobs through `rollout_func` computes what the rollout's GRPO step computes."""
    from inspector.trainers.grpo_config import GRPOConfig
    from inspector.trainers.grpo import rollout_grpo_inputs
    from test_grpo_parity import PROMPTS as P, G, TEMPERATURE, TOKENS, _compare

    r = run_rollout(models, P, engine_url=vllm_processed, max_new_tokens=TOKENS, temperature=TEMPERATURE, seed=0,
                    samples_per_prompt=G, trainer="grpo")
    assert r.engine["request"]["stop_token_ids"] == r.eos_token_ids == [models.tokenizer.eos_token_id]
    mask = rollout_grpo_inputs(r)["completion_mask"].bool()
    gap = float((r.logprobs - r.new_logprobs)[mask].abs().max())
    print(f"\nengine rollout under GRPO's mask: max |sampler - trainer| {gap:.2e}")
    assert gap < 1e-3 and r.entropies is not None and torch.isfinite(r.entropies[mask]).all()
    _compare(r, models.tokenizer, *default_trainer, GRPOConfig(num_generations=G, beta=0.0, reward_weights=(1.0, 2.0, 0.5)),
             True, "engine rollout")
