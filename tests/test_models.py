"""Model loading: user models of the wrong kind, tokenizers without a pad token, and hosted-deployment rules.

The models here are tiny, randomly initialised, built in a temporary folder with the default policy's
tokenizer: nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

import trl0
from inspector import ModelLoadError, load_models, run_rollout
from inspector.models import DEFAULT_POLICY
from inspector.weights import resolve_source

pytestmark = pytest.mark.integration


def _config(tok, **extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                       eos_token_id=tok.eos_token_id, **extra)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A causal LM whose tokenizer has no pad token, and a one-label classifier, both tiny."""
    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(resolve_source(DEFAULT_POLICY))
    torch.manual_seed(0)
    causal = root / "causal-no-pad"
    tok_nopad = AutoTokenizer.from_pretrained(resolve_source(DEFAULT_POLICY))
    tok_nopad.pad_token = None
    LlamaForCausalLM(_config(tok)).save_pretrained(causal)
    tok_nopad.save_pretrained(causal)
    classifier = root / "classifier"
    LlamaForSequenceClassification(_config(tok, num_labels=1, pad_token_id=tok.pad_token_id)).save_pretrained(classifier)
    tok.save_pretrained(classifier)
    return {"causal": str(causal), "classifier": str(classifier)}


def test_a_tokenizer_without_pad_token_gets_one_and_the_record_says_so(tiny):
    models = load_models(policy=tiny["causal"], reward=tiny["classifier"])
    assert models.pad_token_added
    assert models.tokenizer.pad_token == models.tokenizer.eos_token
    r = run_rollout(models, ["Hi"], max_new_tokens=3, seed=0)
    assert any("no pad token" in note for note in r.notes)
    assert models.value is models.reward and models.reference is models.policy


def test_a_causal_lm_given_as_the_reward_model_is_refused(tiny):
    with pytest.raises(ModelLoadError, match="LlamaForCausalLM, with no trained score head"):
        load_models(policy=tiny["causal"], reward=tiny["causal"])


def test_a_classifier_given_as_the_policy_is_refused(tiny):
    with pytest.raises(ModelLoadError, match="not a trained causal language model"):
        load_models(policy=tiny["classifier"])


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_models(policy=str(tmp_path / "nothing-here"))


def test_hosted_deployments_refuse_local_folders_and_models_off_the_list(tiny, monkeypatch):
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    with pytest.raises(ModelLoadError, match="hosted deployment"):
        load_models(policy=tiny["causal"])
    monkeypatch.setenv("INSPECTOR_ALLOW_LOCAL_PATHS", "1")
    monkeypatch.setenv("INSPECTOR_ALLOWED_MODELS", "org/only-this-one")
    with pytest.raises(ModelLoadError, match="allow-list"):
        load_models(policy=tiny["causal"])
    assert load_models().names["policy"] == DEFAULT_POLICY  # the defaults stay allowed


def test_the_value_model_must_share_the_policy_tokenizer(models, tiny):
    # same vocabulary here, so it is accepted: a separate value model gives its own per-token values
    m = load_models(value=tiny["classifier"])
    assert not m.value_is_reward
    r = run_rollout(m, ["Hi"], max_new_tokens=3, seed=0)
    full_value, _, _ = trl0.functions().get_reward(m.value, r.query_responses, r.pad_token_id, r.context_length)
    assert torch.allclose(r.values, full_value[:, r.context_length - 1 : -1].squeeze(-1), atol=1e-5)
    assert not torch.allclose(r.values, torch.zeros_like(r.values))


@pytest.fixture(scope="module")
def other_tokenizer_reward(tmp_path_factory):
    """A tiny reward model with a word-level tokenizer of its own (not the policy's)."""
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[EOS]"] + "hi hello say a word the cat dog is good bad . , !".split()
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    folder = tmp_path_factory.mktemp("other-tok") / "reward"
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, num_labels=1,
                         pad_token_id=0, eos_token_id=2)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder), tok


def test_a_reward_model_with_its_own_tokenizer_sees_re_encoded_text(other_tokenizer_reward):
    from inspector.diagnostics import diagnose
    from inspector.trainers.scoring import get_reward

    folder, rtok = other_tokenizer_reward
    with pytest.raises(ModelLoadError, match="another vocabulary than the policy"):
        load_models(reward=folder, value="")  # value = the reward model: refused, it must share the policy's tokens
    from inspector.models import DEFAULT_REWARD

    m = load_models(reward=folder, value=DEFAULT_REWARD)
    r = run_rollout(m, ["Say hi", "Say a word"], max_new_tokens=6, seed=0)
    assert not r.reward_tokenizer_is_policy
    assert r.reward_query_responses.max() < len(rtok)  # the reward model's own ids
    assert rtok.decode(r.reward_query_responses[0, : r.reward_context_length], skip_special_tokens=True).strip() == "hi"
    _, scores, positions = get_reward(m.reward, r.reward_query_responses, rtok.pad_token_id, r.reward_context_length)
    assert torch.allclose(scores, r.scores) and torch.equal(positions, r.score_positions)
    assert "reward_tokenizer_differs" in {f.code for f in diagnose(r)}


def test_a_different_reference_model_gives_a_real_kl(tiny):
    from inspector.trainers.ppo import rollout_ppo_step

    m = load_models(reference=tiny["causal"])
    assert not m.reference_is_policy
    r = run_rollout(m, ["Name a fruit."], max_new_tokens=6, seed=0)
    step = rollout_ppo_step(r)
    assert step.metrics["objective/kl"] != 0.0
    assert not torch.equal(r.ref_logprobs, r.new_logprobs)
