"""The inspector's own run format: one Parquet file per step, `step_<N:06d>.parquet`, written by `RunWriter`.

One row per sample: `prompt_ids` (the prompt's real tokens, its mask applied), `completion_ids`, `completion_mask`,
`tool_mask`, `sampling_logprobs`, `old_logprobs`, `ref_logprobs`, `entropy` (padded rows as the trainer held them),
`advantage`, one `reward:<name>` column per reward function (raw, unweighted), and `extra:<key>` for per-sample
extras. The schema metadata key `inspector-run` holds `{"version", "step", "reward_func_names", "reward_weights",
"extra"}`. Each file is written to a temporary name and renamed into place, so a file that exists is complete.
Names follow TRL 1.16's `_generate_and_score_completions` output (trl/trainer/grpo_trainer.py:2440-2497, 2934):
the loss mask is `completion_mask * tool_mask`; `old_logprobs` are TRL's `old_per_token_logps` (the trainer's),
`sampling_logprobs` the sampler's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...record.run import RunStep
from ._base import Reader, StepEntry, group_by_prefix

KEY = b"inspector-run"
VERSION = 1
PATTERN = r"step_(\d+)\.parquet"
TOKEN_COLUMNS = ("completion_ids", "completion_mask", "tool_mask", "sampling_logprobs", "old_logprobs", "ref_logprobs",
                 "entropy")


def _rows(x) -> list | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    return [np.asarray(r).tolist() for r in x]


class RunWriter:
    """Writes a run in the inspector's format, one atomic file per step (see the module docstring)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def write_step(self, step: int, *, prompt_ids, prompt_mask, completion_ids, completion_mask, tool_mask=None,
                   sampling_logprobs=None, old_logprobs=None, ref_logprobs=None, entropy=None, advantages,
                   rewards_per_func, reward_func_names, reward_weights, extra: dict | None = None) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        prompts = [[int(t) for t, m in zip(ids, mask) if m] for ids, mask in zip(_rows(prompt_ids), _rows(prompt_mask))]
        B = len(prompts)
        rpf = np.asarray(_rows(rewards_per_func), dtype=np.float64).reshape(B, -1)
        names = list(reward_func_names)
        if rpf.shape[1] != len(names):
            raise InputError(f"rewards_per_func has {rpf.shape[1]} columns for {len(names)} reward_func_names.")
        cols = {"step": [int(step)] * B, "sample": list(range(B)), "prompt_ids": prompts}
        for name, value in zip(TOKEN_COLUMNS, (completion_ids, completion_mask, tool_mask, sampling_logprobs,
                                               old_logprobs, ref_logprobs, entropy)):
            cols[name] = _rows(value)
        cols["advantage"] = [float(np.asarray(a).reshape(-1)[0]) if np.asarray(a).size == 1 else np.asarray(a).tolist()
                             for a in (_rows(advantages) if hasattr(advantages, "__len__") else [])]
        for j, name in enumerate(names):
            cols[f"reward:{name}"] = rpf[:, j].tolist()
        meta_extra = {}
        for k, v in (extra or {}).items():
            v = _rows(v) if hasattr(v, "detach") else v
            if isinstance(v, (list, tuple)) and len(v) == B:
                cols[f"extra:{k}"] = list(v)
            else:
                meta_extra[k] = v
        table = pa.table({k: v for k, v in cols.items() if v is not None})
        meta = {"version": VERSION, "step": int(step), "reward_func_names": names,
                "reward_weights": [float(w) for w in (reward_weights if reward_weights is not None else [1.0] * len(names))],
                "extra": meta_extra}
        table = table.replace_schema_metadata({KEY: json.dumps(meta, default=str).encode()})
        path = self.folder / f"step_{int(step):06d}.parquet"
        tmp = self.folder / f".{path.name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path


def is_native(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        return KEY in (pq.read_schema(path).metadata or {})
    except Exception:  # noqa: BLE001
        return False


def _length(ids: np.ndarray, mask: np.ndarray, pad: int | None) -> int:
    on = np.flatnonzero(mask)
    if on.size:
        return int(on[-1]) + 1
    real = np.flatnonzero(ids != pad) if pad is not None else np.arange(len(ids))
    return int(real[-1]) + 1 if real.size else 0  # a row masked whole (mask_truncated_completions)


class NativeReader(Reader):
    format = "inspector"
    fields = frozenset({"prompt_ids", "completion_ids", "loss_mask", "tool_mask", "logprobs", "new_logprobs",
                        "ref_logprobs", "entropy", "advantages", "rewards", "rewards_per_func", "reward_weights",
                        "group", "step"})

    def scan(self) -> dict[int, StepEntry]:
        files = self.step_files(PATTERN)
        self.check_gaps(sorted(files))
        return {n: StepEntry((str(p),)) for n, p in files.items() if self.within_limit(str(p))}

    def read(self, n: int, entry: StepEntry) -> RunStep:
        import pyarrow.parquet as pq

        table = pq.read_table(entry.paths[0])
        meta = json.loads((table.schema.metadata or {}).get(KEY, b"{}"))
        data = table.to_pydict()
        step = RunStep(step=n, format=self.format)
        pad = (meta.get("extra") or {}).get("pad_token_id")
        ids = [np.asarray(r, np.int64) for r in data["completion_ids"]]
        cmask = [np.asarray(r, np.int64) for r in data["completion_mask"]]
        lengths = [_length(i, m, pad) for i, m in zip(ids, cmask)]
        cut = lambda k, dt=np.float64: None if data.get(k) is None else [np.asarray(r, dt)[:L] for r, L in zip(data[k], lengths)]  # noqa: E731
        step.prompt_ids = [np.asarray(p, np.int64) for p in data["prompt_ids"]]
        step.completion_ids = [i[:L] for i, L in zip(ids, lengths)]
        step.tool_mask = cut("tool_mask", np.int64)
        masks = cut("completion_mask", np.int64)
        step.loss_mask = masks if step.tool_mask is None else [m * t for m, t in zip(masks, step.tool_mask)]
        step.logprobs, step.new_logprobs, step.ref_logprobs = cut("sampling_logprobs"), cut("old_logprobs"), cut("ref_logprobs")
        step.entropy = cut("entropy")
        adv = data.get("advantage")
        step.advantages = None if adv is None else (np.asarray(adv, np.float64) if adv and np.isscalar(adv[0])
                                                    else [np.asarray(a, np.float64)[:L] for a, L in zip(adv, lengths)])
        names = meta.get("reward_func_names") or []
        step.rewards_per_func = {nm: np.asarray(data[f"reward:{nm}"], np.float64) for nm in names} or None
        step.reward_weights = meta.get("reward_weights")
        if step.rewards_per_func:
            w = step.reward_weights or [1.0] * len(names)
            step.rewards = np.nansum(np.stack([step.rewards_per_func[nm] * wi for nm, wi in zip(names, w)]), axis=0)
        step.columns = {k[len("extra:"):]: v for k, v in data.items() if k.startswith("extra:")}
        eos = (meta.get("extra") or {}).get("eos_token_ids")
        step.eos_token_ids = [int(e) for e in eos] if eos else None
        step.group = group_by_prefix(step.prompt_ids)
        step.notes.append("inspector run: the trainer's exact tensors as recorded (TRL names).")
        return step
