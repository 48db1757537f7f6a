"""Two samples side by side: their numbers, their split and what the value and reward models saw."""

from __future__ import annotations

import torch

from ..record.rollout import Rollout
from ._common import esc, fmt, plural, valid_mask
from .tokens import split_html, value_reward_html


def _facts(r: Rollout, i: int) -> str:
    valid = valid_mask(r)[i]
    n = int(valid.sum())
    # padding may hold -inf (a pad the top-k filter excluded): mask by selection, not by multiplication
    kl = float(torch.where(valid, r.logprobs[i] - r.ref_logprobs[i], 0).sum())
    mean_lp = float(torch.where(valid, r.logprobs[i], 0).sum() / n) if n else float("nan")
    return (f"<p class='tok-meta'><b>sample {i}</b> · score <b>{fmt(r.scores[i], 4, signed=True)}</b> · "
            f"{plural(n, 'token')} trained on · contains EOS {bool(r.contain_eos_token[i])} · mean logprob {fmt(mean_lp)} · "
            f"KL {fmt(kl, 4, signed=True)}</p><p class='tok-meta'>{esc(r.prompts[i])}</p>")


def compare_html(r: Rollout, a: int, b: int) -> str:
    """Samples `a` and `b` in two columns. Raises IndexError for a sample out of range."""
    for i in (a, b):
        if not 0 <= i < r.batch_size:
            raise IndexError(f"sample {i} is out of range (0..{r.batch_size - 1})")
    cols = "".join(
        f"<div class='split-col' data-compare='{i}'>{_facts(r, i)}{split_html(r, i)}{value_reward_html(r, i)}</div>"
        for i in (a, b)
    )
    return f"<div class='tok-view compare-view'><div class='split-cols'>{cols}</div></div>"
