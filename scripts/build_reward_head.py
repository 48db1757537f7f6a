"""Train the score head of the built-in reward model (`builtin:smollm2-sentiment`).

The built-in reward model is SmolLM2-135M-Instruct's frozen backbone with a one-label linear head
(`torch.nn.Linear(576, 1)`, stored in `inspector/assets/sentiment_head.safetensors`). Its score is the
sentiment of the response: positive text scores above zero, negative text below zero, on the scale of VADER's
compound score (-1 .. 1), somewhat compressed towards zero. The score is read the way TRL's `get_reward`
reads it (and the inspector with it): from the hidden state of the last response token before the first EOS.

How the head is trained, offline and deterministically (about three minutes on two CPU cores):
1. the policy itself answers chat prompts that ask for a positive, negative or neutral sentence about one of
   a few dozen topics (sampling at temperature 0.9, top-k and top-p off, at most 40 new tokens);
2. every response is labelled with VADER's compound score, and so are a few of its prefixes that end on a
   word boundary: a prefix is a response of its own, with exactly the features the head reads for it, since
   the backbone is causal and TRL's mask hides the EOS (= pad) token that would end it;
3. the features are the 576-d hidden states the head reads at score time (`inspector.trainers.scoring.get_reward`
   with an identity head), with the query each response was generated for;
4. a ridge regression of the compound score on the features gives the head, its feature standardisation
   folded into weight and bias. Positive, negative and neutral examples (by VADER) weigh the same in total,
   so that the policy's lean towards positive text does not move the zero point; the ridge strength is
   chosen by cross-validation over the training responses;
5. the held-out metrics (on whole responses never seen in training) are printed and stored in the file's
   metadata: sign accuracy, pairwise AUC and Pearson correlation against VADER; the same for the held-out
   responses scored as answers to an unrelated query ("How was your day?"), which checks that the score reads
   the response rather than the prompt; and a 5-fold cross-validated AUC over all responses.

Rebuild it with:

    python scripts/build_reward_head.py     # defaults: --n 448 --seed 0 --out inspector/assets/sentiment_head.safetensors
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from inspector.models import DEFAULT_POLICY
from inspector.weights import resolve_source  # noqa: E402
from inspector.trainers.scoring import get_reward  # noqa: E402
from inspector.tensors import truncate_response  # noqa: E402

DEFAULT_OUT = ROOT / "inspector" / "assets" / "sentiment_head.safetensors"

TOPICS = [
    "day at the beach", "restaurant meal", "movie", "hotel stay", "job interview", "birthday party",
    "vacation", "concert", "new phone", "cup of coffee", "weekend", "flight", "book", "haircut", "used car",
    "dinner party", "visit to the dentist", "walk in the park", "cooking class", "video game", "neighbor",
    "apartment", "garden", "wedding", "train ride", "gym workout", "pizza", "museum visit", "camping trip",
    "shopping trip", "team meeting", "first day at a new job",
]

TEMPLATES = {
    "positive": [
        "Write one sentence about how wonderful your {topic} was.",
        "Write one joyful sentence about the {topic} you loved.",
        "In one sentence, tell me why the {topic} was amazing and made you happy.",
        "Write a glowing one-sentence review of a fantastic {topic}.",
        "Write one sentence thanking someone for a delightful {topic}.",
    ],
    "negative": [
        "Write one sentence complaining about a terrible {topic}.",
        "Write one angry sentence about an awful {topic}.",
        "In one sentence, tell me why the {topic} was horrible and made you miserable.",
        "Write a furious one-sentence review of a disgusting {topic}.",
        "Write one sentence about a {topic} that made you sad and disappointed.",
        "Write one sentence about the worst {topic} you ever had.",
    ],
    "neutral": [
        "Describe a {topic} in one neutral sentence.",
        "Write one factual sentence about a {topic}.",
        "How was your {topic}? Answer in one sentence.",
    ],
}
"""More negative than positive templates: the policy often answers a request for a negative sentence with a
positive one."""

NEUTRAL_QUERY = "How was your day?"
"""A query unrelated to every training prompt: the held-out responses are also scored as answers to it."""
MAX_NEW_TOKENS = 40
TEMPERATURE = 0.9
BATCH = 32
PREFIXES = 6
"""Word-boundary prefixes of each response added as examples of their own."""
HELD_OUT = 0.2
LAMBDAS = [1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]
"""Ridge strengths, as a multiple of the total example weight (the features are standardised)."""
NEUTRAL_BAND = 0.05
"""VADER's own threshold: a compound score within +-0.05 is neutral."""


def build_prompts(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (kind, prompt) pairs: every template x topic once, shuffled, repeated when n asks for more."""
    pool = [(kind, t.format(topic=topic)) for kind, temps in TEMPLATES.items() for t in temps for topic in TOPICS]
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        block = pool[:]
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def load_policy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_source(DEFAULT_POLICY)
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, use_safetensors=True).eval()
    return model, tokenizer, src


def feature_model(policy, src: str, pad_token_id: int) -> torch.nn.Module:
    """The reward model with an identity head: `get_reward` then returns the 576-d states the head reads."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(src)
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    model.model = policy.model
    model.score = torch.nn.Identity()
    return model.eval()


@torch.no_grad()
def generate_batch(policy, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, int]:
    """Sample responses to `prompts`: (query_responses (B, Q + G), Q), every token after the first EOS a pad."""
    chats = [[{"role": "user", "content": p}] for p in prompts]
    enc = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    out = policy.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        do_sample=True,
        temperature=TEMPERATURE,
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    context_length = enc["input_ids"].shape[1]
    responses = truncate_response(tokenizer.eos_token_id, tokenizer.pad_token_id, out[:, context_length:])
    return torch.cat([out[:, :context_length], responses], dim=1), context_length


def examples_of_batch(tokenizer, vader, rng, query_responses, context_length, states, read_at):
    """The examples of one batch: per response, the whole response and up to PREFIXES word-boundary prefixes.

    states: (B, T, 576), the hidden states at every position; read_at: (B,), where `get_reward` reads.
    Yields (feature (576,), VADER compound, row, whole response?, response ids up to its EOS, text).
    """
    for row in range(len(query_responses)):
        end = read_at[row].item() - context_length + 1  # response length up to, not including, its EOS
        ids = query_responses[row, context_length : context_length + end].tolist()
        tokens = tokenizer.convert_ids_to_tokens(ids)
        bounds = [p for p in range(2, end - 1) if tokens[p + 1].startswith(("Ġ", "Ċ"))]
        for cut in [end - 1] + sorted(rng.sample(bounds, min(PREFIXES, len(bounds)))):
            text = tokenizer.decode(ids[: cut + 1], skip_special_tokens=True).strip()
            yield states[row, context_length + cut], vader.polarity_scores(text)["compound"], row, cut == end - 1, ids, text


def neutral_query_features(reward_features, tokenizer, responses: list[list[int]]) -> torch.Tensor:
    """The features of `responses` (token ids up to, not including, the EOS) as answers to NEUTRAL_QUERY."""
    query = tokenizer.apply_chat_template(
        [{"role": "user", "content": NEUTRAL_QUERY}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    pad = tokenizer.pad_token_id
    out = []
    for i in range(0, len(responses), BATCH):
        chunk = responses[i : i + BATCH]
        ids = torch.full((len(chunk), max(len(r) for r in chunk) + 1), pad, dtype=torch.long)
        for row, r in enumerate(chunk):
            ids[row, : len(r)] = torch.tensor(r, dtype=torch.long)
        query_responses = torch.cat([query.expand(len(chunk), -1), ids], dim=1)
        out.append(get_reward(reward_features, query_responses, pad, query.shape[1])[1].double())
    return torch.cat(out)


def class_balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Weights under which VADER-positive, -negative and -neutral examples each weigh the same in total (mean 1)."""
    kind = (y > NEUTRAL_BAND).long() - (y < -NEUTRAL_BAND).long()
    counts = torch.stack([(kind == k).sum() for k in (-1, 0, 1)]).double()
    present = (counts > 0).sum()
    return len(y) / (present * counts[kind + 1])


def ridge(x: torch.Tensor, y: torch.Tensor, sw: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge regression on standardised x, folded back: (w (D,), b) with y ~ x @ w + b on the raw x."""
    sw = sw / sw.sum()
    mu = sw @ x
    sd = (sw @ (x - mu) ** 2).sqrt().clamp_min(1e-6)
    z = (x - mu) / sd
    ym = sw @ y
    gram = (z * sw[:, None]).T @ z + lam * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, (z * sw[:, None]).T @ (y - ym)) / sd
    return w, ym - mu @ w


def choose_lambda(x, y, sw, groups, seed: int, folds: int = 5) -> tuple[float, dict[float, float]]:
    """The ridge strength with the lowest weighted k-fold validation MSE; the folds split responses, not rows."""
    ids = torch.unique(groups)
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed + 1))]
    fold_of = torch.empty(int(ids.max()) + 1, dtype=torch.long)
    fold_of[order] = torch.arange(len(order)) % folds
    fold = fold_of[groups]
    mse = {}
    for lam in LAMBDAS:
        err = 0.0
        for k in range(folds):
            w, b = ridge(x[fold != k], y[fold != k], sw[fold != k], lam)
            err += (sw[fold == k] * (x[fold == k] @ w + b - y[fold == k]) ** 2).sum().item()
        mse[lam] = err / sw.sum().item()
    return min(mse, key=mse.get), mse


def pairwise_auc(scores: torch.Tensor, labels: torch.Tensor, margin: float = NEUTRAL_BAND) -> float:
    """P(an example with label > margin scores above one with label < -margin); ties count 1/2."""
    pos, neg = scores[labels > margin], scores[labels < -margin]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()


def sign_accuracy(scores: torch.Tensor, labels: torch.Tensor, margin: float = NEUTRAL_BAND) -> float:
    """Share of the examples with |label| >= margin whose score has the label's sign."""
    keep = labels.abs() >= margin
    return ((scores[keep] > 0) == (labels[keep] > 0)).double().mean().item()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def fit_head(x, y, groups, n_responses: int, seed: int) -> dict:
    """Split the responses, choose the ridge strength, fit the head on the training responses and predict.

    x: (N, 576) float64 rows, y: (N,) labels, groups: (N,) the response each row comes from.
    Returns the head, the split (`train`, a row mask) and the predictions of every row.
    """
    sw = class_balanced_weights(y)
    perm = torch.randperm(n_responses, generator=torch.Generator().manual_seed(seed))
    held_out = torch.zeros(n_responses, dtype=torch.bool)
    held_out[perm[: int(n_responses * HELD_OUT)]] = True
    train = ~held_out[groups]
    lam, cv = choose_lambda(x[train], y[train], sw[train], groups[train], seed)
    w, b = ridge(x[train], y[train], sw[train], lam)
    cv_pred = torch.empty(len(y), dtype=torch.float64)  # 5-fold predictions over all responses, same strength
    fold_of = torch.empty(n_responses, dtype=torch.long)
    fold_of[perm] = torch.arange(n_responses) % 5
    for k in range(5):
        rest = fold_of[groups] != k
        w_k, b_k = ridge(x[rest], y[rest], sw[rest], lam)
        cv_pred[~rest] = x[~rest] @ w_k + b_k
    return {"w": w, "b": b, "lam": lam, "cv": cv, "train": train, "pred": x @ w + b, "cv_pred": cv_pred}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=448, help="number of generated responses (default 448: every prompt once)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt order, the sampling and the split")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the head")
    args = parser.parse_args(argv)

    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    start = time.time()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    vader = SentimentIntensityAnalyzer()
    policy, tokenizer, src = load_policy()
    pad = tokenizer.pad_token_id
    reward_features = feature_model(policy, src, pad)
    prompts = build_prompts(args.n, args.seed)

    feats, labels, groups, whole, responses, texts = [], [], [], [], [], []
    for i in range(0, len(prompts), BATCH):
        query_responses, context_length = generate_batch(policy, tokenizer, [p for _, p in prompts[i : i + BATCH]])
        states, _, read_at = get_reward(reward_features, query_responses, pad, context_length)
        for h, label, row, is_whole, ids, text in examples_of_batch(
            tokenizer, vader, rng, query_responses, context_length, states, read_at
        ):
            feats.append(h.double())
            labels.append(label)
            groups.append(i + row)
            whole.append(is_whole)
            if is_whole:
                responses.append(ids)
                texts.append(text)
        print(f"  generated {len(responses)}/{len(prompts)} ({time.time() - start:.0f} s)", flush=True)
    x, y = torch.stack(feats), torch.tensor(labels, dtype=torch.float64)
    groups, whole = torch.tensor(groups), torch.tensor(whole)

    fit = fit_head(x, y, groups, len(prompts), args.seed)
    w, b, train, pred = fit["w"], fit["b"], fit["train"], fit["pred"]
    test = ~train & whole  # the held-out whole responses, in response order
    test_ids = groups[test].tolist()
    y_test, p_test = y[test], pred[test]
    p_neutral = neutral_query_features(reward_features, tokenizer, [responses[g] for g in test_ids]) @ w + b
    y_whole = y[whole]
    metrics = {
        "heldout_auc": pairwise_auc(p_test, y_test),
        "heldout_sign_accuracy": sign_accuracy(p_test, y_test),
        "heldout_pearson": pearson(p_test, y_test),
        "heldout_auc_neutral_query": pairwise_auc(p_neutral, y_test),
        "heldout_sign_accuracy_neutral_query": sign_accuracy(p_neutral, y_test),
        "heldout_pearson_neutral_query": pearson(p_neutral, y_test),
        "cv5_auc": pairwise_auc(fit["cv_pred"][whole], y_whole),
        "cv5_sign_accuracy": sign_accuracy(fit["cv_pred"][whole], y_whole),
        "cv5_pearson": pearson(fit["cv_pred"][whole], y_whole),
        "train_auc": pairwise_auc(pred[train & whole], y[train & whole]),
    }
    print(f"responses: {len(prompts)} (train {len(prompts) - len(test_ids)}, held-out {len(test_ids)}); "
          f"VADER > 0.05: {(y_whole > NEUTRAL_BAND).sum().item()}, < -0.05: {(y_whole < -NEUTRAL_BAND).sum().item()}, "
          f"neutral: {(y_whole.abs() <= NEUTRAL_BAND).sum().item()}; "
          f"ended by EOS: {sum(len(r) < MAX_NEW_TOKENS for r in responses)}; "
          f"training rows with prefixes: {train.sum().item()}")
    print("ridge strength by 5-fold CV MSE: " + ", ".join(f"{k:g}: {v:.4f}" for k, v in fit["cv"].items())
          + f" -> {fit['lam']:g}")
    for name, value in metrics.items():
        print(f"{name}: {value:.4f}")
    print("held-out responses (VADER compound, score, score as answer to the neutral query, prompt kind, text):")
    for k, g in enumerate(test_ids[:10]):
        print(f"  {y_test[k].item():+.3f} {p_test[k].item():+.3f} {p_neutral[k].item():+.3f} "
              f"{prompts[g][0]:>8}  {texts[g][:90]!r}")

    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": w.float().reshape(1, -1).contiguous(), "bias": b.float().reshape(1).contiguous()}
    metadata = {
        "description": "Sentiment of the response, on the scale of VADER's compound score (-1 .. 1): ridge "
        "regression on SmolLM2-135M-Instruct's last hidden state before the first EOS (TRL get_reward).",
        "policy": DEFAULT_POLICY,
        "n_examples": str(len(prompts)),
        "n_train": str(len(prompts) - len(test_ids)),
        "n_heldout": str(len(test_ids)),
        "n_train_rows": str(train.sum().item()),
        "seed": str(args.seed),
        "ridge_lambda": f"{fit['lam']:g}",
        "max_new_tokens": str(MAX_NEW_TOKENS),
        "temperature": str(TEMPERATURE),
        "rebuild": "python scripts/build_reward_head.py",
        **{k: f"{v:.4f}" for k, v in metrics.items()},
    }
    save_file(tensors, str(args.out), metadata=metadata)
    args.out.chmod(0o644)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
