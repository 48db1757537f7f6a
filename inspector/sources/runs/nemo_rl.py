"""NeMo-RL's GRPO training dump: `<log_dir>/train_data_step<N>.jsonl` (N from 1, no zero padding).

Follows NVIDIA-NeMo/RL at 7ea279abfbeb698b092856d0dab61e7cf39bc909 (nemo_rl/package_info.py 0.6.0):
nemo_rl/algorithms/grpo.py:3629-3654 builds `log_data` (`content`, `rewards`, `input_lengths`, `token_ids`,
`token_loss_mask`, `sample_loss_mask`, `advantages`, `generation_logprobs`, `prev_logprobs`) and
nemo_rl/utils/logger.py:1071-1096 `log_batched_dict_as_jsonl` writes one line per sample from
`make_microbatch_iterator(1)`: **every value is a batch slice of length 1** (`[[...tokens...]]`, `[1.0]`), which
this reader unwraps (and reports a line where a value is not of length 1). No completion marker: a step is
finished when its last byte is a newline and a newer step file exists or the file has stopped changing.
`token_ids` are right-padded: the reader cuts them at `input_lengths`. `generation_logprobs` (the sampler's) and
`prev_logprobs` (the trainer's, index t = token t) are 0.0 where not generated. `advantages` hold the sample's
value on every position. Not in this format: reference logprobs, entropy, per-function rewards, group ids (samples
with equal prompt ids form a group, as NeMo-RL groups them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...record.run import RunStep
from ._base import Reader, StepEntry, arrow_jsonl, group_by_prefix, list_column, numbered, numeric_list, read_jsonl

TOKEN_COLUMNS = {"token_ids": np.int64, "token_loss_mask": np.int64, "advantages": np.float64,
                 "generation_logprobs": np.float64, "prev_logprobs": np.float64}
SAMPLE_COLUMNS = {"rewards": np.float64, "input_lengths": np.int64, "sample_loss_mask": np.float64}
PATTERN = r"train_data_step(\d+)\.jsonl"


def _schema(light: bool):
    import pyarrow as pa

    types = {np.int64: pa.int64(), np.float64: pa.float64()}
    return pa.schema([(k, pa.list_(pa.list_(types[v]))) for k, v in TOKEN_COLUMNS.items()]
                     + [(k, pa.list_(types[v])) for k, v in SAMPLE_COLUMNS.items()]
                     + ([] if light else [("content", pa.list_(pa.list_(pa.string())))]))


def _unwrap_arrow(table) -> dict | None:
    """Each length-1 batch slice unwrapped; None when any is not of length 1 (then read line by line)."""
    import pyarrow.compute as pc

    out = {}
    for k in (*TOKEN_COLUMNS, *SAMPLE_COLUMNS):
        if k not in table.column_names:
            out[k] = None
            continue
        col = table.column(k).combine_chunks()
        if col.null_count or pc.any(pc.not_equal(pc.list_value_length(col), 1)).as_py():
            return None
        out[k] = col.flatten()
    import pyarrow as pa

    flat = pa.table({k: v for k, v in out.items() if v is not None})
    cols = {k: list_column(flat, k, v) for k, v in TOKEN_COLUMNS.items()}
    for k, v in SAMPLE_COLUMNS.items():
        cols[k] = flat.column(k).to_numpy(zero_copy_only=False).astype(v) if k in flat.column_names else None
    return cols


def _unwrap_rows(rows: list[dict], where: str, reader: Reader) -> dict:
    cols = {k: [] for k in (*TOKEN_COLUMNS, *SAMPLE_COLUMNS, "content")}
    for i, row in enumerate(rows):
        here = f"{where} line idx {row.get('idx', i)}"
        got = {}
        for k in (*TOKEN_COLUMNS, *SAMPLE_COLUMNS, "content"):
            v = row.get(k)
            if isinstance(v, list) and len(v) == 1:
                v = v[0]
            elif v is not None:
                reader.problem(f"{here}: {k!r} is not a batch slice of length 1 (NeMo-RL writes one); left out.")
                v = None
            if k in TOKEN_COLUMNS:
                v = numeric_list(v, k, here, reader, TOKEN_COLUMNS[k])
            elif k in SAMPLE_COLUMNS and v is not None and not isinstance(v, (int, float)):
                reader.problem(f"{here}: {k!r} holds {type(v).__name__}, not a number; left out.")
                v = None
            got[k] = v
        if got["token_ids"] is None or got["token_loss_mask"] is None:
            reader.problem(f"{here}: no usable token_ids / token_loss_mask; the sample is left out.")
            continue
        for k, v in got.items():
            cols[k].append(v)
    out = {k: (v if v and all(x is not None for x in v) else None) for k, v in cols.items()}
    for k, dt in SAMPLE_COLUMNS.items():
        out[k] = None if out[k] is None else np.asarray(out[k], dtype=dt)
    return out


class NemoRLReader(Reader):
    format = "nemo-rl"
    fields = frozenset({"prompt_ids", "completion_ids", "loss_mask", "logprobs", "new_logprobs", "advantages",
                        "rewards", "group", "prompt_text", "completion_text", "step"})

    def scan(self) -> dict[int, StepEntry]:
        files = numbered(self.root, PATTERN)
        newest = max(files, default=None)
        found = {n: StepEntry((str(p),)) for n, p in files.items()
                 if self.jsonl_done(str(p), newer_exists=n != newest) and self.within_limit(str(p))}
        self.check_gaps(sorted(files))
        return found

    def _columns(self, path: str, where: str, light: bool) -> dict:
        table = arrow_jsonl(path, _schema(light))
        cols = _unwrap_arrow(table) if table is not None and len(table) else None
        if cols is None:
            return _unwrap_rows(read_jsonl(path, self, where=where), where, self)
        if not light and "content" in table.column_names:
            cols["content"] = [(c or [None])[0] for c in table.column("content").to_pylist()]
        return cols

    def read(self, n: int, entry: StepEntry, light: bool = False) -> RunStep:
        path = entry.paths[0]
        cols = self._columns(path, Path(path).name, light)
        step = RunStep(step=n, format=self.format)
        ids, mask = cols["token_ids"] or [], cols["token_loss_mask"] or []
        lengths = cols["input_lengths"] if cols["input_lengths"] is not None else [len(t) for t in ids]
        starts = [int(np.argmax(m[:L])) if m[:L].any() else int(L) for m, L in zip(mask, lengths)]
        cut = lambda k: None if cols[k] is None else [a[s:L] for a, s, L in zip(cols[k], starts, lengths)]  # noqa: E731
        step.prompt_ids = [t[:s] for t, s in zip(ids, starts)]
        step.completion_ids, step.loss_mask = cut("token_ids"), cut("token_loss_mask")
        step.logprobs, step.new_logprobs, step.advantages = cut("generation_logprobs"), cut("prev_logprobs"), cut("advantages")
        step.rewards = cols["rewards"]
        step.group = group_by_prefix(step.prompt_ids)
        if cols["sample_loss_mask"] is not None:
            step.columns["sample_loss_mask"] = cols["sample_loss_mask"].tolist()
        content = cols.get("content")
        if content and all(isinstance(c, list) for c in content):
            step.prompt_text = [str(c[0]) if c else "" for c in content]
            step.completion_text = ["".join(map(str, c[1:])) for c in content]
            step.columns["content"] = content
        step.notes.append("NeMo-RL train_data dump: the trainer's own ids (cut at input_lengths), token loss mask, "
                          "generation and previous logprobs and advantages; the prompt is the tokens before the first "
                          "loss-mask 1.")
        return step

    def trends(self, n: int, entry: StepEntry) -> dict:
        from ...record.run import step_trends

        return step_trends(self.read(n, entry, light=True))
