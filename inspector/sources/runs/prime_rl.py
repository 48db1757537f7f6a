"""prime-rl token exports: `<output_dir>/token_exports/step_<N>/rank_<R>.jsonl`, complete when `step_<N>/STABLE` exists.

Follows PrimeIntellect-ai/prime-rl at 559b44772e471d1538537b8805cc77f3824a5e64 (pyproject 0.8.0),
src/prime_rl/trainer/rl/token_export.py (`SCHEMA_VERSION = 1`, `TokenExporter.export` / `mark_stable`) and
src/prime_rl/trainer/rl/train.py:522-553 (one call per micro-batch; `STABLE` after a barrier once every rank has
flushed). One JSON object per sample, every per-token column over the whole sample (prompt included):
`token_ids`, `loss_mask`, `advantages`, `inference_logprobs`, `trainer_logprobs` (shifted right: index t is
token t's logprob), `entropy`, `mismatch_kl`, ...; non-finite floats are null.
Kept as written: the prompt is the prefix before the first `loss_mask` true; a multi-turn sample keeps its
loss-mask-0 spans inside the completion. Not in this format: rewards, reference logprobs, texts, group ids
(samples with the same prompt ids form a group).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...record.run import RunStep
from ._base import Reader, StepEntry, arrow_jsonl, group_by_prefix, list_column, numbered, numeric_list, read_jsonl

COLUMNS = {"token_ids": np.int64, "loss_mask": bool, "advantages": np.float64, "inference_logprobs": np.float64,
           "trainer_logprobs": np.float64, "entropy": np.float64}


def _schema():
    import pyarrow as pa

    types = {np.int64: pa.int64(), bool: pa.bool_(), np.float64: pa.float64()}
    return pa.schema([(k, pa.list_(types[v])) for k, v in COLUMNS.items()]
                     + [("rank", pa.int64()), ("export_sequence_idx", pa.int64())])


def _columns_from_rows(rows: list[dict], where: str, reader: Reader) -> dict:
    out = {k: [] for k in COLUMNS}
    kept = []
    for i, row in enumerate(rows):
        values = {k: numeric_list(row.get(k), k, f"{where} sample {i}", reader, dtype=v) for k, v in COLUMNS.items()}
        if values["token_ids"] is None or values["loss_mask"] is None:
            reader.problem(f"{where} sample {i}: no usable token_ids / loss_mask; left out.")
            continue
        kept.append(i)
        for k in COLUMNS:
            out[k].append(values[k])
    return {k: (v if all(x is not None for x in v) else None) for k, v in out.items()}


class PrimeRLReader(Reader):
    format = "prime-rl"
    fields = frozenset({"prompt_ids", "completion_ids", "loss_mask", "logprobs", "new_logprobs", "advantages",
                        "entropy", "group", "step"})

    def __init__(self, root: Path, **kw):
        super().__init__(root, **kw)
        self.folder = self.root / "token_exports" if (self.root / "token_exports").is_dir() else self.root

    def scan(self) -> dict[int, StepEntry]:
        found = {}
        steps = numbered(self.folder, r"step_(\d+)")
        for n, folder in steps.items():
            if not (folder / "STABLE").exists():
                continue  # prime-rl has not finished this step on every rank
            ranks = sorted(numbered(folder, r"rank_(\d+)\.jsonl").items())
            paths = tuple(str(p) for _, p in ranks if self.within_limit(str(p)))
            if paths:
                found[n] = StepEntry(paths)
            else:
                self.problem(f"step_{n}: STABLE is there but no rank_<R>.jsonl file is readable; left out.")
        self.check_gaps(sorted(steps))
        return found

    def _read_columns(self, path: str, where: str) -> dict:
        table = arrow_jsonl(path, _schema())
        if table is not None and len(table):
            return {k: list_column(table, k, v) for k, v in COLUMNS.items()}
        return _columns_from_rows(read_jsonl(path, self, where=where), where, self)

    def read(self, n: int, entry: StepEntry) -> RunStep:
        cols = {k: [] for k in COLUMNS}
        for path in entry.paths:
            got = self._read_columns(path, f"step_{n}/{Path(path).name}")
            for k in COLUMNS:
                if cols[k] is not None and got[k] is not None:
                    cols[k].extend(got[k])
                else:
                    cols[k] = None
        step = RunStep(step=n, format=self.format)
        if not cols["token_ids"]:
            step.notes.append(f"step {n}: no sample could be read.")
            step.completion_ids = []
            return step
        starts = [int(np.argmax(m)) if m.any() else len(m) for m in cols["loss_mask"]]
        tail = lambda k: None if cols[k] is None else [a[s:] for a, s in zip(cols[k], starts)]  # noqa: E731
        step.prompt_ids = [t[:s] for t, s in zip(cols["token_ids"], starts)]
        step.completion_ids = tail("token_ids")
        step.loss_mask = [m.astype(np.int8) for m in tail("loss_mask")]
        step.logprobs, step.new_logprobs = tail("inference_logprobs"), tail("trainer_logprobs")
        step.advantages, step.entropy = tail("advantages"), tail("entropy")
        step.group = group_by_prefix(step.prompt_ids)
        step.notes.append("prime-rl token export: the trainer's own ids, loss mask, inference and trainer logprobs, "
                          "advantages and entropy; the prompt is the tokens before the first loss-mask 1.")
        return step
