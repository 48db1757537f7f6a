"""Tables of a rollout, one row per sample. Each table's columns are declared once, as a spec that builds both
the DataFrame here and the `gr.Dataframe` (headers and datatypes) in the UI."""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd
import torch

from ..record.rollout import Rollout
from ._common import first_pad_positions, is_special_reward_token, shown, stop_positions, valid_mask


class Column(NamedTuple):
    name: str
    dtype: str  # "int", "float", "str", "bool", or "int?" (an int, or the word "none" where there is none)
    description: str
    width: str = "9%"  # the gr.Dataframe column's width: wide for text, narrow for numbers


_PANDAS = {"int": "int64", "float": "float64", "str": "object", "bool": "bool", "int?": "object"}
_GRADIO = {"int": "number", "float": "number", "str": "str", "bool": "bool", "int?": "str"}
FLOAT_DECIMALS = 4

BATCH_COLUMNS = [
    Column("sample", "int", "Row of the rollout.", "7%"),
    Column("prompt", "str", "The plain prompt (before the chat template).", "14%"),
    Column("response", "str", "The generated response, decoded without special tokens.", "23%"),
    Column("response length", "int", "sequence_lengths + 1: the tokens TRL trains on.", "8%"),
    Column("contains EOS", "bool", "contain_eos_token: the postprocessed response holds the EOS token.", "8%"),
    Column("score", "float", "The reward model's score, read at sequence_lengths.", "8%"),
    Column("mean logprob", "float", "Mean of logprobs (TRL's rollout logprobs, sampling time) up to sequence_lengths; NaN if empty.", "8%"),
    Column("mean entropy", "float", "Mean entropy (nats) of the sampled-from distribution over the same tokens.", "8%"),
    Column("KL", "float", "Sum over the response of logprobs - ref_logprobs (TRL's k1 estimator, before kl_coef).", "8%"),
    Column("max logprob gap", "float", "Largest |new_logprobs - logprobs| over the response: recompute vs sampling (log of PPO's first-epoch ratio).", "8%"),
]

STOP_COLUMNS = [
    Column("sample", "int", "Row of the rollout.", "7%"),
    Column("first stop index", "int?", "Response index of the first stop_token_id ('none': there is none).", "8%"),
    Column("first pad index", "int?",
           "Response index of the first pad in postprocessed_responses; sequence_lengths is one less ('none': there is none).", "8%"),
    Column("sequence_lengths", "int",
           "TRL's sequence_lengths: response index of the last token trained on (-1: empty response).", "15%"),
    Column("contain_eos_token", "bool", "Whether the postprocessed response holds the EOS token.", "16%"),
    Column("score position", "int", "Absolute index in the reward model's input where the score was read.", "9%"),
    Column("score response index", "int", "The same position in the response (-1: the last query token).", "9%"),
    Column("score token", "str", "The token the score was read at.", "18%"),
    Column("score token is special", "bool", "Whether that token is a special token (EOS, pad, chat markers).", "10%"),
]


def displayed(df: pd.DataFrame, spec: list[Column]):
    """`df` as the page shows it: every float column with FLOAT_DECIMALS digits (one precision per column), the
    numbers kept as numbers for sorting (a pandas Styler, which gr.Dataframe reads for its displayed text)."""
    return df.style.format({c.name: f"{{:.{FLOAT_DECIMALS}f}}" for c in spec if c.dtype == "float"}, na_rep="none")


def column_widths(spec: list[Column]) -> list[str]:
    """The `gr.Dataframe` column widths of `spec`."""
    return [c.width for c in spec]


def column_datatypes(spec: list[Column]) -> list[str]:
    """Gradio `gr.Dataframe` datatypes ("number", "str", "bool") for the columns of `spec`."""
    return [_GRADIO[c[1]] for c in spec]


def _frame(spec: list[Column], columns: dict[str, list]) -> pd.DataFrame:
    """A DataFrame with exactly the columns of `spec`, in its order and dtypes; floats rounded for reading."""
    assert list(columns) == [c.name for c in spec], "the table's columns must follow its spec"
    data = {}
    for col in spec:
        values = columns[col.name]
        if col.dtype == "float":
            values = [round(float(v), FLOAT_DECIMALS) + 0.0 for v in values]  # + 0.0: no negative zero
        elif col.dtype == "int?":
            values = ["none" if v is None else int(v) for v in values]
        data[col.name] = pd.Series(values, dtype=_PANDAS[col.dtype])
    return pd.DataFrame(data)


def _row_means(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Mean of each row of `values` (B, G) over `mask`; NaN for a row with nothing to average."""
    mask = mask.to(values.dtype)
    counts = mask.sum(-1)
    sums = (values.float().nan_to_num(0.0, neginf=0.0, posinf=0.0) * mask).sum(-1)
    means = sums / counts.clamp(min=1)
    means[counts == 0] = float("nan")
    return means.tolist()


def batch_table(r: Rollout) -> pd.DataFrame:
    """One row per sample: prompt, response, response length, EOS, score, mean logprob, mean entropy
    (columns: BATCH_COLUMNS)."""
    valid = valid_mask(r)
    return _frame(BATCH_COLUMNS, {
        "sample": list(range(r.batch_size)),
        "prompt": list(r.prompts),
        "response": list(r.response_texts),
        "response length": (r.sequence_lengths + 1).tolist(),
        "contains EOS": r.contain_eos_token.bool().tolist(),
        "score": r.scores.float().tolist(),
        "mean logprob": _row_means(r.logprobs, valid),
        "mean entropy": _row_means(r.entropy, valid),
        "KL": _row_sums(r.logprobs - r.ref_logprobs, valid),
        "max logprob gap": _row_max_abs(r.logprobs - r.new_logprobs, valid),
    })


def _row_sums(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return (values.float().nan_to_num(0.0, neginf=0.0, posinf=0.0) * mask).sum(-1).tolist()


def _row_max_abs(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    gaps = values.float().abs().nan_to_num(0.0, posinf=0.0) * mask
    return gaps.max(-1).values.tolist() if values.shape[-1] else [0.0] * values.shape[0]


def stops_table(r: Rollout) -> pd.DataFrame:
    """One row per sample: where the stop token and the first pad are, sequence_lengths, and where the score
    was read, on which token (columns: STOP_COLUMNS)."""
    positions = r.score_positions.tolist()
    read_ids = [int(r.reward_query_responses[i, p]) for i, p in enumerate(positions)]
    names = r.tokens if r.reward_tokenizer_is_policy else r.reward_tokens
    return _frame(STOP_COLUMNS, {
        "sample": list(range(r.batch_size)),
        "first stop index": stop_positions(r),
        "first pad index": first_pad_positions(r),
        "sequence_lengths": r.sequence_lengths.tolist(),
        "contain_eos_token": r.contain_eos_token.bool().tolist(),
        "score position": positions,
        "score response index": [p - r.reward_context_length for p in positions],
        "score token": [shown(names.get(t, f"<{t}>")) for t in read_ids],
        "score token is special": [is_special_reward_token(r, t) for t in read_ids],
    })
