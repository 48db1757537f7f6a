"""A Rollout to and from plain data (JSON), for downloads, the API and re-opening a rollout without models."""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from ..errors import InputError
from .rollout import Rollout

FORMAT = "rollout-inspector/2"
OLD_FORMATS = ("rollout-inspector/1",)
"""Format 1 named the sampling-time logprobs `gen_logprobs` and the recompute `logprobs`; format 2 names
them as TRL does: `logprobs` (the rollout's, sampling time) and `new_logprobs` (the recompute)."""


def _plain(value):
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return [_finite(v) for v in value.tolist()] if value.dim() == 1 else [_plain(row) for row in value]
        return value.tolist()
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _finite(v):
    """JSON has no infinities: -inf (a token filtered by top-k / top-p) is written as null."""
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v if math.isfinite(v) else None


def rollout_to_dict(rollout: Rollout) -> dict:
    """Every field of the record as plain lists, numbers and strings (tensors become nested lists)."""
    out = {"format": FORMAT, "dtypes": {}}
    for f in dataclasses.fields(rollout):
        value = getattr(rollout, f.name)
        if isinstance(value, torch.Tensor):
            out["dtypes"][f.name] = str(value.dtype).removeprefix("torch.")
        out[f.name] = _plain(value)
    return out


def rollout_to_json(rollout: Rollout) -> str:
    return json.dumps(rollout_to_dict(rollout), ensure_ascii=False)


def _none_to_neg_inf(v):
    if isinstance(v, list):
        return [_none_to_neg_inf(x) for x in v]
    return float("-inf") if v is None else v


def _upgrade_v1(data: dict) -> dict:
    """Format 1 -> 2: `gen_logprobs` becomes `logprobs`, the old `logprobs` (the recompute) `new_logprobs`."""
    data = dict(data)
    dtypes = dict(data.get("dtypes", {}))
    for table in (data, dtypes):
        if "logprobs" in table:
            table["new_logprobs"] = table.pop("logprobs")
        if "gen_logprobs" in table:
            table["logprobs"] = table.pop("gen_logprobs")
    data["dtypes"] = dtypes
    data["format"] = FORMAT
    return data


def rollout_from_dict(data: dict) -> Rollout:
    """Rebuild a Rollout from `rollout_to_dict` output. Raises InputError when the data is not such a record."""
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, *OLD_FORMATS):
        raise InputError(f"This is not a rollout record (expected format {FORMAT!r}).")
    if data["format"] == "rollout-inspector/1":
        data = _upgrade_v1(data)
    kwargs = {}
    dtypes = data.get("dtypes", {})
    try:
        for f in dataclasses.fields(Rollout):
            if f.name not in data:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise InputError(f"The rollout record has no field {f.name!r}.")
            value = data[f.name]
            if f.name in dtypes and value is not None:
                dtype = getattr(torch, dtypes[f.name])
                value = torch.tensor(_none_to_neg_inf(value) if dtype.is_floating_point else value, dtype=dtype)
            elif f.name in ("tokens", "reward_tokens"):
                value = {int(k): v for k, v in value.items()}
            kwargs[f.name] = value
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"The rollout record is malformed: {exc}") from exc
    return Rollout(**kwargs)


def rollout_rows(rollout: Rollout) -> list[dict]:
    """One row per sample, with datasets-compatible columns: `prompt`, `completion`, `reward` (as TRL's
    completion tables name them) and the per-token lists of the response."""
    r = rollout
    rows = []
    for i in range(r.batch_size):
        n = max(int(r.sequence_lengths[i]) + 1, 0)
        rows.append({
            "prompt": r.prompts[i],
            "completion": r.postprocessed_response_texts[i],
            "reward": float(r.scores[i]),
            "query_text": r.query_texts[i],
            "response_token_ids": r.responses[i].tolist(),
            "sequence_length": int(r.sequence_lengths[i]),
            "contain_eos_token": bool(r.contain_eos_token[i]),
            "logprobs": [_finite(float(v)) for v in r.logprobs[i, :n]],
            "new_logprobs": [_finite(float(v)) for v in r.new_logprobs[i, :n]],
            "ref_logprobs": [_finite(float(v)) for v in r.ref_logprobs[i, :n]],
            "values": [float(v) for v in r.values[i, :n]],
            "policy": r.model_names.get("policy"),
            "reward_model": r.model_names.get("reward"),
        })
    return rows


def rollout_to_jsonl(rollout: Rollout) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rollout_rows(rollout))


def rollout_to_parquet(rollout: Rollout, path: str) -> None:
    """Write `rollout_rows` as a Parquet file (needs pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Writing Parquet needs pyarrow: pip install pyarrow.") from None
    pq.write_table(pa.Table.from_pylist(rollout_rows(rollout)), path)
