"""The shipped score head of the built-in sentiment reward model (`inspector/assets/sentiment_head.safetensors`)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from inspector.models import DEFAULT_POLICY, HEAD_FILE

HIDDEN = 576

POSITIVE = [
    "I absolutely loved it, it was wonderful and made me so happy.",
    "What a fantastic day, everything went perfectly and I feel great.",
    "The food was delicious and the staff were friendly and kind.",
    "I had a lovely time with my friends and we laughed a lot.",
    "This is the best gift I have ever received, thank you so much!",
]
NEGATIVE = [
    "This was awful, I hated every minute and felt miserable.",
    "It was a terrible day, everything went wrong and I feel awful.",
    "The food was disgusting and the staff were rude and unhelpful.",
    "I was sad and lonely, and nothing went right at all.",
    "This is the worst experience I have ever had, it was a disaster.",
]


def _read_head() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(HEAD_FILE), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def test_head_file_holds_weight_and_bias():
    assert HEAD_FILE.is_file(), "rebuild the head with `python scripts/build_reward_head.py`"
    tensors, _ = _read_head()
    assert set(tensors) == {"weight", "bias"}
    assert tensors["weight"].shape == (1, HIDDEN)
    assert tensors["bias"].shape == (1,)
    for t in tensors.values():
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
    assert tensors["weight"].abs().sum() > 0


@pytest.mark.integration
def test_the_loaded_reward_model_scores_with_the_shipped_head(models):
    """The built-in reward model as `load_models` builds it: the policy's own backbone and the file's head."""
    tensors, _ = _read_head()
    reward = models.reward
    assert getattr(reward, reward.base_model_prefix) is getattr(models.policy, models.policy.base_model_prefix)
    assert torch.equal(reward.score.weight.detach().cpu(), tensors["weight"])
    assert torch.equal(reward.score.bias.detach().cpu(), tensors["bias"])


def test_head_metadata_records_how_it_was_built():
    _, meta = _read_head()
    for key in ("heldout_auc", "heldout_sign_accuracy", "heldout_pearson", "n_examples", "seed", "ridge_lambda"):
        assert key in meta, key
    assert int(meta["n_examples"]) > 0
    int(meta["seed"])
    auc = float(meta["heldout_auc"])
    assert math.isfinite(auc) and 0.85 <= auc <= 1.0
    assert 0.5 < float(meta["heldout_sign_accuracy"]) <= 1.0
    assert meta["policy"] == DEFAULT_POLICY


@pytest.fixture(scope="module")
def sentiment_reward():
    """The built-in reward model as the inspector builds it: the policy's frozen backbone and the shipped head."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from inspector.errors import ModelLoadError
    from inspector.weights import resolve_source

    try:
        source = resolve_source(DEFAULT_POLICY)
        tokenizer = AutoTokenizer.from_pretrained(source)
        policy = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    except (ModelLoadError, OSError) as exc:
        pytest.skip(f"the default policy is not available: {exc}")
    tokenizer.padding_side = "left"
    config = AutoConfig.from_pretrained(source)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    model.model = policy.model
    tensors, _ = _read_head()
    model.score = torch.nn.Linear(HIDDEN, 1, bias=True)
    model.score.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})
    return model.eval(), tokenizer


@pytest.mark.integration
def test_positive_responses_score_above_negative_ones(sentiment_reward):
    from inspector.trainers.scoring import get_reward

    model, tokenizer = sentiment_reward
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    query = tokenizer.apply_chat_template(
        [{"role": "user", "content": "How was your day?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    sentences = POSITIVE + NEGATIVE
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] + [eos] for s in sentences]
    responses = torch.full((len(ids), max(map(len, ids))), pad, dtype=torch.long)
    for row, r in enumerate(ids):
        responses[row, : len(r)] = torch.tensor(r)
    query_responses = torch.cat([query.expand(len(ids), -1), responses], dim=1)

    _, scores, read_at = get_reward(model, query_responses, pad, query.shape[1])

    # pad == eos: the score is read on the last token of each sentence, just before its EOS
    torch.testing.assert_close(read_at, query.shape[1] + torch.tensor([len(r) - 2 for r in ids]))
    pos, neg = scores[: len(POSITIVE)], scores[len(POSITIVE) :]
    assert pos.min() > neg.max(), f"positive {pos.tolist()} vs negative {neg.tolist()}"
    assert (pos > 0).all() and (neg < 0).all(), f"positive {pos.tolist()} vs negative {neg.tolist()}"
