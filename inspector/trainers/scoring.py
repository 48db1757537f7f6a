"""Model passes over a finished generation: TRL's `get_reward`, the training-time logprob recompute,
per-token values and the scalar scores.

Two attention conventions, chosen per rollout:
- "trl" (default): `attention_mask = ids != pad_token_id`, pad ids replaced by 0, position ids as an
  exclusive cumsum of the mask, exactly as TRL's `forward`, `generate` and `get_reward` build them;
- "tokenizer": the true mask (the tokenizer's mask of the query, and the response up to and including
  its stop token), so that EOS tokens that equal the pad token stay visible.
"""

from __future__ import annotations

import torch

from ..tensors import entropy_from_logits, entropy_from_logprobs, first_true_indices, token_logprobs


def trl_attention_mask(ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """TRL's mask: every token equal to the pad token is hidden, wherever it stands. (B, T) bool."""
    return ids != pad_token_id


def _model_inputs(ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    attention_mask = attention_mask.bool()
    return {
        "input_ids": torch.masked_fill(ids, ~attention_mask, 0),
        "attention_mask": attention_mask.long(),
        "position_ids": attention_mask.long().cumsum(1) - attention_mask.long(),  # exclusive cumsum
    }


@torch.no_grad()
def get_reward(
    model: torch.nn.Module,
    query_responses: torch.Tensor,
    pad_token_id: int,
    context_length: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run a sequence-classification model's backbone and score head over every position, as TRL does.

    query_responses: (B, T). Returns `(reward_logits (B, T, 1), scores (B,), sequence_lengths (B,))`, the score
    read at `sequence_lengths = first_true_indices(query_responses[:, context_length:] == pad) - 1 + context_length`.
    With an explicit `attention_mask` (B, T) the model sees that mask instead, and the score is read at the
    last position the mask keeps in the response part.
    """
    if attention_mask is None:
        attention_mask = trl_attention_mask(query_responses, pad_token_id)
        sequence_lengths = first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    else:
        attention_mask = attention_mask.bool()
        sequence_lengths = first_true_indices(~attention_mask[:, context_length:]) - 1 + context_length
    backbone = getattr(model, model.base_model_prefix)
    output = backbone(**_model_inputs(query_responses, attention_mask), return_dict=True, use_cache=False)
    reward_logits = model.score(output.last_hidden_state)  # (B, T, 1)
    scores = reward_logits[torch.arange(reward_logits.size(0), device=reward_logits.device), sequence_lengths]
    return reward_logits, scores.squeeze(-1), sequence_lengths


@torch.no_grad()
def forward_logits(
    model: torch.nn.Module,
    query_responses: torch.Tensor,
    pad_token_id: int,
    context_length: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The causal LM's logits that predict each response token: `logits[:, context_length - 1 : -1]`, (B, G, V).

    Position t of the result is the distribution over `query_responses[:, context_length + t]`.
    """
    if attention_mask is None:
        attention_mask = trl_attention_mask(query_responses, pad_token_id)
    output = model(**_model_inputs(query_responses, attention_mask), return_dict=True, use_cache=False)
    return output.logits[:, context_length - 1 : -1]


def forward_logprobs(
    model: torch.nn.Module,
    query_responses: torch.Tensor,
    pad_token_id: int,
    context_length: int,
    temperature: float = 1.0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training-time logprobs of the response tokens: a forward pass over `query_responses`, the logits
    divided by `temperature + 1e-7` as TRL's PPO step does, then `token_logprobs`. Returns (B, G) float32."""
    logits = forward_logits(model, query_responses, pad_token_id, context_length, attention_mask)
    logits = logits / (temperature + 1e-7)
    return token_logprobs(logits, query_responses[:, context_length:])


def model_inputs(ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """input_ids (masked positions set to 0), attention_mask and position_ids, as TRL feeds a model."""
    return _model_inputs(ids, attention_mask)


@torch.no_grad()
def backbone_states(backbone: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last hidden state (B, T, H) of a transformer backbone under `attention_mask`."""
    return backbone(**_model_inputs(ids, attention_mask), return_dict=True, use_cache=False).last_hidden_state


@torch.no_grad()
def head_logprobs_and_entropies(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    responses: torch.Tensor,
    context_length: int,
    divisor: float = 1.0,
    chunk: int = 2,
    entropies: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """From one set of hidden states (B, T, H): the response tokens' logprobs under logits / `divisor` and,
    with `entropies`, the full-vocabulary entropy of that same distribution at each response position (TRL's
    `entropy_from_logits` on the temperature-scaled logits, as its fused head computes it). The head runs
    `chunk` rows at a time. Returns ((B, G), (B, G) or None) on the hidden states' device."""
    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk):
        logits = lm_head(hidden[start : start + chunk, context_length - 1 : -1]) / divisor
        logps.append(token_logprobs(logits, responses[start : start + chunk]))
        if entropies:
            ents.append(entropy_from_logits(logits))
    return torch.cat(logps, dim=0), (torch.cat(ents, dim=0) if entropies else None)


@torch.no_grad()
def head_token_details(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    responses: torch.Tensor,
    context_length: int,
    top_k: int = 5,
    chunk: int = 4,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """For responses that were not sampled here (imported completions): from the forward pass's hidden states,
    each response token's logprob under the logits / `temperature` (the distribution a sampler at that
    temperature drew from), rank and the entropy and top-k alternatives of that distribution, and the raw
    logits' logprob. Returns (B, G) tensors `logprobs`, `raw_logprobs`, `ranks`, `entropy` and (B, G, k)
    `topk_ids`, `topk_logprobs`, on CPU."""
    out: dict[str, list] = {"logprobs": [], "raw_logprobs": [], "ranks": [], "entropy": [], "topk_ids": [],
                            "topk_logprobs": []}
    for start in range(0, hidden.shape[0], chunk):
        logits = lm_head(hidden[start : start + chunk, context_length - 1 : -1]).float()
        ids = responses[start : start + chunk].unsqueeze(-1)
        out["raw_logprobs"].append(torch.log_softmax(logits, dim=-1).gather(-1, ids).squeeze(-1).cpu())
        logp = torch.log_softmax(logits / temperature, dim=-1)
        chosen = logp.gather(-1, ids)
        out["logprobs"].append(chosen.squeeze(-1).cpu())
        out["ranks"].append((logp > chosen).sum(-1).cpu())
        out["entropy"].append(entropy_from_logprobs(logp).cpu())
        values, top = logp.topk(top_k, dim=-1)
        out["topk_ids"].append(top.cpu())
        out["topk_logprobs"].append(values.cpu())
    return {k: torch.cat(v, dim=0) for k, v in out.items()}
