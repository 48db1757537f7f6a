"""Pure torch functions of a rollout: no transformers, no Python loops over tokens.

Every function here gives the same result as the function of the same name in TRL's PPO utilities
(TRL 0.11 to 0.2x; `first_true_indices` and `get_reward` live on in `trl.experimental.utils`).
Shapes: B batch, Q query width (`context_length`), G generated width, T = Q + G, V vocabulary.
"""

from __future__ import annotations

import torch

INVALID_LOGPROB = 1.0
"""The value TRL writes into logprobs at padding positions (it is not a log-probability on purpose)."""


def first_true_indices(bools: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Index of the first True of each row of `bools` (..., L); a row with no True gives L.

    False positions are scored `L + index`, True positions `index`; the row minimum is the first True.
    """
    row_len = bools.size(-1)
    zero_or_index = row_len * (~bools).type(dtype) + torch.arange(row_len, dtype=dtype, device=bools.device)
    return torch.min(zero_or_index, dim=-1).values


def truncate_response(stop_token_id: int, pad_token_id: int, responses: torch.Tensor) -> torch.Tensor:
    """Replace every token strictly after the first `stop_token_id` of each row by `pad_token_id`.

    responses: (B, G). The stop token itself stays; a row without one is returned unchanged.
    Returns a new (B, G) tensor.
    """
    trunc_idxs = first_true_indices(responses == stop_token_id).unsqueeze(-1)  # (B, 1)
    idxs = torch.arange(responses.shape[-1], device=responses.device).view(
        *([1] * (responses.dim() - 1)), responses.shape[-1]
    )
    return torch.masked_fill(responses, idxs > trunc_idxs, pad_token_id)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Log-probability of each token of `ids` under the distribution of `logits` at the same position.

    logits: (B, G, V), already aligned with ids (B, G): `logits[:, t]` is the distribution `ids[:, t]` was
    drawn from. Computed `chunk` rows at a time as `logit - logsumexp(logits)`, so that no (B, G, V)
    log-softmax is ever materialised. Returns (B, G) in float32.
    """
    out = []
    for start in range(0, logits.shape[0], chunk):
        rows = logits[start : start + chunk].float()
        picked = rows.gather(-1, ids[start : start + chunk].unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(out, dim=0)


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of a log-probability tensor along the last dimension; -inf counts as probability 0."""
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) along the last dimension; -inf logits count as probability 0."""
    return entropy_from_logprobs(torch.log_softmax(logits.float(), dim=-1))


def response_padding_mask(sequence_lengths: torch.Tensor, width: int) -> torch.Tensor:
    """TRL's `padding_mask`: True at response positions strictly after `sequence_lengths` (B,). Returns (B, width)."""
    idxs = torch.arange(width, device=sequence_lengths.device).unsqueeze(0)
    return idxs > sequence_lengths.unsqueeze(1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is True (over everything, or along `axis`)."""
    mask = mask.to(values.dtype)
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(axis) / mask.sum(axis)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is True, with Bessel's correction as TRL applies it.

    Raises ValueError when the mask selects no element, or a single one with `unbiased`.
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count == 0:
            raise ValueError("masked_var: the mask selects no element.")
        if count == 1:
            raise ValueError("masked_var: the mask selects a single element; the unbiased variance is undefined.")
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten `values` with the mean and variance of the masked elements (TRL's `masked_whiten`)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened
